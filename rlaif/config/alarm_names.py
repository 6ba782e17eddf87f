"""The reward-hacking alarms by name, and which of them a config turns on: what validation checks
trainer.stop_on_alarm against. The alarms themselves (their checks on the metric series) are rlaif/audit/alarms.py's,
which imports these."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlaif.config.schema import AlarmConfig

ALARMS = ("kl", "length", "length_corr", "truncation", "refusal", "boilerplate", "reward_agreement", "divergence")
RISES = {"length_corr": "length_corr_rise", "truncation": "truncation_rise", "refusal": "refusal_rise"}
OFF_AT = {"length_corr": 2.0, "truncation": 1.0, "refusal": 1.0}  # a rise this large cannot happen: the alarm is off


def rise_tolerances(ac: AlarmConfig) -> dict[str, float]:
    """The configured tolerance of each alarm on a rise over the first steps (RISES names its key)."""
    return {"length_corr": ac.length_corr_rise, "truncation": ac.truncation_rise, "refusal": ac.refusal_rise}


def enabled_alarms(ac: AlarmConfig) -> dict[str, bool]:
    """Which alarms the config turns on (divergence also needs a judge, which validate_alarms checks)."""
    return {"kl": bool(ac.kl_band), "length": bool(ac.length_band),
            **{n: tol < OFF_AT[n] for n, tol in rise_tolerances(ac).items()},
            "boilerplate": ac.boilerplate_max < 1, "reward_agreement": ac.reward_agreement_min > 0,
            "divergence": ac.divergence_window > 0}
