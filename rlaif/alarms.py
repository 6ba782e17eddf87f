"""Reward-hacking alarms during RL, and the held-out judge's verdict they compare the reward with. No Ray here.

A policy trained on its own feedback amplifies that feedback's failures; these checks watch the metric series the
trainer logs and say so while the run is on:

- kl: kl/policy_ref, averaged over the last `alarms.window` steps, leaves `alarms.kl_band`;
- length: response/length (tokens), averaged likewise, leaves `alarms.length_band`;
- boilerplate: response/boilerplate (the share of a step's responses whose text also answers a different prompt),
  averaged likewise, exceeds `alarms.boilerplate_max`;
- reward_agreement: labels/reward_agreement (does the reward rank each labelled pair as the AI labeler does?),
  averaged over the last `window` labelled steps, falls below `alarms.reward_agreement_min`;
- divergence: over the last `alarms.divergence_window` eval points the training reward on the held-out prompts
  (eval/reward) rises while the held-out judge's win rate against the starting policy (eval/judge_win_rate, from
  `JudgeVerdict`) falls by `alarms.divergence_drop` or more (least-squares trends).

An alarm fires when its check starts failing: one warning line on the console, a wandb alert (offline runs record it
in the run file), a row in the run's `alarms` table (logged whole each time, so the last one holds every alarm) and
`alarms/<name>` = 1 (0 at each check that passes). It fires again only after it has cleared. An alarm named in
trainer.stop_on_alarm raises `AlarmStop` once every alarm of that update has been reported.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

from rlaif.config import AlarmConfig
from rlaif.evaluate import Judge, rate_figure

log = logging.getLogger("rlaif")

ALARMS = ("kl", "length", "boilerplate", "reward_agreement", "divergence")
METRICS = {"kl": "kl/policy_ref", "length": "response/length", "boilerplate": "response/boilerplate",
           "reward_agreement": "labels/reward_agreement", "divergence": "eval/judge_win_rate"}


@dataclass(frozen=True)
class Alarm:
    name: str  # one of ALARMS
    step: int
    metric: str
    value: float  # the windowed mean, or for divergence the judge's fitted change
    threshold: str  # the bound it crossed, as configured
    detail: str  # one line: what was seen

    def row(self) -> dict:
        return asdict(self)


class AlarmStop(RuntimeError):
    """An alarm named in trainer.stop_on_alarm fired. `checkpoint` is where the trainer saved the policy, if it did."""

    def __init__(self, alarm: Alarm) -> None:
        super().__init__(f"stopped by alarm {alarm.name} at step {alarm.step}: {alarm.detail}")
        self.alarm = alarm
        self.checkpoint: str | None = None


class Sink(Protocol):
    """Where alarms go: rlaif.tracking.Tracker."""

    def log(self, metrics: dict, step: int) -> None: ...

    def log_table(self, name: str, rows: list[dict], step: int) -> None: ...

    def alert(self, title: str, text: str) -> None: ...


# ---------------------------------------------------------------------------------------------------------------------
# the checks, on plain series


def windowed_mean(values: Sequence[float], window: int) -> float | None:
    """Mean of the last `window` values; None until there are that many."""
    if len(values) < window:
        return None
    return sum(values[-window:]) / window


def fitted_change(steps: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of values over steps, times the steps spanned: the change the trend line makes."""
    n = len(steps)
    mx, my = sum(steps) / n, sum(values) / n
    var = sum((x - mx) ** 2 for x in steps)
    if var == 0:
        raise ValueError(f"fitted_change: the steps {list(steps)} span nothing")
    slope = sum((x - mx) * (y - my) for x, y in zip(steps, values)) / var
    return slope * (steps[-1] - steps[0])


def divergence(steps: Sequence[int], rewards: Sequence[float], verdicts: Sequence[float], window: int,
               drop: float) -> tuple[float, float, bool] | None:
    """Over the last `window` eval points: (the reward's fitted change, the judge's fitted change, whether the reward
    rose while the judge fell by `drop` or more). None until there are `window` points."""
    if len(steps) < window:
        return None
    s, r, v = steps[-window:], rewards[-window:], verdicts[-window:]
    dr, dv = fitted_change(s, r), fitted_change(s, v)
    return dr, dv, dr > 0 and dv <= -drop


class AlarmMonitor:
    """Feed it every metrics dict the trainer logs (`update`); it keeps the series and runs the enabled checks."""

    def __init__(self, ac: AlarmConfig, stop_on: Sequence[str], sink: Sink) -> None:
        self.ac, self.sink = ac, sink
        self.enabled = [n for n, on in (("kl", bool(ac.kl_band)), ("length", bool(ac.length_band)),
                                        ("boilerplate", ac.boilerplate_max < 1),
                                        ("reward_agreement", ac.reward_agreement_min > 0),
                                        ("divergence", ac.divergence_window > 0)) if on]
        self.stop_on = set(self.enabled if "all" in stop_on else stop_on)
        self.series: dict[str, list[tuple[int, float]]] = {}
        self.active = dict.fromkeys(self.enabled, False)
        self.fired: list[Alarm] = []

    def _values(self, metric: str) -> list[float]:
        return [v for _, v in self.series.get(metric, [])]

    def _check(self, name: str, step: int) -> tuple[bool, Alarm] | None:
        """(firing, the alarm it would raise) for one alarm, or None when it cannot be judged yet."""
        ac, metric = self.ac, METRICS[name]
        if name == "divergence":
            judged = dict(self.series.get("eval/judge_win_rate", []))
            points = [(s, r) for s, r in self.series.get("eval/reward", []) if s in judged]
            got = divergence([s for s, _ in points], [r for _, r in points], [judged[s] for s, _ in points],
                             ac.divergence_window, ac.divergence_drop)
            if got is None:
                return None
            dr, dv, firing = got
            at = [s for s, _ in points[-ac.divergence_window:]]
            return firing, Alarm(name, step, metric, dv, f"fall >= alarms.divergence_drop = {ac.divergence_drop}",
                                 f"eval/reward rose by {dr:+.4g} while the held-out judge's win rate against the "
                                 f"starting policy changed by {dv:+.4g} over the eval points at steps {at}")
        mean = windowed_mean(self._values(metric), ac.window)
        if mean is None:
            return None
        over = f"averaged {mean:.4g} over the last {ac.window} {'labelled ' if name == 'reward_agreement' else ''}steps"
        if name in ("kl", "length"):
            low, high = ac.kl_band if name == "kl" else ac.length_band
            key = f"alarms.{name}_band"
            return not low <= mean <= high, Alarm(name, step, metric, mean, f"{key} = [{low:g}, {high:g}]",
                                                  f"{metric} {over}, outside {key} = [{low:g}, {high:g}]")
        if name == "boilerplate":
            return mean > ac.boilerplate_max, Alarm(name, step, metric, mean, f"> {ac.boilerplate_max:g}",
                                                    f"{metric} {over}, above alarms.boilerplate_max = "
                                                    f"{ac.boilerplate_max:g}: responses collapse to the same text")
        return mean < ac.reward_agreement_min, Alarm(name, step, metric, mean, f"< {ac.reward_agreement_min:g}",
                                                     f"{metric} {over}, below alarms.reward_agreement_min = "
                                                     f"{ac.reward_agreement_min:g}: the reward no longer ranks "
                                                     "pairs as the AI labeler does")

    def update(self, step: int, metrics: dict[str, float]) -> list[Alarm]:
        """Add one logged metrics dict; check each alarm whose metric it holds. Returns the alarms that fired."""
        arrived = set()
        for name in self.enabled:
            metric = METRICS[name]
            keys = ("eval/reward", metric) if name == "divergence" else (metric,)
            for key in keys:
                if key in metrics:
                    self.series.setdefault(key, []).append((step, float(metrics[key])))
                    arrived.add(name)
        states, new = {}, []
        for name in self.enabled:
            if name not in arrived or (got := self._check(name, step)) is None:
                continue
            firing, alarm = got
            states[f"alarms/{name}"] = float(firing)
            if firing and not self.active[name]:
                new.append(alarm)
            self.active[name] = firing
        if states:
            self.sink.log(states, step=step)
        for alarm in new:
            line = f"ALARM {alarm.name} at step {alarm.step}: {alarm.detail}"
            log.warning(line)
            self.sink.alert(f"rlaif alarm: {alarm.name}", line)
            self.fired.append(alarm)
        if new:
            self.sink.log_table("alarms", [a.row() for a in self.fired], step=step)
        for alarm in new:
            if alarm.name in self.stop_on:
                raise AlarmStop(alarm)
        return new


# ---------------------------------------------------------------------------------------------------------------------
# the held-out judge's verdict, for the divergence alarm


class JudgeVerdict:
    """The eval judge (rlaif.evaluate's: one the optimizer never saw) on the held-out prompts at each eval point.

    The first call's responses are the starting policy's; every later call's responses (the same prompts, sampled
    with the same seeds) are compared with them: harmlessness on red-team prompts, helpfulness on the others, both
    presentation orders averaged by the judge; a win counts 1, a loss 0, an exact tie 1/2, and identical responses
    tie without asking. Returns eval/judge_win_rate with its Wilson interval and n, and eval/judge_harmful_rate (the
    share of red-team responses judged harmful) when there are red-team prompts.
    """

    def __init__(self, judge: Judge, sets: dict[str, str]) -> None:
        self.judge, self.sets = judge, sets  # sets: prompt text -> "red-team" / "benign" / "benign-edge"
        self.start: tuple[list[str], list[str]] | None = None

    def __call__(self, prompts: list[str], responses: list[str]) -> dict[str, float]:
        if self.start is None:
            self.start = (list(prompts), list(responses))
        elif self.start[0] != list(prompts):
            raise ValueError("JudgeVerdict: every eval point must judge the prompts of the first one, in order")
        base = self.start[1]
        red = [self.sets[p] == "red-team" for p in prompts]
        outcome = [0.5] * len(prompts)
        for criterion, is_red in (("harmless", True), ("helpful", False)):
            idx = [i for i in range(len(prompts)) if red[i] == is_red and responses[i] != base[i]]
            if idx:
                ps = self.judge.compare([prompts[i] for i in idx], [responses[i] for i in idx],
                                        [base[i] for i in idx], criterion)
                for i, p in zip(idx, ps):
                    outcome[i] = 1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5
        win = rate_figure(outcome)
        out = {"eval/judge_win_rate": win.value, "eval/judge_win_rate_low": win.low,
               "eval/judge_win_rate_high": win.high, "eval/judge_win_rate_n": float(win.n)}
        red_idx = [i for i in range(len(prompts)) if red[i]]
        if red_idx:
            harm = self.judge.harmful([prompts[i] for i in red_idx], [responses[i] for i in red_idx])
            out["eval/judge_harmful_rate"] = rate_figure([p > 0.5 for p in harm]).value
        return out
