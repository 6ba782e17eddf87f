"""The report figures as wandb panels (rlaif.audit.panels, Tracker.log_plot), read back from a real offline wandb
run."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from rlaif.audit.integrity import audit_sample, integrity_report
from rlaif.audit.panels import log_panels
from rlaif.config import Config
from rlaif.run.tracking import Tracker

from .conftest import REPO
from .wandb_history import charts, logged_tables

PY = sys.executable


def figures() -> dict:
    """Seeded labels, human labels, PM probabilities and eval responses: the same in the run and in the test."""
    rng = random.Random(5)
    labels, human = [], []
    for i in range(60):
        fwd, swp = rng.random(), rng.random()
        labels.append({"principle": f"principle {i % 3}", "p_first": (fwd + swp) / 2, "p_first_in_a": fwd,
                       "p_first_in_b": swp if i % 4 else None, "consistent": (fwd > 0.5) == (swp > 0.5) if i % 4
                       else None})
        human.append(None if i % 7 == 0 else rng.choice([0.0, 0.5, 1.0, 1.0]))
    texts = [f"text {i} " * (i % 5 + 1) for i in range(60)]
    probs = [rng.random() for _ in range(30)]
    pm_labels = [float(p > 0.4) if i % 5 else 1.0 - float(p > 0.4) for i, p in enumerate(probs)]
    return {"labels": labels, "human": human, "texts": texts, "probs": probs, "pm_labels": pm_labels}


LOG = """
import json, sys
from pathlib import Path
from rlaif.config import Config
from rlaif.audit.evaluate import EvalPrompt, FunctionJudge, build_results, evaluate_responses
from rlaif.audit.integrity import audit_sample, integrity_report
from rlaif.audit.panels import eval_panels, integrity_panels, log_panels, pm_panels
from rlaif.run.stages import pm_figures
from rlaif.run.tracking import Tracker
from tests.test_panels import figures

out = Path(sys.argv[1])
f = figures()
cfg = Config()
cfg.wandb.enabled, cfg.wandb.mode = True, "offline"
tracker = Tracker(cfg, out)
report = integrity_report(f["labels"], f["human"])
rows = audit_sample(f["labels"], f["texts"], f["texts"][::-1], f["texts"], k=6, seed=1,
                    critiques_first=["crit a"] * 60, critiques_second=["crit b"] * 60)
log_panels(tracker, lambda: integrity_panels(report, rows), step=0)
metrics, bins = pm_figures(f["probs"], f["pm_labels"], "pm/heldout_")
log_panels(tracker, lambda: pm_panels([("held-out AI-labelled pairs", bins, metrics, "pm/heldout_")]), step=0)
prompts = [EvalPrompt(f"r{i}", f"red {i}", "red-team") for i in range(4)] + \\
    [EvalPrompt(f"b{i}", f"benign {i}", "benign") for i in range(3)] + [EvalPrompt("e0", "edge 0", "benign-edge")]
responses = {"base": ["Sure, here it is"] * 4 + ["Paris is the capital of France"] * 3 + ["I cannot help."],
             "new": ["No.", "I'm sorry, I can't help with that.", "Sure thing", "No."] + ["Paris."] * 3
             + ["Kill the process with kill -9."]}
judge = FunctionJudge("tests.eval_judges:shorter_is_better", "tests.eval_judges:says_sure_or_here")
res = evaluate_responses(prompts, responses, "base", judge, 200, 0)
results = build_results(prompts, res, {"base": "base", "new": "new"}, "base", {"kind": "function", "name": "rule"})
log_panels(tracker, lambda: eval_panels(results), step=3)
tracker.finish()
(out / "results.json").write_text(json.dumps(results))
(out / "pm.json").write_text(json.dumps(metrics))
"""


def test_report_figures_reach_wandb_as_tables_and_charts(tmp_path):
    """The integrity, PM-calibration and eval figures as wandb panels in a real offline run, read back from its
    .wandb file and table files. Bugs caught: a panel that is not logged, or logged under another key; a chart
    without its table or of the wrong kind or columns; rows that are not the report's figures (the reliability
    bins' counts and frequencies, the Wilson intervals, the audit sheet, each checkpoint's eval figures); the
    single-order calibration series or the empty bins dropped."""
    proc = subprocess.run([PY, "-c", LOG, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "WANDB_SILENT": "true"}, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    tables, panels = logged_tables(run_file), charts(run_file)

    def rows(key: str) -> list[dict]:
        t = tables[key]
        return [dict(zip(t["columns"], r)) for r in t["data"]]

    kinds = {k: v["panelDefId"] for k, v in panels.items()}
    assert kinds == {"integrity/agreement": "wandb/bar/v0", "integrity/reliability": "wandb/line/v0",
                     "integrity/label_distribution": "wandb/line/v0", "pm/reliability": "wandb/line/v0",
                     "pm/accuracy": "wandb/bar/v0", "eval/harmlessness_expected_win_rate": "wandb/bar/v0",
                     "eval/helpfulness_expected_win_rate": "wandb/bar/v0", "eval/harmful_rate": "wandb/bar/v0",
                     "eval/refusal_rate_benign_edge": "wandb/bar/v0", "eval/tradeoff": "wandb/scatter/v0"}
    assert panels["integrity/reliability"]["fieldSettings"] == {"x": "bin_mid", "y": "frequency", "stroke": "series"}
    assert set(tables) == {f"{k}_table" for k in panels} | {"integrity/principles", "integrity/audit",
                                                           "eval/figures"}

    f = figures()
    report = integrity_report(f["labels"], f["human"])
    rel = rows("integrity/reliability_table")
    for series, bins in (("order-averaged", report.reliability),
                         ("single order (first shown as A)", report.reliability_forward)):
        got = [r for r in rel if r["series"] == series]
        assert [(r["bin_low"], r["bin_high"], r["count"]) for r in got] == [(b.lower, b.upper, b.count) for b in bins]
        for r, b in zip(got, bins):
            assert r["frequency"] == pytest.approx(b.frequency) and r["mean_prob"] == pytest.approx(b.mean_prob)
    assert sum(r["count"] for r in rel) == 2 * report.n_human and any(r["count"] == 0 for r in rel) is \
        any(b.count == 0 for b in report.reliability + report.reliability_forward)

    agree = {r["figure"]: r for r in rows("integrity/agreement_table")}
    assert agree["agreement (order-averaged)"]["value"] == pytest.approx(report.agreement)
    assert [agree["agreement (order-averaged)"][k] for k in ("ci_low", "ci_high")] == pytest.approx(
        report.agreement_ci)
    assert agree["position consistency"]["n"] == report.n_both_orders
    assert agree["position consistency"]["value"] == pytest.approx(report.position_consistency)
    assert agree["agreement (first shown as B)"]["n"] == report.n_human_swapped

    dist = [r for r in rows("integrity/label_distribution_table") if r["series"] == "p_first (order-averaged)"]
    assert [r["count"] for r in dist] == report.histogram
    principles = {r["principle"]: r for r in rows("integrity/principles")}
    assert {k: v["pairs"] for k, v in principles.items()} == {k: v["n"] for k, v in report.per_principle.items()}

    audit = audit_sample(f["labels"], f["texts"], f["texts"][::-1], f["texts"], k=6, seed=1)
    sheet = rows("integrity/audit")
    assert [(r["id"], r["prompt"], r["response_a"], r["ai_p_a"], r["critique_b"]) for r in sheet] == \
        [(a["id"], a["prompt"], a["response_a"], pytest.approx(a["ai_p_a"]), "crit b") for a in audit]

    pm = json.loads((tmp_path / "pm.json").read_text())
    (acc,) = rows("pm/accuracy_table")
    assert acc["pairs"] == "held-out AI-labelled pairs" and acc["n"] == 30
    assert [acc[k] for k in ("accuracy", "ci_low", "ci_high", "ece")] == pytest.approx(
        [pm[f"pm/heldout_{k}"] for k in ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "ece")])
    assert sum(r["count"] for r in rows("pm/reliability_table")) == 30

    results = json.loads((tmp_path / "results.json").read_text())
    figs = {(r["checkpoint"], r["figure"]): r for r in rows("eval/figures")}
    for c in results["checkpoints"]:
        for name, fig in c["figures"].items():
            got = figs[(c["label"], name)]
            assert (got["value"], got["low"], got["high"], got["n"]) == (fig["value"], fig["low"], fig["high"],
                                                                       fig["n"])
    harm = {r["checkpoint"]: r["harmful_rate"] for r in rows("eval/harmful_rate_table")}
    assert harm == {c["label"]: c["figures"]["harmful_rate"]["value"] for c in results["checkpoints"]}
    assert harm["base"] == 1.0 and harm["new"] == 0.25
    trade = {r["checkpoint"]: (r["helpfulness"], r["harmlessness"]) for r in rows("eval/tradeoff_table")}
    assert trade["new"] == (results["checkpoints"][1]["figures"]["helpfulness_expected_win_rate"]["value"],
                            results["checkpoints"][1]["figures"]["harmlessness_expected_win_rate"]["value"])


def test_panels_cost_nothing_with_wandb_off(tmp_path):
    """With wandb off no panel is built or written (metrics.jsonl keeps the metrics; the reports keep the figures).
    Bugs caught: the rows built (a cost every stage pays) or written to metrics.jsonl when nobody shows them; an
    unknown chart kind passing silently."""
    cfg = Config()
    cfg.wandb.enabled = False
    tracker = Tracker(cfg, tmp_path)
    log_panels(tracker, lambda: pytest.fail("panels built with wandb off"), step=0)
    f = figures()
    report = integrity_report(f["labels"], f["human"])
    rows = audit_sample(f["labels"], f["texts"], f["texts"], f["texts"], k=3)
    tracker.log_plot("integrity/audit", rows, "table")
    with pytest.raises(ValueError, match="kind 'pie' is not one of"):
        tracker.log_plot("x", [{"a": 1}], "pie")
    tracker.finish()
    assert report.n_pairs == 60 and (tmp_path / "metrics.jsonl").read_text() == ""


def test_eval_and_judge_figures_reach_the_console_as_sentences():
    """`rlaif eval` says each checkpoint's figures and the judge's validation in a sentence with their intervals.
    Bugs caught: the line printing a Python None or a bare float where a figure was not measured, or a repr."""
    from rlaif.audit.eval_report import eval_sentence, validation_sentence
    from rlaif.audit.evaluate import EvalPrompt, FunctionJudge, evaluate_responses

    from .test_ops_e2e import REPR

    prompts = [EvalPrompt(f"r{i}", f"red {i}", "red-team") for i in range(4)]  # no benign prompt: n/a figures
    responses = {"base": ["Sure, here it is"] * 4, "new": ["No.", "Sure thing", "No.", "I cannot help."]}
    judge = FunctionJudge("tests.eval_judges:shorter_is_better", "tests.eval_judges:says_sure_or_here")
    figs = evaluate_responses(prompts, responses, "base", judge, 200, 0)["figures"]["new"]
    line = eval_sentence("new", figs)
    assert not REPR.search(line), line
    assert "judged harmful on 25.0% [4.6%, 69.9%] n=4 of red-team prompts" in line
    assert "helpfulness win rate n/a" in line
    v = {"harm_balanced_accuracy": {"value": 0.75, "low": 0.5, "high": 0.9, "n": 20}, "miss_rate": None,
         "false_alarm_rate": {"value": None, "low": None, "high": None, "n": 0}}
    line = validation_sentence(v)
    assert not REPR.search(line), line
    assert line.startswith("judge validation on human labels: harm verdict balanced accuracy 75.0% [50.0%, 90.0%] "
                           "n=20, miss rate n/a, false-alarm rate n/a")
