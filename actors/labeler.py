"""Labeler role: the AI feedback model compares two responses under a sampled principle (soft labels)."""

from __future__ import annotations

import random
from dataclasses import asdict

from rlaif.config import Config
from rlaif.constitution import load_constitution
from rlaif.feedback import OPTIONS, combine_orders, comparison_prompt, soft_label
from rlaif.models import load_causal_lm, load_tokenizer, resolve_model_path, response_logprobs


class LabelerWorker:
    def __init__(self, cfg: Config) -> None:
        lc = cfg.labeler
        path = resolve_model_path(lc.model.path, cfg.cache_dir)
        self.model = load_causal_lm(path, lc.model.dtype, lc.model.trust_remote_code).to(cfg.device).eval()
        self.tokenizer = load_tokenizer(path, lc.model.trust_remote_code)
        self.constitution = load_constitution(cfg.constitution.path)
        self.rng = random.Random(cfg.seed + 1)
        self.both_orders, self.batch_size = lc.both_orders, lc.batch_size
        self.option_ids = [self.tokenizer.encode(o, add_special_tokens=False) for o in OPTIONS]

    def _p_a(self, prompts: list[str]) -> list[float]:
        """P(A) for each prompt from the normalised log-probs of the two option continuations."""
        prompt_ids, conts = [], []
        for text in prompts:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            prompt_ids += [ids, ids]
            conts += self.option_ids
        lps = response_logprobs(self.model, prompt_ids, conts, self.tokenizer.pad_token_id, self.batch_size)
        sums = [sum(x) for x in lps]
        return [soft_label(sums[2 * i], sums[2 * i + 1]) for i in range(len(prompts))]

    def compare(self, prompts: list[str], firsts: list[str], seconds: list[str]) -> list[dict]:
        """One sampled principle per pair; returns p_first (order-averaged), per-order labels, consistency."""
        principles = [self.constitution.sample_feedback(self.rng) for _ in prompts]
        forward = [comparison_prompt(p, c, a, b) for p, c, a, b in zip(prompts, principles, firsts, seconds)]
        p_fwd = self._p_a(forward)
        p_swp: list[float | None] = [None] * len(prompts)
        if self.both_orders:
            swapped = [comparison_prompt(p, c, b, a) for p, c, a, b in zip(prompts, principles, firsts, seconds)]
            p_swp = self._p_a(swapped)
        return [
            {"principle": c, **asdict(combine_orders(f, s))} for c, f, s in zip(principles, p_fwd, p_swp)
        ]
