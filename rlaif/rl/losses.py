"""Losses, advantage estimators and reward shaping for RLAIF: pure tensor functions, no Ray, no models.

Conventions: token-level tensors are [B, T] with a float action mask (1 on response tokens, 0 on prompt/padding);
sequence-level tensors are [B]. Group estimators take [num_prompts * n] with the n samples of a prompt contiguous.
Every function is checked against hand-computed values in tests/test_losses.py and, where TRL implements the same
thing, against TRL in tests/test_losses_trl.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


# ---------------------------------------------------------------------------------------------------------------------
# Reductions
# ---------------------------------------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over the positions where mask is 1 (an all-zero mask gives 0, not NaN)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit (population) variance over the valid tokens; padding becomes 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def aggregate_loss(
    loss: torch.Tensor, mask: torch.Tensor, loss_agg: str = "token-mean", norm_len: int | None = None,
    denom: float | None = None,
) -> torch.Tensor:
    """Reduce a [B, T] per-token loss to a scalar.

    token-mean: every valid token weighs the same (long responses weigh more); TRL's "dapo" (and "bnpo" per batch).
    seq-mean-token-mean: mean per response, then over responses: the GRPO paper's (and TRL's "grpo"); short
        responses weigh more per token.
    seq-mean-token-sum-norm: token sum divided by a constant norm_len, mean over responses (Dr. GRPO: no length
        bias). norm_len should be the generation budget (max new tokens); it defaults to T, which varies by batch.

    denom: the number of tokens (token-mean) or responses (seq-*) to divide by instead of this micro-batch's own.
    A trainer whose batch is split over micro-batches and ranks passes the whole batch's count divided by
    (micro-batches x ranks), so after gradient accumulation and the data-parallel mean the gradient is that of one
    global mean, not a mean of per-micro-batch means.
    """
    mask = mask.to(loss.dtype)
    if loss_agg == "token-mean":
        total = (loss * mask).sum()
        return total / (denom if denom is not None else mask.sum().clamp(min=1.0))
    if loss_agg == "seq-mean-token-mean":
        per_seq = masked_mean(loss, mask, dim=-1)
    elif loss_agg == "seq-mean-token-sum-norm":
        per_seq = (loss * mask).sum(dim=-1) / (mask.shape[-1] if norm_len is None else norm_len)
    else:
        raise ValueError(f"loss_agg '{loss_agg}' unknown; allowed: {', '.join(LOSS_AGGS)}")
    return per_seq.sum() / denom if denom is not None else per_seq.mean()


def loss_denominator(mask: torch.Tensor, loss_agg: str) -> float:
    """What aggregate_loss divides by for a whole batch: its response tokens (token-mean) or responses (seq-*)."""
    return float(mask.sum()) if loss_agg == "token-mean" else float(mask.shape[0])


# ---------------------------------------------------------------------------------------------------------------------
# Preference model
# ---------------------------------------------------------------------------------------------------------------------


def preference_loss(r_first: torch.Tensor, r_second: torch.Tensor, p_first: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry with soft targets: -[p log s(r1 - r2) + (1 - p) log s(r2 - r1)], batch mean."""
    margin = r_first - r_second
    return -(p_first * F.logsigmoid(margin) + (1.0 - p_first) * F.logsigmoid(-margin)).mean()


# ---------------------------------------------------------------------------------------------------------------------
# KL to the reference policy
# ---------------------------------------------------------------------------------------------------------------------


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimators of KL(policy || reference) from samples of the policy (Schulman's k1, k2, k3).

    k1 = log r is unbiased but can be negative; k2 = (log r)^2 / 2 is biased, low variance; k3 = (1/r - 1) + log r
    is unbiased and always >= 0 (r = policy / reference).
    """
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl estimator '{kind}' unknown; allowed: k1, k2, k3")


def token_rewards_with_kl(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """"KL in the reward" (Ziegler et al., InstructGPT, CAI): -kl_coef * kl at every response token, plus the
    sequence score at the last response token. Rows without any valid token get no score."""
    mask = mask.to(kl.dtype)
    rewards = -kl_coef * kl * mask
    last = mask.shape[1] - 1 - mask.flip(dims=[1]).argmax(dim=1)  # index of the last 1 in each row
    has_tokens = mask.sum(dim=1) > 0
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last] += torch.where(has_tokens, scores.to(rewards.dtype), torch.zeros_like(rewards[:, 0]))
    return rewards


def kl_loss(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "k3",
    loss_agg: str = "token-mean",
    norm_len: int | None = None,
    denom: float | None = None,
) -> torch.Tensor:
    """"KL in the loss" (GRPO): a differentiable KL penalty on the current policy's log-probs, added to the
    policy loss times kl_coef. k3 by default, as in DeepSeekMath; aggregate it like the policy loss. Never k1: its
    expected gradient under samples from the policy is zero."""
    if kind == "k1":
        raise ValueError("kl_loss with the k1 estimator regularises nothing (zero expected gradient); use k2 or k3")
    return aggregate_loss(kl_estimate(logp, ref_logp, kind), mask, loss_agg, norm_len, denom)


class FixedKLController:
    """Constant KL coefficient."""

    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Steer the KL coefficient so the measured KL tracks a target (Ziegler et al. 2019, eq. 2).

    e = clip(KL / target - 1, -0.2, 0.2); beta <- beta * (1 + e * n_steps / horizon).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon


# ---------------------------------------------------------------------------------------------------------------------
# Advantage estimators
# ---------------------------------------------------------------------------------------------------------------------


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016) over right-padded response tokens.

    rewards, values: [B, T]; mask: 1 on each row's contiguous response tokens. The episode ends at the last valid
    token, so the value bootstrapped beyond it is 0. Returns (advantages, returns = advantages + values), 0 on padding.
    """
    mask = mask.to(values.dtype)
    values, rewards = values * mask, rewards * mask
    advantages = torch.zeros_like(values)
    last_gae = torch.zeros_like(values[:, 0])
    T = values.shape[1]
    for t in reversed(range(T)):
        next_values = values[:, t + 1] if t + 1 < T else torch.zeros_like(last_gae)
        next_mask = mask[:, t + 1] if t + 1 < T else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last_gae = delta + gamma * lam * next_mask * last_gae
        advantages[:, t] = last_gae
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def _check_groups(scores: torch.Tensor, n: int) -> None:
    if n < 2:
        raise ValueError(f"group estimators need n >= 2 samples per prompt, got n={n}")
    if scores.numel() % n:
        raise ValueError(f"{scores.numel()} scores do not split into groups of n={n}")


def grpo_advantages(scores: torch.Tensor, n: int, scale: str = "std", eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantage: score minus its prompt group's mean, divided by the group's std (GRPO,
    DeepSeekMath) or not (scale="none", Dr. GRPO: the std division up-weights too-easy/too-hard prompts).

    std is the unbiased sample std, eps=1e-4 as in TRL. scores: [num_prompts * n], groups contiguous.
    """
    _check_groups(scores, n)
    grouped = scores.view(-1, n)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "std":
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + eps)
    elif scale != "none":
        raise ValueError(f"scale '{scale}' unknown; allowed: std, none")
    return advantages.view(-1)


def rloo_advantages(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """REINFORCE leave-one-out: each sample's baseline is the mean reward of the other n-1 in its prompt group.

    rewards is [num_prompts * n], grouped by prompt (the n samples of a prompt are contiguous).
    """
    _check_groups(rewards, n)
    grouped = rewards.view(-1, n)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (n - 1)
    return (grouped - baseline).view(-1)


def reinforce_pp_advantages(
    token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, eps: float = 1e-8
) -> torch.Tensor:
    """REINFORCE++ (Hu 2025): discounted return-to-go at each token, then whitened over all valid tokens of the
    batch (a global baseline instead of a critic or a per-prompt group). Population std, as in OpenRLHF."""
    mask = mask.to(token_rewards.dtype)
    rewards = token_rewards * mask
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return masked_whiten(returns * mask, mask, eps)


# ---------------------------------------------------------------------------------------------------------------------
# Policy and value losses
# ---------------------------------------------------------------------------------------------------------------------


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    *,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    loss_agg: str = "token-mean",
    norm_len: int | None = None,
    denom: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate over the response tokens. advantages: [B, T] or [B].

    clip_eps_high: upper clip 1 + clip_eps_high (DAPO "clip-higher"); defaults to clip_eps.
    dual_clip: for negative advantages also bound the loss by -dual_clip * A (Ye et al. 2020, OpenRLHF), so a
        huge ratio on a bad token cannot blow the update up; must be > 1.
    loss_agg / norm_len / denom: see aggregate_loss.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1).expand_as(logp)
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + eps_high) * advantages
    surrogate = torch.min(unclipped, clipped)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        surrogate = torch.where(advantages < 0, torch.max(surrogate, dual_clip * advantages), surrogate)
    loss = aggregate_loss(-surrogate, mask, loss_agg, norm_len, denom)
    with torch.no_grad():
        info = {
            "clip_frac": masked_mean(((ratio < 1.0 - clip_eps) | (ratio > 1.0 + eps_high)).float(), mask).item(),
            "approx_kl_old": masked_mean(old_logp - logp, mask).item(),
        }
        if dual_clip is not None:
            info["dual_clip_frac"] = masked_mean(((advantages < 0) & (ratio > dual_clip)).float(), mask).item()
    return loss, info


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    loss_agg: str = "token-mean",
    denom: float | None = None,
) -> tuple[torch.Tensor, float]:
    """PPO value loss with clipping: 0.5 * max((v - R)^2, (v_clip - R)^2), v_clip = old + clip(v - old, +-eps),
    so the critic cannot move far from the values the advantages were computed with. Returns (loss, clip_frac):
    the fraction of tokens where the clipped term is the larger one."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * aggregate_loss(torch.max(unclipped_loss, clipped_loss), mask, loss_agg, denom=denom)
    with torch.no_grad():
        clip_frac = masked_mean((clipped_loss > unclipped_loss).float(), mask).item()
    return loss, clip_frac


def truncated_importance_weights(
    trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, cap: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Truncated importance sampling (TIS) for the sampler/trainer mismatch: vLLM's log-probs differ slightly from
    the trainer's, so samples are slightly off-policy. w = min(pi_trainer / pi_sampler, cap) per token, detached;
    1 on padding. Metrics measure the mismatch: mean |log ratio|, max ratio (key ending in "_max": reduce it with
    max, not mean, across micro-batches and ranks), fraction of tokens capped."""
    with torch.no_grad():
        mask = mask.to(trainer_logp.dtype)
        log_ratio = (trainer_logp - sampler_logp) * mask
        ratio = torch.exp(log_ratio)
        weights = torch.clamp(ratio, max=cap)
        valid = mask > 0
        info = {
            "tis_mean_abs_log_ratio": masked_mean(log_ratio.abs(), mask).item(),
            "tis_ratio_max": ratio[valid].max().item() if valid.any() else 1.0,
            "tis_frac_capped": masked_mean((ratio > cap).float(), mask).item(),
        }
    return weights, info


# ---------------------------------------------------------------------------------------------------------------------
# Online DPO from AI labels
# ---------------------------------------------------------------------------------------------------------------------


def pick_chosen(
    p_first: torch.Tensor, first: torch.Tensor, second: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Order each pair by the soft AI label p_first = P(first is better): returns (chosen, rejected).

    A tie (p = 0.5) keeps the first as chosen, as TRL's online DPO does; weight such pairs by |2p - 1| = 0.
    """
    first_wins = p_first >= 0.5
    return torch.where(first_wins, first, second), torch.where(first_wins, second, first)


def online_dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO loss (Rafailov et al.) on sequence log-prob sums: -log s(beta * (chosen - rejected log-ratio)).

    weights: optional per-pair weights (e.g. |2p - 1| from a soft AI label, so near-ties teach little); the loss is
    mean(weights * per-pair loss), not renormalized by the weights. Returns (loss, chosen_rewards, rejected_rewards),
    the implicit rewards beta * (policy - reference) log-prob, detached, for logging margins and accuracy.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    if weights is not None:
        losses = losses * weights
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return losses.mean(), chosen_rewards, rejected_rewards


# ---------------------------------------------------------------------------------------------------------------------
# Reward shaping
# ---------------------------------------------------------------------------------------------------------------------


class RunningMoments:
    """Mean and std of every reward seen so far, merged batch by batch (Chan et al.'s parallel update of
    Welford's algorithm), in float64, for normalising PM scores whose scale drifts between PMs and runs."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean

    @property
    def var(self) -> float:
        """Unbiased variance of everything seen (1.0 before two values were seen, so normalize is a shift)."""
        return self.m2 / (self.count - 1) if self.count > 1 else 1.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def update(self, batch: torch.Tensor) -> None:
        x = batch.detach().double().flatten()
        n = x.numel()
        if n == 0:
            return
        batch_mean = x.mean().item()
        batch_m2 = ((x - batch_mean) ** 2).sum().item()
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta**2 * self.count * n / total
        self.count = total

    def normalize(self, x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        return (x - self.mean) / (self.std + eps)


def clip_rewards(x: torch.Tensor, clip: float) -> torch.Tensor:
    """Clamp rewards to [-clip, clip] so a few outlier PM scores cannot dominate an update."""
    return x.clamp(-clip, clip)


def length_penalty(lengths: torch.Tensor, coef: float, target: float) -> torch.Tensor:
    """Penalty (>= 0, to subtract from the score) of coef per token above target: counters the PM's length bias."""
    return coef * (lengths.to(torch.get_default_dtype()) - target).clamp(min=0.0)


def missing_eos_penalty(scores: torch.Tensor, finished: torch.Tensor, penalty: float) -> torch.Tensor:
    """Subtract a constant from the scores of responses that did not end with EOS (TRL's missing_eos_penalty):
    truncated rambling should not be rewarded for whatever it said before the cut."""
    return scores - penalty * (~finished.bool()).to(scores.dtype)

