"""The algorithm layer between scores and the policy's gradient: shape_scores, make_experience, policy_loss and the
batch-wide loss reduction, against hand-computed values."""

import math

import pytest
import torch

from rlaif.config import ConfigError, RLConfig
from rlaif.rl.algorithms import (
    batch_denominator,
    kl_trains,
    make_experience,
    needs_old_logprobs,
    needs_reference,
    policy_loss,
    reward_function_scores,
    shape_scores,
    token_kl,
)
from rlaif.rl.batch import Batch
from rlaif.rl.losses import RunningMoments


def batch_of(lengths, **tensors) -> Batch:
    """Responses of the given lengths, right-padded to the width of the per-token tensors given."""
    prompts = [[1, 2]] * len(lengths)
    responses = [[5] * n for n in lengths]
    b = Batch.from_token_lists(prompts, responses, pad_id=0)
    width = max([v.shape[1] for v in tensors.values() if v.dim() == 2], default=max(lengths))
    b.tensors["response_ids"] = torch.nn.functional.pad(b["response_ids"], (0, width - b["response_ids"].shape[1]))
    for k, v in tensors.items():
        b[k] = v
    return b


def test_shape_scores_order_penalties_then_normalise_then_clip():
    cfg = RLConfig(missing_eos_penalty=1.0, length_penalty=0.5, length_target=2, normalize_rewards=True,
                   reward_clip=1.0)
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    lengths = torch.tensor([1.0, 4.0, 2.0, 3.0])
    finished = torch.tensor([True, False, True, True])
    moments = RunningMoments()
    out = shape_scores(cfg, scores, lengths, finished, moments)
    # penalties in reward units first: [1, 2 - 1 - 1, 3, 4 - 0.5] = [1, 0, 3, 3.5]; then z-scored with the
    # unbiased std of those four, then clipped to [-1, 1]
    shaped = torch.tensor([1.0, 0.0, 3.0, 3.5])
    z = (shaped - shaped.mean()) / shaped.std()
    assert out.tolist() == pytest.approx(z.clamp(-1, 1).tolist(), abs=1e-6)
    assert moments.count == 4 and moments.mean == pytest.approx(1.875)


def test_make_experience_rloo_with_kl_in_the_reward_hand_values():
    # two prompts x n=2; response lengths 2, 1, 3, 2; policy minus reference log-prob 0.1 per valid token
    lengths = [2, 1, 3, 2]
    old = torch.tensor([[-1.0, -1.0, 9.0], [-1.0, 9.0, 9.0], [-1.0, -1.0, -1.0], [-1.0, -1.0, 9.0]])
    b = batch_of(lengths, scores=torch.tensor([1.0, 0.0, 2.0, 1.0]), old_logprobs=old, ref_logprobs=old - 0.1,
                 sampler_logprobs=torch.zeros(4, 3))
    cfg = RLConfig(algorithm="rloo", kl_coef=0.5, kl_estimator="k1")
    stats = make_experience(cfg, 2, 0.5, b)
    # reward = score - 0.5 * 0.1 * length: [0.9, -0.05, 1.85, 0.9]; RLOO with n=2: r_i - r_other
    seq = [0.9, -0.05, 1.85, 0.9]
    expected = [seq[0] - seq[1], seq[1] - seq[0], seq[2] - seq[3], seq[3] - seq[2]]
    adv = b["advantages"]
    for i, n in enumerate(lengths):
        assert adv[i, :n].tolist() == pytest.approx([expected[i]] * n, abs=1e-6)
        assert adv[i, n:].abs().sum() == 0  # the garbage 9.0 beyond each response never leaks in
    assert stats["kl/policy_ref"] == pytest.approx(0.1 * sum(lengths) / 4, abs=1e-6)
    assert stats["reward/with_kl"] == pytest.approx(sum(seq) / 4, abs=1e-6)


def test_make_experience_uses_the_sampler_logprobs_when_no_old_pass_ran():
    b = batch_of([2, 2], scores=torch.tensor([1.0, 0.0]), sampler_logprobs=torch.full((2, 2), -1.0),
                 ref_logprobs=torch.full((2, 2), -1.5))
    stats = make_experience(RLConfig(algorithm="grpo", kl_coef=0.0), 2, 0.0, b)
    assert stats["kl/policy_ref"] == pytest.approx(1.0)  # 0.5 per token x 2 tokens


def test_a_kl_nothing_trains_on_is_measured_apart_and_never_reported_as_zero():
    """The reference pass only measures when no KL penalty, adaptive KL or DPO reads it (kl_trains false): the
    trainer then takes it off the step and measures it with token_kl when it arrives. Bugs caught: the KL of such a
    step reported as 0 by make_experience (no ref_logprobs), a KL penalty or DPO's log-ratios taken for monitoring
    (the update would run without the reference), token_kl on other log-probs than make_experience's."""
    assert not kl_trains(RLConfig(algorithm="rloo", kl_coef=0.0))
    assert kl_trains(RLConfig(algorithm="rloo", kl_coef=0.01)) and kl_trains(RLConfig(kl_coef=0.0, kl_target=3.0))
    assert kl_trains(RLConfig(algorithm="online-dpo", kl_coef=0.0))
    b = batch_of([2, 1], scores=torch.tensor([1.0, 0.0]), sampler_logprobs=torch.full((2, 2), -1.0))
    assert "kl/policy_ref" not in make_experience(RLConfig(algorithm="grpo", kl_coef=0.0), 2, 0.0, b)
    kl = token_kl(RLConfig(kl_estimator="k1"), b, torch.full((2, 2), -1.5))
    assert kl.tolist() == [[0.5, 0.5], [0.5, 0.0]]  # per response token only
    b["old_logprobs"] = torch.full((2, 2), -2.0)  # a separate pass ran: its log-probs, as make_experience uses
    assert token_kl(RLConfig(kl_estimator="k1"), b, torch.full((2, 2), -1.5)).sum().item() == pytest.approx(-1.5)


def test_make_experience_online_dpo_follows_the_ai_label():
    b = batch_of([1, 1, 1, 1], scores=torch.tensor([0.0, 5.0, 0.0, 0.0]), sampler_logprobs=torch.zeros(4, 1),
                 p_first=torch.tensor([0.9, 0.9, 0.2, 0.2]))
    make_experience(RLConfig(algorithm="online-dpo", dpo_preference="labeler", dpo_weight_by_label=True), 2, 0.0, b)
    # the labeler prefers the first of pair 0 although the reward prefers the second: the label wins
    assert b["chosen_first"].tolist() == [True, True, False, False]
    assert b["pair_weight"].tolist() == pytest.approx([0.8, 0.8, 0.6, 0.6])
    make_experience(RLConfig(algorithm="online-dpo", dpo_preference="reward"), 2, 0.0, b)
    assert b["chosen_first"].tolist() == [False, False, True, True]  # reward tie (0, 0): the first stays chosen


def test_policy_loss_tis_weight_rides_on_the_advantage_and_masks_hold():
    cfg = RLConfig(algorithm="grpo", tis_cap=2.0, clip_eps=0.2, kl_in="reward")
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]], requires_grad=True)
    # sampler log-probs: log ratios trainer - sampler = 0.1, -1.0 | 1.3 (weight capped at 2), padding garbage
    sampler = torch.tensor([[-1.1, -1.0, 50.0], [-2.3, 7.0, 7.0]])
    adv = torch.tensor([[1.0, 1.0, 100.0], [-2.0, 100.0, 100.0]])
    b = batch_of([2, 1], advantages=adv, sampler_logprobs=sampler)
    loss, info = policy_loss(cfg, logp, b, kl_coef=0.0, denom=3.0, norm_len=3)
    # old = current (one optimizer step), ratio 1: loss = -sum(w * A) / 3 over the 3 valid tokens
    w = [math.exp(0.1), math.exp(-1.0), 2.0]
    assert loss.item() == pytest.approx(-(w[0] * 1 + w[1] * 1 + w[2] * -2.0) / 3, abs=1e-6)
    assert info["tis_ratio_max"] == pytest.approx(math.exp(1.3)) and info["tis_frac_capped"] == pytest.approx(1 / 3)
    loss.backward()
    assert logp.grad[0, 2] == 0 and logp.grad[1, 1:].abs().sum() == 0  # padding gets no gradient
    assert logp.grad[0, 0].item() == pytest.approx(-w[0] / 3, abs=1e-6)  # d(-ratio * w * A)/dlogp at ratio 1


def test_policy_loss_kl_in_the_loss_uses_k3_on_the_current_policy():
    cfg = RLConfig(algorithm="grpo", tis_cap=0.0, kl_in="loss", kl_loss_estimator="k3")
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    b = batch_of([2], advantages=torch.zeros(1, 2), sampler_logprobs=logp.detach().clone(),
                 ref_logprobs=torch.tensor([[-1.5, -1.0]]))
    loss, info = policy_loss(cfg, logp, b, kl_coef=0.1, denom=2.0, norm_len=2)
    k3 = [math.exp(-0.5) - 0.5, math.exp(1.0) - 2.0]
    assert info["kl_loss"] == pytest.approx(sum(k3) / 2, abs=1e-6)
    loss.backward()
    # d k3 / d logp = 1 - exp(ref - logp): it pulls the policy toward the reference (k1's would be 1, constant)
    assert logp.grad[0].tolist() == pytest.approx([0.1 * (1 - math.exp(-0.5)) / 2, 0.1 * (1 - math.exp(1.0)) / 2])


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_batch_wide_mean_over_micro_batches_and_ranks(agg):
    """DeepSpeed divides each micro-batch loss by the accumulation steps and averages ranks; with the batch-wide
    denominator the accumulated gradient equals that of one loss over the whole batch (token-mean: a global mean,
    not a mean of per-micro-batch means, which weighs the tokens of short micro-batches more)."""
    torch.manual_seed(0)
    lengths = [1, 4, 2, 2, 3, 1, 4, 4]  # micro-batches of 2 over 2 ranks: token counts 5, 4 | 4, 8
    cfg = RLConfig(algorithm="grpo", tis_cap=0.0, loss_agg=agg)
    adv = torch.randn(8, 4)
    b = batch_of(lengths, advantages=adv, sampler_logprobs=torch.zeros(8, 4))
    theta = torch.randn(8, 4)

    def grad_of(pieces, denom, scale):
        g = torch.zeros(8, 4)
        for rows in pieces:
            lp = (theta[rows] * 0.3).clone().requires_grad_(True)
            loss, _ = policy_loss(cfg, lp, b.select(rows), 0.0, denom, norm_len=4)
            (loss * scale).backward()
            g[rows] += lp.grad
        return g

    full = grad_of([list(range(8))], batch_denominator(cfg, b), 1.0)
    world, micro = 2, 2
    denom = batch_denominator(cfg, b) / (world * micro)
    ranks = [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
    accumulated = sum(grad_of(mbs, denom, 1.0 / micro) for mbs in ranks) / world
    assert torch.allclose(accumulated, full, atol=1e-6)
    if agg == "token-mean":  # the old reduction (each micro-batch's own mean) gives a different gradient here
        local = sum(grad_of(mbs, None, 1.0 / micro) for mbs in ranks) / world
        assert not torch.allclose(local, full, atol=1e-4)


def test_which_passes_run():
    assert not needs_old_logprobs(RLConfig(epochs=1, kl_coef=0.0))
    assert not needs_old_logprobs(RLConfig(epochs=1, kl_coef=0.1, kl_in="loss"))
    assert needs_old_logprobs(RLConfig(epochs=1, kl_coef=0.1, kl_in="reward"))
    assert needs_old_logprobs(RLConfig(epochs=2, kl_coef=0.0))
    assert needs_old_logprobs(RLConfig(epochs=1, kl_coef=0.0, kl_target=1.0))
    assert not needs_reference(RLConfig(kl_coef=0.0, measure_kl=False))
    assert needs_reference(RLConfig(kl_coef=0.0, measure_kl=True))
    assert needs_reference(RLConfig(kl_coef=0.0, measure_kl=False, algorithm="online-dpo"))


def nan_reward(prompts, responses):
    return [0.0, float("nan")]


def short_reward(prompts, responses):
    return [1.0]


def raising_reward(prompts, responses):
    raise KeyError("score")


@pytest.mark.parametrize("fn,message", [
    (nan_reward, "returned nan for response 1"), (short_reward, "returned 1 values for 2 responses"),
    (raising_reward, "failed: KeyError"),
])
def test_reward_function_errors_name_the_function(fn, message):
    with pytest.raises(ConfigError, match=message) as err:
        reward_function_scores(fn, ["p", "p"], ["a", "b"])
    assert f"tests.test_algorithms:{fn.__name__}" in str(err.value)


def test_reduce_stats_takes_the_max_of_maxima_and_the_mean_of_the_rest():
    """Over micro-batches and then over ranks (the trainer reduces each rank's reduction). Bug caught: a mean of
    per-micro-batch maxima reported as policy/tis_ratio_max (1.5 here instead of 2.0), or a key that only some
    micro-batches report averaged over all of them."""
    from actors.policy import reduce_stats

    rank0 = reduce_stats([{"policy/tis_ratio_max": 1.0, "policy/loss": 1.0},
                          {"policy/tis_ratio_max": 2.0, "policy/loss": 3.0, "policy/clip_frac": 0.5}])
    rank1 = reduce_stats([{"policy/tis_ratio_max": 1.25, "policy/loss": 0.0}])
    assert rank0 == {"policy/tis_ratio_max": 2.0, "policy/loss": 2.0, "policy/clip_frac": 0.5}
    assert reduce_stats([rank0, rank1]) == {"policy/tis_ratio_max": 2.0, "policy/loss": 1.0, "policy/clip_frac": 0.5}


def test_eval_reward_is_the_training_reward_rating_included():
    """Bug caught: eval/reward leaving out a part of the training reward (the labeler's direct rating was missing), so
    the held-out curve and the training curve measure different things. Fake roles with known values."""
    from types import SimpleNamespace

    from rlaif.config import Config
    from rlaif.rl.batch import Batch
    from rlaif.run.trainer import RLState, evaluate, reward

    cfg = Config()
    cfg.rl.use_preference_model, cfg.rl.use_labeler_rating = False, True
    batch = Batch.from_token_lists([[1], [1]], [[5, 6], [7]], pad_id=0, prompt=["p", "p"], response=["ab", "c"])

    def chars(prompts, texts):
        return [float(len(t)) for t in texts]

    def generate(prompts, n, seed):  # the eval prompt's batch; empty answers to the sycophancy probes
        if prompts == ["p"]:
            return batch
        return Batch.from_token_lists([[1]] * len(prompts), [[2]] * len(prompts), pad_id=0, prompt=list(prompts),
                                      response=[""] * len(prompts))

    roles = SimpleNamespace(pm=None, rollout=SimpleNamespace(generate=generate),
                            labeler=SimpleNamespace(rate=SimpleNamespace(remote=lambda p, t, seed: [0.5, -1.0])),
                            get=lambda ref, what: ref)
    state = RLState(kl=None, reward_fns=[chars])
    total, parts = reward(cfg, roles, state, batch, seed=3)
    assert total.tolist() == [2.5, 0.0] and parts == {"chars": 1.5, "labeler_rating": -0.25}
    out = evaluate(cfg, roles, state, ["p"])
    assert out["eval/reward"] == 1.25 and out["eval/labeler_rating"] == -0.25 and out["eval/chars"] == 1.5
