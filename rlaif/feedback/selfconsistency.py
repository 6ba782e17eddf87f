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
from decimal import Decimal
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


# A number as written in an answer: an optional sign and currency sign (either order), digits with or without
# thousands separators ("1,000"), an optional decimal part ("3.5"); a sign right after a word ("3-4") is no sign.
_NUMBER = re.compile(r"(?<![\w.])(?:(?P<s1>[-−+])\s?)?(?P<cur>[$€£¥])?\s?(?:(?P<s2>[-−])\s?)?"
                     r"(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?P<frac>\.\d+)?(?![\d,]\d)")
_ANSWER_IS = re.compile(r"answer is[:\s]*", re.IGNORECASE)
_WORD = re.compile(r"\(?([^\s.,;:!?)]+)")


def _canonical(m: re.Match) -> str:
    """One spelling per value: "1,000", "1000" and "1000.0" are "1000"; "$12.50" is "12.5"; "-0" is "0"."""
    value = Decimal(m["int"].replace(",", "") + (m["frac"] or ""))
    if (m["s1"] or m["s2"]) in ("-", "−"):
        value = -value
    return "0" if value == 0 else format(value.normalize(), "f")


def extract_answer(text: str) -> str | None:
    """A final answer, as Huang et al. extract it: what follows the last "The answer is" (a number if it starts
    with one, else its first word, lower-cased), else the last number in the text; None when there is neither.

    Numbers are compared by value: thousands separators, a currency sign and trailing decimal zeros are dropped and
    a leading minus kept ("1,000" = "1000", "$12.50" = "12.5", "-7" != "7"), so "3.5" is never "3".
    """
    found = list(_ANSWER_IS.finditer(text))
    if found:
        rest = text[found[-1].end() :]
        number = _NUMBER.match(rest)
        if number:
            return _canonical(number)
        word = _WORD.match(rest)
        if word:
            return word.group(1).lower()
    numbers = list(_NUMBER.finditer(text))
    return _canonical(numbers[-1]) if numbers else None
