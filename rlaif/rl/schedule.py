"""Learning-rate schedules (`*.lr_scheduler`, `*.warmup_steps`, `*.warmup_ratio`), as transformers' get_scheduler
defines them: a linear warm-up from 0, then constant, linear decay to 0, or a half cosine to 0.

The rate is a pure function of the optimizer step, so a resumed run, which knows its step, continues the schedule
exactly with nothing else to save."""

from __future__ import annotations

import math
from collections.abc import Callable

from rlaif.config import CriticConfig, PolicyConfig, PreferenceModelConfig, SelfImproveConfig, SLCAIConfig


def warmup_steps(total: int, steps: int, ratio: float) -> int:
    """Warm-up length: `steps`, or ceil(ratio * total) (as transformers' TrainingArguments)."""
    return steps if steps else math.ceil(ratio * total)


def lr_at(step: int, total: int, base: float, kind: str, warmup: int) -> float:
    """The learning rate of optimizer step `step` (0-based) of `total`."""
    if step < warmup:
        return base * step / max(1, warmup)
    if kind == "constant":
        return base
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return base * max(0.0, 1.0 - progress)
    if kind == "cosine":
        return base * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"lr_scheduler '{kind}' unknown; allowed: constant, linear, cosine")


def schedule(section: PolicyConfig | CriticConfig | PreferenceModelConfig | SLCAIConfig | SelfImproveConfig,
             total: int) -> Callable[[int], float]:
    """step -> learning rate for one of the trained models' sections (its lr, lr_scheduler, warmup_*)."""
    warmup = warmup_steps(total, section.warmup_steps, section.warmup_ratio)
    return lambda step: lr_at(step, total, section.lr, section.lr_scheduler, warmup)
