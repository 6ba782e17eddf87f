"""Critic role: a value model (LM + scalar head per token) trained by DeepSpeed ZeRO alongside the policy (PPO)."""

from __future__ import annotations

import time

import torch

from actors.group import join_group, zero_engine
from rlaif.config import Config
from rlaif.data import pad_sequences
from rlaif.losses import value_loss
from rlaif.models import load_scalar_model, load_tokenizer, resolve_model_path


def token_values(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """V(s_t) for every prefix, aligned with token_logprobs: values[:, t] is the value before target t+1."""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return model.score(hidden).squeeze(-1).float()[:, :-1]


class CriticWorker:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.path = resolve_model_path(cfg.critic.model.path or cfg.policy.model.path, cfg.cache_dir)

    def setup_distributed(self, rank: int, world_size: int, master_addr: str, master_port: int) -> None:
        join_group(self.cfg.device, rank, world_size, master_addr, master_port)
        cc, mb = self.cfg.critic, self.cfg.policy.micro_batch_size
        torch.manual_seed(self.cfg.seed + 17)
        model = load_scalar_model(self.path, cc.model.dtype, cc.model.trust_remote_code)
        self.pad_id = load_tokenizer(self.path, cc.model.trust_remote_code).pad_token_id
        per_rank = self.cfg.rl.prompts_per_step * self.cfg.rollout.n_samples // world_size
        self.engine = zero_engine(model, cc.lr, cc.zero_stage, mb, per_rank // mb, self.cfg.policy.grad_clip,
                                  cc.model.dtype)

    @torch.no_grad()
    def values(self, shard: dict[str, list]) -> list[list[float]]:
        self.engine.eval()
        out, mb = [], self.cfg.policy.micro_batch_size
        for i in range(0, len(shard["prompt_ids"]), mb):
            p, r = shard["prompt_ids"][i : i + mb], shard["response_ids"][i : i + mb]
            ids, attn, _ = (t.to(self.engine.device) for t in pad_sequences(p, r, self.pad_id))
            v = token_values(self.engine.module, ids, attn).cpu()
            out += [v[b, len(p[b]) - 1 : len(p[b]) - 1 + len(r[b])].tolist() for b in range(len(p))]
        return out

    def train(self, shard: dict[str, list]) -> dict[str, float]:
        """Clipped value regression onto the GAE returns, rl.epochs passes."""
        self.engine.train()
        mb, t0, losses, clips = self.cfg.policy.micro_batch_size, time.perf_counter(), [], []
        for _ in range(self.cfg.rl.epochs):
            for i in range(0, len(shard["prompt_ids"]), mb):
                p, r = shard["prompt_ids"][i : i + mb], shard["response_ids"][i : i + mb]
                ids, attn, mask = (t.to(self.engine.device) for t in pad_sequences(p, r, self.pad_id))
                old, ret = torch.zeros_like(mask), torch.zeros_like(mask)
                for b in range(len(p)):
                    s, n = len(p[b]) - 1, len(r[b])
                    old[b, s : s + n] = torch.tensor(shard["values"][i + b], device=mask.device)
                    ret[b, s : s + n] = torch.tensor(shard["returns"][i + b], device=mask.device)
                loss, clip_frac = value_loss(token_values(self.engine.module, ids, attn), old, ret, mask,
                                             self.cfg.rl.value_clip)
                self.engine.backward(loss)
                self.engine.step()
                losses.append(loss.item())
                clips.append(clip_frac)
        return {"critic/value_loss": sum(losses) / len(losses), "critic/clip_frac": sum(clips) / len(clips),
                "critic/seconds": time.perf_counter() - t0}
