"""Rule-based reward functions usable by import path in `rl.reward_functions` ("rlaif.rewards:name").

Each takes (prompts, responses) and returns one float per response. They are combined with (added to) the
preference model's score, so programmatic checks can sit beside AI feedback.
"""

from __future__ import annotations


def vowel_fraction(prompts: list[str], responses: list[str]) -> list[float]:
    """Share of a response's letters that are vowels: a simple, dense, learnable target for smoke and learning tests."""
    out = []
    for text in responses:
        letters = [c for c in text.lower() if c.isalpha()]
        out.append(sum(c in "aeiou" for c in letters) / max(len(letters), 1))
    return out


def brevity(prompts: list[str], responses: list[str]) -> list[float]:
    """1 for an empty answer, falling linearly to 0 at 400 characters: a counterweight to length-seeking rewards."""
    return [max(0.0, 1.0 - len(text) / 400) for text in responses]


def length_200(prompts: list[str], responses: list[str]) -> list[float]:
    """-|len(text) - 200| / 200: 0 at exactly 200 characters, -1 at 0 or 400. The rule-based reward of the peer
    benchmark against TRL (bench/bench_vs_trl.py; DESIGN.md section 8)."""
    return [-abs(len(text) - 200) / 200 for text in responses]
