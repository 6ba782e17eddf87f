"""Self-consistency filtering: majority by key, agreement rates, ties, unextractable answers, the threshold."""

import pytest

from rlaif.selfconsistency import extract_answer, majority_filter


def test_majority_by_extracted_answer():
    candidates = [
        ["so the answer is 12.", "I get 13", "The answer is 12", "12 apples, so the answer is 12"],
        ["no idea", "The answer is (B).", "the answer is b"],
    ]
    kept, rates = majority_filter(candidates, extract_answer)
    assert kept == [["so the answer is 12.", "The answer is 12", "12 apples, so the answer is 12"],
                    ["The answer is (B).", "the answer is b"]]
    assert rates == [pytest.approx(3 / 4), pytest.approx(2 / 3)]  # "no idea" counts in the denominator


def test_ties_go_to_the_first_key_and_none_is_never_kept():
    kept, rates = majority_filter([["x", "y", "y", "x"], [None, None]], key=lambda s: s)
    assert kept == [["x", "x"], []] and rates == [0.5, 0.0]


def test_min_agreement_drops_low_confidence_prompts():
    candidates = [["a", "a", "b"], ["a", "b", "c"]]
    kept, rates = majority_filter(candidates, key=str, min_agreement=0.5)
    assert kept == [["a", "a"], []] and rates == [pytest.approx(2 / 3), pytest.approx(1 / 3)]
    with pytest.raises(ValueError, match="prompt 0: no candidates"):
        majority_filter([[]], key=str)


def test_majority_by_judge_verdict():
    """A judge verdict as the key: revisions judged harmless (P(harmful) <= 0.5) outvote the harmful one."""
    p_harmful = {"safe 1": 0.1, "safe 2": 0.3, "unsafe": 0.9}
    kept, rates = majority_filter([["safe 1", "unsafe", "safe 2"]], key=lambda r: p_harmful[r] > 0.5)
    assert kept == [["safe 1", "safe 2"]] and rates == [pytest.approx(2 / 3)]


@pytest.mark.parametrize("text,expected", [
    ("First 3, then 4, so 1,234", "1234"),
    ("The answer is: -7.", "-7"),
    ("the answer is (C)", "c"),
    ("nothing here", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected
