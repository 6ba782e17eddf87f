"""Weight sync: the policy's weights streamed into every vLLM engine after each update.

One broadcast group joins policy rank 0 (group rank 0) and every vLLM worker (ranks 1..k): gloo on CPU (any node,
loopback or TCP), NCCL on GPU (a stateless group beside DeepSpeed's, as OpenRLHF, veRL and TRL do). The weights go
in buckets of `rollout.sync_bucket_mb`, in the model's parameter order:

    policy ranks: for each bucket, gather its ZeRO-3 shards (every rank takes part), rank 0 flattens and broadcasts
    vLLM workers: one `reload_weights` call whose weights iterator receives the buckets one by one

so no full state dict is held twice anywhere, and each engine reloads layer by layer as the buckets arrive. Every
receive and send is bounded by `trainer.timeout_s`: a stalled peer raises an error naming the bucket and the role
that was waiting, instead of hanging the run.

The receiving side runs inside vLLM's worker (`WeightReceiver` is passed as vLLM's `worker_extension_cls`), so the
same code serves the in-process CPU engine and multi-process tensor-parallel GPU engines (each TP worker receives
the full tensors; vLLM's weight loaders keep its own shard).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch


@dataclass(frozen=True)
class Param:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype


def plan_buckets(params: list[Param], bucket_bytes: int) -> list[list[Param]]:
    """Contiguous groups of parameters of one dtype and at most bucket_bytes each (a larger tensor gets a bucket of
    its own)."""
    buckets: list[list[Param]] = [[]]
    size = 0
    for p in params:
        nbytes = _numel(p.shape) * p.dtype.itemsize
        if buckets[-1] and (size + nbytes > bucket_bytes or p.dtype != buckets[-1][0].dtype):
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += nbytes
    return [b for b in buckets if b]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class BroadcastGroup:
    """A process group of its own (not torch.distributed's default one, which DeepSpeed holds): rank 0 sends."""

    def __init__(self, backend: str, host: str, port: int, rank: int, world_size: int, timeout_s: float,
                 device: torch.device | None = None) -> None:
        self.backend, self.rank, self.timeout_s = backend, rank, timeout_s
        if backend == "gloo":
            import torch.distributed as dist

            store = dist.TCPStore(host, port, world_size, rank == 0, timeout=timedelta(seconds=timeout_s))
            self.pg = dist.ProcessGroupGloo(store, rank, world_size, timedelta(seconds=timeout_s))
        elif backend == "nccl":
            from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
            from vllm.distributed.utils import StatelessProcessGroup

            pg = StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world_size,
                                              store_timeout=int(timeout_s))
            self.pg = PyNcclCommunicator(pg, device=device)
        else:
            raise ValueError(f"weight sync backend {backend!r} unknown; allowed: gloo, nccl")

    def broadcast(self, tensor: torch.Tensor, what: str) -> None:
        if self.backend == "gloo":
            import torch.distributed as dist

            opts = dist.BroadcastOptions()
            opts.rootRank = 0
            try:
                self.pg.broadcast([tensor], opts).wait(timedelta(seconds=self.timeout_s))
            except RuntimeError as exc:
                side = "policy rank 0 sending" if self.rank == 0 else f"vLLM worker (sync rank {self.rank}) waiting"
                raise TimeoutError(f"weight sync: {side} for {what} failed after up to {self.timeout_s:.0f}s "
                                   f"(trainer.timeout_s): {exc}") from exc
        else:
            self.pg.broadcast(tensor, src=0)
            torch.cuda.current_stream().synchronize()


def send_buckets(group: BroadcastGroup | None, named: list[tuple[str, torch.nn.Parameter]],
                 buckets: list[list[Param]], zero3: bool, device: torch.device) -> int:
    """Policy side; every rank calls it (ZeRO-3 gathers each bucket collectively), rank 0 (group given) sends.
    Returns the bytes sent."""
    import deepspeed

    by_name, sent, failure = dict(named), 0, None
    for i, bucket in enumerate(buckets):
        params = [by_name[p.name] for p in bucket]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=zero3):
            if group is None or failure is not None:
                continue  # after a failed send rank 0 still takes part in every gather: the other ranks wait on it
            flat = torch.cat([t.detach().reshape(-1).to(bucket[0].dtype) for t in params]).to(device)
            try:
                group.broadcast(flat, f"bucket {i + 1}/{len(buckets)}")
            except (RuntimeError, TimeoutError) as exc:
                failure = exc
            sent += flat.numel() * flat.element_size()
    if failure is not None:
        raise failure
    return sent


def receive_buckets(group: BroadcastGroup, buckets: list[list[Param]], device: torch.device
                    ) -> Iterator[tuple[str, torch.Tensor]]:
    """vLLM side: yields (name, tensor) as each bucket arrives. Each bucket gets a fresh buffer: vLLM's layerwise
    reload keeps the tensors of a layer until its last weight arrives, possibly from the next bucket."""
    for i, bucket in enumerate(buckets):
        flat = torch.empty(sum(_numel(p.shape) for p in bucket), dtype=bucket[0].dtype, device=device)
        group.broadcast(flat, f"bucket {i + 1}/{len(buckets)}")
        offset = 0
        for p in bucket:
            n = _numel(p.shape)
            yield p.name, flat[offset : offset + n].view(p.shape)
            offset += n


class WeightReceiver:
    """Mixed into vLLM's worker class (worker_extension_cls): join the sync group, then reload from broadcasts."""

    def init_weight_sync(self, backend: str, host: str, port: int, rank: int, world_size: int,
                         timeout_s: float) -> None:
        """Join as sync rank `rank` + this worker's TP rank."""
        # Mixed into vLLM's worker: self.device and self.rank (its tensor-parallel rank) are the worker's.
        device = self.device if backend == "nccl" else torch.device("cpu")
        self._sync_group = BroadcastGroup(backend, host, port, rank + self.rank, world_size, timeout_s, device)
        self._sync_device = device

    def receive_weights(self, buckets: list[list[Param]]) -> float:
        t0 = time.perf_counter()
        self.reload_weights(weights_iterator=receive_buckets(self._sync_group, buckets, self._sync_device))
        return time.perf_counter() - t0


class WeightSync:
    """Driver side: one broadcast group of policy rank 0 (sync rank 0) and every engine's workers (ranks 1..);
    calling it streams the policy's current weights into every engine."""

    def __init__(self, cfg, policy, engines: list) -> None:
        from actors.group import get, node_ip_and_free_port

        self.policy, self.engines, timeout = policy, engines, cfg.trainer.timeout_s
        self.get = lambda refs, what: get(refs, timeout, what)
        tp = self.get([e.tensor_parallel_size.remote() for e in engines], "rollout.tensor_parallel_size")
        first = [1 + sum(tp[:i]) for i in range(len(engines))]
        world = 1 + sum(tp)
        rank0 = policy.actors[0]
        host, port = self.get(rank0.__ray_call__.remote(lambda self: node_ip_and_free_port()), "sync address")
        backend = "nccl" if cfg.device == "cuda" else "gloo"
        self.get([a.init_weight_sync.remote(backend, host, port, world, timeout) for a in policy.actors]
                 + [e.init_weight_sync.remote(backend, host, port, f, world, timeout) for e, f in zip(engines, first)],
                 "weight sync: connecting policy rank 0 and the vLLM engines")
        self.buckets = self.get(rank0.weight_buckets.remote(), "policy.weight_buckets")

    def __call__(self, version: int) -> dict[str, float]:

        sends = [a.send_weights.remote() for a in self.policy.actors]  # every rank: ZeRO-3 gathers by bucket
        receives = [e.receive_weights.remote(self.buckets, version) for e in self.engines]
        try:
            sent = self.get(sends, "weight sync: policy ranks sending")[0]
            self.get(receives, "weight sync: vLLM engines receiving")
        except Exception as exc:
            raise SyncFailed(_died(sends), _died(receives)) from exc
        return {"weight_sync/bytes": sent["bytes"], "weight_sync/gb_per_second": sent["bytes"] / 1e9 / sent["seconds"]}


class SyncFailed(RuntimeError):
    """A weight sync failed; which policy ranks and which engines died (their processes are gone)."""

    def __init__(self, policy_ranks: list[int], engines: list[int]) -> None:
        super().__init__(f"weight sync failed; dead policy ranks {policy_ranks}, dead engines {engines}")
        self.policy_ranks, self.engines = policy_ranks, engines


def _died(refs: list) -> list[int]:
    """Indices of the calls whose actor process died (finished with RayActorError); others may still be blocked."""
    import ray

    out = []
    for i, ref in enumerate(refs):
        ready, _ = ray.wait([ref], timeout=0)
        if ready:
            try:
                ray.get(ready[0])
            except ray.exceptions.RayActorError:
                out.append(i)
            except Exception:  # a failed call of a live actor: not a death
                continue
    return out
