import math

import pytest

from rlaif.feedback import clamp_cot, combine_orders, comparison_prompt, soft_label


def test_soft_label_hand_values():
    # softmax([-1, -2])[0] = 1 / (1 + e^-1)
    assert soft_label(-1.0, -2.0) == pytest.approx(0.7310585786300049, abs=1e-12)
    assert soft_label(-3.0, -3.0) == 0.5
    # large log-probs do not overflow
    assert soft_label(-1000.0, -1001.0) == pytest.approx(0.7310585786300049)
    assert soft_label(-5.0, -1.0) == pytest.approx(1 / (1 + math.exp(4)))


def test_order_averaging_hand_values():
    # forward: P(A)=0.8 with the first response in A; swapped: P(A)=0.3, so the first (now B) gets 0.7
    lab = combine_orders(0.8, 0.3)
    assert lab.p_first == pytest.approx(0.75) and lab.p_first_in_b == pytest.approx(0.7) and lab.consistent
    # a labeler that always picks slot A: the orders disagree and the average is uninformative
    lab = combine_orders(0.9, 0.9)
    assert lab.p_first == pytest.approx(0.5) and lab.consistent is False
    lab = combine_orders(0.8, None)
    assert lab.p_first == 0.8 and lab.consistent is None


def test_cot_clamp():
    assert clamp_cot(0.99) == 0.6 and clamp_cot(0.01) == 0.4 and clamp_cot(0.55) == 0.55


def test_comparison_prompt_layout():
    text = comparison_prompt("hi?", "Which is kinder?", "one", "two")
    assert text.index("Human: hi?") < text.index("Which is kinder?") < text.index("(A) one") < text.index("(B) two")
    assert text.endswith("The answer is:")
