"""Labeler role: the AI feedback model compares two responses under sampled principles (soft labels)."""

from __future__ import annotations

import os
import random
from dataclasses import asdict
from pathlib import Path

import torch

from rlaif.config import Config
from rlaif.constitution import load_constitution
from rlaif.feedback import (
    ANSWER_CUE,
    OPTIONS,
    SCORE_CUE,
    SCORES,
    LabelCache,
    clamp_cot,
    combine_orders,
    comparison_question,
    continuation_ids,
    ensemble,
    rating_question,
    render,
    soft_label,
)
from rlaif.losses import direct_rlaif_reward
from rlaif.models import load_causal_lm, load_tokenizer, resolve_model_path, response_logprobs


class LabelerWorker:
    def __init__(self, cfg: Config) -> None:
        lc = self.lc = cfg.labeler
        self.path = resolve_model_path(lc.model.path, cfg.cache_dir)
        self.tokenizer = load_tokenizer(self.path, lc.model.trust_remote_code)
        self.llm = self.model = None
        if lc.backend == "vllm":
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(lc.kv_cache_gib)
            from transformers import AutoConfig
            from vllm import LLM

            max_pos = AutoConfig.from_pretrained(self.path).max_position_embeddings
            kwargs = {"gpu_memory_utilization": cfg.rollout.gpu_memory_utilization} if cfg.device == "cuda" else {}
            self.llm = LLM(model=self.path, dtype=lc.model.dtype, seed=cfg.seed, enforce_eager=True,
                           max_model_len=min(lc.max_model_len, max_pos),
                           trust_remote_code=lc.model.trust_remote_code, **kwargs)
        else:
            self.model = load_causal_lm(self.path, lc.model.dtype, lc.model.trust_remote_code).to(cfg.device).eval()
        self.constitution = load_constitution(cfg.constitution.path)
        self.rng = random.Random(cfg.seed + 1)
        self.cache = LabelCache(Path(cfg.output_dir) / "label_cache.jsonl" if lc.cache else None)
        self.cache_hits = 0

    # -- scoring primitives: vLLM prompt log-probs, or a transformers forward pass (the reference in tests) --
    def logprob_sums(self, prompts: list[str], continuations: tuple[str, ...]) -> list[list[float]]:
        """For each prompt, the summed log-prob of each continuation, tokenized in context."""
        pairs = [continuation_ids(self.tokenizer, p, c) for p in prompts for c in continuations]
        if self.llm is not None:
            from vllm import SamplingParams

            seqs = [base + opt for base, opt in pairs]
            outs = self.llm.generate([{"prompt_token_ids": s} for s in seqs],
                                     SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
            sums = [sum(d[t].logprob for d, t in zip(o.prompt_logprobs[-len(opt) :], opt))
                    for o, (_, opt) in zip(outs, pairs)]
        else:
            lps = response_logprobs(self.model, [b for b, _ in pairs], [o for _, o in pairs],
                                    self.tokenizer.pad_token_id, self.lc.batch_size)
            sums = [sum(x) for x in lps]
        k = len(continuations)
        return [sums[i * k : (i + 1) * k] for i in range(len(prompts))]

    def greedy(self, prompts: list[str], max_tokens: int) -> list[str]:
        if self.llm is not None:
            from vllm import SamplingParams

            outs = self.llm.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0.0), use_tqdm=False)
            return [o.outputs[0].text for o in outs]
        texts = []
        for p in prompts:
            ids = torch.tensor([self.tokenizer.encode(p, add_special_tokens=False)], device=self.model.device)
            with torch.no_grad():
                out = self.model.generate(ids, max_new_tokens=max_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id)
            texts.append(self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
        return texts

    def trim(self, text: str) -> str:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        n = self.lc.max_response_tokens
        return text if len(ids) <= n else self.tokenizer.decode(ids[:n])

    def p_a(self, questions: list[str]) -> list[float]:
        """P(A) per question; in CoT mode after a greedy rationale, clamped to [0.4, 0.6]."""
        chat = self.lc.chat_template
        if self.lc.mode == "cot":
            rationales = self.greedy([render(self.tokenizer, q, chat) for q in questions], self.lc.cot_max_tokens)
            texts = [render(self.tokenizer, q, chat, ANSWER_CUE, r) for q, r in zip(questions, rationales)]
        else:
            texts = [render(self.tokenizer, q, chat, ANSWER_CUE) for q in questions]
        p = [soft_label(a, b) for a, b in self.logprob_sums(texts, OPTIONS)]
        return [clamp_cot(x) for x in p] if self.lc.mode == "cot" else p

    # -- the role's API --
    def compare(self, prompts: list[str], firsts: list[str], seconds: list[str]) -> list[dict]:
        """Label each pair under K freshly sampled principles, both orders, with a content-hash cache."""
        k, both = self.lc.principles_per_pair, self.lc.both_orders
        prompts = [self.trim(x) for x in prompts]
        firsts, seconds = [self.trim(x) for x in firsts], [self.trim(x) for x in seconds]
        principles = [[self.constitution.sample_feedback(self.rng) for _ in range(k)] for _ in prompts]
        settings = (self.path, self.lc.mode, self.lc.chat_template, both)
        keys = [[LabelCache.key(*settings, c, p, a, b) for c in cs]
                for p, a, b, cs in zip(prompts, firsts, seconds, principles)]
        todo = [(i, j) for i in range(len(prompts)) for j in range(k) if self.cache.get(keys[i][j]) is None]
        self.cache_hits += len(prompts) * k - len(todo)
        questions = [comparison_question(prompts[i], principles[i][j], firsts[i], seconds[i]) for i, j in todo]
        if both:  # the same pairs with the responses swapped, scored in the same batch
            questions += [comparison_question(prompts[i], principles[i][j], seconds[i], firsts[i]) for i, j in todo]
        p = self.p_a(questions)
        fresh = {keys[i][j]: {"fwd": p[n], "swp": p[n + len(todo)] if both else None}
                 for n, (i, j) in enumerate(todo)}
        self.cache.put(fresh)
        out = []
        for i, cs in enumerate(principles):
            labels = [combine_orders(v["fwd"], v["swp"]) for v in (self.cache.get(key) for key in keys[i])]
            out.append({"principle": cs[0], "principles": cs, **asdict(ensemble(labels))})
        return out

    def rate(self, prompts: list[str], responses: list[str]) -> list[float]:
        """Direct RLAIF: E[1..10 rating] under a sampled principle, rescaled to [-1, 1]."""
        questions = [rating_question(p, self.constitution.sample_feedback(self.rng), self.trim(r))
                     for p, r in zip(prompts, responses)]
        texts = [render(self.tokenizer, q, self.lc.chat_template, SCORE_CUE) for q in questions]
        return direct_rlaif_reward(torch.tensor(self.logprob_sums(texts, SCORES))).tolist()

    def critique(self, prompts: list[str], responses: list[str]) -> list[str]:
        """A short AI critique of each response under a sampled critique request, for the human audit sheet."""
        requests = [self.constitution.sample_critique_revision(self.rng).critique for _ in prompts]
        questions = [f"Human: {p}\nAssistant: {self.trim(r)}\n\nCritique request: {c}" for p, r, c in
                     zip(prompts, responses, requests)]
        if self.lc.chat_template:
            texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                        add_generation_prompt=True) for q in questions]
        else:
            texts = [q + "\nCritique:" for q in questions]
        return [c.strip() for c in self.greedy(texts, self.lc.cot_max_tokens)]

    def stats(self) -> dict[str, float]:
        return {"labeler/cache_hits": float(self.cache_hits), "labeler/cache_size": float(len(self.cache.entries))}
