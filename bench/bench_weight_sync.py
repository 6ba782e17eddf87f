"""Weight sync (policy rank 0 -> vLLM engine) vs a plain memory copy of the same bytes: bytes/s, ratio, and parts.

    python bench/bench_weight_sync.py [--rounds 5] [--quick] [key=value overrides of bench/peer.yaml ...]

Starts what the trainer starts for RL -- a one-rank policy ActorGroup (DeepSpeed ZeRO-2) and a vLLM rollout actor
(RolloutEngines), joined by actors.weight_sync.WeightSync (a gloo broadcast group, buckets of
rollout.sync_bucket_mb) -- and times, interleaved round by round after a warm-up round:

* sync/shared:    WeightSync(version) with rollout.sync_transport=shared (the default, auto, on one node): every
             bucket flattened by policy rank 0 into a /dev/shm buffer that the engine maps, copied out by the engine
             and reloaded by vLLM's `reload_weights`, then its prefix cache reset -- the trainer's time/weight_sync.
* sync/broadcast: the same with rollout.sync_transport=broadcast: each bucket broadcast over the gloo group (what
             engines on other nodes get).
* memcpy:    torch `copy_` of the same parameter tensors (the policy's named_parameters, as sent) into preallocated
             ones, in this process, on both cores (torch's default threads here) and on one thread.
and, to say where the sync's time goes (each part alone, as the sync runs it):
* flatten:   on policy rank 0, the per-bucket torch.cat of the parameters (what send_buckets does before sending).
* broadcast: flatten + the gloo broadcast + the engine's receive buffers, without reloading (the engine's worker
             drains actors.weight_sync.receive_buckets).
* reload:    the engine's `reload_weights` from tensors already in its memory (received once before), no network;
             vLLM's layerwise reload copies them in and re-runs its CPU weight processing (repacking).

Printed: the bytes sent, each measurement's median seconds and GB/s, and sync / memcpy (time ratio; target <= 2x).
Switching transports rebuilds the WeightSync between measurements (not timed).
Threads: the actors run as the trainer starts them (num_cpus=1, so Ray sets OMP_NUM_THREADS=1). The machine is
shared and noisy: read the per-round spread.

--quick: the tiny builtin Llama, 1 round.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
REPO = Path(__file__).resolve().parents[1]


def made(item) -> object:
    """One weight as send_buckets makes it (a LoRA layer's merged from W, A and B)."""
    params, make = item
    return make([q.detach() for q in params])


def flatten_only(worker) -> float:
    """On policy rank 0: the per-bucket flatten of send_buckets, nothing sent."""
    import torch

    by_name, t0 = {n: (ps, make) for n, ps, make in worker.sync_items}, time.perf_counter()
    for bucket in worker.sync_buckets:
        torch.cat([made(by_name[p.name]).reshape(-1).to(bucket[0].dtype) for p in bucket])
    return time.perf_counter() - t0


def broadcast_send(worker) -> float:
    import torch

    by_name, t0 = {n: (ps, make) for n, ps, make in worker.sync_items}, time.perf_counter()
    for i, bucket in enumerate(worker.sync_buckets):
        flat = torch.cat([made(by_name[p.name]).reshape(-1).to(bucket[0].dtype) for p in bucket])
        worker.sync_group.broadcast(flat, f"bench bucket {i}")
    return time.perf_counter() - t0


def receive_only(vllm_worker, buckets, keep: bool) -> float:
    """Inside vLLM's worker: drain the broadcast (kept as the worker's _bench_weights when `keep`), no reload."""
    import torch

    from actors.weight_sync import receive_buckets

    t0 = time.perf_counter()
    weights = [(n, t) for n, t in receive_buckets(vllm_worker._sync_group, buckets, torch.device("cpu"))]
    if keep:
        vllm_worker._bench_weights = weights
    return time.perf_counter() - t0


def reload_only(vllm_worker) -> float:
    t0 = time.perf_counter()
    vllm_worker.reload_weights(weights_iterator=iter(vllm_worker._bench_weights))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (after one warm-up round)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of bench/peer.yaml")
    args = parser.parse_args()
    import ray
    import torch

    from actors.group import ActorGroup, get
    from actors.policy import PolicyWorker
    from actors.rollout import RolloutEngines
    from actors.weight_sync import WeightSync
    from rlaif.config import load_config
    from rlaif.models import load_causal_lm, resolve_model_path

    quick = ["policy.model.path=builtin:tiny-llama"]
    cfg = load_config(REPO / "bench/peer.yaml", [*(quick if args.quick else []), *args.overrides])
    rounds = 1 if args.quick else args.rounds
    env = {k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "RLAIF_"))}
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env})
    try:
        policy = ActorGroup(PolicyWorker, 1, cfg, timeout=600, name="policy")
        engines = RolloutEngines(cfg, 0.0, 600)
        engine = engines.actors[0]
        get(engine.__ray_ready__.remote(), 600, "rollout engine start")
        cfgs = {t: dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, sync_transport=t))
                for t in ("shared", "broadcast")}
        current: dict[str, WeightSync] = {}

        def use(transport: str) -> WeightSync:
            if transport not in current:
                current.clear()
                current[transport] = WeightSync(cfgs[transport], policy, engines.actors)
            return current[transport]

        rank0 = policy.actors[0]
        buckets = use("broadcast").buckets

        # The same tensors the sync sends, for the memory copy: the model's parameters (tied ones once).
        model = load_causal_lm(resolve_model_path(cfg.policy.model.path, cfg.cache_dir), cfg.policy.model.dtype)
        src = [p.detach() for p in model.parameters()]
        dst = [torch.empty_like(p) for p in src]
        nbytes = sum(p.numel() * p.element_size() for p in src)
        sent_bytes = sum(p.dtype.itemsize * _numel(p.shape) for b in buckets for p in b)
        default_threads = torch.get_num_threads()

        def memcpy(threads: int) -> float:
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            for d, s in zip(dst, src):
                d.copy_(s)
            seconds = time.perf_counter() - t0
            torch.set_num_threads(default_threads)
            return seconds

        def run_on_engine(fn, *fn_args):
            return engine.__ray_call__.remote(lambda self, f, a: self.llm.collective_rpc(f, args=a)[0], fn, fn_args)

        version = [0]

        def full_sync(transport: str) -> float:
            sync = use(transport)
            version[0] += 1
            t0 = time.perf_counter()
            metrics = sync(version[0])
            assert metrics["weight_sync/shared_buffer"] == (transport == "shared")
            return time.perf_counter() - t0

        def broadcast(keep: bool = False) -> float:
            use("broadcast")
            t0 = time.perf_counter()
            refs = [rank0.__ray_call__.remote(broadcast_send), run_on_engine(receive_only, buckets, keep)]
            get(refs, 600, "bench broadcast")
            return time.perf_counter() - t0

        def reload() -> float:
            t0 = time.perf_counter()
            get(run_on_engine(reload_only), 600, "bench reload")
            return time.perf_counter() - t0

        def flatten() -> float:
            return get(rank0.__ray_call__.remote(flatten_only), 600, "bench flatten")

        broadcast(keep=True)  # the engine keeps one received copy of the weights for the reload-only measurement
        measures = {"sync/shared": lambda: full_sync("shared"), "sync/broadcast": lambda: full_sync("broadcast"),
                    f"memcpy/{default_threads}t": lambda: memcpy(default_threads),
                    "memcpy/1t": lambda: memcpy(1), "flatten": flatten, "broadcast": broadcast, "reload": reload}
        seconds: dict[str, list[float]] = {k: [] for k in measures}
        for rnd in range(rounds + 1):
            for name, fn in (measures.items() if rnd % 2 else reversed(measures.items())):
                s = fn()
                if rnd:
                    seconds[name].append(s)
            print(f"round {rnd}{' (warm-up)' if not rnd else ''}: "
                  + "  ".join(f"{k} {v[-1]:.3f}s" for k, v in seconds.items() if v and rnd), flush=True)
        # the engine still answers after all these reloads
        out = engines.generate(["What is the capital of France?"], 2, 1)
        assert len(out) == 2
    finally:
        ray.shutdown()
    med = {k: statistics.median(v) for k, v in seconds.items()}
    print(f"\nweights: {nbytes / 1e6:.0f} MB in memory, {sent_bytes / 1e6:.0f} MB sent in {len(buckets)} buckets of "
          f"<= {cfg.rollout.sync_bucket_mb} MiB ({cfg.policy.model.path} {cfg.policy.model.dtype})")
    print(f"median of {rounds} rounds (seconds, GB/s of the weights' bytes; per-round values in brackets):")
    for k, v in med.items():
        print(f"  {k:<14} {v:7.3f} s  {nbytes / v / 1e9:7.2f} GB/s  [{', '.join(f'{x:.2f}' for x in seconds[k])}]")
    print("sync time / memory-copy time (target <= 2x):")
    for s in ("sync/shared", "sync/broadcast"):
        for k in med:
            if k.startswith("memcpy"):
                print(f"  {s} / {k:<10} {med[s] / med[k]:7.1f}x")
    print(f"  sync/shared / sync/broadcast {med['sync/shared'] / med['sync/broadcast']:.2f}x")
    parts = {k: med[k] for k in ("flatten", "broadcast", "reload")}
    print(f"parts: flatten {parts['flatten']:.3f} s, broadcast incl. flatten {parts['broadcast']:.3f} s, "
          f"reload {parts['reload']:.3f} s; broadcast + reload = {parts['broadcast'] + parts['reload']:.3f} s of "
          f"sync/broadcast's {med['sync/broadcast']:.3f} s; sync/shared less reload (the handoff): "
          f"{med['sync/shared'] - parts['reload']:.3f} s")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


if __name__ == "__main__":
    main()
