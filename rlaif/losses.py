"""Losses and advantage estimators: pure tensor functions, each checked against hand-computed values."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def preference_loss(r_first: torch.Tensor, r_second: torch.Tensor, p_first: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry with soft targets: -[p log s(r1 - r2) + (1 - p) log s(r2 - r1)], batch mean."""
    margin = r_first - r_second
    return -(p_first * F.logsigmoid(margin) + (1.0 - p_first) * F.logsigmoid(-margin)).mean()


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimators of KL(policy || reference) from samples of the policy (Schulman's k1, k2, k3)."""
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl estimator '{kind}' unknown; allowed: k1, k2, k3")


def rloo_advantages(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """REINFORCE leave-one-out: each sample's baseline is the mean reward of the other n-1 in its prompt group.

    rewards is [num_prompts * n], grouped by prompt (the n samples of a prompt are contiguous).
    """
    grouped = rewards.view(-1, n)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (n - 1)
    return (grouped - baseline).view(-1)


def ppo_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate, token-level mean over the response tokens. advantages: [B, T] or [B]."""
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1).expand_as(logp)
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    loss = masked_mean(-torch.min(unclipped, clipped), mask)
    with torch.no_grad():
        clip_frac = masked_mean(((ratio - 1.0).abs() > clip_eps).float(), mask).item()
        approx_kl = masked_mean(old_logp - logp, mask).item()
    return loss, {"clip_frac": clip_frac, "approx_kl_old": approx_kl}
