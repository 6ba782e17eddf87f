"""The stages before RL: AI-label pairs sampled from the policy, measure how far those labels can be trusted, and
fit the preference model on them. Each stage is a function over the role handles; the central trainer chains them.
"""

from __future__ import annotations

import html
import json
import logging
import math
import random
import time
from pathlib import Path

import ray

from actors.group import get, split_batch
from rlaif.audit.integrity import (
    audit_sample,
    calibration_summary,
    comparison_inputs,
    export_audit,
    integrity_metrics,
    integrity_report,
    preference_probs,
    reliability_bins,
    write_report_json,
)
from rlaif.audit.integrity_html import svg_reliability, write_html_report
from rlaif.audit.panels import integrity_panels, log_panels, pm_panels
from rlaif.audit.trust import (
    FAILED,
    RECORD,
    UNCHECKED,
    UNTRUSTED,
    Check,
    TrustRecord,
    brief,
    decide,
    enforce,
    feedback_trains,
    labeler_checks,
    model_card,
    trust_metrics,
)
from rlaif.config import Config
from rlaif.data.human_labels import HumanPair, atomic_write_text, build_pyrit_human_set, load_human_labels, write_jsonl
from rlaif.data.loader import PromptLoader
from rlaif.data.splits import PMPair, plan_pairs, plan_prompts
from rlaif.rl.batch import Batch
from rlaif.run.tracking import Tracker

log = logging.getLogger("rlaif")
# Offsets of the principle seeds of the stages' labeler calls (cfg.seed + this): the same principles whenever the
# call is made, in a restarted labeler or before SL-CAI and after it.
PAIRS_SEED, HUMAN_SET_SEED, AUDIT_SEED = 7_771, 7_777, 7_783


def label_stats(labels: list[dict], prefix: str) -> dict[str, float]:
    """Distribution of one batch of AI labels, logged every step (the full report needs human labels)."""
    p = [lab["p_first"] for lab in labels]
    entropy = [-(x * math.log(x + 1e-12) + (1 - x) * math.log(1 - x + 1e-12)) for x in p]
    out = {prefix + "p_first_mean": sum(p) / len(p), prefix + "entropy": sum(entropy) / len(p)}
    consistent = [lab["consistent"] for lab in labels if lab["consistent"] is not None]
    if consistent:
        out[prefix + "position_consistency"] = sum(consistent) / len(consistent)
        out[prefix + "raw_p_in_slot_a"] = sum(lab["p_first_in_a"] for lab in labels) / len(labels)
    return out


def human_eval_pairs(cfg: Config) -> list[HumanPair]:
    spec, k = cfg.labeler.human_eval, cfg.labeler.human_eval_pairs
    if not spec:
        return []
    if spec == "builtin:pyrit":
        return build_pyrit_human_set(max_pairs=k, seed=cfg.seed).pairs
    return load_human_labels(spec)[:k]


def sample_and_label(cfg: Config, roles, loader: PromptLoader) -> dict[str, list]:
    """Two responses per prompt from the current policy, compared by the AI labeler (RL-CAI's feedback step)."""
    prompts = [p.text for p in loader.next(cfg.preference_model.label_prompts)]
    s = roles.rollout.generate(prompts, 2, cfg.seed + 10**6)
    firsts, seconds = s.texts["response"][0::2], s.texts["response"][1::2]
    labels = roles.get(roles.labeler.compare.remote(prompts, firsts, seconds, cfg.seed + PAIRS_SEED),
                       "labeler.compare (pairs)")
    return {"prompt": prompts, "first": firsts, "second": seconds, "labels": labels}


def feedback_integrity(cfg: Config, roles, pairs: dict[str, list], tracker: Tracker, trains: str) -> TrustRecord:
    """Agreement with held-out human labels, position consistency, calibration, an audit sheet; then the trust gate
    (rlaif.audit.trust) on what `trains` names: the run stops here when the labels did not pass and the user has not
    accepted untrusted feedback. The report and the record (feedback/trust.json) are written either way."""
    out = Path(cfg.output_dir) / "feedback"
    human = human_eval_pairs(cfg)
    labels, human_p = pairs["labels"], None
    if human:
        prompts, firsts, seconds, human_p = comparison_inputs(human)
        labels = roles.get(roles.labeler.compare.remote(prompts, firsts, seconds, cfg.seed + HUMAN_SET_SEED),
                           "labeler.compare (human set)")
    report = integrity_report(labels, human_p)
    rows = audit_sample(pairs["labels"], pairs["prompt"], pairs["first"], pairs["second"],
                        k=cfg.labeler.audit_samples, seed=cfg.seed)
    if rows:  # an AI critique of each audited response, to help the reviewer
        crit = roles.get(roles.labeler.critique.remote(
            [r["prompt"] for r in rows] * 2, [r["response_a"] for r in rows] + [r["response_b"] for r in rows],
            cfg.seed + AUDIT_SEED), "labeler.critique (audit)")
        for r, a, b in zip(rows, crit[: len(rows)], crit[len(rows) :]):
            r["critique_a"], r["critique_b"] = a, b
    checks = labeler_checks(report, cfg.trust)
    record = decide(checks, cfg.trust, trains)
    export_audit(out / "audit.jsonl", rows)
    write_report_json(out / "integrity.json", report)
    html_path = write_html_report(out / "integrity.html", report, rows, gate=[(c.explain(), c.ok) for c in checks],
                                  verdict=record.status)
    metrics = integrity_metrics(report) | label_stats(pairs["labels"], prefix="pm_labels/")
    tracker.log(metrics, step=0)
    tracker.log_table("audit", [{k: str(v) for k, v in r.items()} for r in rows[:8]], step=0)
    log_panels(tracker, lambda: integrity_panels(report, rows), step=0)
    where = f"{report.n_human} human-labelled pairs ({cfg.labeler.human_eval})" if human else \
        "no human-labelled pairs (labeler.human_eval is empty)"
    record_trust(cfg, record, tracker, checks, f"AI feedback on {where} (report: {html_path})")
    enforce(record, html_path)
    return record


def precheck_labeler(cfg: Config, tracker: Tracker) -> None:
    """Before SL-CAI, which can take hours: the labeler's trust checks on the held-out human pairs, which do not
    depend on the policy, so a labeler that cannot pass stops the run now rather than after SL-CAI. The labels use
    the same principle seed and land in the label cache, so the integrity stage after SL-CAI reads them back and
    decides the same. Skipped where the gate could not stop the run (accepted, feedback that trains nothing, both
    labeler bars 0) or there is no human set (the later stage stops it then)."""
    tc, trains, human = cfg.trust, feedback_trains(cfg), human_eval_pairs(cfg)
    if tc.accept_untrusted_feedback or not trains or not (tc.min_agreement or tc.min_position_consistency) \
            or not human:
        return
    from actors.labeler import LabelerWorker

    log.info("trust gate: checking the labeler on %d human-labelled pairs before SL-CAI", len(human))
    prompts, firsts, seconds, human_p = comparison_inputs(human)
    actor = ray.remote(LabelerWorker).options(num_cpus=1, num_gpus=cfg.ray.gpus_per_aux).remote(cfg)
    try:
        labels = get(actor.compare.remote(prompts, firsts, seconds, cfg.seed + HUMAN_SET_SEED), cfg.trainer.timeout_s,
                     "labeler.compare (human set, before SL-CAI)")
    finally:
        ray.kill(actor)
    report = integrity_report(labels, human_p)
    record = decide(labeler_checks(report, tc), tc, trains)
    if record.status == FAILED:
        out = Path(cfg.output_dir) / "feedback"
        write_report_json(out / "integrity.json", report)
        html_path = write_html_report(out / "integrity.html", report, gate=[(c.explain(), c.ok) for c in record.checks],
                                      verdict=record.status)
        tracker.log(integrity_metrics(report), step=0)
        log_panels(tracker, lambda: integrity_panels(report), step=0)
        record_trust(cfg, record, tracker, record.checks, "AI feedback on the human-labelled pairs")
        enforce(record, html_path)


def record_trust(cfg: Config, record: TrustRecord, tracker: Tracker, new: list[Check], what: str | None,
                 before: TrustRecord | None = None) -> None:
    """Say the gate's decision on `new` checks in one console line headed `what` (None: the caller says it; a stop
    says it all in its error), warn once when the run goes on untrusted, write feedback/trust.json, and mark the wandb
    run."""
    if record.status != FAILED and what:
        log.info("%s: %s; trust gate: %s", what, brief(new), record.status.upper())
    if record.status == UNTRUSTED and (before is None or before.status != UNTRUSTED):
        log.warning("trust gate: the AI feedback did not pass, and the run trains on it anyway because "
                    "trust.accept_untrusted_feedback is set: every result of this run is marked UNTRUSTED")
    elif record.status == UNCHECKED and not record.trains and not all(c.ok for c in record.checks) and before is None:
        log.warning("trust gate: the AI feedback did not pass, but it trains nothing in this run (the reward "
                    "comes from rl.reward_functions alone)")
    atomic_write_text(Path(cfg.output_dir) / "feedback" / RECORD, json.dumps(record.to_dict(), indent=1) + "\n")
    tracker.log(trust_metrics(record), step=0)
    tracker.mark({"trust/status": record.status, "trust/summary": record.summary()},
                 ["untrusted-feedback"] if record.status == UNTRUSTED else [])


def train_preference_model(cfg: Config, roles, pairs: dict[str, list], tracker: Tracker) -> dict[str, float]:
    """Fit the PM on AI-labelled pairs (plus human pairs, if given); report held-out accuracy and calibration.

    The pairs are planned by rlaif.data.splits.plan_pairs: labeler.human_eval's pairs never train the PM, a duplicate is
    kept once, and each pair sits on one side of the held-out split. feedback/pm_pairs.jsonl records every pair with
    its side ("train", "heldout", "unused": left over by equal shards, "human_eval": removed, "duplicate").
    """
    pc, ranks = cfg.preference_model, len(roles.pm.actors)
    ai = [PMPair(p, a, b, lab["p_first"], "ai", f"ai:{i:05d}")
          for i, (p, a, b, lab) in enumerate(zip(pairs["prompt"], pairs["first"], pairs["second"], pairs["labels"]))]
    human = [PMPair.from_human(h) for h in load_human_labels(pc.human_pairs)] if pc.human_pairs else []
    human_eval = human_eval_pairs(cfg)
    plan = plan_pairs(ai, human, human_eval, pc.eval_fraction, cfg.data.seed)
    if plan.excluded:
        log.warning("preference model: %d pair(s) of preference_model.human_pairs are held out by labeler.human_eval "
                    "and were removed from its data", len(plan.excluded))
    if plan.duplicates:
        log.info("preference model: %d duplicate pair(s) dropped (a human label wins over the AI's)",
                 len(plan.duplicates))
    train = list(plan.train)
    random.Random(cfg.seed).shuffle(train)
    unused = train[len(train) - len(train) % ranks :] if len(train) % ranks else []
    train = train[: len(train) - len(unused)]  # equal shards: every rank takes the same collective steps
    batch = {"prompt": [r.prompt for r in train], "first": [r.first for r in train],
             "second": [r.second for r in train], "p_first": [r.p_first for r in train]}
    metrics = roles.pm.call_sharded("train", split_batch(batch, ranks))[0]
    raw = score_pm(roles, batch["prompt"] * 2, batch["first"] + batch["second"], normalize=False)
    mean = sum(raw) / len(raw)
    std = math.sqrt(sum((x - mean) ** 2 for x in raw) / max(len(raw) - 1, 1))
    if pc.normalize_rewards:
        roles.pm.call("set_normalization", mean, std)
    plots, curves = [], []
    for origin, prefix, title in (("ai", "pm/heldout_", "PM on held-out AI-labelled pairs"),
                                  ("human", "pm/heldout_human_pairs_", "PM on held-out preference_model.human_pairs")):
        held = [(r.prompt, r.first, r.second, r.p_first) for r in plan.heldout if r.origin == origin]
        if held:
            m, bins = _pm_eval(roles, held, prefix)
            metrics |= m
            plots.append(svg_reliability(bins, title=title))
            curves.append((title.removeprefix("PM on "), bins, m, prefix))
    if human_eval:
        m, bins = _pm_eval(roles, [(h.prompt, h.response_a, h.response_b, h.p_a) for h in human_eval], "pm/human_")
        metrics |= m
        plots.append(svg_reliability(bins, title="PM on held-out human-labelled pairs (labeler.human_eval)"))
        curves.append(("held-out human-labelled pairs (labeler.human_eval)", bins, m, "pm/human_"))
    figures = "".join(f"<li>{html.escape(k)}: {v:.4g}</li>" for k, v in sorted(metrics.items()))
    atomic_write_text(Path(cfg.output_dir) / "feedback" / "pm_calibration.html",
                      f"<!doctype html><html><head><meta charset='utf-8'><title>Preference model calibration</title>"
                      f"</head><body><h1>Preference model calibration</h1><ul>{figures}</ul>{''.join(plots)}"
                      f"</body></html>")
    metrics |= {"pm/train_pairs": float(len(train)), "pm/heldout_pairs": float(len(plan.heldout)),
                "pm/removed_human_eval_pairs": float(len(plan.excluded)),
                "pm/duplicate_pairs": float(len(plan.duplicates))}
    tracker.log(metrics, step=0)
    log_panels(tracker, lambda: pm_panels(curves), step=0)
    sides = [(train, "train"), (plan.heldout, "heldout"), (unused, "unused"), (plan.excluded, "human_eval"),
             (plan.duplicates, "duplicate")]
    write_jsonl(Path(cfg.output_dir) / "feedback" / "pm_pairs.jsonl",
                [{"id": r.id, "origin": r.origin, "split": side, "prompt": r.prompt, "first": r.first,
                  "second": r.second, "p_first": r.p_first} for rows, side in sides for r in rows])
    return metrics


def pm_accuracy_text(metrics: dict[str, float], prefix: str = "pm/heldout_") -> str:
    """A PM accuracy for the console with its 95% Wilson interval and n, e.g. "0.81 [0.64, 0.91] n=32"."""
    if prefix + "accuracy" not in metrics:
        return "n/a"
    return (f"{metrics[prefix + 'accuracy']:.2f} [{metrics[prefix + 'accuracy_ci_low']:.2f}, "
            f"{metrics[prefix + 'accuracy_ci_high']:.2f}] n={int(metrics[prefix + 'accuracy_n'])}")


def score_pm(roles, prompts: list[str], responses: list[str], normalize: bool = True) -> list[float]:
    """PM scores, split over the PM ranks (every rank must take part: ZeRO-3 forwards are collective)."""
    ranks = len(roles.pm.actors)
    pad = (-len(prompts)) % ranks
    batch = {"prompt": prompts + prompts[:1] * pad, "response": responses + responses[:1] * pad}
    refs = [a.score.remote(s, normalize) for a, s in zip(roles.pm.actors, split_batch(batch, ranks))]
    out = [x for part in roles.get(refs, "preference_model.score") for x in part]
    return out[: len(prompts)]


def _pm_eval(roles, rows: list[tuple], prefix: str) -> tuple[dict[str, float], list]:
    """Accuracy (with its n and 95% Wilson interval) and ECE of P(first better) = sigmoid(r_first - r_second)
    against the labels, and the bins."""
    rows = [r for r in rows if r[3] != 0.5]  # a tie has no right answer
    if not rows:
        return {}, []
    s = score_pm(roles, [r[0] for r in rows] * 2, [r[1] for r in rows] + [r[2] for r in rows], normalize=False)
    return pm_figures(preference_probs(s[: len(rows)], s[len(rows) :]), [r[3] for r in rows], prefix)


def pm_figures(probs: list[float], labels: list[float], prefix: str) -> tuple[dict[str, float], list]:
    """The PM's figures on scored pairs: P(first better) per pair against the labels' P (none a tie)."""
    summary = calibration_summary(probs, [1.0 if p > 0.5 else 0.0 for p in labels])
    bins = reliability_bins(probs, [1.0 if p > 0.5 else 0.0 for p in labels])
    low, high = summary["accuracy_ci"]
    return {prefix + "accuracy": summary["accuracy"], prefix + "accuracy_ci_low": low,
            prefix + "accuracy_ci_high": high, prefix + "accuracy_n": float(summary["n"]),
            prefix + "ece": summary["ece"]}, bins


def supervise(roles, pad_id: int, examples: list[tuple[list[int], list[int]]], step_size: int, epochs: int,
              section, rng: random.Random, tracker: Tracker) -> list[float]:
    """Supervised fine-tuning of the policy ranks on (prompt ids, target ids) examples, the loss on the target only:
    `epochs` shuffled passes in optimizer steps of step_size (an epoch's remainder that does not fill one is
    skipped), at the learning rate of `section` (its lr and schedule). Returns each step's loss (logged as
    sft/loss, with sft/lr)."""
    from rlaif.rl.schedule import schedule

    losses, lr_of = [], schedule(section, epochs * (len(examples) // step_size))
    for _ in range(epochs):
        rng.shuffle(examples)
        for i in range(0, len(examples) - step_size + 1, step_size):
            chunk, lr = examples[i : i + step_size], lr_of(len(losses))
            batch = Batch.from_token_lists([e[0] for e in chunk], [e[1] for e in chunk], pad_id)
            step = roles.policy.call_sharded("sft", batch.split(len(roles.policy.actors)), lr)
            losses.append(sum(m["sft/loss"] for m in step) / len(step))
            tracker.log({"sft/loss": losses[-1], "sft/lr": lr, "sft/step": float(len(losses))}, step=0)
    return losses


def sl_cai(cfg: Config, roles, tracker: Tracker) -> Path:
    """Constitutional AI phase 1: critique -> revision on red-team prompts, then SFT on the revisions mixed with
    the model's own answers to helpfulness prompts. Returns the SFT checkpoint that RL starts from.

    Only the train side of rlaif.data.splits' plan is used (held-out prompts never reach SFT); sl_cai/sft_examples.jsonl
    records every example SFT draws from (an epoch skips the remainder that does not fill a step)."""
    from rlaif.audit.evaluate import is_refusal
    from rlaif.config import import_callable
    from rlaif.feedback.constitution import load_constitution
    from rlaif.feedback.selfconsistency import extract_answer
    from rlaif.feedback.slcai import revise, revision_stats, sft_examples, sft_token_ids
    from rlaif.models import load_tokenizer, resolve_model_path

    sc, out = cfg.sl_cai, Path(cfg.output_dir) / "sl_cai"
    rng = random.Random(cfg.seed)
    plan = plan_prompts(cfg, ("red_team", "helpful") if sc.helpful_ratio > 0 else ("red_team",))
    red = rng.sample(plan.red_team.train, min(sc.num_prompts, len(plan.red_team.train)))
    path = resolve_model_path(cfg.policy.model.path, cfg.cache_dir)

    calls, context = iter(range(10**6)), {"truncated": 0, "max_tokens": 0}

    def chat(conversations: list[list[dict]]) -> list[str]:
        seed = cfg.seed + 1000 * next(calls)
        got = roles.rollout.chat(conversations, seed, sc.temperature, sc.max_new_tokens)
        context["truncated"] += got["truncated"]
        context["max_tokens"] = max(context["max_tokens"], got["max_tokens"])
        return got["replies"]

    t0 = time.perf_counter()
    provenance = {"model": cfg.policy.model.path, "model_path": path, "seed": cfg.seed, "rounds": sc.rounds,
                  "few_shot": sc.few_shot, "constitution": cfg.constitution.path,
                  "sampling": {"temperature": sc.temperature, "max_new_tokens": sc.max_new_tokens}}
    key = None
    if sc.self_consistency:
        provenance["self_consistency"] = {"samples": sc.self_consistency, "key": sc.self_consistency_key,
                                          "min_agreement": sc.self_consistency_min_agreement}
        key = {"refusal": lambda ps, ts: [is_refusal(t) for t in ts],
               "answer": lambda ps, ts: [extract_answer(t) for t in ts]}.get(sc.self_consistency_key) \
            or import_callable(sc.self_consistency_key, "sl_cai.self_consistency_key")
    records = revise(red, chat, load_constitution(cfg.constitution.path), sc.rounds, sc.few_shot, rng, provenance,
                     sc.self_consistency, key, sc.self_consistency_min_agreement)
    # helpful answers in proportion to the revision targets SFT gets (self-consistency may keep several per round)
    n_revisions = len(sft_examples(records, sc.targets))
    helpful = plan.helpful.train
    helpful = rng.sample(helpful, min(len(helpful), round(n_revisions * sc.helpful_ratio / (1 - sc.helpful_ratio))))
    answers = chat([[{"role": "user", "content": p.text}] for p in helpful]) if helpful else []
    gen_seconds = time.perf_counter() - t0
    if context["truncated"]:
        log.warning("SL-CAI: %d conversation(s) were longer than sl_cai.max_context_tokens = %d less the reply and "
                    "lost their oldest turns; raise sl_cai.max_context_tokens", context["truncated"],
                    sc.max_context_tokens)
    tok = load_tokenizer(path, cfg.policy.model.trust_remote_code)
    texts = [t for r in records for t in [r.original] + [x for rd in r.rounds
                                                          for x in (rd.critique, *(rd.samples or [rd.revision]))]]
    gen_tokens = sum(len(tok.encode(t, add_special_tokens=False)) for t in texts + answers)
    write_jsonl(out / "revisions.jsonl", [r.to_dict() for r in records])
    write_jsonl(out / "helpful.jsonl",
                [{"id": p.id, "prompt": p.text, "response": a} for p, a in zip(helpful, answers)])

    pairs = [("revision", *e) for e in sft_examples(records, sc.targets)]
    pairs += [("helpful", p.id, p.text, a) for p, a in zip(helpful, answers) if a.strip()]
    encoded = [sft_token_ids(tok, p, t, sc.max_tokens) for _, _, p, t in pairs]
    write_jsonl(out / "sft_examples.jsonl", [{"kind": k, "id": i, "prompt": p, "target": t, "truncated": e[2]}
                                             for (k, i, p, t), e in zip(pairs, encoded)])
    examples = [(e[0], e[1]) for e in encoded]
    step_size = cfg.rl.prompts_per_step * cfg.rollout.n_samples  # the policy group's batch geometry
    if len(examples) < step_size:
        low = " or lower sl_cai.self_consistency_min_agreement" if sc.self_consistency else ""
        raise ValueError(f"SL-CAI produced {len(examples)} SFT examples, fewer than one optimizer step of "
                         f"{step_size}: raise sl_cai.num_prompts or sl_cai.rounds{low}")
    metrics = revision_stats(records, sc.targets) | {
        "sl_cai/helpful": float(len(answers)), "sl_cai/gen_seconds": gen_seconds,
        "sl_cai/gen_tokens_per_second": gen_tokens / gen_seconds,
        "sl_cai/truncated_conversations": float(context["truncated"]),
        "sl_cai/max_conversation_tokens": float(context["max_tokens"]),
        "sl_cai/sft_examples_truncated": float(sum(e[2] for e in encoded)),
    }
    t0 = time.perf_counter()
    losses = supervise(roles, tok.pad_token_id, examples, step_size, sc.epochs, sc, rng, tracker)
    metrics |= {"sft/loss_first": losses[0], "sft/loss_last": losses[-1], "sft/steps": float(len(losses)),
                "sft/seconds_per_step": (time.perf_counter() - t0) / len(losses)}
    tracker.log(metrics, step=0)
    log.info("SL-CAI: %d revisions of %d red-team prompts (%.0f%% left the answer unchanged) and %d helpful answers; "
             "SFT loss %.3f -> %.3f over %d steps", metrics["sl_cai/revisions"], metrics["sl_cai/prompts"],
             100 * metrics["sl_cai/no_change_rate"], len(answers), losses[0], losses[-1], len(losses))
    note = ("the SL-CAI policy: supervised on its own critiqued revisions (and helpful answers); the AI-feedback trust "
            "gate runs after this stage, on the labels that train the preference model")
    card = model_card(TrustRecord(UNCHECKED, note=note), "SL-CAI policy", cfg)
    return Path(roles.policy.call("save", str(out / "checkpoint"), card)[0])
