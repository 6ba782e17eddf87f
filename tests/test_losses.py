import math
import statistics

import pytest
import torch

from rlaif.rl.losses import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    clip_rewards,
    gae,
    grpo_advantages,
    kl_estimate,
    kl_loss,
    length_penalty,
    masked_mean,
    missing_eos_penalty,
    online_dpo_loss,
    pick_chosen,
    ppo_policy_loss,
    preference_loss,
    reinforce_pp_advantages,
    rloo_advantages,
    token_rewards_with_kl,
    truncated_importance_weights,
    value_loss,
)


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


# ---------------------------------------------------------------------------------------------------------------------
# Aggregation, dual clip, clip-higher
# ---------------------------------------------------------------------------------------------------------------------


def test_ppo_loss_aggregations_hand_values():
    # ratio 1 everywhere, so the per-token loss is -A
    logp = torch.zeros(2, 3)
    adv = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    loss = lambda agg, **kw: ppo_policy_loss(logp, logp, adv, mask, 0.2, loss_agg=agg, **kw)[0].item()  # noqa: E731
    assert loss("token-mean") == pytest.approx(-(1 + 2 + 3 + 4) / 4)  # -2.5
    assert loss("seq-mean-token-mean") == pytest.approx(-((1 + 2 + 3) / 3 + 4 / 1) / 2)  # -3
    assert loss("seq-mean-token-sum-norm", norm_len=4) == pytest.approx(-((1 + 2 + 3) / 4 + 4 / 4) / 2)  # -1.25
    assert loss("seq-mean-token-sum-norm") == pytest.approx(-((1 + 2 + 3) / 3 + 4 / 3) / 2)  # norm_len = T = 3
    with pytest.raises(ValueError, match="allowed: token-mean"):
        loss("sum")


def test_ppo_dual_clip_hand_values():
    old = torch.log(torch.tensor([[0.2, 0.2]]))
    new = torch.log(torch.tensor([[0.8, 0.4]]))  # ratios 4, 2
    mask = torch.ones(1, 2)
    adv = torch.tensor([-1.0])
    # plain PPO with A = -1: -min(-r, -clip(r)) = max(r, 1.2) -> 4, 2
    assert ppo_policy_loss(new, old, adv, mask, 0.2)[0].item() == pytest.approx((4 + 2) / 2)
    # dual clip 3 bounds the loss at -3 * A = 3: min(4, 3) = 3, min(2, 3) = 2
    loss, info = ppo_policy_loss(new, old, adv, mask, 0.2, dual_clip=3.0)
    assert loss.item() == pytest.approx((3 + 2) / 2)
    assert info["dual_clip_frac"] == pytest.approx(0.5)
    # positive advantages are untouched: -min(r, 1.2) = -1.2 for both
    assert ppo_policy_loss(new, old, -adv, mask, 0.2, dual_clip=3.0)[0].item() == pytest.approx(-1.2)
    with pytest.raises(ValueError, match="> 1"):
        ppo_policy_loss(new, old, adv, mask, 0.2, dual_clip=0.5)


def test_ppo_clip_higher_hand_values():
    old, new = torch.log(torch.tensor([[0.4]])), torch.log(torch.tensor([[0.5]]))  # ratio 1.25
    mask, adv = torch.ones(1, 1), torch.tensor([1.0])
    assert ppo_policy_loss(new, old, adv, mask, 0.2)[0].item() == pytest.approx(-1.2)
    loss, info = ppo_policy_loss(new, old, adv, mask, 0.2, clip_eps_high=0.28)
    assert loss.item() == pytest.approx(-1.25) and info["clip_frac"] == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# Value loss, GAE
# ---------------------------------------------------------------------------------------------------------------------


def test_value_loss_hand_values():
    values = torch.tensor([[1.0, 2.0, 0.5, 7.0]])
    old = torch.tensor([[0.8, 1.0, 0.5, 0.0]])
    returns = torch.tensor([[1.5, 2.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, clip_frac = value_loss(values, old, returns, mask, clip_eps=0.2)
    # t0: v - old = 0.2 (inside the clip): both terms (1 - 1.5)^2 = 0.25
    # t1: v_clip = 1.0 + 0.2 = 1.2: max((2 - 2.5)^2, (1.2 - 2.5)^2) = max(0.25, 1.69) = 1.69 (clipped term larger)
    # t2: v = old: (0.5 - 0)^2 = 0.25; t3 is padding
    assert loss.item() == pytest.approx(0.5 * (0.25 + 1.69 + 0.25) / 3)
    assert clip_frac == pytest.approx(1 / 3)


def test_gae_hand_values():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.4, 0.3], [1.0, 0.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # row 1: the 5.0 / 9.0 are padding
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0: d2 = 1 - 0.3 = 0.7; d1 = 0.3 - 0.4 = -0.1; d0 = 0.4 - 0.5 = -0.1
    #        A2 = 0.7; A1 = -0.1 + 0.5 * 0.7 = 0.25; A0 = -0.1 + 0.5 * 0.25 = 0.025
    # row 1: the value after the last valid token is 0: d1 = 2 - 0.5 = 1.5; d0 = 0.5 - 1.0 = -0.5
    #        A1 = 1.5; A0 = -0.5 + 0.5 * 1.5 = 0.25
    assert adv.tolist()[0] == pytest.approx([0.025, 0.25, 0.7])
    assert adv.tolist()[1] == pytest.approx([0.25, 1.5, 0.0])
    assert ret.tolist()[0] == pytest.approx([0.525, 0.65, 1.0])
    assert ret.tolist()[1] == pytest.approx([1.25, 2.0, 0.0])
    # lam = 1: returns are the discounted Monte-Carlo returns, 0.5^2 * 1 and 0.5 * 1 and 1
    _, ret = gae(rewards[:1], values[:1], mask[:1], gamma=0.5, lam=1.0)
    assert ret.tolist()[0] == pytest.approx([0.25, 0.5, 1.0])


def test_gae_matches_a_direct_sum_on_random_inputs():
    # independent reference: A_t = sum_l (gamma lam)^l delta_{t+l}, over each row's valid tokens only
    g = torch.Generator().manual_seed(0)
    B, T, gamma, lam = 5, 7, 0.9, 0.8
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    lengths = [7, 1, 4, 6, 3]
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths])
    adv, ret = gae(rewards, values, mask, gamma, lam)
    for b, n in enumerate(lengths):
        v = values[b, :n].tolist() + [0.0]
        deltas = [rewards[b, t].item() + gamma * v[t + 1] - v[t] for t in range(n)]
        expected = [sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t)) for t in range(n)]
        assert adv[b, :n].tolist() == pytest.approx(expected, abs=1e-5)
        assert ret[b, :n].tolist() == pytest.approx([a + vv for a, vv in zip(expected, v)], abs=1e-5)
        assert adv[b, n:].abs().sum().item() == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# Group and global baselines
# ---------------------------------------------------------------------------------------------------------------------


def test_grpo_advantages_hand_values():
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0, 4.0, 4.0])
    # group 1: mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1; group 2: all equal -> 0 (0 / (0 + eps))
    assert grpo_advantages(scores, 3).tolist() == pytest.approx([-1 / 1.0001, 0.0, 1 / 1.0001, 0.0, 0.0, 0.0])
    assert grpo_advantages(scores, 3, scale="none").tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="allowed: std, none"):
        grpo_advantages(scores, 3, scale="batch")
    with pytest.raises(ValueError, match="groups of n=4"):
        grpo_advantages(scores, 4)


def test_group_advantages_match_loops_on_random_inputs():
    # independent references written as loops over groups with the statistics module
    g = torch.Generator().manual_seed(1)
    scores, n = torch.randn(4 * 5, generator=g, dtype=torch.float64), 5
    grpo, rloo = grpo_advantages(scores, n), rloo_advantages(scores, n)
    for start in range(0, scores.numel(), n):
        group = scores[start : start + n].tolist()
        mean, std = statistics.fmean(group), statistics.stdev(group)
        for i, s in enumerate(group):
            assert grpo[start + i].item() == pytest.approx((s - mean) / (std + 1e-4), abs=1e-9)
            others = group[:i] + group[i + 1 :]
            assert rloo[start + i].item() == pytest.approx(s - sum(others) / len(others), abs=1e-9)
    with pytest.raises(ValueError, match="n >= 2"):
        rloo_advantages(scores, 1)


def test_reinforce_pp_hand_values():
    token_rewards = torch.tensor([[0.0, 1.0], [2.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # the 7.0 is padding
    # gamma = 1: returns-to-go [[1, 1], [2, -]]; over the valid tokens mean 4/3, population var
    # ((1/3)^2 * 2 + (2/3)^2) / 3 = 2/9, std sqrt(2)/3 -> (-1/3, -1/3, 2/3) / (sqrt(2)/3) = (-1/sqrt2, -1/sqrt2, sqrt2)
    adv = reinforce_pp_advantages(token_rewards, mask)
    assert adv.flatten().tolist() == pytest.approx([-(0.5**0.5), -(0.5**0.5), 2**0.5, 0.0], abs=1e-6)
    # gamma = 0.5: returns [[0.5, 1], [2, -]]; mean 7/6, deviations (-2/3, -1/6, 5/6), var (16 + 1 + 25) / 36 / 3
    adv = reinforce_pp_advantages(token_rewards, mask, gamma=0.5)
    std = (42 / 108) ** 0.5
    assert adv.flatten().tolist() == pytest.approx([-2 / 3 / std, -1 / 6 / std, 5 / 6 / std, 0.0], abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# KL: in the reward, in the loss, controllers
# ---------------------------------------------------------------------------------------------------------------------


def test_token_rewards_with_kl_hand_values():
    scores = torch.tensor([1.0, 2.0, 3.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.4, 9.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    r = token_rewards_with_kl(scores, kl, mask, kl_coef=0.1)
    assert r.tolist()[0] == pytest.approx([-0.01, -0.02, -0.03 + 1.0])
    assert r.tolist()[1] == pytest.approx([-0.05, -0.04 + 2.0, 0.0])  # score at the last *valid* token
    assert r.tolist()[2] == pytest.approx([0.0, 0.0, 0.0])  # no valid token, no score


def test_kl_loss_hand_values():
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # k3 at log r = 0.5 and -1.0: e^-0.5 - 1 + 0.5 and e^1 - 1 - 1
    k3 = [math.exp(-0.5) - 0.5, math.exp(1.0) - 2.0]
    assert kl_loss(logp, ref, mask).item() == pytest.approx(sum(k3) / 2)
    with pytest.raises(ValueError, match="k1"):  # zero expected gradient: refused as a loss
        kl_loss(logp, ref, mask, "k1")
    # a batch-wide denominator (e.g. 4 tokens in the whole batch) replaces this micro-batch's own count of 2
    assert kl_loss(logp, ref, mask, denom=4.0).item() == pytest.approx(sum(k3) / 4)
    assert kl_loss(logp, ref, mask, "k2", loss_agg="seq-mean-token-sum-norm", norm_len=4).item() == pytest.approx(
        (0.125 + 0.5) / 4)


def test_kl_controllers_hand_values():
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 256)
    assert fixed.value == 0.05
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(9.0, 256)  # error 9/6 - 1 = 0.5, clipped to 0.2: beta *= 1 + 0.2 * 256 / 10000
    assert ctl.value == pytest.approx(0.1 * 1.00512)
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(6.6, 256)  # error 0.1 (inside the clip): beta *= 1.00256
    assert ctl.value == pytest.approx(0.100256)
    ctl.update(0.0, 1000)  # error -1 clipped to -0.2: beta *= 1 - 0.02
    assert ctl.value == pytest.approx(0.100256 * 0.98)


# ---------------------------------------------------------------------------------------------------------------------
# Reward shaping
# ---------------------------------------------------------------------------------------------------------------------


def test_running_moments_hand_values():
    m = RunningMoments()
    assert m.normalize(torch.tensor([2.0])).tolist() == pytest.approx([2.0])  # nothing seen: identity
    m.update(torch.tensor([1.0, 2.0, 3.0]))
    m.update(torch.tensor([4.0, 5.0]))
    m.update(torch.tensor([]))
    # everything seen: 1..5, mean 3, unbiased var (4 + 1 + 0 + 1 + 4) / 4 = 2.5
    assert (m.count, m.mean, m.var) == (5, pytest.approx(3.0), pytest.approx(2.5))
    assert m.normalize(torch.tensor([3.0, 5.5])).tolist() == pytest.approx([0.0, 2.5 / 2.5**0.5])


def test_running_moments_match_the_whole_stream():
    g = torch.Generator().manual_seed(2)
    batches = [torch.randn(k, generator=g) * 3 + 10 for k in (1, 7, 64, 2)]
    m = RunningMoments()
    for b in batches:
        m.update(b)
    everything = torch.cat(batches).double()
    assert m.mean == pytest.approx(everything.mean().item(), abs=1e-9)
    assert m.std == pytest.approx(everything.std().item(), abs=1e-9)


def test_clip_and_penalties_hand_values():
    assert clip_rewards(torch.tensor([-5.0, 0.5, 7.0]), 2.0).tolist() == pytest.approx([-2.0, 0.5, 2.0])
    # 0.01 per token above 20: 10 -> 0, 20 -> 0, 35 -> 0.15
    assert length_penalty(torch.tensor([10, 20, 35]), 0.01, 20).tolist() == pytest.approx([0.0, 0.0, 0.15])
    scores, finished = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([True, False, True])
    assert missing_eos_penalty(scores, finished, 1.0).tolist() == pytest.approx([1.0, 1.0, 3.0])
    assert scores.tolist() == [1.0, 2.0, 3.0]  # not modified in place


def test_truncated_importance_weights_hand_values():
    trainer = torch.tensor([[-1.0, -2.0, -0.2, -0.5]])
    sampler = torch.tensor([[-1.1, -1.0, -1.5, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w, info = truncated_importance_weights(trainer, sampler, mask, cap=2.0)
    # log ratios 0.1, -1.0, 1.3 (padding: 0) -> ratios e^0.1, e^-1, e^1.3 = 3.67 capped at 2, padding 1
    assert w.tolist()[0] == pytest.approx([math.exp(0.1), math.exp(-1.0), 2.0, 1.0])
    assert info["tis_mean_abs_log_ratio"] == pytest.approx((0.1 + 1.0 + 1.3) / 3)
    assert info["tis_ratio_max"] == pytest.approx(math.exp(1.3))
    assert info["tis_frac_capped"] == pytest.approx(1 / 3)
    assert not w.requires_grad


def test_truncated_importance_weights_match_a_loop_on_random_inputs():
    g = torch.Generator().manual_seed(3)
    trainer, sampler = torch.randn(4, 6, generator=g) * 0.5, torch.randn(4, 6, generator=g) * 0.5
    mask = (torch.rand(4, 6, generator=g) > 0.3).float()
    w, _ = truncated_importance_weights(trainer, sampler, mask, cap=1.5)
    for b in range(4):
        for t in range(6):
            expected = min(math.exp(trainer[b, t].item() - sampler[b, t].item()), 1.5) if mask[b, t] else 1.0
            assert w[b, t].item() == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Online DPO, direct RLAIF
# ---------------------------------------------------------------------------------------------------------------------


def test_online_dpo_loss_hand_values():
    pc, pr = torch.tensor([-10.0, -5.0]), torch.tensor([-12.0, -4.0])
    rc, rr = torch.tensor([-11.0, -5.0]), torch.tensor([-11.0, -5.0])
    # pair 0: log-ratios chosen +1, rejected -1 -> -log s(0.1 * 2); pair 1: 0 and +1 -> -log s(0.1 * -1)
    l0, l1 = -math.log(sig(0.2)), -math.log(sig(-0.1))
    loss, chosen, rejected = online_dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert loss.item() == pytest.approx((l0 + l1) / 2)
    assert chosen.tolist() == pytest.approx([0.1, 0.0]) and rejected.tolist() == pytest.approx([-0.1, 0.1])
    loss, _, _ = online_dpo_loss(pc, pr, rc, rr, beta=0.1, weights=torch.tensor([1.0, 0.5]))
    assert loss.item() == pytest.approx((l0 + 0.5 * l1) / 2)


def test_pick_chosen_orders_by_the_soft_label():
    p_first = torch.tensor([0.9, 0.2, 0.5])
    chosen, rejected = pick_chosen(p_first, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0]))
    assert chosen.tolist() == [1.0, 20.0, 3.0] and rejected.tolist() == [10.0, 2.0, 30.0]  # a tie keeps the first

