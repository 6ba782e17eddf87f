"""The figures of the feedback-integrity, preference-model calibration and evaluation reports as wandb panels.

No wandb here: each panel is plain rows (one dict a row) and the chart that shows them;
rlaif.run.tracking.Tracker.log_plot
turns a panel into a wandb.Table and, for a chart, a wandb.plot chart over it. The HTML reports
(feedback/integrity.html, feedback/pm_calibration.html, eval/report.html) stay the full record; the panels put the same
figures beside the run's metrics. The rows are only built when wandb is on (log_panels).

* integrity/agreement (bar): agreement with the held-out human labels (order-averaged and each single order) and
  position consistency, each with its 95% Wilson interval and n;
* integrity/reliability (line): the calibration (reliability) diagram of the AI labels against the human labels, one
  row per bin and order (bin bounds, count, mean predicted P, observed human frequency);
* integrity/label_distribution (line): the share of labels per bin, order-averaged and raw per presentation;
* integrity/principles and integrity/audit (tables): the per-principle figures and the audit sheet;
* pm/reliability (line) and pm/accuracy (bar): the preference model's calibration and accuracy (with its interval) on
  each held-out set;
* eval/figures (table): every figure of every checkpoint with its interval and n; eval/<figure> (bar): the headline
  figures per checkpoint; eval/tradeoff (scatter): helpfulness against harmlessness, the Constitutional AI figure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Panel:
    name: str  # the wandb key
    rows: list[dict] = field(default_factory=list)
    kind: str = "table"  # table | line | bar | scatter (a chart logs its table too, as `<name>_table`)
    x: str = ""  # the column on the x axis (bar: the label column)
    y: str = ""  # the column on the y axis (bar: the value column)
    title: str = ""
    stroke: str | None = None  # line: the column that names each line


def log_panels(tracker, make: Callable[[], Iterable[Panel]], step: int) -> None:
    """Log the panels `make` builds, when the tracker's wandb is on; nothing is built when it is off."""
    if not tracker.panels:
        return
    for p in make():
        tracker.log_plot(p.name, p.rows, p.kind, p.x, p.y, p.title, step=step, stroke=p.stroke)


def reliability_rows(bins: Sequence, series: str) -> list[dict]:
    """One row per bin of a reliability diagram (rlaif.audit.integrity.ReliabilityBin or its dict): its bounds, middle,
    count, mean predicted probability and observed frequency (None where the bin is empty)."""
    rows = []
    for b in bins:
        b = b if isinstance(b, Mapping) else vars(b)
        rows.append({"series": series, "bin_low": b["lower"], "bin_high": b["upper"],
                     "bin_mid": (b["lower"] + b["upper"]) / 2, "count": b["count"], "mean_prob": b["mean_prob"],
                     "frequency": b["frequency"]})
    return rows


def _proportion(name: str, value: float | None, ci: Sequence[float] | None, n: int) -> dict:
    return {"figure": name, "value": value, "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None,
            "n": n}


def integrity_panels(report, audit_rows: Sequence[Mapping] = ()) -> list[Panel]:
    """The panels of the feedback-integrity report (rlaif.audit.integrity.IntegrityReport) and its audit sheet."""
    r = report
    shares = [_proportion("agreement (order-averaged)", r.agreement, r.agreement_ci, r.n_human),
              _proportion("agreement (first shown as A)", r.agreement_forward, r.agreement_forward_ci, r.n_human),
              _proportion("agreement (first shown as B)", r.agreement_swapped, r.agreement_swapped_ci,
                          r.n_human_swapped),
              _proportion("position consistency", r.position_consistency, r.position_consistency_ci,
                          r.n_both_orders)]
    k = len(r.histogram)
    dist = [{"series": name, "bin_low": i / k, "bin_high": (i + 1) / k, "bin_mid": (i + 0.5) / k, "count": c,
             "share": c / max(sum(hist), 1)}
            for name, hist in (("p_first (order-averaged)", r.histogram), ("raw P(A) per presentation",
                                                                          r.raw_histogram)) if sum(hist)
            for i, c in enumerate(hist)]
    principles = [{"principle": name or "(none)", "pairs": d["n"], "p_first_mean": d["p_first_mean"],
                   "position_consistency": d["position_consistency"], "human_pairs": d["n_human"],
                   "agreement": d["agreement"], "agreement_ci_low": (d["agreement_ci"] or [None])[0],
                   "agreement_ci_high": (d["agreement_ci"] or [None, None])[1]}
                  for name, d in sorted(r.per_principle.items(), key=lambda kv: -kv[1]["n"])]
    return [
        Panel("integrity/agreement", [s for s in shares if s["value"] is not None], "bar", "figure", "value",
              "Agreement with human labels and position consistency"),
        Panel("integrity/reliability", reliability_rows(r.reliability, "order-averaged")
              + reliability_rows(r.reliability_forward, "single order (first shown as A)"), "line", "bin_mid",
              "frequency", "Reliability: human prefers first, per bin of the AI's P(first better)", "series"),
        Panel("integrity/label_distribution", dist, "line", "bin_mid", "share", "Label distribution", "series"),
        Panel("integrity/principles", principles),
        Panel("integrity/audit", audit_table(audit_rows)),
    ]


AUDIT_COLUMNS = ("index", "id", "prompt", "response_a", "response_b", "principle", "principles", "ai_p_a",
                 "ai_p_a_forward", "ai_p_a_swapped", "consistent", "critique_a", "critique_b")


def audit_table(rows: Sequence[Mapping]) -> list[dict]:
    """The audit sheet's rows (rlaif.audit.integrity.audit_sample) as table rows: the pair, the AI's labels and the
    critiques (the empty review fields are for people, in feedback/audit.jsonl)."""
    cols = [c for c in AUDIT_COLUMNS if any(c in row for row in rows)]
    out = []
    for row in rows:
        d = {c: row.get(c) for c in cols}
        if "principles" in d:
            d["principles"] = "; ".join(d["principles"] or ())
        out.append(d)
    return out


def pm_panels(curves: Sequence[tuple[str, Sequence, Mapping[str, float], str]]) -> list[Panel]:
    """The preference model's panels from (held-out set, reliability bins, metrics, metric prefix) per set scored."""
    acc = [{"pairs": name, "accuracy": m[prefix + "accuracy"], "ci_low": m[prefix + "accuracy_ci_low"],
            "ci_high": m[prefix + "accuracy_ci_high"], "n": int(m[prefix + "accuracy_n"]), "ece": m[prefix + "ece"]}
           for name, _, m, prefix in curves if prefix + "accuracy" in m]
    return [Panel("pm/reliability", [row for name, bins, _, _ in curves for row in reliability_rows(bins, name)],
                  "line", "bin_mid", "frequency", "Preference model reliability: P(first better) per bin", "series"),
            Panel("pm/accuracy", acc, "bar", "pairs", "accuracy", "Preference model accuracy on held-out pairs")]


# the figures drawn as one bar chart each, per checkpoint
EVAL_BARS = ("harmlessness_expected_win_rate", "helpfulness_expected_win_rate", "harmful_rate",
             "refusal_rate_benign_edge")


def eval_panels(results: Mapping) -> list[Panel]:
    """The evaluation report's panels from its results (as written to eval/results.json)."""
    from rlaif.audit.evaluate import FIGURES

    rows = [{"checkpoint": c["label"], "figure": name, "description": FIGURES[name][0], **{
        k: c["figures"][name][k] for k in ("value", "low", "high", "n")}}
            for c in results["checkpoints"] for name in FIGURES if name in c["figures"]]
    panels = [Panel("eval/figures", rows)]
    for name in EVAL_BARS:
        bars = [{"checkpoint": r["checkpoint"], name: r["value"], "low": r["low"], "high": r["high"], "n": r["n"]}
                for r in rows if r["figure"] == name and r["value"] is not None]
        panels.append(Panel(f"eval/{name}", bars, "bar", "checkpoint", name, FIGURES[name][0]))
    trade = [{"checkpoint": c["label"], "helpfulness": c["figures"]["helpfulness_expected_win_rate"]["value"],
              "harmlessness": c["figures"]["harmlessness_expected_win_rate"]["value"]}
             for c in results["checkpoints"]]
    trade = [t for t in trade if t["helpfulness"] is not None and t["harmlessness"] is not None]
    panels.append(Panel("eval/tradeoff", trade, "scatter", "helpfulness", "harmlessness",
                        "Harmlessness vs helpfulness (expected win rates vs the baseline)"))
    return panels
