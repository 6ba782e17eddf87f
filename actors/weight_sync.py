"""Weight sync: the policy's weights streamed into every vLLM engine after each update.

One broadcast group joins policy rank 0 (group rank 0) and every vLLM worker (ranks 1..k): gloo on CPU (any node,
loopback or TCP), NCCL on GPU (a stateless group beside DeepSpeed's, as OpenRLHF, veRL and TRL do). The weights go
in buckets of `rollout.sync_bucket_mb`, in the model's parameter order:

    policy ranks: for each bucket, gather its ZeRO-3 shards (every rank takes part), rank 0 flattens and broadcasts
    vLLM workers: one `reload_weights` call whose weights iterator receives the buckets one by one

so no full state dict is held twice anywhere, and each engine reloads layer by layer as the buckets arrive. Every
receive and send is bounded by `trainer.timeout_s`: a stalled peer raises an error naming the bucket and the role
that was waiting, instead of hanging the run. NCCL collectives take no timeout: a watchdog (`bounded`) aborts the
communicator once `trainer.timeout_s` has passed, which releases the blocked rank, and raises SyncFailed naming the
engines it was waiting on (the error Roles.sync recovers from by restarting them).

vLLM 0.32's own `vllm.distributed.weight_transfer` (NCCL and CUDA-IPC engines) is not used: it needs the engine built
with a `weight_transfer_config`, has no timeout either (after a failed broadcast "the caller has to tear it down"),
sends from one trainer process (no ZeRO-3 gather of each bucket by every rank) and has no CPU transport, so the gloo
and /dev/shm paths the tests run would be a second protocol beside it.

Where the engines can map the sender's memory (`rollout.sync_transport`: shared, or auto), the bytes do not travel
through the group at all: the sender writes each bucket into one bucket-sized buffer that its receivers map, and the
group carries only "bucket i is ready" and a barrier once every receiver has copied it out. On CPU the buffer is a
file in /dev/shm (every engine on policy rank 0's node); on GPU it is CUDA IPC memory on the GPU that policy rank i
shares with engine i under `ray.colocate` (NCCL cannot join two processes on one GPU), with one gloo group per pair.

The receiving side runs inside vLLM's worker (`WeightReceiver` is passed as vLLM's `worker_extension_cls`), so the
same code serves the in-process CPU engine and multi-process tensor-parallel GPU engines (each TP worker receives
the full tensors; vLLM's weight loaders keep its own shard).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch

log = logging.getLogger("rlaif")
T = TypeVar("T")
ABORT_GRACE_S = 30.0  # how long a timed-out rank waits for the communicator's abort to finish before it raises


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
                 device: torch.device | None = None, engines: list[int] | None = None) -> None:
        """`engines`: the rollout engines whose workers are in this group (named when a collective times out);
        None on a receiver, which names itself by its sync rank."""
        self.backend, self.rank, self.timeout_s = backend, rank, timeout_s
        self.engines = engines or []
        if backend == "gloo":
            import torch.distributed as dist

            from actors.group import tcp_store

            store = tcp_store(host, port, world_size, rank, timeout_s)  # listens on the sender's address only
            self.pg = dist.ProcessGroupGloo(store, rank, world_size, timedelta(seconds=timeout_s))
        elif backend == "nccl":
            from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
            from vllm.distributed.utils import StatelessProcessGroup

            pg = StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world_size,
                                              store_timeout=int(timeout_s))
            self.pg = require_enabled(PyNcclCommunicator(pg, device=device), rank)
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
            def collective() -> None:
                stream = torch.cuda.current_stream()
                self.pg.broadcast(tensor, src=0, stream=stream)
                stream.synchronize()  # the wait that hangs when a peer is gone: the watchdog's abort ends it

            who = f"sending to engines {self.engines}" if self.rank == 0 else f"sync rank {self.rank} receiving"
            bounded(collective, self.timeout_s, self.pg.destroy, f"{what} ({who})",
                    self.engines if self.rank == 0 else [])

    def barrier(self, what: str) -> None:
        """Every rank has finished with `what` (gloo: the shared-buffer handoff's "copied out")."""
        try:
            self.pg.barrier().wait(timedelta(seconds=self.timeout_s))
        except RuntimeError as exc:
            side = "policy rank sending" if self.rank == 0 else f"vLLM worker (sync rank {self.rank})"
            raise TimeoutError(f"weight sync: {side} waiting for every engine to copy out {what} failed after up to "
                               f"{self.timeout_s:.0f}s (trainer.timeout_s): {exc}") from exc


def require_enabled(comm: T, rank: int) -> T:
    """vLLM's PyNcclCommunicator turns itself into a no-op (`disabled`) when the NCCL library fails to load or
    VLLM_DISABLE_PYNCCL is set: every broadcast would return at once and the engines would load uninitialised
    buffers as weights. Refuse such a communicator."""
    if getattr(comm, "disabled", False):
        raise RuntimeError(
            f"weight sync: vLLM's NCCL communicator is disabled on sync rank {rank} (the NCCL library failed to load, "
            "VLLM_DISABLE_PYNCCL is set, or the group has one member); its broadcasts would do nothing and the "
            "engines would serve uninitialised weights. Fix the NCCL install (VLLM_NCCL_SO_PATH), unset "
            "VLLM_DISABLE_PYNCCL, or use rollout.sync_transport=shared with ray.colocate=true (gloo signals only)")
    return comm


def bounded(call: Callable[[], T], timeout_s: float, abort: Callable[[], None], what: str, engines: list[int],
            grace_s: float = ABORT_GRACE_S) -> T:
    """Run a blocking collective in this thread under a watchdog: past timeout_s the watchdog calls `abort` (NCCL:
    ncclCommAbort, which ends the collective on this rank) and the call's return or error becomes SyncFailed naming
    `engines` (the peers this rank was waiting on). The call stays in the calling thread (CUDA's current device and
    stream are per thread), so the abort must be what releases it, as ncclCommAbort does; the raise waits up to
    grace_s for the abort itself to finish."""
    done, fired = threading.Event(), threading.Event()
    released = threading.Event()

    def watchdog() -> None:
        if done.wait(timeout_s):
            return
        fired.set()
        log.error("weight sync: %s still blocked after %.0fs (trainer.timeout_s): aborting the communicator",
                  what, timeout_s)
        try:
            abort()
        finally:
            released.set()

    threading.Thread(target=watchdog, daemon=True, name="weight-sync-watchdog").start()
    failure = SyncFailed([], engines, f"{what} blocked for more than {timeout_s:.0f}s (trainer.timeout_s); "
                                      "communicator aborted")
    try:
        result = call()
    except Exception as exc:
        if fired.is_set():
            released.wait(grace_s)
            raise failure from exc
        raise
    finally:
        done.set()
    if fired.is_set():  # returned only because the abort released it: whatever it received is not the weights
        released.wait(grace_s)
        raise failure
    return result


SHM_DIR = "/dev/shm"
SHM_PREFIX = "rlaif-weight-sync-"  # then the creating process's pid: a stale file names its dead owner


def sweep_stale_buffers(folder: str = SHM_DIR) -> list[str]:
    """Remove the shared buffers whose creating process is gone (a rank killed before it unlinked its file: the
    memory stays taken until the machine reboots). Returns the paths removed."""
    removed = []
    for name in os.listdir(folder):
        pid = name[len(SHM_PREFIX):].split("-")[0] if name.startswith(SHM_PREFIX) else ""
        if not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            os.unlink(os.path.join(folder, name))
            removed.append(os.path.join(folder, name))
        except OSError:  # gone already, or another user's
            pass
    if removed:
        log.info("weight sync: removed %d stale shared buffer(s) of dead processes: %s", len(removed),
                 ", ".join(removed))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def release_buffer(handle: dict | None) -> None:
    """Unlink a /dev/shm buffer once its receivers have mapped it (it is freed when the last mapping goes), or once
    the group meant to use it failed to form (nobody will map it)."""
    if handle and handle["kind"] == "shm" and os.path.exists(handle["path"]):
        os.unlink(handle["path"])


def share_buffer(nbytes: int, device: torch.device, folder: str = SHM_DIR) -> tuple[torch.Tensor, dict]:
    """A bucket-sized byte buffer, and a handle by which a process on the same node (CPU) or GPU (CUDA) maps it."""
    if device.type == "cuda":
        from torch.multiprocessing.reductions import reduce_tensor

        buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
        rebuild, args = reduce_tensor(buf)  # a CUDA IPC handle (the storage stays alive as long as `buf`)
        return buf, {"kind": "cuda_ipc", "rebuild": rebuild, "args": args, "nbytes": nbytes,
                     "gpu": str(torch.cuda.get_device_properties(device).uuid)}
    sweep_stale_buffers(folder)
    path = os.path.join(folder, f"{SHM_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    buf = torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8)
    return buf, {"kind": "shm", "path": path, "nbytes": nbytes}


def map_buffer(handle: dict) -> tuple[torch.Tensor, torch.device]:
    """The receiving side of share_buffer: the same memory, and the device it is on."""
    if handle["kind"] == "cuda_ipc":
        # Ray gives each actor its own CUDA_VISIBLE_DEVICES: find the sender's GPU among this process's by its UUID
        local = [i for i in range(torch.cuda.device_count())
                 if str(torch.cuda.get_device_properties(i).uuid) == handle["gpu"]]
        if not local:
            raise RuntimeError(f"weight sync: the policy's GPU {handle['gpu']} is not visible to this vLLM worker; "
                               "CUDA IPC needs the engine on its policy rank's GPU (ray.colocate=true)")
        args = list(handle["args"])
        args[6] = local[0]  # rebuild_cuda_tensor's device index, in this process's numbering
        buf = handle["rebuild"](*args)
        return buf, buf.device
    if not os.path.exists(handle["path"]):
        raise RuntimeError(f"weight sync: shared buffer {handle['path']} not found: is this vLLM engine on policy "
                           "rank 0's node? (rollout.sync_transport=broadcast works across nodes)")
    return torch.from_file(handle["path"], shared=True, size=handle["nbytes"], dtype=torch.uint8), torch.device("cpu")


def send_buckets(group: BroadcastGroup | None, items: list[tuple[str, list[torch.nn.Parameter], Callable]],
                 buckets: list[list[Param]], zero3: bool, device: torch.device,
                 shared: torch.Tensor | None = None) -> int:
    """Policy side; every rank calls it (ZeRO-3 gathers each bucket collectively), the ranks with a group send:
    broadcast through the group, or written into the `shared` buffer that the group's receivers map. `items`:
    (name, parameters, make) as rlaif.rl.lora.sync_items gives them (a plain parameter is itself; a LoRA layer's weight
    is made from W, A and B). Returns the bytes sent."""
    import deepspeed

    by_name, sent, failure = {name: (params, make) for name, params, make in items}, 0, None
    for i, bucket in enumerate(buckets):
        parts = [by_name[p.name] for p in bucket]
        params = [q for ps, _ in parts for q in ps]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=zero3):
            if group is None or failure is not None:
                continue  # after a failed send rank 0 still takes part in every gather: the other ranks wait on it
            what = f"bucket {i + 1}/{len(buckets)}"
            tensors = [make([q.detach() for q in ps]).reshape(-1).to(bucket[0].dtype) for ps, make in parts]
            try:
                if shared is None:
                    flat = torch.cat(tensors).to(device)
                    group.broadcast(flat, what)
                else:  # flatten straight into the mapped buffer; the group says when it is ready and when read
                    nbytes = sum(_numel(p.shape) for p in bucket) * bucket[0].dtype.itemsize
                    flat = shared[:nbytes].view(bucket[0].dtype)
                    torch.cat(tensors, out=flat)
                    if flat.is_cuda:
                        torch.cuda.current_stream().synchronize()
                    group.broadcast(torch.tensor([i], dtype=torch.int64), what)
                    group.barrier(what)
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


def receive_shared(group: BroadcastGroup, shared: torch.Tensor, buckets: list[list[Param]]
                   ) -> Iterator[tuple[str, torch.Tensor]]:
    """vLLM side of the shared-buffer handoff: copy each bucket out of the mapped buffer once the sender says it is
    ready (the copy, because vLLM's layerwise reload may keep a layer's tensors until the next bucket), then let the
    sender overwrite it."""
    for i, bucket in enumerate(buckets):
        what = f"bucket {i + 1}/{len(buckets)}"
        ready = torch.tensor([-1], dtype=torch.int64)
        group.broadcast(ready, what)
        if int(ready) != i:
            raise RuntimeError(f"weight sync: expected {what}, the sender announced bucket {int(ready) + 1}")
        nbytes = sum(_numel(p.shape) for p in bucket) * bucket[0].dtype.itemsize
        flat = shared[:nbytes].view(bucket[0].dtype).clone()
        if flat.is_cuda:
            torch.cuda.current_stream().synchronize()
        group.barrier(what)
        offset = 0
        for p in bucket:
            n = _numel(p.shape)
            yield p.name, flat[offset : offset + n].view(p.shape)
            offset += n


class WeightReceiver:
    """Mixed into vLLM's worker class (worker_extension_cls): join the sync group, then reload from broadcasts."""

    def init_weight_sync(self, backend: str, host: str, port: int, rank: int, world_size: int,
                         timeout_s: float, shared: dict | None = None) -> None:
        """Join as sync rank `rank` + this worker's TP rank; map the sender's buffer first (`shared`: its handle),
        so that once the group stands the sender knows every receiver holds the mapping."""
        # Mixed into vLLM's worker: self.device and self.rank (its tensor-parallel rank) are the worker's.
        device = self.device if backend == "nccl" else torch.device("cpu")
        self._sync_shared = map_buffer(shared)[0] if shared else None
        self._sync_group = BroadcastGroup(backend, host, port, rank + self.rank, world_size, timeout_s, device)
        self._sync_device = device

    def receive_weights(self, buckets: list[list[Param]]) -> float:
        t0 = time.perf_counter()
        weights = receive_buckets(self._sync_group, buckets, self._sync_device) if self._sync_shared is None else \
            receive_shared(self._sync_group, self._sync_shared, buckets)
        self.reload_weights(weights_iterator=weights)
        return time.perf_counter() - t0


class WeightSync:
    """Driver side: the weight-sync groups and their transport; calling it streams the policy's current weights into
    every engine. Broadcast: one group of policy rank 0 (sync rank 0) and every engine's workers (ranks 1..). Shared
    buffer on CPU: the same group, carrying only signals. Shared buffer on GPU (colocated): one gloo group per policy
    rank i and its engine i."""

    def __init__(self, cfg, policy, engines: list) -> None:
        from actors.group import get, node_ip_and_free_port

        self.policy, self.engines, timeout = policy, engines, cfg.trainer.timeout_s
        self.timeout = timeout
        self.get = lambda refs, what: get(refs, timeout, what)
        tp = self.get([e.tensor_parallel_size.remote() for e in engines], "rollout.tensor_parallel_size")
        self.shared = self._shared(cfg, policy, engines, tp)
        # which policy rank sends to which engines
        serves = {i: [i] for i in range(len(engines))} if self.shared and cfg.device == "cuda" else \
            {0: list(range(len(engines)))}
        handles = self.get([a.plan_weight_sync.remote(self.shared and r in serves)
                            for r, a in enumerate(policy.actors)], "weight sync: planning buckets")
        backend = "nccl" if cfg.device == "cuda" and not self.shared else "gloo"
        calls = []
        for r, mine in serves.items():
            sender = policy.actors[r]
            host, port = self.get(sender.__ray_call__.remote(lambda self: node_ip_and_free_port()), "sync address")
            world = 1 + sum(tp[e] for e in mine)
            calls.append(sender.init_weight_sync.remote(backend, host, port, world, timeout, mine))
            first = 1
            for e in mine:
                calls.append(engines[e].init_weight_sync.remote(backend, host, port, first, world, timeout, handles[r]))
                first += tp[e]
        self.get(calls, "weight sync: connecting the policy ranks and the vLLM engines")
        self.buckets = self.get(policy.actors[0].weight_buckets.remote(), "policy.weight_buckets")

    @staticmethod
    def _shared(cfg, policy, engines: list, tp: list[int]) -> bool:
        """rollout.sync_transport: can (auto) or must (shared) the engines map the sender's memory?"""
        import ray

        want = cfg.rollout.sync_transport
        if want == "broadcast":
            return False
        if cfg.device == "cuda":  # engine i on policy rank i's GPU (config validation allows no other colocation)
            why = "" if cfg.ray.colocate and set(tp) == {1} else "CUDA IPC needs each engine on its policy rank's " \
                "GPU (ray.colocate=true, rollout.tensor_parallel_size=1)"
        else:
            node = lambda a: a.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())  # noqa: E731
            nodes = ray.get([node(policy.actors[0]), *[node(e) for e in engines]], timeout=cfg.trainer.timeout_s)
            far = [i for i, n in enumerate(nodes[1:]) if n != nodes[0]]
            why = f"rollout engines {far} are not on policy rank 0's node" if far else ""
        if why and want == "shared":
            raise RuntimeError(f"rollout.sync_transport=shared: {why}; allowed: auto (shared where possible) or "
                               "broadcast")
        if why:
            log.info("weight sync: broadcast, not a shared buffer: %s", why)
        return not why

    def __call__(self, version: int) -> dict[str, float]:
        sends = [a.send_weights.remote() for a in self.policy.actors]  # every rank: ZeRO-3 gathers by bucket
        receives = [e.receive_weights.remote(self.buckets, version) for e in self.engines]
        try:
            sent = self.get(sends, "weight sync: policy ranks sending")[0]
            self.get(receives, "weight sync: vLLM engines receiving")
        except Exception as exc:
            failed = sync_failure(sends, receives, grace_s=min(30.0, self.timeout))
            stuck = [k for k in watchdog_engines(sends) if k not in failed.engines]
            if stuck and not failed.policy_ranks:
                # alive but in an aborted NCCL group with half-loaded weights (a hung GPU, a lost link): restart
                # them, so that they are what SyncFailed means by dead engines, and Roles.sync recovers as usual
                import ray

                for k in stuck:
                    ray.kill(self.engines[k], no_restart=False)
                failed = SyncFailed([], sorted(failed.engines + stuck), "restarted after the NCCL watchdog fired")
            raise failed from exc
        return {"weight_sync/bytes": sent["bytes"], "weight_sync/gb_per_second": sent["bytes"] / 1e9 / sent["seconds"],
                "weight_sync/shared_buffer": float(self.shared)}


class SyncFailed(RuntimeError):
    """A weight sync failed; which policy ranks and which engines died (their processes are gone) or must be
    restarted (stuck in an aborted NCCL group); `detail`: what the watchdog saw."""

    def __init__(self, policy_ranks: list[int], engines: list[int], detail: str = "") -> None:
        super().__init__(f"weight sync failed; dead policy ranks {policy_ranks}, dead engines {engines}"
                         + (f": {detail}" if detail else ""))
        self.policy_ranks, self.engines, self.detail = policy_ranks, engines, detail

    def __reduce__(self):  # through Ray's pickling with its three arguments
        return SyncFailed, (self.policy_ranks, self.engines, self.detail)


def sync_failure(sends: list, receives: list, grace_s: float) -> SyncFailed:
    """Which sides of a failed sync died. The sender learns of a dead peer (gloo: "connection closed by peer")
    before Ray has failed the dead actor's call, so wait up to grace_s for Ray to report it (live receivers may stay
    blocked in the broken group: those are not deaths)."""
    import ray

    ray.wait(sends + receives, num_returns=len(sends) + len(receives), timeout=grace_s)
    return SyncFailed(_died(sends), _died(receives))


def watchdog_engines(sends: list) -> list[int]:
    """The engines named by a sender's watchdog (bounded): its SyncFailed, as Ray re-raises it on the driver."""
    import ray

    out: set[int] = set()
    for ref in sends:
        ready, _ = ray.wait([ref], timeout=0)
        if not ready:
            continue
        try:
            ray.get(ready[0])
        except Exception as exc:  # RayTaskError: the original is its cause (or Ray's subclass of it)
            cause = exc if isinstance(exc, SyncFailed) else getattr(exc, "cause", None)
            if isinstance(cause, SyncFailed):
                out |= set(cause.engines)
    return sorted(out)


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
