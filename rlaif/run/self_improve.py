"""The self-improvement stage of Huang et al. 2022 ("Large Language Models Can Self-Improve"): `rlaif self-improve`.

For each training question of data.prompts the policy samples self_improve.samples chain-of-thought answers ("Let's
think step by step."); rlaif.feedback.selfconsistency.extract_answer reads each path's final answer. Where the majority
answer
holds at least self_improve.min_agreement of the samples (the paper's confident majority), the paths that reach it
are kept, and no other path: not the minority's, not any path of a question whose majority is not confident. The
policy is then fine-tuned on the kept paths in mixed formats (the paper mixes formats so that the model does not
overfit to one prompt style). No labels, no answers from outside: the model's own agreement is the only signal.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rlaif.config import Config
from rlaif.data.human_labels import write_jsonl
from rlaif.data.splits import PromptPlan
from rlaif.feedback.selfconsistency import extract_answer, majority_filter
from rlaif.run.tracking import Tracker

log = logging.getLogger("rlaif")
COT_CUE = "Let's think step by step."


@dataclass
class Question:
    id: str
    question: str
    paths: list[str]  # every sampled reasoning path
    answers: list[str | None]  # each path's extracted final answer (None: none found)
    majority: str | None  # the most common answer (None: no path gave one)
    agreement: float  # the majority's share of all paths
    kept: list[str]  # the paths that reach the majority, when it is confident; else none


def select_paths(ids: Sequence[str], questions: Sequence[str], paths: Sequence[Sequence[str]], min_agreement: float
                 ) -> list[Question]:
    """Per question, the reasoning paths whose final answer is the majority's, kept only when at least
    `min_agreement` of all its paths agree (a path without an answer counts against it)."""
    kept, rates = majority_filter(paths, extract_answer, min_agreement)
    out = []
    for i, q, ps, k, rate in zip(ids, questions, paths, kept, rates):
        answers = [extract_answer(p) for p in ps]
        counts = {a: answers.count(a) for a in answers if a is not None}
        majority = max(counts, key=lambda a: (counts[a], -answers.index(a))) if counts else None
        out.append(Question(str(i), q, list(ps), answers, majority, rate, k))
    return out


def sft_pairs(records: Sequence[Question], formats: Sequence[str]) -> list[tuple[str, str, str, str]]:
    """(format, question id, prompt, target) for SFT: per kept path, "cot" (question -> path) and "cot-cue"
    (question + COT_CUE -> path); per question with kept paths, "direct" (question -> "The answer is X.")."""
    pairs = []
    for r in records:
        for path in r.kept:
            pairs += [("cot", r.id, r.question, path)] if "cot" in formats else []
            pairs += [("cot-cue", r.id, f"{r.question}\n{COT_CUE}", path)] if "cot-cue" in formats else []
        if r.kept and "direct" in formats:
            pairs.append(("direct", r.id, r.question, f"The answer is {r.majority}."))
    return pairs


def self_improve(cfg: Config, roles, plan: PromptPlan, tracker: Tracker) -> Path:
    """Sample, select and fine-tune (the module docstring); returns the fine-tuned checkpoint. Writes every path,
    its answer and whether it was kept (self_improve/paths.jsonl) and every SFT example (sft_examples.jsonl)."""
    from rlaif.audit.trust import UNCHECKED, TrustRecord, model_card
    from rlaif.feedback.slcai import sft_token_ids
    from rlaif.models import load_tokenizer
    from rlaif.run.stages import supervise

    si, out, rng = cfg.self_improve, Path(cfg.output_dir) / "self_improve", random.Random(cfg.seed)
    questions = rng.sample(plan.rl.train, min(si.num_prompts, len(plan.rl.train)))
    t0 = time.perf_counter()
    batch = roles.rollout.generate([f"{q.text}\n{COT_CUE}" for q in questions], si.samples, cfg.seed + 31337,
                                   temperature=si.temperature, max_new_tokens=si.max_new_tokens)
    texts, k = batch.texts["response"], si.samples
    records = select_paths([q.id for q in questions], [q.text for q in questions],
                           [texts[i * k:(i + 1) * k] for i in range(len(questions))], si.min_agreement)
    gen_seconds = time.perf_counter() - t0
    write_jsonl(out / "paths.jsonl", [asdict(r) for r in records])

    tok = load_tokenizer(cfg.policy.model.path, cfg.policy.model.trust_remote_code)
    pairs = sft_pairs(records, si.formats)
    encoded = [sft_token_ids(tok, p, t, cfg.sl_cai.max_tokens) for _, _, p, t in pairs]
    write_jsonl(out / "sft_examples.jsonl", [{"format": f, "id": i, "prompt": p, "target": t, "truncated": e[2]}
                                             for (f, i, p, t), e in zip(pairs, encoded)])
    confident = [r for r in records if r.kept]
    step_size = cfg.rl.prompts_per_step * cfg.rollout.n_samples  # the policy group's batch geometry
    if len(encoded) < step_size:
        raise ValueError(f"self-improvement kept {sum(len(r.kept) for r in records)} paths of {len(confident)} "
                         f"questions ({len(encoded)} SFT examples), fewer than one optimizer step of {step_size}: "
                         "raise self_improve.num_prompts or self_improve.samples, or lower self_improve.min_agreement")
    losses = supervise(roles, tok.pad_token_id, [(e[0], e[1]) for e in encoded], step_size, si.epochs, si, rng,
                       tracker)
    paths = sum(len(r.paths) for r in records)
    metrics = {"self_improve/questions": float(len(records)), "self_improve/confident": float(len(confident)),
               "self_improve/paths_kept": float(sum(len(r.kept) for r in records)) / paths,
               "self_improve/agreement": sum(r.agreement for r in records) / len(records),
               "self_improve/no_answer": sum(a is None for r in records for a in r.answers) / paths,
               "self_improve/gen_seconds": gen_seconds, "self_improve/sft_examples": float(len(encoded)),
               "sft/loss_first": losses[0], "sft/loss_last": losses[-1], "sft/steps": float(len(losses))}
    tracker.log(metrics, step=0)
    log.info("self-improvement: %d of %d questions reached a confident majority (at least %.0f%% of %d paths agree); "
             "%d paths kept; SFT loss %.3f -> %.3f over %d steps", len(confident), len(records),
             100 * si.min_agreement, k, sum(len(r.kept) for r in records), losses[0], losses[-1], len(losses))
    note = ("fine-tuned on its own majority-consistent reasoning paths (Huang et al. 2022); no human or AI feedback "
            "was measured for this stage")
    card = model_card(TrustRecord(UNCHECKED, note=note), "Self-improved policy", cfg)
    return Path(roles.policy.call("save", str(out / "checkpoint"), card)[0])
