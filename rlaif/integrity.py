"""Feedback integrity: how far can the AI labels be trusted? (no Ray, no plotting library)

Computed from the label dicts the labeler returns (keys ``principle``, ``p_first``, ``p_first_in_a``,
``p_first_in_b``, ``consistent``; see :func:`rlaif.feedback.combine_orders`) plus, where known, the human probability
that the first response is better (the ``p_a`` of :mod:`rlaif.human_labels` when the labeler compared
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

:mod:`rlaif.trust` turns these figures into the trust gate's decision;
:func:`audit_sample` / :func:`export_audit` / :func:`import_audit` give people a seeded slice of labelled pairs to
review and turn their verdicts back into human labels; :func:`write_html_report` writes one self-contained HTML file
(inline SVG, no scripts, no external assets).
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlaif.human_labels import (
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
    """The AI feedback did not pass the trust gate (rlaif.trust): the run stops with exit code 3."""


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
    """Read a reviewed audit file and return its verdicts as human labels (format of rlaif.human_labels).

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


# ---------------------------------------------------------------------------------------------------------------
# Static HTML report (inline SVG, no scripts, no external assets)
# ---------------------------------------------------------------------------------------------------------------

_E = html.escape
BLUE, ORANGE, GREY, RED = "#4878a8", "#e08a2c", "#888888", "#c0504d"


def _fmt(x: float | None, pct: bool = False, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    return f"{x:.1%}" if pct else f"{x:.{digits}f}"


def _fmt_ci(x: float | None, ci: Sequence[float] | None, n: int) -> str:
    """A proportion with its 95% interval and n, e.g. "56.2% (95% CI 33.2%-76.9%, n=16)"."""
    if x is None or ci is None:
        return "n/a"
    return f"{x:.1%} (95% CI {ci[0]:.1%}-{ci[1]:.1%}, n={n})"


def _text(x: float, y: float, s: str, anchor: str = "middle", size: int = 11, extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}"{extra}>{_E(s)}</text>'


def _axes(w: int, h: int, ml: int, mt: int, pw: int, ph: int, xlabel: str, ylabel: str, yticks: Sequence[float],
          ymax: float = 1.0, ypct: bool = False) -> list[str]:
    out = [f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" stroke="black"/>',
           f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" stroke="black"/>']
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = ml + t * pw
        out += [f'<line x1="{x:.1f}" y1="{mt + ph}" x2="{x:.1f}" y2="{mt + ph + 4}" stroke="black"/>',
                _text(x, mt + ph + 16, f"{t:g}")]
    for t in yticks:
        y = mt + ph - t / ymax * ph
        out += [f'<line x1="{ml - 4}" y1="{y:.1f}" x2="{ml}" y2="{y:.1f}" stroke="black"/>',
                _text(ml - 6, y + 4, f"{t:.0%}" if ypct else f"{t:g}", anchor="end")]
    out += [_text(ml + pw / 2, h - 4, xlabel),
            _text(12, mt + ph / 2, ylabel, extra=f' transform="rotate(-90 12 {mt + ph / 2:.1f})"')]
    return out


def _svg(w: int, h: int, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
            f'aria-label="{_E(title)}"><title>{_E(title)}</title>' + "".join(body) + "</svg>")


def svg_reliability(bins: Sequence[ReliabilityBin], bins_forward: Sequence[ReliabilityBin] = (),
                    title: str = "Reliability diagram") -> str:
    """Bars: observed frequency per bin of the order-averaged label; dots: the single-order label; dashed: ideal."""
    w, h, ml, mt, pw, ph = 380, 320, 50, 24, 310, 250
    body = [_text(ml + pw / 2, 14, title, size=12, extra=' font-weight="bold"')]
    body += _axes(w, h, ml, mt, pw, ph, "predicted P(first better)", "human prefers first",
                  (0.0, 0.25, 0.5, 0.75, 1.0))
    body.append(f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt}" stroke="{GREY}" stroke-dasharray="4 3"/>')
    if not any(b.count for b in bins):
        body.append(_text(ml + pw / 2, mt + ph / 2, "no human-labelled pairs", size=12))
    for b in bins:
        if not b.count:
            continue
        x0, x1 = ml + b.lower * pw + 1, ml + b.upper * pw - 1
        y = mt + ph - b.frequency * ph
        tip = (f"[{b.lower:.2f}, {b.upper:.2f}): n={b.count}, mean p={b.mean_prob:.3f}, "
               f"human frequency={b.frequency:.3f}")
        body.append(f'<rect x="{x0:.1f}" y="{y:.1f}" width="{x1 - x0:.1f}" height="{mt + ph - y:.1f}" '
                    f'fill="{BLUE}" fill-opacity="0.6"><title>{_E(tip)}</title></rect>')
    for b in bins_forward:
        if b.count:
            cx, cy = ml + b.mean_prob * pw, mt + ph - b.frequency * ph
            body.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="none" stroke="{ORANGE}" stroke-width="2">'
                        f'<title>{_E(f"single order: n={b.count}, mean p={b.mean_prob:.3f}")}</title></circle>')
    body += [f'<rect x="{ml + 8}" y="{mt + 6}" width="10" height="10" fill="{BLUE}" fill-opacity="0.6"/>',
             _text(ml + 22, mt + 15, "order-averaged", anchor="start", size=10),
             f'<circle cx="{ml + 13}" cy="{mt + 27}" r="4" fill="none" stroke="{ORANGE}" stroke-width="2"/>',
             _text(ml + 22, mt + 31, "single order (A)", anchor="start", size=10)]
    return _svg(w, h, title, body)


def svg_histogram(hist: Sequence[int], raw_hist: Sequence[int] = (), title: str = "Label distribution") -> str:
    """Share of labels per bin: order-averaged p_first (blue) next to raw per-presentation P(A) (orange)."""
    w, h, ml, mt, pw, ph = 380, 320, 50, 24, 310, 250
    n_bins = len(hist)
    series = [(hist, BLUE, "p_first (order-averaged)")] + ([(raw_hist, ORANGE, "raw P(A) per presentation")]
                                                          if raw_hist and sum(raw_hist) else [])
    fracs = [[c / max(sum(s), 1) for c in s] for s, _, _ in series]
    ymax = max(0.05, max(max(f) for f in fracs))
    ymax = math.ceil(ymax * 10) / 10
    ticks = [t / 10 for t in range(0, int(round(ymax * 10)) + 1)]
    if len(ticks) > 6:
        ticks = ticks[::2]
    body = [_text(ml + pw / 2, 14, title, size=12, extra=' font-weight="bold"')]
    body += _axes(w, h, ml, mt, pw, ph, "label value", "share of labels", ticks, ymax=ymax, ypct=True)
    bw = pw / n_bins / len(series)
    for j, ((counts, color, name), fr) in enumerate(zip(series, fracs)):
        for k, (c, f) in enumerate(zip(counts, fr)):
            x = ml + k * pw / n_bins + j * bw + 1
            y = mt + ph - f / ymax * ph
            tip = f"{name} [{k / n_bins:.2f}, {(k + 1) / n_bins:.2f}): {c} ({f:.1%})"
            body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bw - 2, 1):.1f}" height="{mt + ph - y:.1f}" '
                        f'fill="{color}"><title>{_E(tip)}</title></rect>')
        body += [f'<rect x="{ml + 8}" y="{mt + 6 + 16 * j}" width="10" height="10" fill="{color}"/>',
                 _text(ml + 22, mt + 15 + 16 * j, name, anchor="start", size=10)]
    return _svg(w, h, title, body)


def svg_consistency(position_consistency: float | None, slot_a_rate: float,
                    title: str = "Position consistency and slot bias") -> str:
    """Two stacked bars: pairs whose two orders agree vs disagree; presentations answered A vs B."""
    w, h, ml, pw = 660, 150, 190, 330
    body = [_text(w / 2, 16, title, size=12, extra=' font-weight="bold"')]
    rows = [("pairs: both orders agree", position_consistency, BLUE, RED, "consistent", "inconsistent"),
            ("presentations answered", slot_a_rate, ORANGE, GREY, "(A)", "(B)")]
    for i, (name, frac, c1, c2, l1, l2) in enumerate(rows):
        y = 34 + i * 50
        body.append(_text(ml - 8, y + 18, name, anchor="end"))
        if frac is None:
            body.append(_text(ml + pw / 2, y + 18, "n/a (one order scored)"))
            continue
        x1 = ml + frac * pw
        body += [f'<rect x="{ml}" y="{y}" width="{frac * pw:.1f}" height="26" fill="{c1}">'
                 f'<title>{_E(f"{l1}: {frac:.1%}")}</title></rect>',
                 f'<rect x="{x1:.1f}" y="{y}" width="{(1 - frac) * pw:.1f}" height="26" fill="{c2}">'
                 f'<title>{_E(f"{l2}: {1 - frac:.1%}")}</title></rect>',
                 _text(ml + pw + 8, y + 18, f"{l1} {frac:.1%}", anchor="start")]
    body.append(f'<line x1="{ml + pw / 2}" y1="28" x2="{ml + pw / 2}" y2="{h - 10}" stroke="black" '
                f'stroke-dasharray="3 3"/>')
    return _svg(w, h, title, body)


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f2f2f2}
.cell{max-height:12em;overflow:auto;white-space:pre-wrap;min-width:12em}
.fig{display:inline-block;margin:8px 16px 8px 0}
.bad{color:#b00}
"""


def render_html(report: IntegrityReport, audit_rows: Sequence[Mapping] = (), title: str = "AI feedback integrity",
                gate: Sequence[tuple[str, bool]] = (), verdict: str = "") -> str:
    """One self-contained HTML page: the trust gate's checks first (`gate`: one line per check and whether it
    passed; `verdict`: the decision), then headline figures, the plots as inline SVG, per-principle and audit
    tables."""
    r = report
    headline = [
        ("Pairs labelled", str(r.n_pairs)),
        ("Pairs scored in both orders", str(r.n_both_orders)),
        ("Human-labelled pairs (ties excluded)", str(r.n_human)),
        ("Agreement with human labels (order-averaged)", _fmt_ci(r.agreement, r.agreement_ci, r.n_human)),
        ("Agreement, single order: first shown as (A)",
         _fmt_ci(r.agreement_forward, r.agreement_forward_ci, r.n_human)),
        ("Agreement, single order: first shown as (B)",
         _fmt_ci(r.agreement_swapped, r.agreement_swapped_ci, r.n_human_swapped)),
        ("Position consistency", _fmt_ci(r.position_consistency, r.position_consistency_ci, r.n_both_orders)),
        ("Mean P(A) over presentations (0.5 = no slot bias)", _fmt(r.p_slot_a_mean)),
        ("Presentations answered (A)", _fmt(r.slot_a_rate, pct=True)),
        ("Mean p_first", _fmt(r.p_first_mean)),
        ("Mean label entropy (nats, max 0.693)", _fmt(r.mean_entropy)),
        (f"ECE vs human labels ({r.n_bins} bins, order-averaged)", _fmt(r.ece)),
        ("ECE vs human labels (single order)", _fmt(r.ece_forward)),
    ]
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{_E(title)}</title>",
        f"<style>{_CSS}</style>", "</head>", "<body>", f"<h1>{_E(title)}</h1>",
    ]
    if gate:
        parts += ["<h2>Trust gate</h2>", f'<p id="verdict"{"" if verdict == "trusted" else " class=bad"}>'
                  f"{_E(verdict.upper())}</p>", '<ul id="gate">']
        parts += [f"<li{'' if ok else ' class=bad'}>{_E(line)}</li>" for line, ok in gate]
        parts.append("</ul>")
    parts += ["<h2>Headline figures</h2>", '<table id="headline">']
    for name, value in headline:
        parts.append(f"<tr><th>{_E(name)}</th><td>{_E(value)}</td></tr>")
    parts += ["</table>", "<h2>Plots</h2>",
              f'<div class="fig">{svg_reliability(r.reliability, r.reliability_forward)}</div>',
              f'<div class="fig">{svg_histogram(r.histogram, r.raw_histogram)}</div>',
              f'<div class="fig">{svg_consistency(r.position_consistency, r.slot_a_rate)}</div>']
    parts += ["<h2>Per principle</h2>", '<table id="principles">',
              "<tr><th>principle</th><th>pairs</th><th>mean p_first</th><th>position consistency</th>"
              "<th>human pairs</th><th>agreement (95% CI)</th></tr>"]
    for name, d in sorted(r.per_principle.items(), key=lambda kv: -kv[1]["n"]):
        parts.append(f'<tr><td><div class="cell">{_E(name or "(none)")}</div></td><td>{d["n"]}</td>'
                     f'<td>{_E(_fmt(d["p_first_mean"]))}</td><td>{_E(_fmt(d["position_consistency"], pct=True))}</td>'
                     f'<td>{d["n_human"]}</td>'
                     f'<td>{_E(_fmt_ci(d["agreement"], d["agreement_ci"], d["n_human"]))}</td></tr>')
    parts.append("</table>")
    if audit_rows:
        crit = any("critique_a" in row or "critique_b" in row for row in audit_rows)
        human = any(row.get("human_p_a") is not None or row.get("human_choice") for row in audit_rows)
        cols = ["#", "id", "prompt", "response A (first)", "response B (second)", "principle", "AI P(A) averaged",
                "first as (A)", "first as (B)", "consistent"]
        cols += ["critique of A", "critique of B"] if crit else []
        cols += ["human"] if human else []
        parts += [f"<h2>Audit sample ({len(audit_rows)} pairs)</h2>", '<table id="audit">',
                  "<tr>" + "".join(f"<th>{_E(c)}</th>" for c in cols) + "</tr>"]
        for row in audit_rows:
            cells = [str(row.get("index", "")), str(row.get("id", "")), row.get("prompt"), row.get("response_a"),
                     row.get("response_b"), row.get("principle"), _fmt(row.get("ai_p_a")),
                     _fmt(row.get("ai_p_a_forward")), _fmt(row.get("ai_p_a_swapped")),
                     "n/a" if row.get("consistent") is None else ("yes" if row["consistent"] else "NO")]
            if crit:
                cells += [row.get("critique_a"), row.get("critique_b")]
            if human:
                h = row.get("human_choice") or ("" if row.get("human_p_a") is None else f"p_a={row['human_p_a']}")
                cells.append(h)
            parts.append("<tr>" + "".join(f'<td><div class="cell">{_E("" if c is None else str(c))}</div></td>'
                                          for c in cells) + "</tr>")
        parts.append("</table>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_html_report(path: str | os.PathLike, report: IntegrityReport, audit_rows: Sequence[Mapping] = (),
                      title: str = "AI feedback integrity", gate: Sequence[tuple[str, bool]] = (),
                      verdict: str = "") -> Path:
    """Write the self-contained HTML report atomically (temporary file, then rename)."""
    return atomic_write_text(path, render_html(report, audit_rows, title, gate, verdict))


def write_report_json(path: str | os.PathLike, report: IntegrityReport) -> Path:
    """Write every figure of the report (bins and per-principle tables included) as JSON, atomically."""
    return atomic_write_text(path, json.dumps(report.to_dict(), indent=1, ensure_ascii=False) + "\n")
