"""Policy role: one DeepSpeed ZeRO data-parallel rank per actor (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import time

import torch

from actors.group import join_group, zero_engine
from rlaif.algorithms import ALGORITHMS
from rlaif.config import Config
from rlaif.data import pad_sequences
from rlaif.losses import kl_loss, masked_mean, online_dpo_loss, ppo_policy_loss, truncated_importance_weights
from rlaif.models import (
    load_causal_lm,
    load_tokenizer,
    resolve_model_path,
    response_logprobs,
    save_pretrained_atomic,
    token_logprobs,
)


class PolicyWorker:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.algorithm = ALGORITHMS[cfg.rl.algorithm]
        self.path = resolve_model_path(cfg.policy.model.path, cfg.cache_dir)

    def setup_distributed(self, rank: int, world_size: int, master_addr: str, master_port: int) -> None:
        join_group(self.cfg.device, rank, world_size, master_addr, master_port)
        self.rank, self.world_size = rank, world_size
        torch.manual_seed(self.cfg.seed + rank)
        pc = self.cfg.policy
        model = load_causal_lm(self.path, pc.model.dtype, pc.model.trust_remote_code)
        if pc.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.tokenizer = load_tokenizer(self.path, pc.model.trust_remote_code)
        per_rank = self.cfg.rl.prompts_per_step * self.cfg.rollout.n_samples // world_size
        self.engine = zero_engine(model, pc.lr, pc.zero_stage, pc.micro_batch_size, per_rank // pc.micro_batch_size,
                                  pc.grad_clip, pc.model.dtype, pc.weight_decay)

    def logprobs(self, shard: dict[str, list]) -> list[list[float]]:
        """Log-probs of the sampled responses under the current policy: the PPO 'old' log-probs."""
        self.engine.eval()
        return response_logprobs(
            self.engine.module, shard["prompt_ids"], shard["response_ids"], self.tokenizer.pad_token_id,
            self.cfg.policy.micro_batch_size,
        )

    def _place(self, rows: list[list[float]], prompts: list[list[int]], like: torch.Tensor) -> torch.Tensor:
        """Per-response-token values laid out like the shifted action mask of the padded batch."""
        out = torch.zeros_like(like)
        for b, row in enumerate(rows):
            start = len(prompts[b]) - 1
            out[b, start : start + len(row)] = torch.tensor(row, device=like.device)
        return out

    def _loss(self, mb: dict[str, list], kl_coef: float) -> tuple[torch.Tensor, dict[str, float]]:
        rl = self.cfg.rl
        p = mb["prompt_ids"]
        ids, attn, mask = (t.to(self.engine.device) for t in pad_sequences(p, mb["response_ids"],
                                                                            self.tokenizer.pad_token_id))
        logp = token_logprobs(self.engine, ids, attn)
        if self.algorithm.pairwise:
            # Online DPO on pairs (2i, 2i+1) ordered by the AI label: sequence log-prob sums vs the reference.
            seq = (logp * mask).sum(dim=1)
            ref = (self._place(mb["ref_logprobs"], p, mask) * mask).sum(dim=1)
            first = torch.tensor(mb["chosen_first"][0::2], device=seq.device)
            pick = lambda x: (torch.where(first, x[0::2], x[1::2]), torch.where(first, x[1::2], x[0::2]))  # noqa: E731
            (pc, pr), (rc, rr) = pick(seq), pick(ref)
            weights = torch.tensor(mb["pair_weight"][0::2], device=seq.device)
            loss, chosen, rejected = online_dpo_loss(pc, pr, rc, rr, rl.dpo_beta, weights)
            return loss, {"dpo_margin": (chosen - rejected).mean().item(),
                          "dpo_accuracy": (chosen > rejected).float().mean().item()}
        old = self._place(mb["old_logprobs"], p, mask)
        adv = self._place(mb["advantages"], p, mask)
        info: dict[str, float] = {}
        if rl.tis_cap > 0:
            # Truncated importance sampling: the sampler (vLLM) and the trainer disagree slightly on log-probs.
            # A positive per-token weight scales both PPO terms alike, so it can ride on the advantage.
            w, info = truncated_importance_weights(old, self._place(mb["sampler_logprobs"], p, mask), mask, rl.tis_cap)
            adv = adv * w
        agg = {"loss_agg": self.algorithm.loss_agg, "norm_len": self.cfg.rollout.max_new_tokens}
        loss, ppo_info = ppo_policy_loss(logp, old, adv, mask, rl.clip_eps, **agg)
        info.update(ppo_info)
        if rl.kl_in == "loss":
            kl = kl_loss(logp, self._place(mb["ref_logprobs"], p, mask), mask, rl.kl_estimator, **agg)
            loss = loss + kl_coef * kl
            info["kl_loss"] = kl.item()
        return loss, info

    def train(self, shard: dict[str, list], kl_coef: float) -> dict[str, float]:
        """rl.epochs passes over this rank's shard; one optimizer step per pass (DeepSpeed accumulates)."""
        self.engine.train()
        size, t0 = self.cfg.policy.micro_batch_size, time.perf_counter()
        stats: dict[str, list[float]] = {}
        for _ in range(self.cfg.rl.epochs):
            for i in range(0, len(shard["prompt_ids"]), size):
                loss, info = self._loss({k: v[i : i + size] for k, v in shard.items()}, kl_coef)
                self.engine.backward(loss)
                self.engine.step()
                for k, v in {"loss": loss.item(), **info}.items():
                    stats.setdefault(k, []).append(v)
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        out["train_tokens"] = float(sum(len(r) for r in shard["response_ids"]) * self.cfg.rl.epochs)
        out["train_seconds"] = time.perf_counter() - t0
        return out

    def sft(self, shard: dict[str, list], lr: float) -> dict[str, float]:
        """One optimizer step of supervised fine-tuning; the loss sees only the target (response) tokens."""
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        self.engine.train()
        size, losses, tokens = self.cfg.policy.micro_batch_size, [], 0
        for i in range(0, len(shard["prompt_ids"]), size):
            p, r = shard["prompt_ids"][i : i + size], shard["response_ids"][i : i + size]
            ids, attn, mask = (t.to(self.engine.device) for t in pad_sequences(p, r, self.tokenizer.pad_token_id))
            loss = -masked_mean(token_logprobs(self.engine, ids, attn), mask)
            self.engine.backward(loss)
            self.engine.step()
            losses.append(loss.item())
            tokens += int(mask.sum().item())
        return {"sft/loss": sum(losses) / len(losses), "sft/tokens": float(tokens)}

    def _full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Every rank must call this (ZeRO-3 gathers collectively); rank 0 returns full CPU tensors."""
        import deepspeed

        module = self.engine.module
        params = list(module.parameters())
        enabled = self.cfg.policy.zero_stage == 3
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=enabled):
            if self.rank != 0:
                return None
            return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        return self._full_state_dict()

    def save(self, out_dir: str) -> str | None:
        state = self._full_state_dict()
        if self.rank != 0:
            return None
        return str(save_pretrained_atomic(self.engine.module, self.tokenizer, out_dir, state_dict=state))
