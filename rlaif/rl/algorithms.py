"""RL algorithms as data: from sampled responses and their scores to what the policy trains on.

The central trainer calls `shape_scores` and `make_experience` whatever the algorithm, and every policy rank calls
`policy_loss`; the choice lives here, in these functions over one small table (ALGORITHMS: which algorithm needs a
critic or trains on pairs, kept in rlaif/config/algorithms.py so that the config's placement checks can read it), so
the trainer's loop and the policy actor have no algorithm branches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlaif.config import ALGORITHMS, Algorithm, ConfigError, RLConfig, import_callable, needs_reference  # noqa: F401
from rlaif.rl.batch import Batch
from rlaif.rl.losses import (
    RunningMoments,
    clip_rewards,
    gae,
    grpo_advantages,
    kl_estimate,
    kl_loss,
    length_penalty,
    loss_denominator,
    masked_mean,
    masked_whiten,
    missing_eos_penalty,
    online_dpo_loss,
    ppo_policy_loss,
    reinforce_pp_advantages,
    rloo_advantages,
    token_rewards_with_kl,
    truncated_importance_weights,
)


def load_reward_functions(specs: list[str]) -> list[Callable[[list[str], list[str]], list[float]]]:
    """Import each "package.module:function"; a bad spec fails at start-up, naming it."""
    return [import_callable(spec, "rl.reward_functions") for spec in specs]


def reward_function_scores(fn: Callable, prompts: list[str], responses: list[str]) -> torch.Tensor:
    """One rule-based reward function's scores, checked: an exception, a wrong count or a non-finite value fails the
    run with the function's name instead of training on garbage."""
    name = f"{fn.__module__}:{fn.__name__}"
    try:
        values = fn(prompts, responses)
        out = torch.as_tensor(values, dtype=torch.float32).flatten()
    except Exception as exc:
        raise ConfigError(f"rl.reward_functions: '{name}' failed: {type(exc).__name__}: {exc}") from exc
    if out.numel() != len(responses):
        raise ConfigError(f"rl.reward_functions: '{name}' returned {out.numel()} values for {len(responses)} "
                          "responses")
    bad = (~torch.isfinite(out)).nonzero().flatten().tolist()
    if bad:
        i = bad[0]
        raise ConfigError(f"rl.reward_functions: '{name}' returned {out[i].item()} for response {i} "
                          f"({responses[i][:60]!r}); rewards must be finite numbers")
    return out


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


def loss_agg(cfg: RLConfig) -> str:
    """The policy-loss reduction in use (rl.loss_agg, or the algorithm's own when "auto")."""
    return ALGORITHMS[cfg.algorithm].loss_agg if cfg.loss_agg == "auto" else cfg.loss_agg


def kl_trains(cfg: RLConfig) -> bool:
    """Does the update read the reference log-probs (KL in the reward or the loss, DPO's log-ratios)? If not, the
    reference pass only measures kl/policy_ref (rl.measure_kl) and need not hold the step."""
    return cfg.kl_coef > 0 or cfg.kl_target > 0 or ALGORITHMS[cfg.algorithm].pairwise


def token_kl(cfg: RLConfig, batch: Batch, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || reference) estimate (rl.kl_estimator) on the response tokens; the policy's log-probs
    are batch["old_logprobs"], or the sampler's when no separate pass ran."""
    policy_lp = batch["old_logprobs"] if "old_logprobs" in batch else batch["sampler_logprobs"]
    return kl_estimate(policy_lp, ref_logprobs, cfg.kl_estimator) * batch.response_mask


def needs_old_logprobs(cfg: RLConfig) -> bool:
    """Does the update need a separate pass for the policy's log-probs before training?

    With one epoch the policy takes exactly one optimizer step per batch, so its log-probs at the start of the
    update are the ones the loss computes anyway: "old" is the current forward, detached (as TRL does). A reward-side
    KL needs them before the advantages are computed, so it keeps the pass.
    """
    kl_in_reward = cfg.kl_in == "reward" and (cfg.kl_coef > 0 or cfg.kl_target > 0)
    return cfg.epochs > 1 or kl_in_reward


def make_experience(cfg: RLConfig, n: int, kl_coef: float, batch: Batch) -> dict[str, float]:
    """Per-token advantages (and critic returns) for the configured algorithm, written into the batch, plus the KL
    it measured.

    Reads batch["scores"] (one shaped score per response, n contiguous responses per prompt), the policy's log-probs
    (batch["old_logprobs"], or the sampler's when no separate pass ran), batch["ref_logprobs"] when present and
    batch["values"] for PPO. With rl.kl_in == "loss" the KL is left out of the reward and added to the policy loss.
    """
    mask, scores = batch.response_mask, batch["scores"]
    kl = token_kl(cfg, batch, batch["ref_logprobs"]) if "ref_logprobs" in batch else torch.zeros_like(mask)
    beta = kl_coef if cfg.kl_in == "reward" else 0.0
    seq_reward = scores - beta * kl.sum(dim=1)
    name = cfg.algorithm
    if name == "ppo":
        adv, returns = gae(token_rewards_with_kl(scores, kl, mask, beta), batch["values"], mask, cfg.gamma, cfg.lam)
        adv = masked_whiten(adv, mask)
        batch["returns"] = returns
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
            p_first = torch.sigmoid(scores[0::2] - scores[1::2]).repeat_interleave(2)
        else:
            p_first = batch["p_first"]  # per sample: its pair's AI label
        batch["chosen_first"] = p_first >= 0.5
        batch["pair_weight"] = (2 * p_first - 1).abs() if cfg.dpo_weight_by_label else torch.ones_like(p_first)
        adv = torch.zeros_like(mask)
    else:
        raise ValueError(f"rl.algorithm '{name}' unknown; allowed: {', '.join(ALGORITHMS)}")
    batch["advantages"] = adv
    kl_stat = {"kl/policy_ref": kl.sum(dim=1).mean().item()} if "ref_logprobs" in batch else {}  # else not measured
    return {**kl_stat, "reward/with_kl": seq_reward.mean().item(),
            "advantage/mean": masked_mean(adv, mask).item(), "advantage/abs_mean": masked_mean(adv.abs(), mask).item()}


def policy_loss(cfg: RLConfig, logp: torch.Tensor, mb: Batch, kl_coef: float, denom: float, norm_len: int
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """The policy's loss on one micro-batch, given its current log-probs logp [B, R].

    denom: the batch-wide count aggregate_loss divides by (tokens, responses or pairs), already divided by
    micro-batches x ranks. Advantage algorithms: PPO's clipped surrogate with the truncated importance weight for the
    sampler/trainer mismatch riding on the advantage, plus beta * KL when the KL is in the loss. online-dpo: DPO on
    the pairs (2i, 2i + 1).
    """
    mask = mb.response_mask
    if ALGORITHMS[cfg.algorithm].pairwise:
        seq, ref = (logp * mask).sum(dim=1), (mb["ref_logprobs"] * mask).sum(dim=1)
        first = mb["chosen_first"][0::2]

        def pick(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.where(first, x[0::2], x[1::2]), torch.where(first, x[1::2], x[0::2])

        (pc, pr), (rc, rr) = pick(seq), pick(ref)
        loss, chosen, rejected = online_dpo_loss(pc, pr, rc, rr, cfg.dpo_beta, mb["pair_weight"][0::2])
        loss = loss * len(pc) / denom  # mean over this micro-batch's pairs -> share of the batch-wide mean
        return loss, {"dpo_margin": (chosen - rejected).mean().item(),
                      "dpo_accuracy": (chosen > rejected).float().mean().item()}
    # One optimizer step per batch: the "old" policy is the current one (see needs_old_logprobs).
    old = mb["old_logprobs"] if "old_logprobs" in mb else logp.detach()
    adv, info = mb["advantages"], {}
    # The sampler (vLLM; in async mode also one update behind) and the trainer disagree slightly on log-probs:
    # always measured; with rl.tis_cap > 0 corrected by a truncated importance weight. A positive per-token weight
    # scales both PPO terms alike, so it can ride on the advantage.
    w, info = truncated_importance_weights(old, mb["sampler_logprobs"], mask, cfg.tis_cap or float("inf"))
    if cfg.tis_cap > 0:
        adv = adv * w
    agg = {"loss_agg": loss_agg(cfg), "norm_len": norm_len, "denom": denom}
    loss, ppo_info = ppo_policy_loss(logp, old, adv, mask, cfg.clip_eps, **agg)
    info.update(ppo_info)
    if cfg.kl_in == "loss":
        kl = kl_loss(logp, mb["ref_logprobs"], mask, cfg.kl_loss_estimator, **agg)
        loss = loss + kl_coef * kl
        info["kl_loss"] = kl.item()
    return loss, info


def sampler_metrics(step: int, batch: Batch, train_metrics: dict[str, float]) -> dict[str, float]:
    """How far the samples are from the policy that trains on them at `step`.

    rollout/staleness: updates behind it, counted from the oldest weights in the batch (batch.meta["weight_version"]
    is its oldest engine's). The trainer-vs-vLLM log-prob gap per token (policy/tis_mean_abs_log_ratio) is the
    numerical mismatch only on a batch sampled with the same weights: logprob/vllm_vs_trainer_abs_diff, on-policy
    batches only; on a stale batch (async mode) it is dominated by the policy's change since: logprob/lag_abs_diff.
    """
    staleness = step - batch.meta["weight_version"]
    out = {"rollout/staleness": float(staleness)}
    if "tis_mean_abs_log_ratio" in train_metrics:
        key = "logprob/vllm_vs_trainer_abs_diff" if staleness == 0 else "logprob/lag_abs_diff"
        out[key] = train_metrics["tis_mean_abs_log_ratio"]
    return out


def batch_denominator(cfg: RLConfig, batch: Batch) -> float:
    """The batch-wide count the policy loss is a mean over: tokens, responses, or pairs (online DPO)."""
    if ALGORITHMS[cfg.algorithm].pairwise:
        return len(batch) / 2
    return loss_denominator(batch.response_mask, loss_agg(cfg))
