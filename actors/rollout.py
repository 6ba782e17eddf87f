"""Rollout role: a vLLM engine generating n responses per prompt with their sampling log-probs."""

from __future__ import annotations

import os
import time

import torch

from rlaif.batch import Batch, pad_rows
from rlaif.config import Config
from rlaif.models import load_tokenizer, resolve_model_path


class RolloutWorker:
    def __init__(self, cfg: Config) -> None:
        # In-process engine: weights can be swapped by collective_rpc in this same process, and it starts in
        # seconds. Without a KV-cache size vLLM-CPU would reserve ~9 GiB.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.rollout.kv_cache_gib)
        from vllm import LLM

        self.cfg = cfg
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
            max_model_len=max(cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens,
                              cfg.sl_cai.max_context_tokens if cfg.sl_cai.enabled else 0),
            trust_remote_code=mc.trust_remote_code, logprobs_mode="processed_logprobs", **kwargs,
        )
        self.weight_version = 0

    def encode_prompts(self, texts: list[str]) -> list[list[int]]:
        """Chat-template the user turn and truncate from the left to data.max_prompt_tokens."""
        out = []
        for text in texts:
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
            )
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            out.append(list(ids)[-self.cfg.data.max_prompt_tokens :])
        return out

    def generate(self, texts: list[str], n: int, seed: int, temperature: float | None = None,
                 max_new_tokens: int | None = None, top_p: float | None = None) -> Batch:
        """n samples per prompt, grouped contiguously, as one Batch: token ids, texts, the sampler's log-probs and
        whether each response finished. The log-probs are vLLM's "processed" ones: of the distribution actually
        sampled from (temperature, top-p), which batch.meta records for the trainer to use the same."""
        from vllm import SamplingParams

        rc = self.cfg.rollout
        temperature = rc.temperature if temperature is None else temperature
        greedy = temperature == 0  # vLLM's greedy log-probs are the raw (T = 1, no top-p) ones
        top_p = 1.0 if greedy else rc.top_p if top_p is None else top_p
        prompt_ids = self.encode_prompts(texts)
        params = [
            SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens or rc.max_new_tokens,
                           logprobs=0, seed=seed + i * n)
            for i in range(len(texts))
        ]
        t0 = time.perf_counter()
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        prompts, responses, logprobs, finished, prompt_text, response_text = [], [], [], [], [], []
        for text, p, out in zip(texts, prompt_ids, outs):
            for o in out.outputs:
                prompts.append(p)
                responses.append(list(o.token_ids))
                # logprobs=0 returns exactly the sampled token's log-prob at each step.
                logprobs.append([lp[t].logprob for lp, t in zip(o.logprobs, o.token_ids)])
                finished.append(o.finish_reason == "stop")
                prompt_text.append(text)
                response_text.append(o.text)
        batch = Batch.from_token_lists(prompts, responses, self.tokenizer.pad_token_id, prompt=prompt_text,
                                       response=response_text)
        batch["sampler_logprobs"] = pad_rows(logprobs, torch.float32)
        batch["finished"] = torch.tensor(finished, dtype=torch.bool)
        batch.meta.update(temperature=1.0 if greedy else temperature, top_p=top_p, gen_seconds=seconds,
                          gen_tokens=batch.token_count(), weight_version=self.weight_version)
        return batch

    def chat(self, conversations: list[list[dict]], seed: int, temperature: float, max_new_tokens: int) -> list[str]:
        """One assistant reply per conversation (SL-CAI's answers, critiques and revisions), batched.

        A conversation too long for the engine keeps its end: the latest turns matter most.
        """
        from vllm import SamplingParams

        limit = self.llm.llm_engine.model_config.max_model_len - max_new_tokens
        prompts = []
        for conv in conversations:
            ids = self.tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=True)
            ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
            prompts.append({"prompt_token_ids": ids[-limit:]})
        params = [SamplingParams(temperature=temperature, max_tokens=max_new_tokens, seed=seed + i)
                  for i in range(len(prompts))]
        return [o.outputs[0].text.strip() for o in self.llm.generate(prompts, params, use_tqdm=False)]

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> int:
        """Swap in the trainer's weights, then drop the prefix cache: its KV entries came from the old weights."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(state_dict.items())})
        self.llm.reset_prefix_cache()
        self.weight_version = version
        return version
