"""Critic role: a value model (LM + scalar head per token) trained by DeepSpeed ZeRO alongside the policy (PPO)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from actors.group import join_group, set_lr, use_cpu_threads, zero_engine
from rlaif.config import Config
from rlaif.models import disable_dropout, load_scalar_model, resolve_model_path
from rlaif.rl.algorithms import loss_agg
from rlaif.rl.batch import Batch
from rlaif.rl.logprobs import check_packing, response_values
from rlaif.rl.lora import apply_lora, is_lora
from rlaif.rl.losses import value_loss
from rlaif.rl.schedule import schedule


class CriticWorker:
    def __init__(self, cfg: Config) -> None:
        use_cpu_threads(cfg, "policy")
        self.cfg = cfg
        self.path = resolve_model_path(cfg.critic.model.path or cfg.policy.model.path, cfg.cache_dir)

    def setup_distributed(self, rank: int, world_size: int, master_addr: str, master_port: int) -> None:
        join_group(self.cfg.device, rank, world_size, master_addr, master_port)
        cc, mb = self.cfg.critic, self.cfg.policy.micro_batch_size
        torch.manual_seed(self.cfg.seed + 17)
        model = load_scalar_model(self.path, cc.model.dtype, cc.model.trust_remote_code, cc.model.attn_implementation)
        disable_dropout(model)
        if cc.lora.rank:  # adapters on the LM, the value head whole (critic.lora)
            apply_lora(model, cc.lora, "critic.lora")
        self.world_size, self.rank = world_size, rank
        per_rank = self.cfg.rl.prompts_per_step * self.cfg.rollout.n_samples // world_size
        self.engine = zero_engine(model, cc.lr, cc.zero_stage, mb, per_rank // mb, self.cfg.policy.grad_clip,
                                  cc.model.dtype)
        if cc.packing:  # as the policy's: refuse a model whose packed values are not its unpacked ones
            check_packing(self.engine.module, "critic.packing", values=True)

    @torch.no_grad()
    def values(self, shard: Batch) -> torch.Tensor:
        """[B, R] V(s_t) before each response token."""
        self.engine.eval()
        parts = [response_values(self.engine.module, mb, self.cfg.critic.packing).cpu()
                 for mb in shard.chunks(self.cfg.policy.micro_batch_size)]
        width = shard["response_ids"].shape[1]
        return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])

    def train(self, shard: Batch, step: int = 0) -> dict[str, float]:
        """Clipped value regression onto the GAE returns, rl.epochs passes at critic.lr_scheduler's rate for RL step
        `step`; reduced like the policy loss, over the whole batch (shard.meta["denom"])."""
        self.engine.train()
        size, t0, losses, clips = self.cfg.policy.micro_batch_size, time.perf_counter(), [], []
        agg = loss_agg(self.cfg.rl)
        micro = -(-len(shard) // size)
        denom = shard.meta["denom"] / (micro * self.world_size)
        epochs = self.cfg.rl.epochs
        lr_of = schedule(self.cfg.critic, self.cfg.trainer.steps * epochs)
        for epoch in range(epochs):
            lr = set_lr(self.engine, lr_of(step * epochs + epoch))
            for mb in shard.chunks(size):
                values = response_values(self.engine.module, mb, self.cfg.critic.packing)
                loss, clip_frac = value_loss(values, mb["values"], mb["returns"],
                                             mb.response_mask, self.cfg.rl.value_clip, agg, denom)
                self.engine.backward(loss)
                self.engine.step()
                losses.append(loss.item())
                clips.append(clip_frac)
        return {"critic/value_loss": sum(losses) / len(losses), "critic/clip_frac": sum(clips) / len(clips),
                "critic/seconds": time.perf_counter() - t0, "critic/lr": lr}


    def save_checkpoint(self, folder: str) -> list[str]:
        """Every rank writes its own ZeRO shards (weights and optimizer states); returns the files it sees there, so
        the driver can check that it sees them too (output_dir on storage every node shares)."""
        self.engine.save_checkpoint(folder, tag="critic", save_latest=False,
                                    exclude_frozen_parameters=is_lora(self.engine.module))  # LoRA: adapters, head
        return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())

    def load_checkpoint(self, folder: str) -> None:
        path, _ = self.engine.load_checkpoint(folder, tag="critic", load_optimizer_states=True,
                                              load_module_strict=not is_lora(self.engine.module))
        if path is None:
            raise FileNotFoundError(f"critic rank {self.rank}: no DeepSpeed checkpoint in {folder}")
