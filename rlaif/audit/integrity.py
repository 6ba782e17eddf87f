"""Feedback integrity: how far can the AI labels be trusted? (no Ray, no plotting library)

Computed from the label dicts the labeler returns (keys ``principle``, ``p_first``, ``p_first_in_a``,
``p_first_in_b``, ``consistent``; see :func:`rlaif.feedback.labeling.combine_orders`) plus, where known, the human
probability that the first response is better (the ``p_a`` of :mod:`rlaif.data.human_labels` when the labeler compared
first=response_a, second=response_b):

* **agreement with human labels**: the fraction of pairs where the AI's preference (p > 0.5) matches the human one
  (human p > 0.5); human ties (p = 0.5) are excluded, an AI label of exactly 0.5 counts half. Computed for the
  order-averaged label ``p_first`` and for each single order (``p_first_in_a``: the raw label with the first response
  shown as (A); ``p_first_in_b``: shown as (B)), so the effect of debiasing by averaging shows.
* **position consistency**: the fraction of pairs (scored in both orders) whose two orders prefer the same response.
* **intervals**: every headline proportion (agreement order-averaged and per order, position consistency, and the
  preference model's held-out accuracy in :func:`calibration_summary`) carries its n and a 95% Wilson score
  interval (:func:`wilson_interval`), so 56% agreement on 16 pairs reads as [33%, 77%], not as a finding.
* **slot bias**: the mean P(A) over every presentation scored (both orders when available, so that the content
  effect cancels and an unbiased labeler scores 0.5), and the fraction of presentations answered "A" (P(A) > 0.5).
* **label distribution**: a histogram of ``p_first`` (and of the raw per-presentation P(A)) and the mean binary
  entropy of ``p_first`` in nats (at most ln 2 = 0.693; near 0 means near-hard labels).
* **calibration**: the binary-classification form of the expected calibration error. With predicted probabilities
  p_i of the event "outcome = 1" and outcomes y_i in {0, 1}, split [0, 1] into ``n_bins`` equal-width bins
  (bin k = [k/n, (k+1)/n), the last bin closed), and ``ECE = sum_k |B_k| / N * |mean(y in B_k) - mean(p in B_k)|``
  (the reliability diagram plots mean(y) against mean(p) per bin). For the labeler p = ``p_first`` and y = 1 when the
  human prefers the first response; for the preference model p = sigmoid(r_a - r_b) (:func:`preference_probs`) on
  held-out pairs. :func:`expected_calibration_error` and :func:`reliability_bins` are generic.

:mod:`rlaif.audit.trust` turns these figures into the trust gate's decision;
:func:`audit_sample` / :func:`export_audit` / :func:`import_audit` give people a seeded slice of labelled pairs to
review and turn their verdicts back into human labels; :func:`write_html_report` writes one self-contained HTML file
(inline SVG, no scripts, no external assets).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlaif.data.human_labels import (
    HumanLabelError,
    HumanPair,
    atomic_write_text,
    iter_jsonl,
    parse_record,
    write_jsonl,
)

LABEL_KEYS = ("principle", "p_first", "p_first_in_a", "p_first_in_b", "consistent")
CHOICES = {"a": 1.0, "b": 0.0, "tie": 0.5}


class FeedbackIntegrityError(RuntimeError):
    """The AI feedback did not pass the trust gate (rlaif.audit.trust): the run stops with exit code 3."""


# ---------------------------------------------------------------------------------------------------------------
# Calibration (generic: AI labels vs human labels, preference-model probabilities vs held-out labels)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReliabilityBin:
    lower: float
    upper: float
    count: int
    mean_prob: float | None  # mean predicted probability in the bin (None when empty)
    frequency: float | None  # observed frequency of outcome = 1 in the bin (None when empty)


def _check_probs(probs: Sequence[float], outcomes: Sequence[float]) -> None:
    if len(probs) != len(outcomes):
        raise ValueError(f"probs and outcomes differ in length: {len(probs)} vs {len(outcomes)}")
    for i, (p, y) in enumerate(zip(probs, outcomes)):
        if not 0.0 <= p <= 1.0:  # also rejects NaN
            raise ValueError(f"probs[{i}] = {p!r} is not a probability in [0, 1]")
        if not 0.0 <= y <= 1.0:
            raise ValueError(f"outcomes[{i}] = {y!r} is not in [0, 1]")


def _bin_index(p: float, n_bins: int) -> int:
    return min(int(p * n_bins), n_bins - 1)


def reliability_bins(probs: Sequence[float], outcomes: Sequence[float], n_bins: int = 10) -> list[ReliabilityBin]:
    """Reliability-diagram data: per equal-width bin of the predicted probability, its count, mean prediction and
    observed frequency of outcome = 1. Outcomes are 0/1 (a value in between counts fractionally)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    _check_probs(probs, outcomes)
    sums = [[0, 0.0, 0.0] for _ in range(n_bins)]
    for p, y in zip(probs, outcomes):
        s = sums[_bin_index(p, n_bins)]
        s[0] += 1
        s[1] += p
        s[2] += y
    return [ReliabilityBin(k / n_bins, (k + 1) / n_bins, c, sp / c if c else None, sy / c if c else None)
            for k, (c, sp, sy) in enumerate(sums)]


def ece_from_bins(bins: Sequence[ReliabilityBin]) -> float | None:
    n = sum(b.count for b in bins)
    if n == 0:
        return None
    return sum(b.count / n * abs(b.frequency - b.mean_prob) for b in bins if b.count)


def expected_calibration_error(probs: Sequence[float], outcomes: Sequence[float], n_bins: int = 10) -> float:
    """ECE = sum over equal-width bins of |B| / N * |frequency(outcome = 1 in B) - mean(p in B)| (binary form)."""
    if not probs:
        raise ValueError("expected_calibration_error needs at least one prediction")
    return ece_from_bins(reliability_bins(probs, outcomes, n_bins))


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def preference_probs(rewards_a: Sequence[float], rewards_b: Sequence[float]) -> list[float]:
    """The preference model's P(a better than b) = sigmoid(r_a - r_b) (Bradley-Terry), for calibration."""
    if len(rewards_a) != len(rewards_b):
        raise ValueError(f"rewards differ in length: {len(rewards_a)} vs {len(rewards_b)}")
    return [sigmoid(a - b) for a, b in zip(rewards_a, rewards_b)]


Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: two-sided 95% intervals


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a proportion p measured on n trials (Wilson 1927):
    (p + z^2/2n -/+ z * sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n). Unlike p +/- z*sqrt(p(1-p)/n) it stays inside
    [0, 1] and is not empty at p = 0 or 1, so 56% agreement on 16 pairs reads as the [33%, 77%] it is."""
    if n < 1:
        raise ValueError(f"wilson_interval needs n >= 1 trials, got {n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"wilson_interval: p = {p!r} is not a proportion")
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def _interval(p: float | None, n: int) -> list[float] | None:
    """[low, high] of the 95% Wilson interval, or None where the proportion was not measured."""
    return None if p is None or n < 1 else list(wilson_interval(p, n))


def calibration_summary(probs: Sequence[float], outcomes: Sequence[float], n_bins: int = 10) -> dict:
    """Held-out accuracy (p > 0.5 vs outcome, 0.5 counts half) with its n and 95% Wilson interval, ECE, Brier
    score, log loss and the bins."""
    if not probs:
        raise ValueError("calibration_summary needs at least one prediction")
    bins = reliability_bins(probs, outcomes, n_bins)
    n = len(probs)
    acc = sum(_agree(p, y) for p, y in zip(probs, outcomes)) / n
    brier = sum((p - y) ** 2 for p, y in zip(probs, outcomes)) / n
    eps = 1e-12
    nll = -sum(y * math.log(max(p, eps)) + (1 - y) * math.log(max(1 - p, eps)) for p, y in zip(probs, outcomes)) / n
    return {"n": n, "accuracy": acc, "accuracy_ci": _interval(acc, n), "ece": ece_from_bins(bins), "brier": brier,
            "log_loss": nll, "bins": [asdict(b) for b in bins]}


# ---------------------------------------------------------------------------------------------------------------
# Agreement, consistency, bias, distribution
# ---------------------------------------------------------------------------------------------------------------


def _agree(ai: float, human: float) -> float:
    """1 when both prefer the same response, 0 when not; an AI label of exactly 0.5 earns half."""
    if ai == 0.5:
        return 0.5
    return float((ai > 0.5) == (human > 0.5))


def agreement(ai_p: Sequence[float | None], human_p: Sequence[float | None]) -> tuple[float | None, int]:
    """(fraction of agreeing pairs, number of pairs counted). Pairs without a human label, human ties (0.5) and
    missing AI labels (None) are excluded; an AI label of exactly 0.5 counts half. (None, 0) when nothing counts."""
    if len(ai_p) != len(human_p):
        raise ValueError(f"AI and human labels differ in length: {len(ai_p)} vs {len(human_p)}")
    scores = [_agree(a, h) for a, h in zip(ai_p, human_p) if a is not None and h is not None and h != 0.5]
    return (sum(scores) / len(scores) if scores else None), len(scores)


def binary_entropy(p: float) -> float:
    """Entropy of a Bernoulli(p) label in nats."""
    return -sum(x * math.log(x) for x in (p, 1.0 - p) if x > 0)


def label_histogram(ps: Sequence[float], n_bins: int = 10) -> list[int]:
    """Counts of labels per equal-width bin of [0, 1] (the last bin closed)."""
    counts = [0] * n_bins
    for p in ps:
        counts[_bin_index(p, n_bins)] += 1
    return counts


def _check_labels(labels: Sequence[Mapping]) -> None:
    for i, lab in enumerate(labels):
        missing = [k for k in ("p_first", "p_first_in_a") if k not in lab]
        if missing:
            raise ValueError(f"label {i} lacks {missing}; label dicts carry {list(LABEL_KEYS)}")
        for k in ("p_first", "p_first_in_a", "p_first_in_b"):
            v = lab.get(k)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"label {i}: {k} = {v!r} is not a probability in [0, 1]")


@dataclass
class IntegrityReport:
    """Every figure of the feedback-integrity report; None where it cannot be measured (e.g. no human labels)."""

    n_pairs: int
    n_both_orders: int  # pairs scored in both presentation orders (the position-consistency denominator)
    n_human: int  # pairs with a non-tie human label (the agreement denominator)
    n_human_swapped: int  # of those, pairs also scored in the other order (agreement_swapped's denominator)
    agreement: float | None  # order-averaged label p_first vs human
    agreement_forward: float | None  # raw single-order label p_first_in_a vs human
    agreement_swapped: float | None  # the other order alone (p_first_in_b)
    position_consistency: float | None
    p_slot_a_mean: float  # mean P(A) over every presentation scored
    slot_a_rate: float  # fraction of presentations with P(A) > 0.5
    p_first_mean: float
    mean_entropy: float  # nats
    n_bins: int
    histogram: list[int]  # p_first per bin
    raw_histogram: list[int]  # P(A) per presentation per bin
    ece: float | None  # p_first vs human outcome
    ece_forward: float | None  # p_first_in_a vs human outcome
    reliability: list[ReliabilityBin] = field(default_factory=list)
    reliability_forward: list[ReliabilityBin] = field(default_factory=list)
    per_principle: dict[str, dict] = field(default_factory=dict)
    # 95% Wilson intervals [low, high] of the headline proportions over their n (None where not measured)
    agreement_ci: list[float] | None = None
    agreement_forward_ci: list[float] | None = None
    agreement_swapped_ci: list[float] | None = None
    position_consistency_ci: list[float] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def integrity_report(labels: Sequence[Mapping], human_p: Sequence[float | None] | None = None,
                     n_bins: int = 10) -> IntegrityReport:
    """The feedback-integrity figures of a list of label dicts; `human_p[i]` (or None) is the human probability that
    the first response of pair i is better."""
    if not labels:
        raise ValueError("integrity_report needs at least one label")
    _check_labels(labels)
    if human_p is None:
        human_p = [None] * len(labels)
    if len(human_p) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(human_p)} human labels (use None where there is none)")
    for i, h in enumerate(human_p):
        if h is not None and not 0.0 <= h <= 1.0:
            raise ValueError(f"human_p[{i}] = {h!r} is not a probability in [0, 1]")

    p = [float(lab["p_first"]) for lab in labels]
    fwd = [float(lab["p_first_in_a"]) for lab in labels]
    swp = [lab.get("p_first_in_b") for lab in labels]
    presentations = fwd + [1.0 - s for s in swp if s is not None]  # P(A) of every prompt scored
    consistent = [lab.get("consistent") for lab in labels if lab.get("consistent") is not None]

    agree, n_human = agreement(p, human_p)
    agree_fwd, _ = agreement(fwd, human_p)
    agree_swp, n_swp = agreement(swp, human_p)
    consistency = sum(consistent) / len(consistent) if consistent else None
    scored = [(a, f, h) for a, f, h in zip(p, fwd, human_p) if h is not None and h != 0.5]
    outcomes = [1.0 if h > 0.5 else 0.0 for _, _, h in scored]
    rel = reliability_bins([a for a, _, _ in scored], outcomes, n_bins)
    rel_fwd = reliability_bins([f for _, f, _ in scored], outcomes, n_bins)

    groups: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(str(lab.get("principle") or ""), []).append(i)
    per_principle = {}
    for name, idx in groups.items():
        cons = [labels[i]["consistent"] for i in idx if labels[i].get("consistent") is not None]
        a, n = agreement([p[i] for i in idx], [human_p[i] for i in idx])
        per_principle[name] = {"n": len(idx), "p_first_mean": sum(p[i] for i in idx) / len(idx),
                               "position_consistency": sum(cons) / len(cons) if cons else None,
                               "agreement": a, "n_human": n, "agreement_ci": _interval(a, n)}

    return IntegrityReport(
        n_pairs=len(labels), n_both_orders=sum(s is not None for s in swp), n_human=n_human, n_human_swapped=n_swp,
        agreement=agree, agreement_forward=agree_fwd, agreement_swapped=agree_swp, position_consistency=consistency,
        p_slot_a_mean=sum(presentations) / len(presentations),
        slot_a_rate=sum(x > 0.5 for x in presentations) / len(presentations),
        p_first_mean=sum(p) / len(p), mean_entropy=sum(map(binary_entropy, p)) / len(p), n_bins=n_bins,
        histogram=label_histogram(p, n_bins), raw_histogram=label_histogram(presentations, n_bins),
        ece=ece_from_bins(rel), ece_forward=ece_from_bins(rel_fwd), reliability=rel, reliability_forward=rel_fwd,
        per_principle=per_principle, agreement_ci=_interval(agree, n_human),
        agreement_forward_ci=_interval(agree_fwd, n_human), agreement_swapped_ci=_interval(agree_swp, n_swp),
        position_consistency_ci=_interval(consistency, len(consistent)),
    )


def integrity_metrics(report: IntegrityReport, prefix: str = "integrity/") -> dict[str, float]:
    """The headline figures as a flat dict for logging (keys prefixed `integrity/`); unmeasurable ones left out.
    Each headline proportion comes with its 95% Wilson interval as `<name>_ci_low` / `<name>_ci_high`."""
    keys = ("n_pairs", "n_both_orders", "n_human", "n_human_swapped", "agreement", "agreement_forward",
            "agreement_swapped", "position_consistency", "p_slot_a_mean", "slot_a_rate", "p_first_mean",
            "mean_entropy", "ece", "ece_forward")
    out = {prefix + k: float(getattr(report, k)) for k in keys if getattr(report, k) is not None}
    for k in ("agreement", "agreement_forward", "agreement_swapped", "position_consistency"):
        ci = getattr(report, k + "_ci")
        if ci is not None:
            out[prefix + k + "_ci_low"], out[prefix + k + "_ci_high"] = ci
    return out


# ---------------------------------------------------------------------------------------------------------------
# Audit sample: export for review, import reviewed verdicts as human labels
# ---------------------------------------------------------------------------------------------------------------


def _content_id(prompt: str, a: str, b: str, index: int) -> str:
    return f"audit:{hashlib.sha1(chr(0).join((prompt, a, b)).encode('utf-8')).hexdigest()[:12]}:{index}"


def audit_sample(labels: Sequence[Mapping], prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str],
                 k: int = 50, seed: int = 0, critiques_first: Sequence[str | None] | None = None,
                 critiques_second: Sequence[str | None] | None = None,
                 ids: Sequence[str] | None = None) -> list[dict]:
    """A seeded random slice of `k` labelled pairs (in their original order) as audit rows for people to review.

    Each row: id (given, or "audit:<content hash>:<index>"), index, prompt, response_a (= first), response_b
    (= second), principle (and principles when the label was ensembled over several), ai_p_a (order-averaged),
    ai_p_a_forward, ai_p_a_swapped, consistent, critique_a / critique_b when given, and the empty review fields
    human_p_a, human_choice ("a", "b" or "tie"), reviewer, review_note.
    """
    n = len(labels)
    for name, seq in (("prompts", prompts), ("firsts", firsts), ("seconds", seconds), ("ids", ids),
                      ("critiques_first", critiques_first), ("critiques_second", critiques_second)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} items for {n} labels")
    _check_labels(labels)
    picked = sorted(random.Random(seed).sample(range(n), min(k, n)))
    rows = []
    for i in picked:
        lab = labels[i]
        row = {"id": ids[i] if ids is not None else _content_id(prompts[i], firsts[i], seconds[i], i), "index": i,
               "prompt": prompts[i], "response_a": firsts[i], "response_b": seconds[i],
               "principle": lab.get("principle"), "ai_p_a": lab["p_first"], "ai_p_a_forward": lab["p_first_in_a"],
               "ai_p_a_swapped": lab.get("p_first_in_b"), "consistent": lab.get("consistent")}
        if len(lab.get("principles") or ()) > 1:  # a label ensembled over several principles
            row["principles"] = list(lab["principles"])
        if critiques_first is not None:
            row["critique_a"] = critiques_first[i]
        if critiques_second is not None:
            row["critique_b"] = critiques_second[i]
        row.update({"human_p_a": None, "human_choice": None, "reviewer": None, "review_note": None})
        rows.append(row)
    return rows


def export_audit(path: str | os.PathLike, rows: Sequence[Mapping]) -> Path:
    """Write audit rows as JSONL, atomically. Reviewers fill `human_p_a` (0..1) or `human_choice` ("a"/"b"/"tie")."""
    return write_jsonl(path, rows)


def import_audit(path: str | os.PathLike, require_all: bool = False) -> list[HumanPair]:
    """Read a reviewed audit file and return its verdicts as human labels (format of rlaif.data.human_labels).

    Rows with neither `human_p_a` nor `human_choice` filled are skipped (an error with `require_all`). When both are
    filled they must agree (choice "a" needs p > 0.5, "b" p < 0.5, "tie" p = 0.5). Errors name the file and line.
    """
    path = Path(path)
    out, unreviewed = [], []
    for where, lineno, row in iter_jsonl(path, "audit file"):
        if not isinstance(row, dict):
            raise HumanLabelError(f"{where}: expected a JSON object")
        missing = [k for k in ("id", "prompt", "response_a", "response_b") if k not in row]
        if missing:
            raise HumanLabelError(f"{where}: audit row lacks {', '.join(missing)}")
        p, choice = row.get("human_p_a"), row.get("human_choice")
        choice = choice.strip().lower() if isinstance(choice, str) else choice
        if choice in (None, "") and p is None:
            unreviewed.append(lineno)
            continue
        if choice not in (None, "") and choice not in CHOICES:
            raise HumanLabelError(f"{where}: human_choice must be one of {', '.join(sorted(CHOICES))}, got {choice!r}")
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0):
            raise HumanLabelError(f"{where}: human_p_a must be a number in [0, 1], got {p!r}")
        if p is not None and choice not in (None, ""):
            c = CHOICES[choice]
            if (c == 0.5) != (p == 0.5) or (c != 0.5 and (c > 0.5) != (p > 0.5)):
                raise HumanLabelError(f"{where}: human_choice {choice!r} contradicts human_p_a {p}")
        p_a = float(p) if p is not None else CHOICES[choice]
        reviewer, note = row.get("reviewer"), row.get("review_note")
        rec = {"id": str(row["id"]), "prompt": row["prompt"], "response_a": row["response_a"],
               "response_b": row["response_b"], "p_a": p_a, "source": f"audit:{path.name}",
               "principle": row.get("principle"), "annotator": None if reviewer is None else str(reviewer),
               "note": None if note is None else str(note)}
        out.append(parse_record(rec, where))
    if require_all and unreviewed:
        raise HumanLabelError(f"{path}: {len(unreviewed)} row(s) not reviewed (lines "
                              f"{', '.join(map(str, unreviewed[:10]))}): fill human_p_a or human_choice")
    return out


def comparison_inputs(pairs: Sequence[HumanPair]) -> tuple[list[str], list[str], list[str], list[float]]:
    """(prompts, firsts, seconds, human_p) to label human-labelled pairs with the AI labeler and compare."""
    return ([p.prompt for p in pairs], [p.response_a for p in pairs], [p.response_b for p in pairs],
            [p.p_a for p in pairs])


def write_report_json(path: str | os.PathLike, report: IntegrityReport) -> Path:
    """Write every figure of the report (bins and per-principle tables included) as JSON, atomically."""
    return atomic_write_text(path, json.dumps(report.to_dict(), indent=1, ensure_ascii=False) + "\n")
