"""Labeler role: the AI feedback model compares two responses under sampled principles (soft labels); or a
rule-based pairwise judge (`labeler.function`) does, through the same cache, both orders and integrity report."""

from __future__ import annotations

import os
import random
from dataclasses import asdict
from pathlib import Path

import torch

from actors.group import use_cpu_threads
from rlaif.config import Config, ConfigError
from rlaif.feedback.constitution import load_constitution
from rlaif.feedback.labeling import (
    ANSWER_CUE,
    OPTIONS,
    RATIONALE_END,
    SCORE_CUE,
    SCORES,
    LabelCache,
    clamp_cot,
    combine_orders,
    comparison_question,
    continuation_ids,
    ensemble,
    feedback_examples,
    judge_probs,
    load_judge,
    rating_question,
    rating_reward,
    render,
    soft_label,
    special_prefix,
)
from rlaif.models import load_causal_lm, load_tokenizer, resolve_model_path, response_logprobs


class LabelerWorker:
    # vLLM's prefix cache on the labeler's engine: the A and B sequences of a question, and both orders of a pair,
    # share their text up to the options or up to "(A) ", and the scoring requests read it (see scoring_params).
    # On CPU in blocks of 32 tokens (the CPU attention kernel's smallest; vLLM's CPU default is 128): the cache
    # shares whole blocks, and 32 shares most of each question (SmolLM2: 1.3x the labeled pairs/s of 128). Not
    # config keys: no label moves by more than float rounding (the call layout and block size change no bit; a
    # suffix attended over a cached prefix sums in another order than one prefill: SmolLM2 labels within 1e-5,
    # tests/test_labeler.py and bench/bench_labeler.py, whose "before" labeler turns both off).
    prefix_caching = True
    cpu_block_size: int | None = 32

    def __init__(self, cfg: Config) -> None:
        use_cpu_threads(cfg, "aux")
        self.cfg, self.lc = cfg, cfg.labeler
        self.judge = load_judge(self.lc.function) if self.lc.function else None
        # The model is loaded on first use (load): with a function judge only audit critiques and direct ratings
        # need it, and a run without them never starts it.
        self.path = self.tokenizer = self.llm = self.model = None
        self.constitution = load_constitution(cfg.constitution.path)
        self.shots = feedback_examples(self.constitution, self.lc.few_shot_examples)  # CAI's few-shot feedback
        self.rng = random.Random(cfg.seed + 1)
        self.cache = LabelCache(Path(cfg.output_dir) / "label_cache.jsonl" if self.lc.cache else None)
        self.cache_hits = 0

    def load(self) -> None:
        """Load the tokenizer and the model (vLLM engine or transformers) once; later calls return at once."""
        if self.tokenizer is not None:
            return
        cfg, lc = self.cfg, self.lc
        from transformers import AutoConfig

        self.path = resolve_model_path(lc.model.path, cfg.cache_dir)
        tokenizer = load_tokenizer(self.path, lc.model.trust_remote_code)
        self.text_prefix = special_prefix(tokenizer)
        max_pos = getattr(AutoConfig.from_pretrained(self.path, trust_remote_code=lc.model.trust_remote_code),
                          "max_position_embeddings", None)
        self.max_len = min(lc.max_model_len, max_pos) if max_pos else lc.max_model_len
        if lc.backend == "vllm":
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(lc.kv_cache_gib)  # read by vLLM's CPU backend only
            from vllm import LLM

            if cfg.device == "cuda":
                kwargs = {"gpu_memory_utilization": lc.gpu_memory_utilization}
            else:
                kwargs = {"block_size": self.cpu_block_size} if self.cpu_block_size else {}
            self.llm = LLM(model=self.path, dtype=lc.model.dtype, seed=cfg.seed, enforce_eager=True,
                           max_model_len=self.max_len, trust_remote_code=lc.model.trust_remote_code,
                           enable_prefix_caching=self.prefix_caching, **kwargs)
            self.block_size = self.llm.llm_engine.vllm_config.cache_config.block_size
        else:
            self.model = load_causal_lm(self.path, lc.model.dtype, lc.model.trust_remote_code,
                                        lc.model.attn_implementation).to(cfg.device).eval()
        self.tokenizer = tokenizer  # last: a failed load is retried, not half-used

    def _check_length(self, n_tokens: int, new_tokens: int, what: str) -> None:
        """The same context limit on both backends: a prompt that does not fit is an error, never cut silently."""
        if n_tokens + new_tokens > self.max_len:
            n = self.lc.few_shot_examples
            shots = f", labeler.few_shot_examples (its {n} answered examples come before every question)" if n else ""
            raise ConfigError(
                f"labeler {what}: {n_tokens} prompt tokens + {new_tokens} to generate exceed the labeler's context "
                f"of {self.max_len} tokens (labeler.max_model_len = {self.lc.max_model_len}, capped by the model's "
                f"max_position_embeddings): raise labeler.max_model_len or lower labeler.max_response_tokens"
                f"{' or labeler.cot_max_tokens' if new_tokens > 1 else ''}{shots} (the conversation and each "
                "response are cut to labeler.max_response_tokens inside the labeler's prompt)")

    @property
    def head(self) -> list[int]:
        """Plain-text prompts start with the tokenizer's own special prefix (BOS where it adds one), chat prompts
        with the template's own tokens: the same ids are generated from and scored, on both backends."""
        return [] if self.lc.chat_template else self.text_prefix

    def prompt_ids(self, text: str) -> list[int]:
        """Token ids of a rendered labeler prompt, special tokens as the model was trained (see head)."""
        self.load()
        return self.head + self.tokenizer.encode(text, add_special_tokens=False)

    # -- scoring and generation primitives: vLLM, or transformers (the reference in tests); batched on both --
    def logprob_sums(self, heads: list[list[int]], tails: list[str],
                     continuations: tuple[str, ...]) -> list[list[float]]:
        """For each prompt (head ids + tail text), the summed log-prob of each continuation, tokenized in context."""
        self.load()
        pairs = []
        for head, tail in zip(heads, tails, strict=True):
            for c in continuations:
                base, opt = continuation_ids(self.tokenizer, tail, c)
                pairs.append((head + base, opt))
                self._check_length(len(pairs[-1][0]) + len(opt), 1, "scoring")  # vLLM samples one token after
        bs = self.lc.batch_size
        if self.llm is not None:
            outs = []
            for i in range(0, len(pairs), bs):
                chunk = pairs[i : i + bs]
                outs += self.llm.generate([{"prompt_token_ids": b + o} for b, o in chunk],
                                          [self.scoring_params(len(b), len(b) + len(o)) for b, o in chunk],
                                          use_tqdm=False)
            for o, (b, opt) in zip(outs, pairs):
                if (o.num_cached_tokens or 0) >= len(b):  # the option's log-probs were not computed: never guess
                    raise RuntimeError(f"labeler: vLLM read {o.num_cached_tokens} tokens of a {len(b) + len(opt)}-"
                                       f"token scored sequence from its prefix cache, past the {len(b)} before the "
                                       f"option, whose log-probs it then never computed "
                                       f"(LabelerWorker.scoring_params)")
            sums = [sum(d[t].logprob for d, t in zip(o.prompt_logprobs[-len(opt) :], opt))
                    for o, (_, opt) in zip(outs, pairs)]
        else:
            lps = response_logprobs(self.model, [b for b, _ in pairs], [o for _, o in pairs],
                                    self.tokenizer.pad_token_id, bs)
            sums = [sum(x) for x in lps]
        k = len(continuations)
        return [sums[i * k : (i + 1) * k] for i in range(len(heads))]

    def scoring_params(self, n_prompt: int, n_total: int):
        """vLLM parameters that score a sequence of n_total ids whose last n_total - n_prompt are the option.

        vLLM computes prompt log-probs only for the tokens it prefills, so by default a request that asks for them
        never reads the prefix cache (SamplingParams.skip_reading_prefix_cache). Only the option's log-probs are
        read here, so reading a cached prefix is safe while the hit stops before the option. A hit is a whole number
        of blocks of at most n_total - 1 tokens: a sequence with a block boundary inside its option (about
        len(option) / block_size of them) skips reading. detokenize=False: the positions read from the cache carry
        no log-probs, and vLLM would fail detokenizing their empty ids (the option's ids are all that is used).
        """
        from vllm import SamplingParams

        read = self.prefix_caching and (n_total - 1) // self.block_size * self.block_size < n_prompt
        return SamplingParams(max_tokens=1, prompt_logprobs=0, skip_reading_prefix_cache=not read, detokenize=False)

    def greedy(self, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        """Greedy continuations of prompt ids, cut before the first special token (EOS, pad, a chat marker)."""
        self.load()
        for ids in prompts:
            self._check_length(len(ids), max_tokens, "generation")
        bs, stop = self.lc.batch_size, set(self.tokenizer.all_special_ids)
        outs: list[list[int]] = []
        if self.llm is not None:
            from vllm import SamplingParams

            params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
            for i in range(0, len(prompts), bs):
                res = self.llm.generate([{"prompt_token_ids": ids} for ids in prompts[i : i + bs]], params,
                                        use_tqdm=False)
                outs += [list(o.outputs[0].token_ids) for o in res]
        else:
            pad = self.tokenizer.pad_token_id
            for i in range(0, len(prompts), bs):
                chunk = prompts[i : i + bs]
                width = max(map(len, chunk))  # left padding: every prompt ends where generation starts
                ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=self.model.device)
                mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=self.model.device)
                with torch.no_grad():
                    out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens,
                                              do_sample=False, pad_token_id=pad)
                outs += out[:, width:].tolist()
        cut = []
        for ids in outs:
            end = next((n for n, t in enumerate(ids) if t in stop), len(ids))
            cut.append(ids[:end])
        return cut

    def trim(self, text: str) -> str:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        n = self.lc.max_response_tokens
        return text if len(ids) <= n else self.tokenizer.decode(ids[:n])

    def p_a(self, questions: list[str]) -> list[float]:
        """P(A) per question; in CoT mode after a greedy rationale (scored on the very ids it was generated from
        and as), clamped to [0.4, 0.6]."""
        self.load()  # also called directly, by the evaluation judge
        chat = self.lc.chat_template
        if self.lc.mode == "cot":
            prompts = [self.prompt_ids(render(self.tokenizer, q, chat)) for q in questions]
            rationales = self.greedy(prompts, self.lc.cot_max_tokens)
            heads, tails = [p + r for p, r in zip(prompts, rationales)], [RATIONALE_END] * len(questions)
        else:
            heads, tails = [self.head] * len(questions), [render(self.tokenizer, q, chat, ANSWER_CUE)
                                                         for q in questions]
        p = [soft_label(a, b) for a, b in self.logprob_sums(heads, tails, OPTIONS)]
        return [clamp_cot(x) for x in p] if self.lc.mode == "cot" else p

    # -- the role's API --
    def principle_rng(self, seed: int | None) -> random.Random:
        """Where a call draws its principles: a fresh RNG from the caller's seed, so the same call draws the same
        principles whenever it is made, whatever this process served before: in a restarted labeler, a resumed run
        (the trainer passes one seed per step and call, as it does for sampling), for the human-labelled set. Without
        a seed, the role's own RNG (seeded from cfg.seed), which a restarted process starts over."""
        return self.rng if seed is None else random.Random(seed)

    def compare(self, prompts: list[str], firsts: list[str], seconds: list[str], seed: int | None = None
                ) -> list[dict]:
        """Label each pair under K freshly sampled principles (or by the function judge), both orders, with a
        content-hash cache. The function judge sees the texts whole; the model sees them cut to
        labeler.max_response_tokens. `seed`: see principle_rng."""
        k, both = self.lc.principles_per_pair, self.lc.both_orders
        rng = self.principle_rng(seed)
        if self.judge is None:
            self.load()
            prompts = [self.trim(x) for x in prompts]
            firsts, seconds = [self.trim(x) for x in firsts], [self.trim(x) for x in seconds]
            principles = [[self.constitution.sample_feedback(rng) for _ in range(k)] for _ in prompts]
            settings = (self.path, self.lc.mode, self.lc.chat_template, both) + ((self.shots,) if self.shots else ())
        else:  # config validation keeps principles_per_pair at 1 for a judge that takes no principle
            principles = [[f"function:{self.lc.function}"] for _ in prompts]
            settings = ("function", self.lc.function, both)
        keys = [[LabelCache.key(*settings, c, p, a, b) for c in cs]
                for p, a, b, cs in zip(prompts, firsts, seconds, principles)]
        todo = [(i, j) for i in range(len(prompts)) for j in range(len(principles[i]))
                if self.cache.get(keys[i][j]) is None]
        self.cache_hits += sum(map(len, principles)) - len(todo)
        if todo:
            p, a, b = ([prompts[i] for i, _ in todo], [firsts[i] for i, _ in todo], [seconds[i] for i, _ in todo])
            if self.judge is not None:  # the judge answers P(first better) = P(A) with first shown as (A)
                fwd = judge_probs(self.judge, self.lc.function, p, a, b)
                swp = judge_probs(self.judge, self.lc.function, p, b, a) if both else None
            else:
                fwd_q = [comparison_question(p[n], principles[i][j], a[n], b[n], self.shots)
                         for n, (i, j) in enumerate(todo)]
                swp_q = [comparison_question(p[n], principles[i][j], b[n], a[n], self.shots)
                         for n, (i, j) in enumerate(todo)] if both else []
                # vLLM: each pair's two orders side by side, so they go in one engine call and the second reads the
                # text they share (up to "(A) ") from the prefix cache. transformers: all forward questions, then all
                # swapped, as before: regrouping its padded batches would move the labels' last float bits.
                side = both and self.llm is not None
                scored = self.p_a([q for qs in zip(fwd_q, swp_q) for q in qs] if side else fwd_q + swp_q)
                if side:
                    fwd, swp = scored[0::2], scored[1::2]
                else:
                    fwd, swp = scored[: len(todo)], scored[len(todo) :] if both else None
            self.cache.put({keys[i][j]: {"fwd": fwd[n], "swp": swp[n] if both else None}
                            for n, (i, j) in enumerate(todo)})
        out = []
        for i, cs in enumerate(principles):
            labels = [combine_orders(v["fwd"], v["swp"]) for v in (self.cache.get(key) for key in keys[i])]
            out.append({"principle": cs[0], "principles": cs, **asdict(ensemble(labels))})
        return out

    def rate(self, prompts: list[str], responses: list[str], seed: int | None = None) -> list[float]:
        """Direct RLAIF: E[1..9 rating] under a sampled principle, rescaled to [-1, 1]. `seed`: see principle_rng."""
        self.load()
        rng = self.principle_rng(seed)
        questions = [rating_question(p, self.constitution.sample_feedback(rng), self.trim(r))
                     for p, r in zip(prompts, responses)]
        tails = [render(self.tokenizer, q, self.lc.chat_template, SCORE_CUE) for q in questions]
        return [rating_reward(row) for row in self.logprob_sums([self.head] * len(tails), tails, SCORES)]

    def critique(self, prompts: list[str], responses: list[str], seed: int | None = None) -> list[str]:
        """A short AI critique of each response under a sampled critique request, for the human audit sheet.
        `seed`: see principle_rng."""
        self.load()
        rng = self.principle_rng(seed)
        requests = [self.constitution.sample_critique_revision(rng).critique for _ in prompts]
        questions = [f"Human: {self.trim(p)}\nAssistant: {self.trim(r)}\n\nCritique request: {c}" for p, r, c in
                     zip(prompts, responses, requests)]
        if self.lc.chat_template:
            texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                        add_generation_prompt=True) for q in questions]
        else:
            texts = [q + "\nCritique:" for q in questions]
        out = self.greedy([self.prompt_ids(t) for t in texts], self.lc.cot_max_tokens)
        return [self.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in out]

    def stats(self) -> dict[str, float]:
        return {"labeler/cache_hits": float(self.cache_hits), "labeler/cache_size": float(len(self.cache.entries))}

