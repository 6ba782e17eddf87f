"""Policy role: one DeepSpeed ZeRO data-parallel rank per actor (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from rlaif.config import Config
from rlaif.data import pad_sequences
from rlaif.losses import ppo_policy_loss
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
        self.path = resolve_model_path(cfg.policy.model.path, cfg.cache_dir)

    def setup_distributed(self, rank: int, world_size: int, master_addr: str, master_port: int) -> None:
        import deepspeed

        os.environ.update(
            MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank), WORLD_SIZE=str(world_size),
            LOCAL_RANK="0" if self.cfg.device == "cpu" else str(rank % max(torch.cuda.device_count(), 1)),
        )
        self.rank, self.world_size = rank, world_size
        torch.manual_seed(self.cfg.seed + rank)
        deepspeed.init_distributed(dist_backend="gloo" if self.cfg.device == "cpu" else "nccl")
        pc = self.cfg.policy
        model = load_causal_lm(self.path, pc.model.dtype, pc.model.trust_remote_code)
        if pc.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.tokenizer = load_tokenizer(self.path, pc.model.trust_remote_code)
        per_rank = self.cfg.rl.prompts_per_step * self.cfg.rollout.n_samples // world_size
        zero: dict[str, Any] = {"stage": pc.zero_stage}
        if pc.zero_stage == 3:  # otherwise small models are kept whole on every rank and nothing is partitioned
            zero.update(stage3_param_persistence_threshold=0, stage3_model_persistence_threshold=0)
        ds_config = {
            "train_micro_batch_size_per_gpu": pc.micro_batch_size,
            "gradient_accumulation_steps": per_rank // pc.micro_batch_size,
            "gradient_clipping": pc.grad_clip,
            "zero_optimization": zero,
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": pc.model.dtype == "bfloat16"},
            "steps_per_print": 10**9,
        }
        # torch AdamW works for every ZeRO stage on CPU; DeepSpeedCPUAdam would cost a long JIT compile.
        optimizer = torch.optim.AdamW(model.parameters(), lr=pc.lr, weight_decay=pc.weight_decay)
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)

    def logprobs(self, shard: dict[str, list]) -> list[list[float]]:
        """Log-probs of the sampled responses under the current policy: the PPO 'old' log-probs."""
        self.engine.eval()
        return response_logprobs(
            self.engine.module, shard["prompt_ids"], shard["response_ids"], self.tokenizer.pad_token_id,
            self.cfg.policy.micro_batch_size,
        )

    def train(self, shard: dict[str, list]) -> dict[str, float]:
        """rl.epochs passes of PPO-clipped updates; one optimizer step per pass (DeepSpeed accumulates)."""
        self.engine.train()
        mb, rl = self.cfg.policy.micro_batch_size, self.cfg.rl
        stats: dict[str, list[float]] = {"policy_loss": [], "clip_frac": [], "approx_kl_old": []}
        t0 = time.perf_counter()
        for _ in range(rl.epochs):
            for i in range(0, len(shard["prompt_ids"]), mb):
                p, r = shard["prompt_ids"][i : i + mb], shard["response_ids"][i : i + mb]
                ids, attn, mask = (t.to(self.engine.device) for t in pad_sequences(p, r, self.tokenizer.pad_token_id))
                old = torch.zeros_like(mask)
                for b, lps in enumerate(shard["old_logprobs"][i : i + mb]):
                    start = len(p[b]) - 1
                    old[b, start : start + len(lps)] = torch.tensor(lps, device=mask.device)
                adv = torch.tensor(shard["advantages"][i : i + mb], dtype=torch.float32, device=mask.device)
                logp = token_logprobs(self.engine, ids, attn)
                loss, info = ppo_policy_loss(logp, old, adv, mask, rl.clip_eps)
                self.engine.backward(loss)
                self.engine.step()
                stats["policy_loss"].append(loss.item())
                for k, v in info.items():
                    stats[k].append(v)
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        out["train_tokens"] = float(sum(len(r) for r in shard["response_ids"]) * rl.epochs)
        out["train_seconds"] = time.perf_counter() - t0
        return out

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
