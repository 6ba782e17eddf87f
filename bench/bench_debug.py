"""The debug config's RL phases; the rollout actor vs the same vLLM engine called directly; two engines vs one.

    python bench/bench_debug.py [--steps 8] [--rounds 3] [--quick] [--skip-phases] [key=value overrides ...]

(1) `rlaif train --config configs/debug.yaml` (the tiny Llama): mean seconds per RL step of each phase over the steps
    after the first (warm-up), and the run's start-up and wall time.
(2) Rollout actor vs vLLM called directly, on the peer workload of bench/peer.yaml (SmolLM2-135M fp32, 16 of the
    questions in bench/peer_prompts.txt x 2 samples, <= 64 new tokens, temperature 1; key=value overrides apply):
    generated tokens per second of `RolloutWorker.generate` through a Ray actor (what the trainer calls) against
    the same engine class's `llm.generate` in this process, with the same prompt ids, sampling parameters and seeds.
    Ray gives an actor started with num_cpus=1 OMP_NUM_THREADS=1, and an in-process vLLM-CPU engine runs torch on
    the threads its process has: so each side is measured on one thread (the actor as the trainer starts it; this
    process with torch.set_num_threads(1)) and on two (OMP_NUM_THREADS=2 in the actor's runtime_env; this process's
    default). The ratio at equal threads is the actor's own overhead (target >= 0.95x); the ratio of the actor as
    started to this process on both cores is what the thread budget costs.
(3) Two engines vs one (RolloutEngines, rollout.num_engines=2 vs 1, each engine an actor with num_cpus=1) on a
    4-CPU local Ray: the prompts are balanced over the engines, which run at once. This machine has 2 cores, so two
    one-thread engines can at best use both cores where one engine uses one: the ratio says how much of that 2x the
    engines get, not how they would scale on more cores.
Every comparison alternates its sides round by round after a warm-up round (medians printed). The machine is shared:
read the per-round values.

--quick: the tiny Llama everywhere, 2 RL steps, 1 round.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

REPO = Path(__file__).resolve().parents[1]
PHASES = ("time/generate", "time/score", "time/train", "time/weight_sync", "time/step")


def phase_split(steps: int) -> dict[str, float]:
    import subprocess
    import sys

    out = Path(tempfile.mkdtemp(prefix="rlaif-bench-"))
    cmd = [sys.executable, "-m", "rlaif.cli", "train", "--config", str(REPO / "configs/debug.yaml"),
           f"output_dir={out}", f"trainer.steps={steps}", "trainer.progress=false"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"debug run failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rows if "time/step" in r][1:]  # drop the warm-up step
    split = {k: statistics.mean(r[k] for r in rl) for k in PHASES}
    split["startup"] = next(r["time/startup"] for r in rows if "time/startup" in r)
    split["wall"] = wall
    return split


def alternate(sides: dict, rounds: int) -> dict[str, list[float]]:
    """Run each side once per round, order reversed every other round; round 0 (warm-up) is dropped."""
    got: dict[str, list[float]] = {k: [] for k in sides}
    for rnd in range(rounds + 1):
        for name in (list(sides) if rnd % 2 else list(sides)[::-1]):
            value = sides[name]()
            if rnd:
                got[name].append(value)
        if rnd:
            print(f"  round {rnd}: " + "  ".join(f"{k} {v[-1]:.1f}" for k, v in got.items()), flush=True)
    return got


def report(title: str, got: dict[str, list[float]]) -> dict[str, float]:
    med = {k: statistics.median(v) for k, v in got.items()}
    print(title)
    for k, v in got.items():
        print(f"  {k:<22} {med[k]:7.1f} tok/s  (rounds: {', '.join(f'{x:.1f}' for x in v)})")
    return med


def rollout_benchmarks(cfg, rounds: int) -> None:
    import ray
    import torch
    from vllm import SamplingParams

    from actors.group import get
    from actors.rollout import RolloutEngines, RolloutWorker, per_item_seeds
    from rlaif.data.sources import load_prompt_mix

    texts = [p.text for p in load_prompt_mix(cfg.data.prompts).prompts[: cfg.rl.prompts_per_step]]
    n, rc = cfg.rollout.n_samples, cfg.rollout
    env = {k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "RLAIF_"))}
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env})
    try:
        # (3) first, while only the engines' actors are up (memory): one engine vs two, same prompts and seeds.
        one = RolloutEngines(cfg, 0.0, 900)
        two = RolloutEngines(dataclasses.replace(cfg, rollout=dataclasses.replace(rc, num_engines=2)), 0.0, 900)
        get([a.__ray_ready__.remote() for a in one.actors + two.actors], 900, "engines")
        seed = [1000]

        def engines(e: RolloutEngines) -> float:
            seed[0] += 1
            t = time.perf_counter()
            batch = e.generate(texts, n, seed[0])
            return batch.token_count() / (time.perf_counter() - t)

        print(f"\n(3) {len(texts)} prompts x {n} samples, <= {rc.max_new_tokens} new tokens, {cfg.policy.model.path}; "
              "4-CPU local Ray on a 2-core machine")
        med = report("two engines vs one (generated tokens/s):",
                     alternate({"1 engine": lambda: engines(one), "2 engines": lambda: engines(two)}, rounds))
        print(f"  2 engines / 1 engine: {med['2 engines'] / med['1 engine']:.3f}x")
        for a in one.actors + two.actors:
            ray.kill(a)

        # (2) the same engine class behind a Ray actor (1 and 2 threads) and called directly here (1 and 2 threads).
        set_threads = torch.set_num_threads  # vLLM's CPU worker replaces it with a no-op in its process
        default_threads = torch.get_num_threads()
        direct = RolloutWorker(cfg)
        prompt_ids, _ = direct.encode_prompts(texts)
        remote = ray.remote(RolloutWorker)
        actors = {"actor 1t (as trainer)": remote.options(num_cpus=1).remote(cfg),
                  "actor 2t": remote.options(num_cpus=1, runtime_env={"env_vars": {**env, "OMP_NUM_THREADS": "2"}})
                  .remote(cfg)}
        threads = {k: get(a.__ray_call__.remote(lambda self: __import__("torch").get_num_threads()), 900, "threads")
                   for k, a in actors.items()}

        def through_actor(name: str) -> float:
            seed[0] += 1
            t = time.perf_counter()
            batch = get(actors[name].generate.remote(texts, n, seed[0]), 900, "rollout.generate")
            return batch.token_count() / (time.perf_counter() - t)

        def called_directly(num_threads: int) -> float:
            seed[0] += 1
            set_threads(num_threads)
            params = [SamplingParams(n=n, temperature=rc.temperature, top_p=rc.top_p, max_tokens=rc.max_new_tokens,
                                     logprobs=0, seed=s) for s in per_item_seeds(seed[0], len(texts), n)]
            t = time.perf_counter()
            outs = direct.llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params, use_tqdm=False)
            tps = sum(len(o.token_ids) for x in outs for o in x.outputs) / (time.perf_counter() - t)
            set_threads(default_threads)
            return tps

        print(f"\n(2) rollout actor vs the engine called directly; torch threads: {threads}, here 1 and "
              f"{default_threads}")
        sides = {"actor 1t (as trainer)": lambda: through_actor("actor 1t (as trainer)"),
                 "direct 1t": lambda: called_directly(1), "direct 2t": lambda: called_directly(default_threads),
                 "actor 2t": lambda: through_actor("actor 2t")}
        med = report("generated tokens/s:", alternate(sides, rounds))
        print(f"  actor / direct, 1 thread each:  {med['actor 1t (as trainer)'] / med['direct 1t']:.3f}x "
              "(target >= 0.95x)")
        print(f"  actor / direct, 2 threads each: {med['actor 2t'] / med['direct 2t']:.3f}x")
        print(f"  actor as the trainer starts it / direct on both cores: "
              f"{med['actor 1t (as trainer)'] / med['direct 2t']:.3f}x")
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-phases", action="store_true", help="only the rollout comparisons (2) and (3)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of bench/peer.yaml for (2) and (3)")
    args = parser.parse_args()
    from rlaif.config import load_config

    if args.quick:
        args.steps, args.rounds = 2, 1
    if not args.skip_phases:
        split = phase_split(args.steps)
        print(f"\n(1) debug run: {args.steps} RL steps, wall {split['wall']:.1f} s (startup {split['startup']:.1f} s)")
        print("seconds per RL step (mean over steps 2..N):")
        for k in PHASES:
            print(f"  {k.split('/')[1]:<12} {split[k]:8.3f} s  {split[k] / split['time/step']:6.1%}")
    quick = ["policy.model.path=builtin:tiny-llama", "rl.prompts_per_step=4", "rollout.max_new_tokens=16"]
    cfg = load_config(REPO / "bench/peer.yaml", [f"data.prompts={REPO / 'bench/peer_prompts.txt'}",
                                                 *(quick if args.quick else []), *args.overrides])
    rollout_benchmarks(cfg, args.rounds)


if __name__ == "__main__":
    main()
