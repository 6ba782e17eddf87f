"""Rollout role: a vLLM engine generating n responses per prompt with their sampling log-probs."""

from __future__ import annotations

import logging
import os
import time

import torch

from rlaif.config import Config
from rlaif.data import fit_chat
from rlaif.models import load_tokenizer, resolve_model_path

log = logging.getLogger("rlaif")


class RolloutWorker:
    def __init__(self, cfg: Config, stage: str = "rl") -> None:
        # In-process engine: weights can be swapped by collective_rpc in this same process, and it starts in
        # seconds. Without a KV-cache size vLLM-CPU would reserve ~9 GiB.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.rollout.kv_cache_gib))
        from vllm import LLM

        self.cfg, self.warned_truncation = cfg, False
        mc = cfg.policy.model
        self.path = resolve_model_path(mc.path, cfg.cache_dir)
        self.tokenizer = load_tokenizer(self.path, mc.trust_remote_code)
        if cfg.device == "cuda":
            kwargs = {"gpu_memory_utilization": cfg.rollout.gpu_memory_utilization}
        else:
            # vLLM-CPU cannot resume a seeded request whose prefill was split across steps ("CPU Generator does not
            # use offset"), and generate()/chat() seed every request: never split a prefill on CPU.
            kwargs = {"enable_chunked_prefill": False}
        self.llm = LLM(
            model=self.path, dtype=mc.dtype, seed=cfg.seed, enforce_eager=cfg.rollout.enforce_eager,
            # Sized for the stage that runs: SL-CAI's few-shot critique/revision conversations, or RL's prompts.
            max_model_len=cfg.sl_cai.max_context_tokens if stage == "sl-cai"
            else cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens,
            trust_remote_code=mc.trust_remote_code, **kwargs,
        )
        self.weight_version = 0

    def encode_prompts(self, texts: list[str]) -> tuple[list[list[int]], int]:
        """Each text as a user turn in the chat template, within data.max_prompt_tokens; and how many were cut.

        An over-long prompt keeps the template and the end of its text (rlaif.data.fit_chat); the first cut warns.
        """
        out, cut = [], 0
        for text in texts:
            ids, was_cut = fit_chat(self.tokenizer, [{"role": "user", "content": text}],
                                    self.cfg.data.max_prompt_tokens, "data.max_prompt_tokens")
            out.append(ids)
            cut += was_cut
        if cut and not self.warned_truncation:
            self.warned_truncation = True
            log.warning("%d of %d prompts are longer than data.max_prompt_tokens = %d: the start of their text is cut "
                        "(the chat template is kept); counted in data/prompts_truncated, this warning shown once",
                        cut, len(texts), self.cfg.data.max_prompt_tokens)
        return out, cut

    def generate(self, texts: list[str], n: int, seed: int, temperature: float | None = None,
                 max_new_tokens: int | None = None) -> dict:
        """n samples per prompt, grouped contiguously: ids, texts, sampling log-probs, finish reasons."""
        from vllm import SamplingParams

        rc = self.cfg.rollout
        prompt_ids, truncated = self.encode_prompts(texts)
        params = [
            SamplingParams(
                n=n, temperature=rc.temperature if temperature is None else temperature, top_p=rc.top_p,
                max_tokens=max_new_tokens or rc.max_new_tokens, logprobs=0, seed=seed + i * n,
            )
            for i in range(len(texts))
        ]
        t0 = time.perf_counter()
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        result: dict[str, list] = {k: [] for k in
                                   ("prompt_ids", "response_ids", "response_text", "logprobs", "finished")}
        for p, out in zip(prompt_ids, outs):
            for o in out.outputs:
                result["prompt_ids"].append(p)
                result["response_ids"].append(list(o.token_ids))
                result["response_text"].append(o.text)
                # logprobs=0 returns exactly the sampled token's log-prob at each step.
                result["logprobs"].append([lp[t].logprob for lp, t in zip(o.logprobs, o.token_ids)])
                result["finished"].append(o.finish_reason == "stop")
        n_tokens = sum(len(r) for r in result["response_ids"])
        result["stats"] = {"gen_seconds": seconds, "gen_tokens": n_tokens, "weight_version": self.weight_version,
                           "prompts_truncated": truncated}
        return result

    def chat(self, conversations: list[list[dict]], seed: int, temperature: float, max_new_tokens: int) -> dict:
        """One assistant reply per conversation (SL-CAI's answers, critiques and revisions), batched.

        Returns {"replies", "truncated": conversations cut to fit, "max_tokens": the longest conversation sent}. A
        conversation too long for the engine loses its oldest turns first (rlaif.data.fit_chat), never silently.
        """
        from vllm import SamplingParams

        limit = self.llm.llm_engine.model_config.max_model_len - max_new_tokens
        prompts, cut, longest = [], 0, 0
        for conv in conversations:
            ids, was_cut = fit_chat(self.tokenizer, conv, limit, "sl_cai.max_context_tokens")
            longest = max(longest, len(ids))
            cut += was_cut
            prompts.append({"prompt_token_ids": ids})
        if cut:
            log.warning("%d of %d conversations are longer than the engine's context less the reply (%d tokens): "
                        "their oldest turns were dropped; raise sl_cai.max_context_tokens", cut, len(conversations),
                        limit)
        params = [SamplingParams(temperature=temperature, max_tokens=max_new_tokens, seed=seed + i)
                  for i in range(len(prompts))]
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        return {"replies": [o.outputs[0].text.strip() for o in outs], "truncated": cut, "max_tokens": longest}

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> int:
        """Swap in the trainer's weights, then drop the prefix cache: its KV entries came from the old weights."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(state_dict.items())})
        self.llm.reset_prefix_cache()
        self.weight_version = version
        return version
