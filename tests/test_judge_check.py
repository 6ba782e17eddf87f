"""rlaif.audit.judge_check and rlaif.audit.ranking: the judge's validation on pyrit's human labels (fake judges whose
answers are known), the refusal of a judge the optimizer saw, trust marks, and the Elo fit against hand values."""

import json
import math
import random
import shutil

import pytest

from rlaif.audit.evaluate import FunctionJudge, bootstrap_interval
from rlaif.audit.integrity import wilson_interval
from rlaif.audit.judge_check import (
    harm_items,
    ranked_pairs,
    validate_judge,
    validation_verdict,
)
from rlaif.audit.ranking import bradley_terry, elo_table
from rlaif.audit.trust import read_mark
from rlaif.config import ConfigError, load_config

from .conftest import REPO

ITEMS, PAIRS = harm_items(64, 0), ranked_pairs(64, 0)


def test_validation_data_is_balanced_short_and_seeded():
    assert len(ITEMS) == 64 and sum(i.harmful for i in ITEMS) == 32  # as many harmful as harmless
    assert len(PAIRS) == 64 and all(p.better != p.worse for p in PAIRS)
    assert all(len(i.prompt) + len(i.response) <= 700 for i in ITEMS)
    assert harm_items(64, 0) == ITEMS and harm_items(64, 1) != ITEMS


class Oracle:
    """Right on every human label: flags exactly the human-harmful responses, prefers the human-better response in
    both orders."""

    def __init__(self):
        self.harm = {(i.prompt, i.response): i.harmful for i in ITEMS}
        self.better = {(p.prompt, p.better, p.worse) for p in PAIRS}

    def harmful(self, prompts, responses):
        return [float(self.harm[(p, r)]) for p, r in zip(prompts, responses)]

    def compare_orders(self, prompts, firsts, seconds, criterion):
        fwd = [1.0 if (p, a, b) in self.better else 0.0 for p, a, b in zip(prompts, firsts, seconds)]
        return fwd, [1.0 - x for x in fwd]


class SlotBiased(Oracle):
    """Right on harm; always picks slot A (so never the same response in both orders)."""

    def compare_orders(self, prompts, firsts, seconds, criterion):
        return [0.9] * len(prompts), [0.9] * len(prompts)


def test_a_right_judge_is_informative():
    v = validate_judge(Oracle(), ITEMS, PAIRS)
    assert v["miss_rate"]["value"] == 0 and v["false_alarm_rate"]["value"] == 0
    assert v["harm_balanced_accuracy"]["value"] == 1 and v["pairwise_agreement"]["value"] == 1
    assert (v["harm_balanced_accuracy"]["low"], v["harm_balanced_accuracy"]["high"]) == \
        pytest.approx(wilson_interval(1.0, 64))
    assert v["position_consistency"]["value"] == 1 and v["harm_decisiveness"]["value"] == 0.5
    assert not v["harm_uninformative"] and not v["pairwise_uninformative"] and validation_verdict(v) is None


def test_a_judge_that_flags_everything_is_uninformative():
    """No miss, every harmless response a false alarm: balanced accuracy exactly 0.5. Bug caught: judging accuracy
    on harmful responses only (it would score 100%)."""
    judge = FunctionJudge("tests.eval_judges:shorter_is_better", "tests.eval_judges:flags_everything")
    v = validate_judge(judge, ITEMS, PAIRS)
    assert (v["miss_rate"]["value"], v["miss_rate"]["n"]) == (0.0, 32)
    assert (v["false_alarm_rate"]["value"], v["false_alarm_rate"]["n"]) == (1.0, 32)
    assert v["harm_balanced_accuracy"]["value"] == 0.5 and v["harm_uninformative"]
    assert "harm verdict is no better than chance" in validation_verdict(v)
    assert v["position_consistency"]["n"] == 64  # a function judge answers each order: its consistency is measured


def test_a_judge_that_answers_at_random_is_uninformative():
    """Hard verdicts from a hash of the text, and pairwise coin flips: chance is inside both intervals."""
    rng = random.Random(0)

    class Coin(FunctionJudge):
        def compare_orders(self, prompts, firsts, seconds, criterion):
            return [rng.random() for _ in prompts], [rng.random() for _ in prompts]

    v = validate_judge(Coin("tests.eval_judges:shorter_is_better", "tests.eval_judges:coin_flip"), ITEMS, PAIRS)
    assert v["harm_uninformative"] and v["pairwise_uninformative"]
    assert validation_verdict(v).startswith("The judge is no better than chance")
    acc = v["harm_balanced_accuracy"]
    misses = round(v["miss_rate"]["value"] * 32)
    alarms = round(v["false_alarm_rate"]["value"] * 32)
    assert acc["value"] == pytest.approx(1 - (misses + alarms) / 64)  # = 1 - (miss + false alarm) / 2
    assert acc["low"] <= 0.5 <= acc["high"]


def test_position_consistency_and_decisiveness_by_hand():
    v = validate_judge(SlotBiased(), ITEMS, PAIRS)
    assert v["position_consistency"]["value"] == 0  # slot A in both orders: never the same response
    # P(first better) = (0.9 + 1 - 0.9) / 2 = 0.5 on every pair: a tie, so agreement 1/2 and decisiveness 0
    assert v["pairwise_agreement"]["value"] == 0.5 and v["pairwise_uninformative"]
    assert v["pairwise_decisiveness"]["value"] == pytest.approx(0)
    assert not v["harm_uninformative"]
    assert "win rates and Elo scores below carry no information" in validation_verdict(v)
    ps = [0.5] * 64
    assert (v["pairwise_decisiveness"]["low"], v["pairwise_decisiveness"]["high"]) == \
        pytest.approx(bootstrap_interval([abs(p - 0.5) for p in ps], 2000, 0))


# ---------------------------------------------------------------------------------------------------------------------
# independence: plan_judge refuses a judge the optimizer saw


def _plan(tmp_path, *overrides):
    from rlaif.run.eval_stage import plan_judge

    cfg = load_config(REPO / "configs/debug.yaml", [f"output_dir={tmp_path / 'run'}", *overrides])
    return plan_judge(cfg, "eval")


JUDGE = ["eval.judge_function=tests.eval_judges:shorter_is_better",
         "eval.harm_function=tests.eval_judges:any_words_harmful"]


@pytest.mark.parametrize("overrides,message", [
    (["labeler.function=tests.eval_judges:shorter_is_better"],
     "eval.judge_function = tests.eval_judges:shorter_is_better is labeler.function (the training labeler's "
     "function)"),
    (["rl.reward_functions=[rlaif.rewards:brevity, tests.eval_judges:any_words_harmful]"],
     "eval.harm_function = tests.eval_judges:any_words_harmful is rl.reward_functions (a reward the policy was "
     "trained on)"),
])
def test_a_function_judge_the_optimizer_saw_is_refused(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        _plan(tmp_path, *JUDGE, *overrides)
    assert message in str(err.value) and "eval.allow_dependent_judge=true" in str(err.value)
    plan = _plan(tmp_path, *JUDGE, *overrides, "eval.allow_dependent_judge=true")
    assert plan.shares == [message] and message in plan.warnings[0]


def test_an_independent_function_judge_passes(tmp_path):
    plan = _plan(tmp_path, *JUDGE, "labeler.function=tests.eval_judges:more_characters",
                 "rl.reward_functions=[rlaif.rewards:brevity]")
    assert plan.shares == [] and plan.warnings == []


def test_a_model_judge_the_optimizer_saw_is_refused(tmp_path, tiny_path):
    """debug.yaml: tiny-llama is labeler, PM base and policy; each is named. A copy of it written where this run puts
    its preference model is refused as that, and nothing else."""
    with pytest.raises(ConfigError) as err:
        _plan(tmp_path, "eval.judge.path=builtin:tiny-llama")
    msg = str(err.value)
    for key, role in (("labeler.model.path", "the training labeler"),
                      ("preference_model.model.path", "the preference model's base"),
                      ("policy.model.path", "the policy's starting point")):
        assert f"eval.judge.path = builtin:tiny-llama is {key} ({role})" in msg
    assert "eval.allow_dependent_judge=true" in msg
    pm = tmp_path / "run" / "preference_model"
    shutil.copytree(tiny_path, pm)
    other = tmp_path / "other"
    shutil.copytree(tiny_path, other)
    overrides = [f"labeler.model.path={other}", f"preference_model.model.path={other}", f"policy.model.path={other}"]
    with pytest.raises(ConfigError, match="the preference model this run trains") as err:
        _plan(tmp_path, f"eval.judge.path={pm}", *overrides)
    assert "labeler.model.path" not in str(err.value)
    plan = _plan(tmp_path, "eval.judge.path=builtin:tiny-llama", "eval.allow_dependent_judge=true")
    assert len(plan.shares) == len(plan.warnings) == 3  # labeler, PM base, policy (eval.baseline is unset)
    assert "eval.judge.path = builtin:tiny-llama is labeler.model.path (the training labeler)" in plan.shares


def test_trust_marks(tmp_path):
    assert read_mark(str(tmp_path)) is None
    (tmp_path / "trust.json").write_text(json.dumps({"status": "trusted", "summary": "all checks passed",
                                                     "checks": []}))
    assert read_mark(str(tmp_path)) == {"status": "trusted", "summary": "all checks passed", "checks": []}
    (tmp_path / "trust.json").write_text(json.dumps({"status": "failed", "summary": "the gate stopped the run",
                                                     "checks": [], "accepted": False, "trains": "the PM"}))
    assert read_mark(str(tmp_path))["status"] == "failed"  # rlaif.audit.trust's record, extra keys and all
    (tmp_path / "trust.json").write_text("{broken")
    assert read_mark(str(tmp_path))["status"] == "untrusted"  # a mark that cannot be read trusts nothing
    (tmp_path / "trust.json").write_text(json.dumps({"status": "fine"}))
    assert "not one of" in read_mark(str(tmp_path))["summary"]


# ---------------------------------------------------------------------------------------------------------------------
# Elo


def test_elo_two_checkpoints_by_hand_and_transitive_three():
    scale = 400 / math.log(10)
    # A wins 3 of 4 prompts: with the virtual tie q = 3.5 / 5 = 0.7
    got = bradley_terry(["base", "a"], {("a", "base"): (3.0, 4)}, "base")
    assert got == {"base": 0.0, "a": pytest.approx(scale * math.log(0.7 / 0.3))}
    # three checkpoints, each always beating the one before: strictly ordered, the anchor at 0
    outcomes = {("b", "base"): [1.0] * 8, ("c", "base"): [1.0] * 8, ("c", "b"): [1.0] * 8}
    elo = elo_table(["base", "b", "c"], outcomes, "base", n_resamples=200, seed=0)
    assert elo["base"]["value"] == 0 and 0 < elo["b"]["value"] < elo["c"]["value"]
    # by symmetry of the fit, b sits halfway between base and c
    assert elo["b"]["value"] == pytest.approx(elo["c"]["value"] / 2)
    # a judge that only ties: every score 0, and so is every bootstrap score
    flat = elo_table(["base", "b"], {("b", "base"): [0.5] * 5}, "base", n_resamples=50)
    assert flat["b"] == {"value": pytest.approx(0), "n": 5, "low": pytest.approx(0), "high": pytest.approx(0),
                         "method": "bootstrap"}
    mixed = elo_table(["base", "b"], {("b", "base"): [1, 0, 1, 1, 0, 1]}, "base", n_resamples=300, seed=1)
    assert mixed["b"]["low"] < mixed["b"]["value"] < mixed["b"]["high"]
    with pytest.raises(ValueError, match="same, non-empty list"):
        elo_table(["base", "b", "c"], {("b", "base"): [1.0], ("c", "base"): [1.0, 0.0]}, "base")
