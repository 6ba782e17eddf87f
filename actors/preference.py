"""Preference-model role: a scalar head on an LM, DeepSpeed ZeRO ranks, trained on soft-labelled pairs (AI and
human), then scoring responses for RL. Works on text, so the PM may use a different tokenizer than the policy."""

from __future__ import annotations

import os
import random
import time

import torch

from actors.group import join_group, set_lr, use_cpu_threads, zero_engine
from rlaif.config import Config
from rlaif.data.loader import fit_chat, pad_sequences
from rlaif.models import load_reward_model, load_scalar_model, load_tokenizer, resolve_model_path, scalar_scores
from rlaif.rl.lora import apply_lora
from rlaif.rl.losses import preference_loss
from rlaif.rl.schedule import schedule


class PreferenceModelWorker:
    def __init__(self, cfg: Config) -> None:
        use_cpu_threads(cfg, "aux")
        self.cfg = cfg
        self.path = resolve_model_path(cfg.preference_model.model.path, cfg.cache_dir)
        self.mean, self.std = 0.0, 1.0

    def setup_distributed(self, rank: int, world_size: int, master_addr: str, master_port: int) -> None:
        join_group(self.cfg.device, rank, world_size, master_addr, master_port)
        pc = self.cfg.preference_model
        torch.manual_seed(self.cfg.seed)
        model = load_scalar_model(self.path, pc.model.dtype, pc.model.trust_remote_code, pc.model.attn_implementation)
        if pc.lora.rank:  # adapters on the LM, the score head whole (preference_model.lora); saved merged
            apply_lora(model, pc.lora, "preference_model.lora")
        self.tokenizer = load_tokenizer(self.path, pc.model.trust_remote_code)
        self.engine = zero_engine(model, pc.lr, pc.zero_stage, pc.batch_size, 1, 1.0, pc.model.dtype)
        self.engine.eval()
        self.scoring_model = self.engine.module

    def encode(self, prompt: str, response: str) -> tuple[list[int], list[int]]:
        """(prompt ids, response ids) in the PM's own chat template, preference_model.max_tokens in all: the prompt
        takes at most half (cut inside its text, the template kept), the response the rest; the response ends with
        the end-of-turn token unless it is cut."""
        max_len = self.cfg.preference_model.max_tokens
        prompt_ids, _ = fit_chat(self.tokenizer, [{"role": "user", "content": prompt}], max_len // 2,
                                 "preference_model.max_tokens / 2")
        response_ids = self.tokenizer.encode(response, add_special_tokens=False) + [self.tokenizer.eos_token_id]
        return prompt_ids, response_ids[: max_len - len(prompt_ids)]

    def _scores(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        enc = [self.encode(p, r) for p, r in zip(prompts, responses)]
        ids, attn, _ = pad_sequences([e[0] for e in enc], [e[1] for e in enc], self.tokenizer.pad_token_id)
        model = self.scoring_model
        device = next(model.parameters()).device
        return scalar_scores(model, ids.to(device), attn.to(device))  # last_token_scores for the PM

    def train(self, pairs: dict[str, list]) -> dict[str, float]:
        """pairs: prompt, first, second (texts), p_first. Soft-target Bradley-Terry. Every rank gets the same
        number of pairs from the trainer, so the ranks take the same number of (collective) optimizer steps."""
        pc = self.cfg.preference_model
        n, losses, t0 = len(pairs["p_first"]), [], time.perf_counter()
        order, rng = list(range(n)), random.Random(self.cfg.seed)
        self.engine.train()
        lr_of, steps = schedule(pc, pc.epochs * -(-n // pc.batch_size)), 0  # preference_model.lr_scheduler
        for _ in range(pc.epochs):
            rng.shuffle(order)
            for i in range(0, n, pc.batch_size):
                lr = set_lr(self.engine, lr_of(steps))
                steps += 1
                idx = order[i : i + pc.batch_size]
                prompts = [pairs["prompt"][j] for j in idx]
                scores = self._scores(prompts * 2, [pairs["first"][j] for j in idx] + [pairs["second"][j] for j in idx])
                target = torch.tensor([pairs["p_first"][j] for j in idx], device=scores.device)
                loss = preference_loss(scores[: len(idx)], scores[len(idx) :], target)
                self.engine.backward(loss)
                self.engine.step()
                losses.append(loss.item())
        self.engine.eval()
        return {"pm/loss_first": losses[0], "pm/loss_last": losses[-1], "pm/seconds": time.perf_counter() - t0,
                "pm/lr_last": lr}

    @torch.no_grad()
    def score(self, batch: dict[str, list], normalize: bool = True) -> list[float]:
        bs, out = self.cfg.preference_model.batch_size, []
        for i in range(0, len(batch["prompt"]), bs):
            out += self._scores(batch["prompt"][i : i + bs], batch["response"][i : i + bs]).tolist()
        return [(s - self.mean) / self.std for s in out] if normalize else out

    def set_normalization(self, mean: float, std: float) -> None:
        self.mean, self.std = mean, max(std, 1e-6)

    def normalization(self) -> tuple[float, float]:
        return self.mean, self.std

    def save(self, out_dir: str, card: dict[str, str]) -> str | None:
        """Every rank must call it (ZeRO-3 gathers layer by layer to rank 0, which writes)."""
        from actors.group import full_state_dict
        from rlaif.models import save_pretrained_atomic
        from rlaif.rl.lora import is_lora, merged_state_dict

        state = full_state_dict(self.engine, self.cfg.preference_model.zero_stage == 3, int(os.environ["RANK"]))
        if state is None:
            return None
        if is_lora(self.engine.module):  # the scorer loads a plain model: the adapters merged into it
            state = merged_state_dict(state, self.engine.module)
        return str(save_pretrained_atomic(self.engine.module, self.tokenizer, out_dir, card, state_dict=state))


class PreferenceScorer(PreferenceModelWorker):
    """The trained preference model scoring responses during RL: plain torch, no DeepSpeed group, everything set up
    in the constructor, so Ray can restart it after a crash (it reloads the saved model) and a resumed run starts
    it from the checkpoint's copy. With rl.reward_model, `path` is that pretrained model, loaded as its config
    says (rlaif.run.reward_model), and scored in its own tokenizer's chat template."""

    def __init__(self, cfg: Config, path: str, mean: float, std: float) -> None:
        use_cpu_threads(cfg, "aux")
        self.cfg, self.path = cfg, path
        mc = cfg.preference_model.model
        load = load_reward_model if cfg.rl.reward_model else load_scalar_model
        self.scoring_model = load(path, mc.dtype, mc.trust_remote_code, mc.attn_implementation).to(cfg.device).eval()
        self.tokenizer = load_tokenizer(path, mc.trust_remote_code)
        self.set_normalization(mean, std)
