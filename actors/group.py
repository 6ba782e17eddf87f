"""Place N ranks of one role in a Ray placement group and give them a torch.distributed rendezvous."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy


def get(refs: Any, timeout: float, what: str) -> Any:
    """ray.get that fails loudly instead of waiting forever on a hung or unschedulable actor."""
    try:
        return ray.get(refs, timeout=timeout)
    except ray.exceptions.GetTimeoutError as exc:
        raise TimeoutError(
            f"{what} did not finish within {timeout:.0f}s (trainer.timeout_s); an actor is hung or could not be "
            "placed (too few CPUs/GPUs in the cluster?)"
        ) from exc


def split_batch(batch: dict[str, list], n: int) -> list[dict[str, list]]:
    """n contiguous, equal slices of a batch of parallel lists (a remainder is dropped: callers size batches)."""
    size = len(next(iter(batch.values()))) // n
    return [{k: v[i * size : (i + 1) * size] for k, v in batch.items()} for i in range(n)]


def node_ip_and_free_port() -> tuple[str, int]:
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return ray.util.get_node_ip_address(), port


class ActorGroup:
    """`num_ranks` actors of `cls`, one placement-group bundle each: their own group placed with `strategy` (PACK,
    SPREAD, STRICT_PACK, STRICT_SPREAD over the cluster's nodes), or bundles `bundles` of a shared group `pg`
    (colocation with other roles)."""

    def __init__(
        self, cls: type, num_ranks: int, *args: Any, num_cpus: float = 1, num_gpus: float = 0,
        env: dict[str, str] | None = None, timeout: float = 600.0, name: str = "group", strategy: str = "PACK",
        pg=None, bundles: list[int] | None = None,
    ) -> None:
        self.name, self.timeout = name, timeout
        bundle = {"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {})}
        self.own_pg = pg is None
        self.pg = placement_group([bundle] * num_ranks, strategy=strategy) if pg is None else pg
        bundles = list(range(num_ranks)) if bundles is None else bundles
        self.actors = []
        try:
            get(self.pg.ready(), timeout, f"placement group for {name} ({num_ranks} x {bundle}, {strategy})")
            remote_cls = ray.remote(cls)
            for rank in range(num_ranks):
                strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=bundles[rank])
                options = {"num_cpus": num_cpus, "num_gpus": num_gpus, "scheduling_strategy": strategy}
                if env:
                    options["runtime_env"] = {"env_vars": env}
                self.actors.append(remote_cls.options(**options).remote(*args))
            # Rank 0 chooses the rendezvous address on its own node, so multi-node groups work too.
            addr, port = get(self.actors[0].__ray_call__.remote(lambda self: node_ip_and_free_port()), timeout, name)
            get(
                [a.setup_distributed.remote(rank, num_ranks, addr, port) for rank, a in enumerate(self.actors)],
                timeout, f"{name}: torch.distributed setup",
            )
        except BaseException:
            self.shutdown()  # ranks that did start must not outlive a failed start-up
            raise

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """The same call on every rank (collectives such as gathering ZeRO-3 weights need all of them)."""
        return self._get([getattr(a, method).remote(*args, **kwargs) for a in self.actors], method)

    def call_sharded(self, method: str, shards: list[Any], *args: Any) -> list[Any]:
        """Rank i gets shards[i] (plus the same extra arguments)."""
        return self._get([getattr(a, method).remote(s, *args) for a, s in zip(self.actors, shards)], method)

    def _get(self, refs: list, method: str) -> list[Any]:
        """A dead rank cannot rejoin its DeepSpeed group: RoleDied, in one line, which the trainer turns into
        "resume from the last checkpoint"."""
        from actors import RoleDied, actor_death

        try:
            return get(refs, self.timeout, f"{self.name}.{method}")
        except ray.exceptions.RayActorError as exc:
            raise RoleDied(f"{self.name}.{method}: a rank died ({actor_death(exc)})") from exc

    def shutdown(self) -> None:
        kill_and_wait(self.actors)
        if self.own_pg:
            remove_placement_group(self.pg)


def kill_and_wait(actors: list, timeout: float = 30.0) -> None:
    """ray.kill each actor and wait until Ray reports it dead (ray.kill alone returns before the process is gone)."""
    for a in actors:
        ray.kill(a, no_restart=True)
    deadline = time.monotonic() + timeout
    for a in actors:
        while time.monotonic() < deadline:
            try:
                ray.get(a.__ray_ready__.remote(), timeout=max(deadline - time.monotonic(), 0.1))
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                break
            time.sleep(0.1)  # still answering: the kill has not landed yet


def tcp_store(host: str, port: int, world_size: int, rank: int, timeout_s: float):
    """torch.distributed's rendezvous store, its server (rank 0) listening on `host` alone: the node's address on a
    cluster, 127.0.0.1 for a local run. torch's own TCPStore server listens on every interface, unauthenticated."""
    from datetime import timedelta

    import torch.distributed as dist

    fd = None
    if rank == 0:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen()
        fd = sock.detach()  # the store owns the listening socket from here on
    return dist.TCPStore(host, port, world_size, rank == 0, timeout=timedelta(seconds=timeout_s),
                         master_listen_fd=fd)


def join_group(device: str, rank: int, world_size: int, master_addr: str, master_port: int,
               timeout_s: float = 1800.0) -> None:
    """Inside a rank's actor: set torch.distributed's environment and join (gloo on CPU, NCCL on GPU) through a store
    that listens on master_addr only; DeepSpeed then takes the initialised group as it is."""
    from datetime import timedelta

    import deepspeed
    import torch
    import torch.distributed as dist

    from rlaif.config.placement import local_cuda_device
    from rlaif.runtime import prepare_torch_extensions

    local = 0 if device == "cpu" else local_cuda_device(ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"))
    # DeepSpeed puts the engine on cuda:LOCAL_RANK; NCCL binds this process to the current device
    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(local))
    if device == "cuda":
        torch.cuda.set_device(local)
    prepare_torch_extensions()  # on CPU init_distributed JIT-loads an op; a killed build's lock would hang it
    backend = "gloo" if device == "cpu" else "nccl"
    dist.init_process_group(backend, store=tcp_store(master_addr, master_port, world_size, rank, timeout_s),
                            rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
    deepspeed.init_distributed(dist_backend=backend)


def deepspeed_config(stage: int, micro_batch: int, grad_accum: int, grad_clip: float, dtype: str,
                     offload_optimizer: bool = False, offload_param: bool = False) -> dict[str, Any]:
    """DeepSpeed's config for one ZeRO engine. offload_optimizer / offload_param (policy.offload_*): ZeRO-Offload
    of the optimizer states (ZeRO >= 1) and of the parameters (ZeRO-3) to pinned CPU memory."""
    zero: dict[str, Any] = {"stage": stage}
    if stage == 3:  # otherwise small models are kept whole on every rank and nothing is partitioned
        zero.update(stage3_param_persistence_threshold=0, stage3_model_persistence_threshold=0)
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": grad_clip, "zero_optimization": zero, "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": dtype == "bfloat16"}, "steps_per_print": 10**9,
    }


def set_lr(engine, lr: float) -> float:
    """The learning rate of a ZeRO engine's next optimizer steps (every stage's optimizer reads its param groups')."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr
    return lr


def policy_deepspeed_config(cfg) -> dict[str, Any]:
    """The DeepSpeed config the policy ranks train with (PolicyWorker.setup_distributed builds the same)."""
    pc = cfg.policy
    per_rank = cfg.rl.prompts_per_step * cfg.rollout.n_samples // pc.num_ranks
    return deepspeed_config(pc.zero_stage, pc.micro_batch_size, per_rank // pc.micro_batch_size, pc.grad_clip,
                            pc.model.dtype, pc.offload_optimizer, pc.offload_param)


def zero_engine(model, lr: float, stage: int, micro_batch: int, grad_accum: int, grad_clip: float, dtype: str,
                weight_decay: float = 0.0, offload_optimizer: bool = False, offload_param: bool = False):
    """A DeepSpeed ZeRO engine over `model`, with torch AdamW: it works for every stage on CPU, where
    DeepSpeedCPUAdam would cost a long JIT compile. With the optimizer offloaded (GPU runs only) the step runs on
    the CPU, which DeepSpeed does with its own CPU Adam (same AdamW update; it refuses a torch optimizer there)."""
    import deepspeed
    import torch

    config = deepspeed_config(stage, micro_batch, grad_accum, grad_clip, dtype, offload_optimizer, offload_param)
    trained = [p for p in model.parameters() if p.requires_grad]  # with LoRA the adapters (and a scalar head)
    if offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(trained, lr=lr, weight_decay=weight_decay, adamw_mode=True)
    else:
        optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=weight_decay)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


def full_state_dict(engine, zero3: bool, rank: int) -> dict | None:
    """The whole model as CPU tensors on rank 0 (None elsewhere); every rank must call it under ZeRO-3.

    ZeRO-3: DeepSpeed's consolidated state dict gathers one module's own parameters at a time (modifier_rank=0)
    and moves them to rank 0's CPU before the next, so every rank holds at most one layer gathered at once, not the
    whole model (GatheredParameters over all parameters: 2 bytes per parameter extra on every GPU)."""
    if zero3:
        return engine._zero3_consolidated_16bit_state_dict()
    if rank != 0:
        return None
    return {k: v.detach().to("cpu", copy=True) for k, v in engine.module.state_dict().items()}


def use_cpu_threads(cfg, role: str, stage: str = "rl") -> int:
    """Give this actor's torch its share of the node's cores (see ray.cpu_threads_*); returns the thread count.
    Call first in an actor's constructor; vLLM's CPU engine reads VLLM_CPU_OMP_THREADS_BIND when it starts."""
    import torch

    if cfg.device != "cpu":
        return torch.get_num_threads()
    r = cfg.ray
    n = {"policy": r.cpu_threads_policy, "rollout": r.cpu_threads_rollout, "aux": r.cpu_threads_aux}[role]
    if n <= 0:
        trainers = cfg.policy.num_ranks + (cfg.critic.num_ranks if cfg.rl.algorithm == "ppo" else 0)
        engines = cfg.rollout.num_engines
        # trainer.async: the engines generate step t+1 while the ranks train step t, so both share the cores (all
        # of them each would oversubscribe them: measured, no overlap gain at all on 2 cores). The policy ranks
        # are the same actors in an SFT stage of the same run, which then also gets the smaller share.
        overlap = cfg.trainer.async_ and stage == "rl"
        peers = {"policy": trainers + (engines if overlap else 0), "rollout": engines + (trainers if overlap else 0),
                 "aux": 3}[role]
        n = max(1, len(os.sched_getaffinity(0)) // peers)
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)
    return n
