"""rlaif.rl.losses against TRL (the pinned dev dependency trl==1.16.0) on random inputs, to 1e-6.

TRL 1.16 keeps these computations inline in trainer methods, so the tests call the real methods on a trainer built
with object.__new__ and only the attributes the method reads; model calls (log-probs, generation, reward functions)
are replaced by the random tensors under test. What is compared:

- GRPOTrainer._compute_loss (loss_type grpo / bnpo / dr_grpo, epsilon_low != epsilon_high, beta > 0, vLLM importance
  sampling ratio) vs ppo_policy_loss(loss_agg=...) + beta * kl_loss(kind="k3") and truncated_importance_weights.
- OnlineDPOTrainer.training_step (sigmoid loss, missing_eos_penalty, chosen/rejected by score) vs missing_eos_penalty,
  pick_chosen and online_dpo_loss.
- trl.trainer.utils.nanstd, the std TRL's GRPO advantages use, vs grpo_advantages' std convention.

Absent from TRL 1.16 (PPOTrainer, AdaptiveKLController, RunningMoments exist only in older TRL releases), so checked
only in tests/test_losses.py, against hand values and loop implementations: gae, value_loss, AdaptiveKLController,
RunningMoments, reinforce_pp_advantages, token_rewards_with_kl, length_penalty. The RLOO/GRPO
advantages and the vLLM IS ratio are inline in TRL's generation methods (not callable without a model and a sampler);
they are checked there against loops too.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from trl.experimental.online_dpo.online_dpo_trainer import OnlineDPOTrainer
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.utils import nanstd

from rlaif.rl.losses import (
    grpo_advantages,
    kl_loss,
    missing_eos_penalty,
    online_dpo_loss,
    pick_chosen,
    ppo_policy_loss,
    truncated_importance_weights,
)

TOL = 1e-6
ACCELERATOR = SimpleNamespace(  # one process: gather/reduce are identities
    gather=lambda x: x, gather_for_metrics=lambda x: x, reduce=lambda x, reduction="sum": x,
    backward=lambda loss, **kwargs: None,
)


def random_batch(seed: int, B: int = 6, T: int = 9) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).double()
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    return {
        "logp": logp,
        "old": logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64),  # ratios well outside the clip
        "ref": logp + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64),
        "sampler": logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64),
        "adv": torch.randn(B, generator=g, dtype=torch.float64),
        "mask": mask,
    }


def trl_grpo_loss(
    batch: dict[str, torch.Tensor], loss_type: str, beta: float, eps_low: float, eps_high: float, max_len: int,
    is_ratio: torch.Tensor | None = None,
) -> torch.Tensor:
    """GRPOTrainer._compute_loss with the policy forward replaced by batch["logp"]."""
    trainer = object.__new__(GRPOTrainer)
    logp, mask = batch["logp"], batch["mask"]
    B, T = logp.shape
    trainer.__dict__.update(
        _get_per_token_logps_and_entropies=lambda *args, **kwargs: (logp, torch.zeros_like(logp), None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level="token", beta=beta, loss_type=loss_type, epsilon_low=eps_low,
        epsilon_high=eps_high, args=SimpleNamespace(delta=None, use_bias_correction_kl=False),
        use_vllm=is_ratio is not None, vllm_importance_sampling_correction=True,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, max_completion_length=max_len,
        _entropy_bonus_enabled=False, _metrics={"train": defaultdict(list)}, accelerator=ACCELERATOR,
    )
    inputs = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
        "advantages": batch["adv"], "old_per_token_logps": batch["old"], "ref_per_token_logps": batch["ref"],
    }
    if is_ratio is not None:
        inputs["importance_sampling_ratio"] = is_ratio
    return trainer._compute_loss(None, inputs)


@pytest.mark.parametrize(
    ("loss_type", "loss_agg"),
    [("bnpo", "token-mean"), ("grpo", "seq-mean-token-mean"), ("dr_grpo", "seq-mean-token-sum-norm")],
)
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_policy_loss_and_k3_kl_loss_match_trl_grpo(loss_type: str, loss_agg: str, beta: float):
    for seed in range(5):
        b = random_batch(seed)
        max_len = b["mask"].shape[1] + 3  # Dr. GRPO's constant: the generation budget, not this batch's width
        expected = trl_grpo_loss(b, loss_type, beta, eps_low=0.2, eps_high=0.28, max_len=max_len)
        loss, _ = ppo_policy_loss(b["logp"], b["old"], b["adv"], b["mask"], 0.2, clip_eps_high=0.28,
                                  loss_agg=loss_agg, norm_len=max_len)
        loss = loss + beta * kl_loss(b["logp"], b["ref"], b["mask"], "k3", loss_agg=loss_agg, norm_len=max_len)
        assert loss.item() == pytest.approx(expected.item(), abs=TOL)


def test_truncated_is_weights_on_the_advantage_match_trl_grpo_vllm_correction():
    # TRL multiplies the per-token PPO loss by the IS ratio; the policy actor scales the advantage instead
    # (equal for positive weights). The ratio is TRL's token_truncate mode: exp(old - sampler) clamped at C_max.
    cap = 1.3
    for seed in range(5):
        b = random_batch(seed)
        w, _ = truncated_importance_weights(b["old"], b["sampler"], b["mask"], cap)
        expected = trl_grpo_loss(b, "bnpo", 0.0, 0.2, 0.2, max_len=9, is_ratio=w)
        adv = b["adv"][:, None] * w
        loss, _ = ppo_policy_loss(b["logp"], b["old"], adv, b["mask"], 0.2)
        assert loss.item() == pytest.approx(expected.item(), abs=TOL)
        assert (w <= cap).all() and (w[b["mask"] == 0] == 1).all()


def trl_online_dpo_step(
    logps: torch.Tensor, ref_logps: torch.Tensor, completion_ids: torch.Tensor, completion_mask: torch.Tensor,
    rewards: torch.Tensor, beta: float, eos_id: int, penalty: float | None,
) -> tuple[torch.Tensor, dict[str, list[float]]]:
    """OnlineDPOTrainer.training_step with generation, the forward passes and the reward functions replaced."""
    trainer = object.__new__(OnlineDPOTrainer)
    policy, ref = SimpleNamespace(train=lambda: None), object()
    num_prompts = logps.shape[0] // 2
    trainer.__dict__.update(
        args=SimpleNamespace(use_vllm=False, missing_eos_penalty=penalty, loss_type="sigmoid",
                             torch_empty_cache_steps=None, optim="adamw_torch", n_gpu=1,
                             gradient_accumulation_steps=1),
        _generate=lambda model, prompts, images: (torch.zeros(2 * num_prompts, 1, dtype=torch.long),
                                                  torch.ones(2 * num_prompts, 1, dtype=torch.long),
                                                  completion_ids, completion_mask, None),
        _forward=lambda model, *args: logps if model is policy else ref_logps,
        _calculate_rewards_from_functions=lambda **kwargs: rewards.clone(),
        eos_token_ids=[eos_id], ref_model=ref, reward_funcs=[None], _beta=beta, stats=defaultdict(list),
        processing_class=SimpleNamespace(batch_decode=lambda ids, skip_special_tokens: ["x"] * len(ids)),
        accelerator=ACCELERATOR,
    )
    loss = trainer.training_step(policy, {"prompt": ["p"] * num_prompts})
    return loss, trainer.stats


@pytest.mark.parametrize("penalty", [None, 1.0])
def test_online_dpo_and_missing_eos_penalty_match_trl(penalty: float | None):
    eos_id, beta, num_prompts, T = 2, 0.1, 8, 7
    flipped = 0  # pairs whose order the penalty changes: the comparison must exercise it
    for seed in range(5):
        g = torch.Generator().manual_seed(100 + seed)
        lengths = torch.randint(1, T + 1, (2 * num_prompts,), generator=g)
        mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
        completion_ids = torch.randint(3, 50, (2 * num_prompts, T), generator=g)
        finished = torch.rand(2 * num_prompts, generator=g) < 0.5
        completion_ids[finished, lengths[finished] - 1] = eos_id  # the finished ones end with EOS
        logps = -torch.rand(2 * num_prompts, T, generator=g, dtype=torch.float64) * 3
        ref_logps = logps + 0.5 * torch.randn(2 * num_prompts, T, generator=g, dtype=torch.float64)
        rewards = torch.randn(2 * num_prompts, generator=g, dtype=torch.float64) * 0.5
        expected, stats = trl_online_dpo_step(logps, ref_logps, completion_ids, mask, rewards, beta, eos_id, penalty)

        scores = missing_eos_penalty(rewards, finished, penalty or 0.0)
        first, second = scores.split(num_prompts)
        p_first = (first >= second).double()  # a hard label from the scores, as TRL's online DPO
        flipped += ((first >= second) != (rewards[:num_prompts] >= rewards[num_prompts:])).sum().item()
        seq, ref_seq = (logps * mask).sum(dim=1), (ref_logps * mask).sum(dim=1)
        pc, pr = pick_chosen(p_first, seq[:num_prompts], seq[num_prompts:])
        rc, rr = pick_chosen(p_first, ref_seq[:num_prompts], ref_seq[num_prompts:])
        loss, chosen, rejected = online_dpo_loss(pc, pr, rc, rr, beta)

        assert loss.item() == pytest.approx(expected.item(), abs=TOL)
        assert stats["objective/scores"][0] == pytest.approx(scores.mean().item(), abs=TOL)
        assert stats["rewards/chosen"][0] == pytest.approx(chosen.mean().item(), abs=TOL)
        assert stats["rewards/rejected"][0] == pytest.approx(rejected.mean().item(), abs=TOL)
        assert stats["rewards/accuracies"][0] == pytest.approx((chosen > rejected).double().mean().item(), abs=TOL)
    assert penalty is None or flipped > 0


def test_grpo_advantage_std_convention_matches_trl_nanstd():
    # TRL's GRPO: (r - group mean) / (nanstd(group) + 1e-4); nanstd is TRL's callable, the rest is one line inline
    g = torch.Generator().manual_seed(7)
    scores, n = torch.randn(5 * 4, generator=g, dtype=torch.float64), 4
    grouped = scores.view(-1, n)
    expected = (grouped - grouped.mean(dim=1, keepdim=True)) / (nanstd(grouped, dim=1).unsqueeze(1) + 1e-4)
    assert torch.allclose(grpo_advantages(scores, n), expected.view(-1), atol=TOL, rtol=0)
