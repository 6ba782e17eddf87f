"""Policy role: one DeepSpeed ZeRO data-parallel rank per actor (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from actors.group import full_state_dict, join_group, set_lr, use_cpu_threads, zero_engine
from rlaif.config import Config
from rlaif.models import disable_dropout, load_causal_lm, load_tokenizer, resolve_model_path, save_pretrained_atomic
from rlaif.rl.algorithms import policy_loss
from rlaif.rl.batch import Batch
from rlaif.rl.logprobs import batch_logprobs, check_packing, response_logprobs
from rlaif.rl.lora import adapters_off, apply_lora, is_lora, merged_state_dict, save_adapter, sync_items
from rlaif.rl.losses import aggregate_loss
from rlaif.rl.schedule import schedule


def reduce_stats(stats: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over micro-batches (or ranks); keys ending in "_max" take the max."""
    keys = {k for s in stats for k in s}
    return {k: (max if k.endswith("_max") else lambda v: sum(v) / len(v))([s[k] for s in stats if k in s])
            for k in keys}


class PolicyWorker:
    def __init__(self, cfg: Config) -> None:
        use_cpu_threads(cfg, "policy")
        self.cfg = cfg
        self.path = resolve_model_path(cfg.policy.model.path, cfg.cache_dir)

    def setup_distributed(self, rank: int, world_size: int, master_addr: str, master_port: int) -> None:
        join_group(self.cfg.device, rank, world_size, master_addr, master_port)
        self.rank, self.world_size = rank, world_size
        torch.manual_seed(self.cfg.seed + rank)
        pc = self.cfg.policy
        model = load_causal_lm(self.path, pc.model.dtype, pc.model.trust_remote_code, pc.model.attn_implementation)
        disable_dropout(model)  # train-mode dropout would make the first PPO ratio differ from 1
        if pc.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if pc.lora.rank:  # adapters only train; the reference is this model with them off (ref_logprobs)
            apply_lora(model, pc.lora, "policy.lora")
        self.tokenizer = load_tokenizer(self.path, pc.model.trust_remote_code)
        per_rank = self.cfg.rl.prompts_per_step * self.cfg.rollout.n_samples // world_size
        self.grad_accum = per_rank // pc.micro_batch_size
        self.engine = zero_engine(model, pc.lr, pc.zero_stage, pc.micro_batch_size, self.grad_accum, pc.grad_clip,
                                  pc.model.dtype, pc.weight_decay, pc.offload_optimizer, pc.offload_param)
        if pc.packing:  # the model as it will train (kernel, dtype, device): refuse it if packing is not exact
            check_packing(self.engine, "policy.packing")

    def logprobs(self, shard: Batch) -> torch.Tensor:
        """[B, R] log-probs of the sampled responses under the current policy (the PPO "old" log-probs), for the
        distribution they were sampled from (the batch's temperature and top-p)."""
        self.engine.eval()
        return batch_logprobs(self.engine, shard, self.cfg.policy.micro_batch_size, shard.meta["temperature"],
                              shard.meta["top_p"], self.cfg.policy.packing)

    def ref_logprobs(self, shard: Batch) -> torch.Tensor:
        """[B, R] the reference's log-probs with LoRA (policy.lora): this model with its adapters off, which is the
        model RL started from whatever the adapters have learnt (see actors/reference.py for the sampling settings)."""
        with adapters_off(self.engine.module):
            return self.logprobs(shard)

    def train(self, shard: Batch, kl_coef: float, step: int = 0) -> dict[str, float]:
        """rl.epochs passes over this rank's shard; one optimizer step per pass (DeepSpeed accumulates the
        micro-batches), at the learning rate of policy.lr_scheduler for RL step `step`. The loss is a mean over the
        whole batch (all micro-batches and ranks): shard.meta["denom"]."""
        self.engine.train()
        size, t0 = self.cfg.policy.micro_batch_size, time.perf_counter()
        micro = -(-len(shard) // size)
        if micro != self.grad_accum:
            raise ValueError(f"policy rank {self.rank}: {len(shard)} samples make {micro} micro-batches of {size}, "
                             f"but DeepSpeed accumulates {self.grad_accum}")
        denom = shard.meta["denom"] / (micro * self.world_size)
        temperature, top_p = shard.meta["temperature"], shard.meta["top_p"]
        stats, epochs = [], self.cfg.rl.epochs
        lr_of = schedule(self.cfg.policy, self.cfg.trainer.steps * epochs)
        for epoch in range(epochs):
            lr = set_lr(self.engine, lr_of(step * epochs + epoch))
            for mb in shard.chunks(size):
                logp = response_logprobs(self.engine, mb, temperature, top_p, self.cfg.policy.packing)
                loss, info = policy_loss(self.cfg.rl, logp, mb, kl_coef, denom, self.cfg.rollout.max_new_tokens)
                self.engine.backward(loss)
                self.engine.step()
                stats.append({"loss": loss.item(), "lr": lr, **info})  # mean over micro-batches, ranks: the batch's
        out = reduce_stats(stats)
        out["train_tokens"] = float(shard.token_count() * self.cfg.rl.epochs)
        out["train_seconds"] = time.perf_counter() - t0
        return out

    def sft(self, shard: Batch, lr: float) -> dict[str, float]:
        """One optimizer step of supervised fine-tuning; the loss sees only the target (response) tokens.

        The loss is the token mean over the whole batch (every micro-batch of every rank), as the RL losses are: a
        mean of per-micro-batch means would weigh the tokens of short micro-batches more."""
        set_lr(self.engine, lr)
        self.engine.train()
        size, losses = self.cfg.policy.micro_batch_size, []
        micro = -(-len(shard) // size)
        if micro != self.grad_accum:
            raise ValueError(f"policy rank {self.rank}: an SFT shard of {len(shard)} makes {micro} micro-batches of "
                             f"{size}, but DeepSpeed accumulates {self.grad_accum}")
        # DeepSpeed divides each micro-batch's loss by its accumulation steps and averages the ranks: a share of
        # the batch's tokens per micro-batch and rank makes the accumulated gradient that of the batch-wide mean.
        denom = self._batch_tokens(shard) / (micro * self.world_size)
        for mb in shard.chunks(size):
            logp = response_logprobs(self.engine, mb, packed=self.cfg.policy.packing)
            loss = aggregate_loss(-logp, mb.response_mask, "token-mean", denom=denom)
            self.engine.backward(loss)
            self.engine.step()
            losses.append(loss.item())
        # their mean over micro-batches (here) and ranks (the caller) is the batch-wide token mean
        return {"sft/loss": sum(losses) / len(losses), "sft/tokens": float(shard.token_count())}

    def _batch_tokens(self, shard: Batch) -> float:
        """Response tokens of the whole batch: this rank's shard's, summed over the ranks."""
        import torch.distributed as dist

        count = torch.tensor([float(shard.token_count())], device=self.engine.device)
        if self.world_size > 1:
            dist.all_reduce(count)
        return count.item()

    def plan_weight_sync(self, shared: bool) -> dict | None:
        """Every rank: the buckets the weights travel in. `shared`: this rank sends through a bucket-sized buffer
        that its engines map; returns the buffer's handle for them."""
        from actors.weight_sync import Param, plan_buckets, share_buffer

        self.sync_items = sync_items(self.engine.module)  # with LoRA: the merged weights, not the adapters
        shapes = [Param(n, tuple(getattr(ps[0], "ds_shape", ps[0].shape)), ps[0].dtype) for n, ps, _ in self.sync_items]
        self.sync_buckets = plan_buckets(shapes, self.cfg.rollout.sync_bucket_mb << 20)
        self.sync_group = self.sync_shared = self.sync_handle = None
        if not shared:
            return None
        nbytes = max(sum(math.prod(p.shape) for p in b) * b[0].dtype.itemsize for b in self.sync_buckets)
        self.sync_shared, self.sync_handle = share_buffer(nbytes, self.engine.device)
        return self.sync_handle

    def init_weight_sync(self, backend: str, host: str, port: int, world_size: int, timeout_s: float,
                         engines: list[int] | None = None) -> None:
        """A sending rank founds its weight-sync group (as its rank 0) with the vLLM workers of `engines`."""
        from actors.weight_sync import BroadcastGroup, release_buffer

        try:
            self.sync_group = BroadcastGroup(backend, host, port, 0, world_size, timeout_s, self.engine.device,
                                             engines)
        finally:  # every receiver mapped the file before joining; if the group failed, nobody will
            release_buffer(self.sync_handle)

    def weight_buckets(self) -> list:
        return self.sync_buckets

    def send_weights(self) -> dict[str, float]:
        """Every rank takes part (ZeRO-3 gathers bucket by bucket); the sending ranks hand each bucket on."""
        from actors.weight_sync import send_buckets

        t0 = time.perf_counter()
        sent = send_buckets(self.sync_group, self.sync_items, self.sync_buckets, self.cfg.policy.zero_stage == 3,
                            self.engine.device, self.sync_shared)
        return {"bytes": float(sent), "seconds": time.perf_counter() - t0}

    def save_checkpoint(self, folder: str) -> list[str]:
        """Every rank writes its own ZeRO shards (weights and optimizer states); returns the files it sees there, so
        the driver can check that it sees them too (output_dir on storage every node shares). With LoRA only the
        adapters are saved (the frozen base is the model the run loads anyway)."""
        self.engine.save_checkpoint(folder, tag="policy", save_latest=False,
                                    exclude_frozen_parameters=is_lora(self.engine.module))
        return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())

    def load_checkpoint(self, folder: str) -> None:
        path, _ = self.engine.load_checkpoint(folder, tag="policy", load_optimizer_states=True,
                                              load_lr_scheduler_states=True,
                                              load_module_strict=not is_lora(self.engine.module))
        if path is None:
            raise FileNotFoundError(f"policy rank {self.rank}: no DeepSpeed checkpoint in {folder}")

    def save(self, out_dir: str, card: dict[str, str]) -> str | None:
        """The policy as a Hugging Face folder with its model card (rlaif.audit.trust.model_card: every export has one).
        With LoRA the folder holds the merged model and, in adapter/, the adapter alone (peft's format). Every rank
        must call it (ZeRO-3 gathers layer by layer to rank 0, which writes)."""
        state = full_state_dict(self.engine, self.cfg.policy.zero_stage == 3, self.rank)
        if self.rank != 0:
            return None
        module, also = self.engine.module, None
        if is_lora(module):  # the merged model, and adapter/ written into the same folder before it is renamed
            adapted = state
            state = merged_state_dict(adapted, module)

            def also(folder: Path) -> None:
                save_adapter(module, adapted, folder / "adapter", self.path)
        return str(save_pretrained_atomic(module, self.tokenizer, out_dir, card, state_dict=state, also=also))
