"""RL algorithms as data: from sampled responses and their scores to what the policy trains on.

The central trainer calls `shape_scores` and `make_experience` whatever the algorithm; the choice lives here, as one
small table and one function, so the trainer's loop has no algorithm branches.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlaif.config import ConfigError, RLConfig
from rlaif.losses import (
    RunningMoments,
    clip_rewards,
    gae,
    grpo_advantages,
    kl_estimate,
    length_penalty,
    masked_mean,
    masked_whiten,
    missing_eos_penalty,
    reinforce_pp_advantages,
    rloo_advantages,
    token_rewards_with_kl,
)


@dataclass(frozen=True)
class Algorithm:
    needs_critic: bool = False
    pairwise: bool = False  # trains on AI-labelled pairs (online DPO) rather than on advantages
    loss_agg: str = "token-mean"


ALGORITHMS = {
    "ppo": Algorithm(needs_critic=True),
    "grpo": Algorithm(),
    "dr-grpo": Algorithm(loss_agg="seq-mean-token-sum-norm"),
    "rloo": Algorithm(),
    "reinforce++": Algorithm(),
    "online-dpo": Algorithm(pairwise=True),
}


def load_reward_functions(specs: list[str]) -> list[Callable[[list[str], list[str]], list[float]]]:
    """Import each "package.module:function"; a bad spec fails at start-up, naming it."""
    fns = []
    for spec in specs:
        module, _, name = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"rl.reward_functions: cannot import '{spec}': {exc}") from exc
        if not callable(fn):
            raise ConfigError(f"rl.reward_functions: '{spec}' is not callable")
        fns.append(fn)
    return fns


def shape_scores(
    cfg: RLConfig, scores: torch.Tensor, lengths: torch.Tensor, finished: torch.Tensor, moments: RunningMoments
) -> torch.Tensor:
    """Penalties, then normalisation and clipping, in that order (the penalties stay in reward units)."""
    scores = missing_eos_penalty(scores, finished, cfg.missing_eos_penalty)
    scores = scores - length_penalty(lengths, cfg.length_penalty, cfg.length_target)
    if cfg.normalize_rewards:
        moments.update(scores)
        scores = moments.normalize(scores)
    if cfg.reward_clip > 0:
        scores = clip_rewards(scores, cfg.reward_clip)
    return scores


def pad_right(rows: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    x, mask = torch.zeros(len(rows), width), torch.zeros(len(rows), width)
    for i, r in enumerate(rows):
        x[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1.0
    return x, mask


def unpad(x: torch.Tensor, mask: torch.Tensor) -> list[list[float]]:
    return [row[: int(m.sum())].tolist() for row, m in zip(x, mask)]


def make_experience(
    cfg: RLConfig,
    n: int,
    kl_coef: float,
    scores: torch.Tensor,
    old_logprobs: list[list[float]],
    ref_logprobs: list[list[float]],
    values: list[list[float]] | None = None,
    p_first: list[float] | None = None,
) -> tuple[dict[str, list], dict[str, float]]:
    """Per-token advantages (and critic returns) for the configured algorithm, plus the KL it measured.

    scores: one shaped score per response, n contiguous responses per prompt. With rl.kl_in == "loss" the KL is
    left out of the reward here and added to the policy loss instead.
    """
    old, mask = pad_right(old_logprobs)
    ref, _ = pad_right(ref_logprobs)
    kl = kl_estimate(old, ref, cfg.kl_estimator) * mask
    beta = kl_coef if cfg.kl_in == "reward" else 0.0
    seq_reward = scores - beta * kl.sum(dim=1)
    name = cfg.algorithm
    out: dict[str, list] = {}
    if name == "ppo":
        v, _ = pad_right(values)
        adv, returns = gae(token_rewards_with_kl(scores, kl, mask, beta), v, mask, cfg.gamma, cfg.lam)
        adv = masked_whiten(adv, mask)
        out["returns"] = unpad(returns, mask)
    elif name in ("grpo", "dr-grpo"):
        adv = grpo_advantages(seq_reward, n, scale="std" if name == "grpo" else "none")[:, None] * mask
    elif name == "rloo":
        adv = rloo_advantages(seq_reward, n)[:, None] * mask
    elif name == "reinforce++":
        adv = reinforce_pp_advantages(token_rewards_with_kl(scores, kl, mask, beta), mask, cfg.gamma)
    elif name == "online-dpo":
        # Pairs (2i, 2i+1) ordered by the soft AI label (or by the reward); the policy's DPO loss needs only this
        # and the reference log-probs. Both members of a pair carry the pair's fields.
        if cfg.dpo_preference == "reward":
            p_first = torch.sigmoid(scores[0::2] - scores[1::2]).tolist()
        p_first = [p for p in p_first for _ in range(2)]
        out["chosen_first"] = [p >= 0.5 for p in p_first]
        out["pair_weight"] = [abs(2 * p - 1) if cfg.dpo_weight_by_label else 1.0 for p in p_first]
        adv = torch.zeros_like(mask)
    else:
        raise ValueError(f"rl.algorithm '{name}' unknown; allowed: {', '.join(ALGORITHMS)}")
    out["advantages"] = unpad(adv, mask)
    stats = {"kl/policy_ref": kl.sum(dim=1).mean().item(), "reward/shaped": seq_reward.mean().item(),
             "advantage/mean": masked_mean(adv, mask).item(), "advantage/abs_mean": masked_mean(adv.abs(), mask).item()}
    return out, stats
