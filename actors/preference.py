"""Preference-model role: a scalar head on an LM, trained on soft-labelled pairs, then scoring responses."""

from __future__ import annotations

import random
import time

import torch

from rlaif.config import Config
from rlaif.data import pad_sequences
from rlaif.losses import preference_loss
from rlaif.models import last_token_scores, load_scalar_model, load_tokenizer, resolve_model_path


class PreferenceModelWorker:
    def __init__(self, cfg: Config) -> None:
        pc = cfg.preference_model
        self.cfg = cfg
        path = resolve_model_path(pc.model.path, cfg.cache_dir)
        torch.manual_seed(cfg.seed)
        self.model = load_scalar_model(path, pc.model.dtype, pc.model.trust_remote_code).to(cfg.device)
        self.tokenizer = load_tokenizer(path, pc.model.trust_remote_code)
        self.pad_id = self.tokenizer.pad_token_id
        self.mean, self.std = 0.0, 1.0

    def _scores(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> torch.Tensor:
        ids, attn, _ = pad_sequences(prompt_ids, response_ids, self.pad_id)
        return last_token_scores(self.model, ids.to(self.cfg.device), attn.to(self.cfg.device))

    def train(self, pairs: dict[str, list]) -> dict[str, float]:
        """pairs: prompt_ids, first_ids, second_ids, p_first. Soft-target Bradley-Terry, AdamW."""
        pc = self.cfg.preference_model
        opt = torch.optim.AdamW(self.model.parameters(), lr=pc.lr)
        n = len(pairs["p_first"])
        order = list(range(n))
        rng = random.Random(self.cfg.seed)
        losses, t0 = [], time.perf_counter()
        self.model.train()
        for _ in range(pc.epochs):
            rng.shuffle(order)
            for i in range(0, n, pc.batch_size):
                idx = order[i : i + pc.batch_size]
                prompts = [pairs["prompt_ids"][j] for j in idx]
                scores = self._scores(prompts * 2, [pairs["first_ids"][j] for j in idx]
                                      + [pairs["second_ids"][j] for j in idx])
                target = torch.tensor([pairs["p_first"][j] for j in idx], device=scores.device)
                loss = preference_loss(scores[: len(idx)], scores[len(idx) :], target)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
        self.model.eval()
        # Normalisation statistics from the PM's own training responses, so RL rewards start near N(0, 1).
        raw = self.score(pairs["prompt_ids"] * 2, pairs["first_ids"] + pairs["second_ids"], normalize=False)
        agree = sum((a > b) == (p > 0.5) for a, b, p in zip(raw[:n], raw[n:], pairs["p_first"])) / n
        if pc.normalize_rewards:
            t = torch.tensor(raw)
            self.mean, self.std = t.mean().item(), max(t.std().item(), 1e-6)
        return {
            "pm/loss_first": losses[0], "pm/loss_last": losses[-1], "pm/train_agreement": agree,
            "pm/pairs": float(n), "pm/seconds": time.perf_counter() - t0,
        }

    @torch.no_grad()
    def score(self, prompt_ids: list[list[int]], response_ids: list[list[int]], normalize: bool = True) -> list[float]:
        bs, out = self.cfg.preference_model.batch_size, []
        for i in range(0, len(prompt_ids), bs):
            out += self._scores(prompt_ids[i : i + bs], response_ids[i : i + bs]).tolist()
        if normalize:
            out = [(s - self.mean) / self.std for s in out]
        return out
