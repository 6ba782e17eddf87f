import math

import pytest
import torch

from rlaif.losses import kl_estimate, masked_mean, ppo_policy_loss, preference_loss, rloo_advantages


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_preference_loss_hand_values():
    r1, r2 = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, -1.0])
    p = torch.tensor([1.0, 0.5, 0.25])
    expected = [
        -math.log(sig(1.0)),
        -(0.5 * math.log(0.5) + 0.5 * math.log(0.5)),
        -(0.25 * math.log(sig(3.0)) + 0.75 * math.log(sig(-3.0))),
    ]
    assert preference_loss(r1, r2, p).item() == pytest.approx(sum(expected) / 3, abs=1e-6)


def test_preference_loss_gradient_points_to_the_label():
    r1 = torch.zeros(1, requires_grad=True)
    preference_loss(r1, torch.zeros(1), torch.tensor([0.9])).backward()
    assert r1.grad.item() == pytest.approx(-(0.9 - 0.5))  # d/dr1 = -(p - sigma(r1 - r2))


def test_kl_estimators_hand_values():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    r = logp - ref  # [0.5, -1.0]
    assert kl_estimate(logp, ref, "k1").tolist() == pytest.approx([0.5, -1.0])
    assert kl_estimate(logp, ref, "k2").tolist() == pytest.approx([0.125, 0.5])
    assert kl_estimate(logp, ref, "k3").tolist() == pytest.approx(
        [math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0])
    with pytest.raises(ValueError, match="allowed: k1, k2, k3"):
        kl_estimate(logp, ref, "k4")
    assert torch.all(kl_estimate(logp, ref, "k3") >= 0) and r.numel() == 2


def test_rloo_hand_values():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 4.0, 4.0])
    assert rloo_advantages(rewards, 3).tolist() == pytest.approx([-1.5, 0.0, 1.5, 0.0, 0.0, 0.0])
    assert rloo_advantages(torch.tensor([1.0, 3.0]), 2).tolist() == pytest.approx([-2.0, 2.0])


def test_ppo_loss_hand_values():
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.5, 0.8, 0.2]]))  # ratios 1.0, 1.6, 0.4
    mask = torch.tensor([[1.0, 1.0, 1.0]])
    loss, info = ppo_policy_loss(new, old, torch.tensor([1.0]), mask, clip_eps=0.2)
    # positive advantage: min(r, clip(r)) = 1.0, 1.2, 0.4
    assert loss.item() == pytest.approx(-(1.0 + 1.2 + 0.4) / 3)
    assert info["clip_frac"] == pytest.approx(2 / 3)
    loss, _ = ppo_policy_loss(new, old, torch.tensor([-1.0]), mask, clip_eps=0.2)
    # negative advantage: min(-r, -clip(r)) = -1.0, -1.6, -0.8
    assert loss.item() == pytest.approx((1.0 + 1.6 + 0.8) / 3)
    # masked tokens do not count
    loss, _ = ppo_policy_loss(new, old, torch.tensor([1.0]), torch.tensor([[1.0, 0.0, 0.0]]), clip_eps=0.2)
    assert loss.item() == pytest.approx(-1.0)


def test_masked_mean():
    x = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    m = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert masked_mean(x, m).item() == pytest.approx(3.0)
    assert masked_mean(x, m, dim=1).tolist() == pytest.approx([1.0, 4.0])
