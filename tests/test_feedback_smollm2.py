"""AI feedback from a real instruct model: SmolLM2-135M-Instruct labels a slice of the held-out human set (pyrit's
human-scored pairs), and scoring both presentation orders removes its slot bias.

Slot bias of a set of labels: |mean over presentations of P(slot A chosen) - 0.5|. Each pair is presented twice,
as (first, second) and as (second, first), so the content effect cancels and an unbiased labeler scores 0.
* Raw: the labeler's P(A) for each of the two presentations (p_first_in_a, and 1 - p_first_in_b).
* Order-averaged: the label the pipeline trains on. The labeler is asked for the pair as (first, second) and, in a
  separate call with fresh principles, as (second, first); in each presentation the averaged label chooses slot A
  with probability p_first of that call.
A second, single-presentation view uses the human set's own balance (the better response sits in slot A for exactly
half the pairs): raw P(A) with the first response in A vs the order-averaged p_first, both averaged over the pairs.

The labeler runs in-process with the transformers backend (the same label logic as the vLLM backend, which
tests/test_labeler.py pins to it). chat_template=true: SmolLM2 is an instruct model, and inside its chat template it
is less slot-biased (mean P(A) ~0.59 vs ~0.83, and ~90% vs 100% of presentations answered A) and more often
position-consistent (~15% vs 0%) than on the plain-text prompt; in neither form does it agree with the human labels
above chance (see bench/measure_feedback.py), so only the label mechanics are asserted here, not its accuracy.
"""

import pytest

from actors.labeler import LabelerWorker
from rlaif.audit.integrity import comparison_inputs, integrity_report
from rlaif.config import load_config
from rlaif.data.human_labels import build_pyrit_human_set

from .conftest import REPO

pytestmark = pytest.mark.e2e
N_PAIRS = 24
MARGIN = 0.05  # the order-averaged slot bias must be at least this much below the raw one


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs)


def slot_bias(p_slot_a):
    """|mean P(slot A chosen) - 0.5| over a list of presentations."""
    return abs(mean(p_slot_a) - 0.5)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    pairs = build_pyrit_human_set(max_pairs=N_PAIRS, seed=0).pairs
    cfg = load_config(REPO / "configs/debug.yaml", [
        f"output_dir={tmp_path_factory.mktemp('smollm2')}", "labeler.model.path=builtin:smollm2-135m",
        "labeler.backend=transformers", "labeler.chat_template=true", "labeler.both_orders=true",
        "labeler.max_response_tokens=48", "labeler.cache=false",
        "labeler.model.dtype=bfloat16",  # avx512_bf16: 2.6x faster than fp32 here, and the same conclusions
    ])
    prompts, firsts, seconds, human_p = comparison_inputs(pairs)
    labeler = LabelerWorker(cfg)
    labels = labeler.compare(prompts, firsts, seconds)
    swapped = labeler.compare(prompts, seconds, firsts)  # the same pairs presented the other way round
    return human_p, labels, swapped, integrity_report(labels, human_p)


def test_order_averaging_removes_smollm2_slot_bias(labelled):
    human_p, labels, swapped, report = labelled
    assert len(labels) == N_PAIRS and all(lab["p_first_in_b"] is not None for lab in labels)
    # the held-out set is balanced: the better response is in slot A for half the pairs
    assert sum(h > 0.5 for h in human_p) == N_PAIRS // 2 and 0.5 not in human_p

    # both presentations of every pair: raw P(A) vs the order-averaged label's P(A)
    raw = [lab["p_first_in_a"] for lab in labels] + [1.0 - lab["p_first_in_b"] for lab in labels]
    averaged = [lab["p_first"] for lab in labels] + [lab["p_first"] for lab in swapped]
    raw_bias, averaged_bias = slot_bias(raw), slot_bias(averaged)
    # the report measures the same raw quantity
    assert report.p_slot_a_mean == pytest.approx(mean(raw))
    assert report.slot_a_rate == pytest.approx(mean(p > 0.5 for p in raw))
    assert raw_bias > MARGIN, f"SmolLM2's raw slot bias {raw_bias:.3f} is too small to show a reduction"
    assert averaged_bias < raw_bias - MARGIN, f"slot bias raw {raw_bias:.3f}, order-averaged {averaged_bias:.3f}"
    # the same with hard choices: share of presentations answered A
    raw_rate, averaged_rate = mean(p > 0.5 for p in raw), mean(p > 0.5 for p in averaged)
    assert abs(averaged_rate - 0.5) < abs(raw_rate - 0.5) - MARGIN, (raw_rate, averaged_rate)

    # one presentation per pair, in the balanced human set's order: raw P(A) vs order-averaged p_first
    single_raw = slot_bias(lab["p_first_in_a"] for lab in labels)
    single_averaged = slot_bias(lab["p_first"] for lab in labels)
    assert single_averaged < single_raw - MARGIN, f"balanced set: raw {single_raw:.3f}, averaged {single_averaged:.3f}"
    print(f"SmolLM2 (chat template) on {N_PAIRS} pyrit pairs: slot bias over both orders raw {raw_bias:.3f} -> "
          f"order-averaged {averaged_bias:.3f}; slot-A rate raw {raw_rate:.3f} -> {averaged_rate:.3f}; "
          f"balanced single order raw {single_raw:.3f} -> {single_averaged:.3f}")


def test_agreement_and_position_consistency_are_measured(labelled):
    human_p, labels, _, report = labelled
    assert report.n_pairs == report.n_both_orders == report.n_human == N_PAIRS  # pyrit pairs have no ties
    for name in ("agreement", "agreement_forward", "agreement_swapped", "position_consistency"):
        value = getattr(report, name)
        assert value is not None and 0.0 <= value <= 1.0, (name, value)

    # recomputed here from the labels: agreement (an AI label of exactly 0.5 counts half) and consistency
    def agree(ps):
        return mean(0.5 if p == 0.5 else float((p > 0.5) == (h > 0.5)) for p, h in zip(ps, human_p))

    assert report.agreement == pytest.approx(agree(lab["p_first"] for lab in labels))
    assert report.agreement_forward == pytest.approx(agree(lab["p_first_in_a"] for lab in labels))
    assert report.agreement_swapped == pytest.approx(agree(lab["p_first_in_b"] for lab in labels))
    consistent = [(lab["p_first_in_a"] > 0.5) == (lab["p_first_in_b"] > 0.5) for lab in labels]
    assert [lab["consistent"] for lab in labels] == consistent
    assert report.position_consistency == pytest.approx(mean(consistent))
    # a pair whose two orders disagree is a slot-A (or slot-B) answer both times: consistency and slot-A rate
    # bound each other, 1 - consistency >= |2 * slot_a_rate - 1|
    assert 1.0 - report.position_consistency >= abs(2 * report.slot_a_rate - 1) - 1e-9
    print(f"agreement averaged {report.agreement:.3f}, first-in-A {report.agreement_forward:.3f}, first-in-B "
          f"{report.agreement_swapped:.3f}; position consistency {report.position_consistency:.3f}")
