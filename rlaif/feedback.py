"""AI feedback: the multiple-choice comparison prompt and soft labels from option log-probs (CAI, RLAIF)."""

from __future__ import annotations

import math
from dataclasses import dataclass

OPTIONS = (" (A)", " (B)")  # the continuations scored after the answer cue


def comparison_prompt(conversation: str, principle: str, first: str, second: str) -> str:
    """The feedback model's prompt (CAI appendix): conversation, principle, options, answer cue."""
    return (
        "Consider the following conversation between a human and an assistant:\n"
        f"Human: {conversation}\n\n"
        f"{principle}\n"
        "Options:\n"
        f"(A) {first}\n"
        f"(B) {second}\n"
        "The answer is:"
    )


def soft_label(logp_a: float, logp_b: float) -> float:
    """P(A) = softmax over the two option log-probs, normalised so the two options sum to one."""
    m = max(logp_a, logp_b)
    ea, eb = math.exp(logp_a - m), math.exp(logp_b - m)
    return ea / (ea + eb)


@dataclass(frozen=True)
class PairLabel:
    p_first: float  # probability that the first response is better, averaged over the orders scored
    p_first_in_a: float  # P(A) with the first response shown as (A)
    p_first_in_b: float | None  # P(B) with the first response shown as (B); None when one order was scored
    consistent: bool | None  # do both orders prefer the same response? None with one order


def combine_orders(p_a_forward: float, p_a_swapped: float | None) -> PairLabel:
    """Average the label over both presentation orders, removing the labeler's slot bias to first order.

    p_a_forward: P(A) with (first, second) as (A, B). p_a_swapped: P(A) with (second, first) as (A, B), so the
    first response's probability there is 1 - p_a_swapped.
    """
    if p_a_swapped is None:
        return PairLabel(p_a_forward, p_a_forward, None, None)
    p_first_in_b = 1.0 - p_a_swapped
    consistent = (p_a_forward > 0.5) == (p_first_in_b > 0.5)
    return PairLabel(0.5 * (p_a_forward + p_first_in_b), p_a_forward, p_first_in_b, consistent)


def clamp_cot(p: float, low: float = 0.4, high: float = 0.6) -> float:
    """Chain-of-thought labels are near 0 or 1; CAI clamps them to [0.4, 0.6] so the PM is not overconfident."""
    return min(max(p, low), high)
