"""Rule-based pairwise judges usable by import path in `labeler.function` ("rlaif.judges:name").

Each takes (prompts, firsts, seconds) and returns P(first response better) per pair, in [0, 1]. The labeler calls a
judge on both presentation orders and combines them like model labels, so programmatic preferences go through the
same cache, position-consistency and integrity machinery as AI feedback, and labeler-ordered learning (online DPO)
can be tested on a tiny model against a preference that is known exactly.
"""

from __future__ import annotations

import math

from rlaif.rewards import vowel_fraction


def prefer_shorter(prompts: list[str], firsts: list[str], seconds: list[str]) -> list[float]:
    """1 when the first response has fewer characters, 0 when it has more, 0.5 on a tie."""
    return [0.5 if len(a) == len(b) else float(len(a) < len(b)) for a, b in zip(firsts, seconds)]


def prefer_vowels(prompts: list[str], firsts: list[str], seconds: list[str], scale: float = 10.0) -> list[float]:
    """sigmoid(scale * (vowel fraction of first - vowel fraction of second)): a soft preference for the response
    whose letters hold more vowels (the dense target of rlaif.rewards:vowel_fraction, as a pairwise label)."""
    fa, fb = vowel_fraction(prompts, firsts), vowel_fraction(prompts, seconds)
    return [1.0 / (1.0 + math.exp(-scale * (a - b))) for a, b in zip(fa, fb)]
