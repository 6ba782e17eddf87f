"""The trust gate's decision (rlaif/audit/trust.py), against hand-computed Wilson intervals; the model card and record.

End to end (tests/test_gate.py, tests/test_e2e.py): `rlaif label` / `rlaif train` stop with exit 3 on the debug
config's random labeler; --accept-untrusted-feedback trains on and marks the checkpoint, wandb and the console.
"""

import json
from dataclasses import asdict

import pytest

from rlaif.audit.integrity import FeedbackIntegrityError, integrity_report
from rlaif.audit.trust import (
    FAILED,
    TRUSTED,
    UNCHECKED,
    UNTRUSTED,
    Check,
    TrustRecord,
    decide,
    enforce,
    feedback_trains,
    labeler_checks,
    make_check,
    model_card,
    pm_check,
    read_mark,
    trust_metrics,
)
from rlaif.config import load_config
from rlaif.feedback.labeling import combine_orders

# Wilson 95% intervals, computed by hand from (p + z^2/2n -/+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z = 1.96:
# 12/16: [0.5050, 0.8982]; 4/16: [0.1018, 0.4950]; 16/16: [0.8063, 1.0]
W_12_16, W_4_16, W_16_16 = (0.5050, 0.8982), (0.1018, 0.4950), (0.8063, 1.0)


def cfg(**trust):
    return load_config(None, [f"trust.{k}={v}" for k, v in trust.items()])


def test_a_check_is_graded_by_the_lower_end_of_its_interval():
    c = make_check("agreement", "trust.min_agreement", 0.55, 0.75, 16)
    assert (c.low, c.high) == pytest.approx(W_12_16, abs=5e-4)
    assert c.verdict == "undecided"  # 0.75 is above the bar, but 16 pairs cannot tell it from 0.505
    assert "UNDECIDED" in c.explain() and "too few human labels" in c.explain() and "trust.min_agreement" in c.explain()
    assert make_check("agreement", "k", 0.50, 0.75, 16).verdict == "passed"  # 0.505 >= 0.50
    assert make_check("agreement", "k", 0.55, 1.0, 16).verdict == "passed"  # 0.806 >= 0.55
    failed = make_check("agreement", "trust.min_agreement", 0.55, 0.25, 16)
    assert failed.high == pytest.approx(W_4_16[1], abs=5e-4) and failed.verdict == "failed"  # even 0.495 < 0.55
    assert "FAILED" in failed.explain() and "0.25 [0.10, 0.49] n=16" in failed.explain()
    assert make_check("agreement", "k", 0.55, None, 0).verdict == "unmeasured"
    assert make_check("agreement", "k", 0.0, 0.1, 16).verdict == "off"


def _labels(p_a_forward, p_a_swapped):
    """Label dicts as the labeler returns them: P(A) with the first response shown as (A), then as (B)."""
    return [{"principle": "p", **asdict(combine_orders(f, s))} for f, s in zip(p_a_forward, p_a_swapped)]


def test_a_slot_biased_labeler_fails_on_consistency_and_a_right_one_passes():
    human = [1.0] * 8 + [0.0] * 8
    tc = cfg().trust
    # always answers (A): P(A) = 0.95 in either order; its order-averaged labels are 0.5, consistency 0
    biased = labeler_checks(integrity_report(_labels([0.95] * 16, [0.95] * 16), human), tc)
    # agreement: every label is exactly 0.5, which counts half: 0.5 [0.28, 0.72] on 16 pairs straddles 0.55
    assert [c.verdict for c in biased] == ["undecided", "failed"] and biased[0].value == 0.5
    assert biased[1].value == 0.0 and "answers by slot" in biased[1].explain()
    # right on every pair, in both orders: agreement 16/16, consistency 16/16 -> both lower ends 0.806
    right = [0.9] * 8 + [0.1] * 8
    good = labeler_checks(integrity_report(_labels(right, [1 - p for p in right]), human), tc)
    assert [c.verdict for c in good] == ["passed", "passed"]
    assert good[0].low == pytest.approx(W_16_16[0], abs=5e-4)


def test_the_decision_stops_marks_or_passes():
    tc = cfg().trust
    bad = [make_check("agreement", "trust.min_agreement", 0.55, 0.25, 16),
           make_check("position_consistency", "trust.min_position_consistency", 0.5, 1.0, 16)]
    good = [make_check("agreement", "trust.min_agreement", 0.55, 1.0, 16)]
    trains = feedback_trains(cfg())
    assert trains.startswith("the preference model")

    record = decide(bad, tc, trains)
    assert record.status == FAILED
    with pytest.raises(FeedbackIntegrityError) as e:
        enforce(record, "runs/x/feedback/integrity.html")
    msg = str(e.value)
    assert "did not pass 1 of 2 trust check(s)" in msg and "agreement with held-out human labels: 0.25" in msg
    assert "--accept-untrusted-feedback" in msg and "stronger labeler" in msg
    assert "runs/x/feedback/integrity.html" in msg
    assert "position consistency: 1.00 [0.81, 1.00] n=16; passed" in msg  # every check is listed, passed ones too

    accepted = decide(bad, cfg(accept_untrusted_feedback="true").trust, trains)
    assert accepted.status == UNTRUSTED
    enforce(accepted, "x")  # no stop: the user consented
    assert "trained anyway because trust.accept_untrusted_feedback" in accepted.summary()
    assert trust_metrics(accepted) == {"trust/untrusted": 1.0, "trust/checks_on": 2.0, "trust/checks_passed": 1.0}

    assert decide(good, tc, trains).status == TRUSTED
    off = [make_check("agreement", "trust.min_agreement", 0.0, 0.25, 16)]
    assert decide(off, tc, trains).status == UNCHECKED
    # feedback that trains nothing (reward functions alone) stops nothing, but says what it measured
    none = load_config(None, ["rl.use_preference_model=false", "rl.reward_functions=[rlaif.rewards:brevity]"])
    assert feedback_trains(none) == ""
    nothing = decide(bad, tc, "")
    assert nothing.status == UNCHECKED and "trained nothing" in nothing.summary()


def test_pm_check_reads_the_human_pair_accuracy():
    tc = cfg().trust
    c = pm_check({"pm/human_accuracy": 0.25, "pm/human_accuracy_n": 16.0}, tc)
    assert c.verdict == "failed" and c.key == "trust.min_pm_human_accuracy" and "ranks the held-out" in c.explain()
    assert pm_check({}, tc).verdict == "unmeasured"


def test_the_model_card_and_record_carry_the_mark(tmp_path):
    c = cfg(accept_untrusted_feedback="true")
    bad = [make_check("agreement", "trust.min_agreement", 0.55, 0.25, 16)]
    record = decide(bad, c.trust, feedback_trains(c))
    files = model_card(record, "RL-CAI policy", c, step=5)
    card = files["README.md"]
    assert "**Trust: UNTRUSTED.**" in card and "Do not deploy" in card and "after 5 RL step(s)" in card
    assert "| agreement with held-out human labels | 0.250 | [0.102, 0.495] | 16 | 0.55 (`trust.min_agreement`) | " \
           "failed |" in card
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    back = read_mark(tmp_path)
    assert back["status"] == UNTRUSTED and back["summary"] == record.summary()
    assert [Check(**c) for c in back["checks"]] == record.checks
    assert json.loads(files["trust.json"])["step"] == 5
    trusted = model_card(decide([make_check("agreement", "k", 0.55, 1.0, 16)], c.trust, "x"), "PM", c)["README.md"]
    assert "**Trust: TRUSTED.**" in trusted and "Do not deploy" not in trusted
    assert read_mark(tmp_path / "nowhere") is None
    sl = model_card(TrustRecord(UNCHECKED, note="the SL-CAI policy: no gate here"), "SL-CAI policy", c)["README.md"]
    assert "**Trust: UNCHECKED.** The SL-CAI policy: no gate here." in sl and "- RL:" not in sl and "SFT" in sl
    assert TrustRecord.from_dict(record.to_dict()) == record
