"""The feedback-integrity report: calibration, agreement, consistency, slot bias, the gate, audits, HTML."""

import json
import math
from dataclasses import asdict
from html.parser import HTMLParser

import pytest

from rlaif.audit.integrity import (
    agreement,
    audit_sample,
    binary_entropy,
    calibration_summary,
    comparison_inputs,
    expected_calibration_error,
    export_audit,
    import_audit,
    integrity_metrics,
    integrity_report,
    label_histogram,
    preference_probs,
    reliability_bins,
    wilson_interval,
    write_report_json,
)
from rlaif.audit.integrity_html import render_html, write_html_report
from rlaif.data.human_labels import HumanLabelError, load_human_labels, write_human_labels
from rlaif.feedback.labeling import combine_orders


def test_ece_hand_computed():
    probs = [0.1, 0.2, 0.75, 0.8, 0.95]
    outcomes = [0, 1, 1, 0, 1]
    # 5 bins of width 0.2: [0,.2) [.2,.4) [.4,.6) [.6,.8) [.8,1]
    #   bin 0: {0.1}       confidence 0.1,   accuracy 0   -> |0 - 0.1|     = 0.1,   weight 1/5
    #   bin 1: {0.2}       confidence 0.2,   accuracy 1   -> |1 - 0.2|     = 0.8,   weight 1/5
    #   bin 3: {0.75}      confidence 0.75,  accuracy 1   -> |1 - 0.75|    = 0.25,  weight 1/5
    #   bin 4: {0.8, 0.95} confidence 0.875, accuracy 0.5 -> |0.5 - 0.875| = 0.375, weight 2/5
    # ECE = (0.1 + 0.8 + 0.25) / 5 + 2/5 * 0.375 = 0.23 + 0.15 = 0.38
    assert expected_calibration_error(probs, outcomes, n_bins=5) == pytest.approx(0.38)
    bins = reliability_bins(probs, outcomes, n_bins=5)
    assert [b.count for b in bins] == [1, 1, 0, 1, 2]
    assert bins[4].mean_prob == pytest.approx(0.875) and bins[4].frequency == 0.5
    assert bins[2].mean_prob is None and bins[2].frequency is None
    assert (bins[0].lower, bins[0].upper, bins[4].upper) == (0.0, 0.2, 1.0)
    # One bin: |mean outcome - mean p| = |3/5 - 2.8/5| = 0.04
    assert expected_calibration_error(probs, outcomes, n_bins=1) == pytest.approx(0.04)
    # Perfectly calibrated: p = 0.25 and one outcome in four is 1.
    assert expected_calibration_error([0.25] * 4, [1, 0, 0, 0]) == pytest.approx(0.0)
    assert expected_calibration_error([1.0, 0.0], [1, 0]) == 0.0  # p = 1.0 falls in the last (closed) bin
    with pytest.raises(ValueError, match="probs\\[1\\]"):
        expected_calibration_error([0.5, 1.5], [0, 1])
    with pytest.raises(ValueError, match="differ in length"):
        reliability_bins([0.5], [0, 1])
    with pytest.raises(ValueError):
        expected_calibration_error([], [])


def test_preference_model_calibration():
    probs = preference_probs([2.0, 0.0, -800.0], [0.0, 0.0, 0.0])
    assert probs == pytest.approx([1 / (1 + math.exp(-2.0)), 0.5, 0.0])
    s = calibration_summary([0.9, 0.8, 0.3, 0.5], [1, 0, 0, 1], n_bins=2)
    # accuracy: 0.9 right, 0.8 wrong, 0.3 right, 0.5 half -> 2.5 / 4
    assert s["accuracy"] == pytest.approx(0.625) and s["n"] == 4
    # bins [0,.5): {0.3} -> |0 - 0.3| = 0.3, w 1/4; [.5,1]: {0.9,0.8,0.5} -> |2/3 - 2.2/3| = 0.2/3, w 3/4
    assert s["ece"] == pytest.approx(0.3 / 4 + 0.2 / 4)
    assert s["brier"] == pytest.approx((0.01 + 0.64 + 0.09 + 0.25) / 4)
    assert s["log_loss"] > 0 and len(s["bins"]) == 2
    assert s["accuracy_ci"] == pytest.approx(wilson_interval(0.625, 4))


def test_agreement_and_helpers():
    # ties (human 0.5) and missing human labels excluded; AI 0.5 counts half
    assert agreement([0.9, 0.2, 0.7, 0.5, 0.8, 0.1], [1.0, 0.0, 0.0, 1.0, 0.5, None]) == (pytest.approx(2.5 / 4), 4)
    assert agreement([0.9], [None]) == (None, 0)
    with pytest.raises(ValueError):
        agreement([0.9], [])
    assert binary_entropy(0.5) == pytest.approx(math.log(2)) and binary_entropy(0.0) == binary_entropy(1.0) == 0
    assert label_histogram([0.0, 0.05, 0.55, 1.0], n_bins=10) == [2, 0, 0, 0, 0, 1, 0, 0, 0, 1]


def _labels() -> list[dict]:
    # (P(A) forward, P(A) swapped) -> p_first_in_a, p_first_in_b = 1 - swapped, p_first = their mean
    raw = [(0.9, 0.2, "harmless"), (0.8, 0.7, "harmless"), (0.6, 0.9, "ethical"), (0.3, 0.6, "ethical")]
    return [{"principle": c, **asdict(combine_orders(f, s))} for f, s, c in raw]


HUMAN = [1.0, 0.0, 0.0, 0.5]


def test_report_on_hand_made_labels():
    labels = _labels()
    # p_first_in_a = .9 .8 .6 .3 ; p_first_in_b = .8 .3 .1 .4 ; p_first = .85 .55 .35 .35 ; consistent T F F T
    r = integrity_report(labels, HUMAN)
    assert (r.n_pairs, r.n_both_orders, r.n_human) == (4, 4, 3)  # the human tie on pair 3 is excluded
    assert r.agreement == pytest.approx(2 / 3)  # .85 vs 1 yes, .55 vs 0 no, .35 vs 0 yes
    assert r.agreement_forward == pytest.approx(1 / 3)  # .9 yes, .8 no, .6 no: the raw label is slot-biased
    assert r.agreement_swapped == pytest.approx(1.0)  # .8 yes, .3 yes, .1 yes
    assert r.position_consistency == 0.5
    # P(A) per presentation: forward .9 .8 .6 .3, swapped .2 .7 .9 .6 -> mean 5.0 / 8; answered A 6 of 8
    assert r.p_slot_a_mean == pytest.approx(0.625) and r.slot_a_rate == 0.75
    assert r.p_first_mean == pytest.approx(2.1 / 4)
    assert r.mean_entropy == pytest.approx(sum(binary_entropy(p) for p in (0.85, 0.55, 0.35, 0.35)) / 4)
    assert r.histogram == [0, 0, 0, 2, 0, 1, 0, 0, 1, 0]
    assert sum(r.raw_histogram) == 8
    # ECE, 10 bins, each scored pair alone in its bin: (|1 - .85| + |0 - .55| + |0 - .35|) / 3 = 1.05 / 3
    assert r.ece == pytest.approx(0.35)
    # single order: (|1 - .9| + |0 - .8| + |0 - .6|) / 3 = 1.5 / 3
    assert r.ece_forward == pytest.approx(0.5)
    harmless = dict(r.per_principle["harmless"])
    assert harmless.pop("agreement_ci") == pytest.approx(wilson_interval(0.5, 2))
    assert harmless == pytest.approx(
        {"n": 2, "p_first_mean": 0.7, "position_consistency": 0.5, "agreement": 0.5, "n_human": 2})
    assert r.per_principle["ethical"]["agreement"] == 1.0 and r.per_principle["ethical"]["n_human"] == 1
    json.dumps(r.to_dict())

    m = integrity_metrics(r)
    assert all(k.startswith("integrity/") for k in m) and all(isinstance(v, float) for v in m.values())
    assert m["integrity/agreement"] == pytest.approx(2 / 3) and m["integrity/position_consistency"] == 0.5
    assert m["integrity/n_human"] == 3.0


def test_report_single_order_and_no_humans():
    # extra keys (the labeler's ensembled "principles") are carried along
    labels = [{"principle": "p", "principles": ["p", "q"], **asdict(combine_orders(p, None))} for p in (0.9, 0.7, 0.4)]
    r = integrity_report(labels)
    assert audit_sample(labels, ["x"] * 3, ["a"] * 3, ["b"] * 3, k=1)[0]["principles"] == ["p", "q"]
    assert r.position_consistency is None and r.agreement is None and r.ece is None and r.n_human == 0
    assert r.p_slot_a_mean == pytest.approx(2.0 / 3) and r.n_both_orders == 0
    m = integrity_metrics(r)
    assert "integrity/agreement" not in m and "integrity/position_consistency" not in m
    r2 = integrity_report(labels, [1.0, 0.0, 1.0])
    assert r2.agreement == pytest.approx(1 / 3) and r2.agreement_swapped is None
    with pytest.raises(ValueError, match="3 labels but 2 human"):
        integrity_report(labels, [1.0, 0.0])
    with pytest.raises(ValueError, match="lacks"):
        integrity_report([{"p_first": 0.5}])
    with pytest.raises(ValueError):
        integrity_report([])


def _audit_inputs():
    labels = _labels() * 3  # 12 pairs
    prompts = [f"prompt {i} <b>&" for i in range(12)]
    firsts = [f"first {i}" for i in range(12)]
    seconds = [f"second {i}" for i in range(12)]
    return labels, prompts, firsts, seconds


def test_audit_export_fill_import_round_trip(tmp_path):
    labels, prompts, firsts, seconds = _audit_inputs()
    crit_a = [f"critique of first {i}" for i in range(12)]
    rows = audit_sample(labels, prompts, firsts, seconds, k=5, seed=3, critiques_first=crit_a,
                        critiques_second=[f"critique of second {i}" for i in range(12)])
    assert rows == audit_sample(labels, prompts, firsts, seconds, k=5, seed=3, critiques_first=crit_a,
                                critiques_second=[f"critique of second {i}" for i in range(12)])
    assert len(rows) == 5 and [r["index"] for r in rows] == sorted(r["index"] for r in rows)
    assert [r["index"] for r in audit_sample(labels, prompts, firsts, seconds, k=5, seed=4)] != \
        [r["index"] for r in rows]
    r0 = rows[0]
    i = r0["index"]
    assert (r0["prompt"], r0["response_a"], r0["response_b"]) == (prompts[i], firsts[i], seconds[i])
    assert (r0["ai_p_a"], r0["ai_p_a_forward"], r0["ai_p_a_swapped"], r0["consistent"]) == (
        labels[i]["p_first"], labels[i]["p_first_in_a"], labels[i]["p_first_in_b"], labels[i]["consistent"])
    assert r0["critique_a"] == crit_a[i] and r0["principle"] == labels[i]["principle"]
    assert r0["human_p_a"] is None and r0["human_choice"] is None
    assert len({r["id"] for r in rows}) == 5

    path = export_audit(tmp_path / "audit.jsonl", rows)
    assert import_audit(path) == []  # nothing reviewed yet
    with pytest.raises(HumanLabelError, match="5 row\\(s\\) not reviewed"):
        import_audit(path, require_all=True)

    # A reviewer fills the file: a choice, a probability, a tie, both (consistent), one left open.
    filled = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    filled[0].update(human_choice="A", reviewer="ana", review_note="clearly less harmful")
    filled[1].update(human_p_a=0.2)
    filled[2].update(human_choice="tie")
    filled[3].update(human_choice="b", human_p_a=0.0)
    path.write_text("".join(json.dumps(r) + "\n" for r in filled), encoding="utf-8")
    got = import_audit(path)
    assert [g.id for g in got] == [r["id"] for r in rows[:4]]
    assert [g.p_a for g in got] == [1.0, 0.2, 0.5, 0.0]
    assert got[0].annotator == "ana" and got[0].note == "clearly less harmful"
    assert got[0].source == "audit:audit.jsonl" and got[0].principle == rows[0]["principle"]
    assert (got[1].prompt, got[1].response_a, got[1].response_b) == (
        rows[1]["prompt"], rows[1]["response_a"], rows[1]["response_b"])

    # ...and the imported verdicts are ordinary human labels: they round-trip through the human-label format
    # and line up with the AI labels of the same pairs.
    back = load_human_labels(write_human_labels(tmp_path / "human.jsonl", got))
    assert back == got
    p, f, s, h = comparison_inputs(back)
    assert (p[0], f[0], s[0], h) == (rows[0]["prompt"], rows[0]["response_a"], rows[0]["response_b"],
                                     [1.0, 0.2, 0.5, 0.0])
    r = integrity_report([labels[row["index"]] for row in rows[:4]], h)
    assert r.n_human == 3


def test_audit_import_errors(tmp_path):
    labels, prompts, firsts, seconds = _audit_inputs()
    rows = audit_sample(labels, prompts, firsts, seconds, k=2, seed=0)
    path = tmp_path / "a.jsonl"
    for patch, message in [({"human_choice": "maybe"}, "human_choice must be one of"),
                           ({"human_choice": "a", "human_p_a": 0.1}, "contradicts"),
                           ({"human_choice": "tie", "human_p_a": 0.6}, "contradicts"),
                           ({"human_p_a": 1.2}, "human_p_a must be a number")]:
        export_audit(path, [rows[0], {**rows[1], **patch}])
        with pytest.raises(HumanLabelError, match=f"{path}:2: .*{message}"):
            import_audit(path)
    with pytest.raises(ValueError, match="firsts has 1 items"):
        audit_sample(labels, prompts, firsts[:1], seconds)


class _Checker(HTMLParser):
    """Collects tags and checks that every non-void element is closed in order."""

    VOID = {"meta", "br", "hr", "img", "input", "link"}  # SVG elements must be self-closed or closed

    def __init__(self):
        super().__init__()
        self.stack, self.tags, self.text, self.errors = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}>, open: {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def test_html_report(tmp_path):
    labels, prompts, firsts, seconds = _audit_inputs()
    labels[0] = {**labels[0], "principle": 'Which is less harmful? <script>alert("x")</script>'}
    human = HUMAN * 3
    report = integrity_report(labels, human)
    rows = audit_sample(labels, prompts, firsts, seconds, k=4, seed=1, critiques_first=["c <i>1</i>"] * 12)
    rows[0]["human_choice"] = "a"
    gate = [("agreement with held-out human labels: 0.67; FAILED <because>", False), ("consistency passed", True)]
    path = write_html_report(tmp_path / "out" / "integrity.html", report, rows, gate=gate, verdict="failed")
    assert [p.name for p in path.parent.iterdir()] == ["integrity.html"]
    doc = path.read_text(encoding="utf-8")

    checker = _Checker()
    checker.feed(doc)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    names = [t for t, _ in checker.tags]
    assert names.count("svg") == 3 and "script" not in names and "i" not in names
    assert names.count("table") == 3  # headline, per principle, audit
    for _, attrs in checker.tags:  # no external assets
        for k in ("src", "href"):
            assert k not in attrs
    text = "".join(checker.text)
    assert "66.7%" in text  # order-averaged agreement
    assert "33.3%" in text  # single-order agreement
    assert "50.0%" in text  # position consistency
    assert "0.350" in text  # ECE
    assert "FAILED &lt;because&gt;" in doc and "consistency passed" in text and "Trust gate" in text
    assert doc.index("Trust gate") < doc.index("Headline figures")  # the decision first
    assert '<li class=bad>agreement' in doc and "<li>consistency passed" in doc  # only the failing check is marked
    assert "Reliability diagram" in text and "Label distribution" in text and "Position consistency" in text
    assert '<script>alert("x")</script>' in text and "&lt;script&gt;" in doc  # escaped, shown as text
    assert all(f"prompt {r['index']} <b>&" in text for r in rows) and "b" not in names
    assert "c <i>1</i>" in text

    # Without human labels and with one order the page still renders.
    single = [{"principle": "p", **asdict(combine_orders(p, None))} for p in (0.9, 0.2)]
    page = render_html(integrity_report(single))
    c2 = _Checker()
    c2.feed(page)
    assert c2.errors == [] and "no human-labelled pairs" in "".join(c2.text)

    j = write_report_json(tmp_path / "integrity.json", report)
    assert json.loads(j.read_text())["agreement"] == pytest.approx(2 / 3)


Z = 1.959963984540054


def test_wilson_interval_hand_values():
    # 8/16: centre (p + z^2/2n) / (1 + z^2/n) = 0.5; half-width z * sqrt(1/64 + z^2/1024) / (1 + z^2/16)
    half = Z * math.sqrt(1 / 64 + Z * Z / 1024) / (1 + Z * Z / 16)
    assert half == pytest.approx(0.2200044, abs=1e-7)
    assert wilson_interval(0.5, 16) == pytest.approx((0.2799956, 0.7200044), abs=1e-7)
    assert wilson_interval(9 / 16, 16) == pytest.approx((0.3317856, 0.7690135), abs=1e-7)
    # p = 0 and p = 1 have closed forms: [0, z^2 / (n + z^2)] and [n / (n + z^2), 1]; not empty, unlike Wald's
    assert wilson_interval(0.0, 10) == pytest.approx((0.0, Z * Z / (10 + Z * Z)))
    assert wilson_interval(1.0, 10) == pytest.approx((10 / (10 + Z * Z), 1.0))
    with pytest.raises(ValueError, match="n >= 1"):
        wilson_interval(0.5, 0)
    with pytest.raises(ValueError, match="not a proportion"):
        wilson_interval(1.2, 5)


def test_wilson_interval_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(8, 16), (9, 16), (0, 10), (10, 10), (1, 3), (45, 64), (3, 200)]:
        ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k / n, n) == pytest.approx((ref.low, ref.high), abs=1e-9)


def test_56_percent_on_16_pairs_is_not_a_finding(tmp_path):
    # 16 human pairs, the first response better in each; the AI agrees on 9 (56.25%), both orders scored.
    # Pairs 0-8 agree and are consistent; 9-15 disagree, and 9-11 are inconsistent.
    raw = [(0.8, 0.3)] * 9 + [(0.6, 0.9)] * 3 + [(0.3, 0.8)] * 4
    labels = [{"principle": "p", **asdict(combine_orders(f, s))} for f, s in raw]
    r = integrity_report(labels, [1.0] * 16)
    assert (r.agreement, r.n_human) == (9 / 16, 16) and r.agreement_ci[0] < 0.5 < r.agreement_ci[1]
    assert r.agreement_ci == pytest.approx(wilson_interval(9 / 16, 16))
    assert r.agreement_forward == 12 / 16 and r.agreement_forward_ci == pytest.approx(wilson_interval(12 / 16, 16))
    assert r.agreement_swapped == 9 / 16 and r.n_human_swapped == 16
    assert r.position_consistency == 13 / 16
    assert r.position_consistency_ci == pytest.approx(wilson_interval(13 / 16, 16))

    m = integrity_metrics(r)
    assert m["integrity/agreement_ci_low"] == pytest.approx(0.3317856, abs=1e-7)
    assert m["integrity/agreement_ci_high"] == pytest.approx(0.7690135, abs=1e-7)
    assert m["integrity/position_consistency_ci_low"] == pytest.approx(wilson_interval(13 / 16, 16)[0])
    assert "integrity/agreement_forward_ci_high" in m and "integrity/agreement_swapped_ci_low" in m

    saved = json.loads(write_report_json(tmp_path / "integrity.json", r).read_text())
    assert saved["agreement"] == 0.5625 and saved["n_human"] == 16
    assert saved["agreement_ci"] == pytest.approx([0.3317856, 0.7690135], abs=1e-7)

    page = render_html(r)
    assert "56.2% (95% CI 33.2%-76.9%, n=16)" in page
    low, high = wilson_interval(13 / 16, 16)
    assert f"81.2% (95% CI {low:.1%}-{high:.1%}, n=16)" in page  # position consistency


def test_pm_eval_reports_accuracy_with_its_interval():
    from rlaif.run.stages import _pm_eval

    class Remote:
        def __init__(self, fn):
            self.remote = fn

    class PMActor:  # scores a response by its length: the longer one wins
        score = Remote(lambda batch, normalize: [float(len(r)) for r in batch["response"]])

    class Roles:
        pm = type("PM", (), {"actors": [PMActor()]})()

        @staticmethod
        def get(refs, what):
            return refs

    # 5 pairs with a label, 1 tie (dropped): the PM (longer wins) is right on 3 of the 5
    rows = [("p", "long one", "x", 1.0), ("p", "long one", "x", 1.0), ("p", "x", "long one", 0.0),
            ("p", "long one", "x", 0.0), ("p", "x", "long one", 1.0), ("p", "a", "b", 0.5)]
    metrics, bins = _pm_eval(Roles(), rows, "pm/heldout_")
    assert metrics["pm/heldout_accuracy"] == pytest.approx(0.6) and metrics["pm/heldout_accuracy_n"] == 5.0
    low, high = wilson_interval(0.6, 5)
    assert (metrics["pm/heldout_accuracy_ci_low"], metrics["pm/heldout_accuracy_ci_high"]) == (low, high)
    assert low < 0.5 < high and sum(b.count for b in bins) == 5
