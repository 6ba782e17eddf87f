"""A pretrained reward model as the reward (rl.reward_model): a Hub or local AutoModelForSequenceClassification with
one label and its own tokenizer and chat template, served by the preference model's scorers in the trained PM's place.

No preference model trains. Before RL the run samples preference_model.label_prompts pairs from the policy (the PM's
training pairs would be these) and scores them with the reward model, for preference_model.normalize_rewards' mean and
std; measures its accuracy on labeler.human_eval's pairs exactly as the trained PM's (rlaif.run.stages._pm_eval); and
the trust gate grades it against trust.min_pm_human_accuracy: a reward model that disagrees with the human labels stops
the run (exit 3) unless trust.accept_untrusted_feedback, which marks every result untrusted. The AI labeler is
checked (and its labels gated) only where its labels still train something (rl.use_labeler_rating, online DPO ordered
by the labeler); otherwise its labels only monitor RL and the stage skips labelling the sampled pairs.

No Ray here: the stage works on the role handles the trainer passes in.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import math
import re
from pathlib import Path

from rlaif.audit.trust import FAILED, UNCHECKED, Check, TrustRecord, decide, make_check
from rlaif.config import Config

log = logging.getLogger("rlaif")
KEY = "rl.reward_model"
REPORT = "reward_model.html"  # under output_dir/feedback


def resolve(cfg: Config) -> Config:
    """The config with rl.reward_model resolved to a checked local folder (the driver, before Ray starts: no actor
    downloads anything), refused unless it is a sequence-classification model with one label."""
    from transformers import AutoConfig

    from rlaif.models import ModelError, checked_folder

    rl = cfg.rl
    mc = dataclasses.replace(cfg.preference_model.model, path=rl.reward_model, revision=rl.reward_model_revision)
    try:
        folder = checked_folder(KEY, mc, cfg.cache_dir, path_key=KEY, flags="preference_model.model")
    except ModelError as exc:
        raise ModelError(str(exc).replace(f"{KEY}.revision", "rl.reward_model_revision")) from exc
    config = AutoConfig.from_pretrained(folder, trust_remote_code=mc.trust_remote_code)
    heads = [a for a in getattr(config, "architectures", None) or [] if a.endswith("ForSequenceClassification")]
    if getattr(config, "architectures", None) and not heads:
        raise ModelError(f"{KEY}: {rl.reward_model} is a {', '.join(config.architectures)}, not a reward model: "
                         "allowed: an AutoModelForSequenceClassification with one label (num_labels=1); its scalar "
                         "head would otherwise be new, random weights")
    if config.num_labels != 1:
        raise ModelError(f"{KEY}: {rl.reward_model} has num_labels = {config.num_labels} ({config.id2label}); "
                         "allowed: num_labels = 1, one scalar reward per response")
    return dataclasses.replace(cfg, rl=dataclasses.replace(rl, reward_model=folder, reward_model_revision=""))


def display_name(folder: str) -> str:
    """A reward model's name for the console: org/name@commit for a Hub cache snapshot, else its folder."""
    m = re.search(r"models--(.+?)--(.+?)/snapshots/([0-9a-f]+)", folder)
    return f"{m[1]}/{m[2]}@{m[3][:8]}" if m else folder


def sentence(name: str, check: Check, status: str) -> str:
    """The stage's one console line, e.g. "reward model acme/rm@1a2b3c4d: accuracy on 40 held-out human pairs 0.78
    [0.62, 0.88]; trust gate: TRUSTED"."""
    if check.value is None:
        figure = "no held-out human pair to measure it on (labeler.human_eval is empty or holds only ties)"
    else:
        figure = (f"accuracy on {check.n} held-out human pairs {check.value:.2f} [{check.low:.2f}, {check.high:.2f}]"
                  + ("" if check.verdict in ("passed", "off") else f" {check.verdict.upper()}"))
    return f"reward model {name}: {figure}; trust gate: {status.upper()}"


def gate_message(record: TrustRecord, name: str, report: Path) -> str:
    lines = [f"the reward model {name} (rl.reward_model) did not pass the trust gate against held-out human labels, "
             "so the policy is not trained against it:"]
    lines += [f"  - {c.explain()}" for c in record.checks]
    lines += ["Two ways on: another reward model (rl.reward_model), with more human labels where the check is "
              "undecided (labeler.human_eval, labeler.human_eval_pairs); or train anyway with "
              "--accept-untrusted-feedback (trust.accept_untrusted_feedback=true), which marks every checkpoint, "
              "report and wandb run of this run untrusted.", f"The report: {report}"]
    return "\n".join(lines)


def reward_model_stage(cfg: Config, roles, loader, tracker) -> tuple[str, tuple[float, float], TrustRecord]:
    """The trainer's feedback phase with rl.reward_model set (trainer.preference_model): returns the reward model's
    folder, its normalisation (mean, std) and the gate's record, as the trained PM's would be; the run stops here
    (FeedbackIntegrityError, exit 3) when the gate says so."""
    from rlaif.audit.integrity import FeedbackIntegrityError
    from rlaif.audit.integrity_html import svg_reliability
    from rlaif.audit.trust import feedback_trains
    from rlaif.data.human_labels import atomic_write_text
    from rlaif.run.stages import (
        _pm_eval,
        feedback_integrity,
        human_eval_pairs,
        record_trust,
        sample_and_label,
        score_pm,
    )

    pc, folder = cfg.preference_model, cfg.rl.reward_model
    name, trains = display_name(folder), feedback_trains(cfg)
    if trains:  # the AI labels still train something (rating, online DPO): the labeler's own gate, as always
        pairs = sample_and_label(cfg, roles, loader)
        record = feedback_integrity(cfg, roles, pairs, tracker, trains)
        prompts, responses = pairs["prompt"] * 2, pairs["first"] + pairs["second"]
    else:  # they only monitor RL: no labels now, only the sampled responses the normalisation needs
        texts = [p.text for p in loader.next(pc.label_prompts)]
        responses = roles.rollout.generate(texts, 2, cfg.seed + 10**6).texts["response"]
        prompts = [p for p in texts for _ in range(2)]
        record = TrustRecord(UNCHECKED, [], cfg.trust.accept_untrusted_feedback, "")
    log.info("reward model %s: scoring %d sampled responses and the held-out human pairs; no preference model "
             "trains", name, len(responses))
    roles.start_pm_scorers(folder, 0.0, 1.0)
    raw = score_pm(roles, prompts, responses, normalize=False)
    mean, std = 0.0, 1.0
    if pc.normalize_rewards:
        mean = sum(raw) / len(raw)
        std = max(math.sqrt(sum((x - mean) ** 2 for x in raw) / max(len(raw) - 1, 1)), 1e-6)
    human = human_eval_pairs(cfg)
    metrics, bins = _pm_eval(roles, [(h.prompt, h.response_a, h.response_b, h.p_a) for h in human], "rm/human_")
    n = int(metrics.get("rm/human_accuracy_n", 0))
    check = make_check("rm_human_accuracy", "trust.min_pm_human_accuracy", cfg.trust.min_pm_human_accuracy,
                       metrics.get("rm/human_accuracy") if n else None, n)
    before = record
    record = decide(record.checks + [check], cfg.trust,
                    " and ".join(filter(None, [record.trains, f"the policy's reward (rl.reward_model {name})"])))
    metrics |= {"rm/score_mean": mean, "rm/score_std": std, "rm/scored_responses": float(len(raw))}
    tracker.log(metrics, step=0)
    report = Path(cfg.output_dir) / "feedback" / REPORT
    figures = "".join(f"<li>{html.escape(k)}: {v:.4g}</li>" for k, v in sorted(metrics.items()))
    plot = svg_reliability(bins, title="Reward model on held-out human-labelled pairs (labeler.human_eval)") \
        if bins else ""
    atomic_write_text(report, f"<!doctype html><html><head><meta charset='utf-8'><title>Reward model</title></head>"
                              f"<body><h1>Reward model {html.escape(name)}</h1><p>{html.escape(check.explain())}</p>"
                              f"<p>Trust gate: {record.status.upper()}</p><ul>{figures}</ul>{plot}</body></html>")
    if record.status != FAILED:
        log.info("%s", sentence(name, check, record.status))
    record_trust(cfg, record, tracker, [check], None, before)
    if record.status == FAILED:
        raise FeedbackIntegrityError(gate_message(record, name, report))
    atomic_write_text(Path(cfg.output_dir) / "feedback" / "reward_model.json",
                      json.dumps({"reward_model": folder, "name": name, "mean": mean, "std": std}, indent=1) + "\n")
    return folder, (mean, std), record
