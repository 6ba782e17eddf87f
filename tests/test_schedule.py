"""Learning-rate schedules (rlaif/rl/schedule.py) against hand-computed values and transformers' own schedulers."""

import math

import pytest
import torch

from rlaif.config import ConfigError, load_config
from rlaif.rl.schedule import lr_at, schedule, warmup_steps

from .conftest import REPO


def test_hand_computed_values():
    """Bugs caught: warm-up starting above 0 or ending below the base, decay counted from step 0 instead of the
    warm-up's end, cosine over a full period (back up to the base), a decay that goes negative past the end."""
    linear = [lr_at(s, 10, 1.0, "linear", 2) for s in (0, 1, 2, 6, 10, 12)]
    assert linear == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0, 0.0])
    cosine = [lr_at(s, 10, 1.0, "cosine", 2) for s in (1, 2, 6, 10)]
    assert cosine == pytest.approx([0.5, 1.0, 0.5, 0.0])
    assert lr_at(4, 10, 2.0, "cosine", 2) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert [lr_at(s, 10, 3e-4, "constant", 2) for s in (1, 5, 9)] == pytest.approx([1.5e-4, 3e-4, 3e-4])
    assert lr_at(0, 10, 3e-4, "constant", 0) == 3e-4  # no warm-up: the base from the first step
    assert warmup_steps(10, 0, 0.25) == 3 and warmup_steps(10, 4, 0.0) == 4  # ratio rounded up, as transformers


@pytest.mark.parametrize("kind,theirs", [("constant", "constant_with_warmup"), ("linear", "linear"),
                                         ("cosine", "cosine")])
def test_the_same_as_transformers_schedulers(kind, theirs):
    """The reference implementation: transformers.get_scheduler stepping a real optimizer, 25 steps, 5 of warm-up."""
    from transformers import get_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    ref = get_scheduler(theirs, opt, num_warmup_steps=5, num_training_steps=25)
    for step in range(25):
        assert lr_at(step, 25, 0.01, kind, 5) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12), step
        opt.step()
        ref.step()


def test_config_sections_drive_the_schedule():
    """Bugs caught: a section's keys not reaching its schedule (the PM's read as the policy's), both warm-up keys
    accepted (which would win?), an unknown kind accepted."""
    cfg = load_config(REPO / "configs/debug.yaml", ["preference_model.lr_scheduler=linear",
                                                     "preference_model.warmup_ratio=0.1", "preference_model.lr=1e-3"])
    lr_of = schedule(cfg.preference_model, 20)
    assert [lr_of(s) for s in (0, 1, 2, 11, 20)] == pytest.approx([0.0, 5e-4, 1e-3, 5e-4, 0.0])
    assert schedule(cfg.policy, 20)(0) == cfg.policy.lr  # constant, no warm-up: the default
    with pytest.raises(ConfigError, match=r"^critic.warmup_steps and critic.warmup_ratio are both set"):
        load_config(REPO / "configs/debug.yaml", ["critic.warmup_steps=2", "critic.warmup_ratio=0.1"])
    with pytest.raises(ConfigError, match=r"sl_cai.lr_scheduler: got 'step'; allowed values"):
        load_config(REPO / "configs/debug.yaml", ["sl_cai.lr_scheduler=step"])
