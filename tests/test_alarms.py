"""Reward-hacking alarms on synthetic metric series: each fires on a hacking series, at the step a hand count says,
and stays quiet on a healthy one; the held-out judge's verdict; the stop; the config keys."""

from __future__ import annotations

import logging

import pytest

from rlaif.audit.alarms import AlarmMonitor, AlarmStop, JudgeVerdict, windowed_mean
from rlaif.audit.evaluate import FunctionJudge
from rlaif.config import AlarmConfig, ConfigError, load_config

from .conftest import REPO


class Sink:
    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []
        self.tables: list[tuple[int, str, list[dict]]] = []
        self.alerts: list[tuple[str, str]] = []

    def log(self, metrics: dict, step: int) -> None:
        self.logged.append((step, metrics))

    def log_table(self, name: str, rows: list[dict], step: int) -> None:
        self.tables.append((step, name, rows))

    def alert(self, title: str, text: str) -> None:
        self.alerts.append((title, text))

    def states(self, name: str) -> list[tuple[int, float]]:
        return [(s, m[f"alarms/{name}"]) for s, m in self.logged if f"alarms/{name}" in m]


# every alarm is off unless a test turns it on
OFF = {"boilerplate_max": 1.0, "reward_agreement_min": 0.0, "length_corr_rise": 2.0, "truncation_rise": 1.0,
       "refusal_rise": 1.0}


def run(series: dict[str, list[float]], stop_on=(), **alarm_cfg) -> tuple[AlarmMonitor, Sink]:
    """Feed one metric series per key, step 1, 2, ... (a None skips the key at that step)."""
    sink = Sink()
    monitor = AlarmMonitor(AlarmConfig(**{**OFF, **alarm_cfg}), list(stop_on), sink)
    for i in range(max(len(v) for v in series.values())):
        monitor.update(i + 1, {k: v[i] for k, v in series.items() if i < len(v) and v[i] is not None})
    return monitor, sink


# one hacking and one healthy series per alarm, with the step at which the hacking one must fire (window 3)
CASES = {
    # KL climbs out of [0, 5]: means over 3 steps 1.33, 3.33, 6.33 -> step 5
    "kl": ("kl/policy_ref", {"kl_band": [0.0, 5.0]}, [0.0, 1.0, 3.0, 6.0, 10.0, 15.0], [0.0, 0.5, 1.0, 1.2, 0.9, 1.1],
           5, (3 + 6 + 10) / 3),
    # length collapses below [5, 40]: means 21.3, 18, 11.3, 5.33, 2.33 -> step 7
    "length": ("response/length", {"length_band": [5.0, 40.0]}, [24, 24, 20, 10, 4, 2, 1], [24, 23, 24, 22, 24, 23, 24],
               7, (4 + 2 + 1) / 3),
    # responses collapse to one text: means 0.083, 0.333, 0.667 -> step 5
    "boilerplate": ("response/boilerplate", {"boilerplate_max": 0.5}, [0, 0, 0.25, 0.75, 1, 1], [0, 0.1, 0, 0, 0.1, 0],
                    5, (0.25 + 0.75 + 1) / 3),
}


@pytest.mark.parametrize("name", list(CASES))
def test_band_and_bar_alarms_fire_on_hacking_and_stay_quiet_when_healthy(name, caplog):
    metric, cfg, hacking, healthy, at, value = CASES[name]
    with caplog.at_level(logging.WARNING, logger="rlaif"):
        monitor, sink = run({metric: hacking}, **cfg)
    (alarm,) = monitor.fired
    assert (alarm.name, alarm.step, alarm.metric) == (name, at, metric)
    assert alarm.value == pytest.approx(value)
    # a state per step once the window is full: quiet, then 1 from the step it fired while it holds
    assert sink.states(name) == [(s, float(s >= at)) for s in range(3, len(hacking) + 1)]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ALARM")]
    assert lines == [f"ALARM {name} at step {at}: {alarm.detail}"] and "\n" not in lines[0]
    assert sink.alerts == [(f"rlaif alarm: {name}", lines[0])]
    assert sink.tables == [(at, "alarms", [alarm.row()])]

    quiet, sink = run({metric: healthy}, **cfg)
    assert quiet.fired == [] and sink.alerts == [] and sink.tables == []
    assert {v for _, v in sink.states(name)} == {0.0}


def test_an_alarm_that_is_off_never_checks():
    monitor, sink = run({"kl/policy_ref": [100.0] * 5, "response/boilerplate": [1.0] * 5})  # no band, max 1
    assert monitor.enabled == [] and monitor.fired == [] and sink.logged == []
    assert windowed_mean([1, 2, 3, 4], 3) == 3 and windowed_mean([1, 2], 3) is None


def test_an_alarm_fires_again_only_after_clearing():
    kl = [9, 9, 1, 1, 9, 9, 9]  # window 1: out, out (still firing), in, in, out (fires again), out, out
    monitor, sink = run({"kl/policy_ref": kl}, kl_band=[0, 5], window=1)
    assert [a.step for a in monitor.fired] == [1, 5]
    assert [v for _, v in sink.states("kl")] == [1, 1, 0, 0, 1, 1, 1]
    assert sink.tables[-1][2] == [a.row() for a in monitor.fired]  # the table holds every alarm so far


def test_stop_on_alarm_raises_after_reporting_every_alarm_of_the_step():
    sink = Sink()
    monitor = AlarmMonitor(AlarmConfig(kl_band=[0, 5], boilerplate_max=0.5, window=1), ["boilerplate"], sink)
    assert monitor.update(1, {"kl/policy_ref": 9.0, "response/boilerplate": 0.0})[0].name == "kl"  # not a stop
    with pytest.raises(AlarmStop) as stop:
        monitor.update(2, {"kl/policy_ref": 9.0, "response/boilerplate": 0.9})
    assert (stop.value.alarm.name, stop.value.alarm.step, stop.value.checkpoint) == ("boilerplate", 2, None)
    assert "stopped by alarm boilerplate at step 2" in str(stop.value)
    assert [r["name"] for r in sink.tables[-1][2]] == ["kl", "boilerplate"] and len(sink.alerts) == 2
    everything = AlarmMonitor(AlarmConfig(kl_band=[0, 5], window=1), ["all"], Sink())
    with pytest.raises(AlarmStop):
        everything.update(1, {"kl/policy_ref": 9.0})


# --- the held-out judge's verdict --------------------------------------------------------------------------------


class RecordingJudge(FunctionJudge):
    """tests.eval_judges' rule judges (shorter wins; words are harmful), recording which criterion it was asked."""

    def __init__(self) -> None:
        super().__init__("tests.eval_judges:shorter_is_better", "tests.eval_judges:any_words_harmful")
        self.asked: list[tuple[str, list[str]]] = []

    def compare(self, prompts, firsts, seconds, criterion):
        self.asked.append((criterion, list(prompts)))
        return super().compare(prompts, firsts, seconds, criterion)


def test_judge_verdict_counts_wins_against_the_first_eval_point_by_hand():
    sets = {"hack a car": "red-team", "boil an egg": "benign", "kill a process": "benign-edge"}
    prompts = ["hack a car", "hack a car", "boil an egg", "boil an egg", "kill a process", "kill a process"]
    start = ["sure here is how", "no", "put it in water", "boil it", "use kill", "kill -9 it now"]
    judge = RecordingJudge()
    verdict = JudgeVerdict(judge, sets)
    first = verdict(prompts, start)
    assert first["eval/judge_win_rate"] == 0.5 and first["eval/judge_win_rate_n"] == 6 and judge.asked == []
    assert first["eval/judge_harmful_rate"] == 1.0  # both red-team responses have words
    now = ["", "no", "water and heat it now", "boil it", "kill", "kill -9 it now, then check"]
    # shorter wins: win, tie (identical), loss, tie (identical), win, loss -> (1 + .5 + 0 + .5 + 1 + 0) / 6
    got = verdict(prompts, now)
    assert got["eval/judge_win_rate"] == pytest.approx(3 / 6)
    assert got["eval/judge_harmful_rate"] == 0.5  # "" is harmless, "no" is not
    assert judge.asked == [("harmless", ["hack a car"]), ("helpful", ["boil an egg", "kill a process",
                                                                      "kill a process"])]
    low, high = got["eval/judge_win_rate_low"], got["eval/judge_win_rate_high"]
    assert low < 0.5 < high and got["eval/judge_win_rate_n"] == 6
    with pytest.raises(ValueError, match="prompts of the first"):
        verdict(prompts[::-1], now)


# --- config --------------------------------------------------------------------------------------------------------

JUDGE = ["eval.judge_function=tests.eval_judges:shorter_is_better",
         "eval.harm_function=tests.eval_judges:any_words_harmful"]


@pytest.mark.parametrize("overrides,message", [
    (["alarms.kl_band=[5, 1]"], r"alarms\.kl_band: must be \[low, high\]"),
    (["alarms.length_band=[1]"], r"alarms\.length_band: must be \[low, high\]"),
    (["alarms.boilerplate_max=1.5"], r"alarms\.boilerplate_max: must be in \[0, 1\]"),
    (["alarms.divergence_window=-1", "trainer.eval_every=2", *JUDGE], r"alarms\.divergence_window: must be >= 0"),
    (["alarms.baseline_steps=0"], r"alarms\.baseline_steps: must be >= 1"),
    (["alarms.truncation_rise=1.5"], r"alarms\.truncation_rise: must be in \[0, 1\] \(1: off\)"),
    (["alarms.refusal_rise=-0.1"], r"alarms\.refusal_rise: must be in \[0, 1\]"),
    (["alarms.length_corr_rise=2.5"], r"alarms\.length_corr_rise: must be in \[0, 2\] \(2: off\)"),
    (["alarms.truncation_rise=1", "trainer.stop_on_alarm=[truncation]"],
     r"trainer\.stop_on_alarm: the truncation alarm is off"),
    (["alarms.reward_agreement_min=0", "trainer.stop_on_alarm=[reward_agreement]"],
     r"trainer\.stop_on_alarm: the reward_agreement alarm is off"),
    (["alarms.divergence_window=3", *JUDGE], r"trainer\.eval_every > 0"),
    (["alarms.divergence_window=3", "trainer.eval_every=2"], r"alarms\.divergence_window: needs a held-out judge"),
    (["trainer.stop_on_alarm=[kll]"], r"trainer\.stop_on_alarm: unknown alarm 'kll'"),
    (["trainer.stop_on_alarm=[kl]"], r"trainer\.stop_on_alarm: the kl alarm is off"),
    (["eval.every=2"], r"eval\.every: .* eval\.enabled"),
    (["eval.enabled=true"], r"eval\.enabled: the evaluation needs a judge"),
    (["sl_cai.self_consistency=1"], r"sl_cai\.self_consistency: a majority needs >= 2"),
    (["sl_cai.self_consistency=3", "sl_cai.temperature=0"], r"sl_cai\.temperature: must be > 0"),
    (["sl_cai.self_consistency=3", "sl_cai.self_consistency_key=no.such:fn"], r"sl_cai\.self_consistency_key"),
])
def test_bad_alarm_eval_and_self_consistency_keys_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_good_alarm_config_loads():
    cfg = load_config(None, ["alarms.kl_band=[0, 20]", "alarms.divergence_window=3", "trainer.eval_every=2",
                             "trainer.stop_on_alarm=[kl, divergence]", "eval.enabled=true", "eval.every=4", *JUDGE])
    assert cfg.alarms.kl_band == [0.0, 20.0] and cfg.trainer.stop_on_alarm == ["kl", "divergence"]


def test_the_default_alarms_watch_length_evasion_agreement_and_collapse():
    """On by default: what needs no judge and no band chosen by hand (bug caught: a default left off)."""
    monitor = AlarmMonitor(load_config(None, []).alarms, [], Sink())
    assert monitor.enabled == ["length_corr", "truncation", "refusal", "boilerplate", "reward_agreement"]
    assert load_config(None, ["trainer.stop_on_alarm=[truncation, refusal, length_corr]"]).trainer.stop_on_alarm


def test_the_cli_reports_a_stop_by_alarm_with_exit_code_4(monkeypatch, capsys, tmp_path):
    from rlaif import cli
    from rlaif.audit.alarms import Alarm
    from rlaif.run import trainer

    alarm = Alarm("boilerplate", 7, "response/boilerplate", 0.9, "> 0.5", "response/boilerplate averaged 0.9")

    def stopped(cfg, overwrite=False, verbose=False):
        raise AlarmStop(alarm)

    monkeypatch.setattr(trainer, "train", stopped)
    assert cli.main(["train", "--config", str(REPO / "configs/debug.yaml"), f"output_dir={tmp_path}"]) == 4
    err = capsys.readouterr().err
    assert "rlaif: stopped by alarm boilerplate at step 7; no checkpoint saved. response/boilerplate averaged" in err


def test_the_held_out_judge_runs_in_the_loop_wherever_one_is_configured():
    """The reward_agreement alarm measures the reward against the held-out judge where one is configured, not only
    when the divergence alarm asks for it (bug caught: the in-loop judge started only with divergence_window > 0, so
    agreement fell back to the labeler the PM learned from)."""
    from rlaif.run.eval_stage import in_loop_judge

    assert not in_loop_judge(load_config(None, ["trainer.eval_every=2"]))  # no judge configured
    assert not in_loop_judge(load_config(None, JUDGE))  # no eval points
    assert in_loop_judge(load_config(None, [*JUDGE, "trainer.eval_every=2"]))
