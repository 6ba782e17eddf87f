"""Self-consistency filtering (Huang et al. 2022, "Large Language Models Can Self-Improve"), Ray-free.

Sample several answers (or revisions) per prompt, map each to a key -- an extracted final answer, or a judge's
verdict -- and keep only the candidates whose key is the majority's: the high-confidence ones. The share of
candidates that agree with the majority is recorded per prompt (Huang et al.'s confidence). RLAIF (Lee et al.) found
self-consistency at T > 0 hurts *feedback labels*; this is for training data (SL-CAI revisions, SFT answers).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

T = TypeVar("T")


def majority_filter(candidates: Sequence[Sequence[T]], key: Callable[[T], Hashable | None],
                    min_agreement: float = 0.0) -> tuple[list[list[T]], list[float]]:
    """Per prompt, the candidates whose key is the most common one, and the agreement rate.

    key(text) -> a hashable answer, or None when no answer can be extracted (such a candidate is never kept but
    counts in the denominator). agreement = majority count / number of candidates (0 when no key was extracted).
    A tie between keys goes to the one that occurs first. Prompts whose agreement is below `min_agreement` keep
    nothing. Returns (kept candidates per prompt, in their original order; agreement per prompt).
    """
    if not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"min_agreement must be in [0, 1], got {min_agreement}")
    kept: list[list[T]] = []
    rates: list[float] = []
    for i, group in enumerate(candidates):
        if not group:
            raise ValueError(f"prompt {i}: no candidates")
        keys = [key(c) for c in group]
        counts = Counter(k for k in keys if k is not None)
        if not counts:
            kept.append([])
            rates.append(0.0)
            continue
        top = max(counts.values())
        winner = next(k for k in keys if k is not None and counts[k] == top)  # first to reach the top count
        rate = top / len(group)
        rates.append(rate)
        kept.append([c for c, k in zip(group, keys) if k == winner] if rate >= min_agreement else [])
    return kept, rates


_ANSWER_IS = re.compile(r"answer is[:\s]*\(?([^\s.,;)]+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_answer(text: str) -> str | None:
    """A final answer, as Huang et al. extract it: what follows the last "The answer is", else the last number
    (commas dropped), lower-cased; None when there is neither."""
    found = _ANSWER_IS.findall(text)
    if found:
        return found[-1].replace(",", "").lower()
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None
