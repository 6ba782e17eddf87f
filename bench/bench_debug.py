"""Benchmark the debug config: seconds per RL step by phase, and the rollout actor's overhead.

    python bench/bench_debug.py [--steps 8] [--rounds 5] [key=value overrides...]

Prints (1) the mean seconds per RL step of each phase over the steps after the first (warm-up), and (2) the rollout
actor's generation throughput as a ratio to the same vLLM engine called directly in this process, on the same
prompts and sampling settings, measured in alternating rounds so machine noise hits both sides alike.
"""

from __future__ import annotations

import argparse
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


def phase_split(steps: int, overrides: list[str]) -> dict[str, float]:
    from rlaif.config import load_config
    from rlaif.trainer import train

    out = Path(tempfile.mkdtemp(prefix="rlaif-bench-"))
    cfg = load_config(REPO / "configs/debug.yaml", [f"output_dir={out}", f"trainer.steps={steps}",
                                                    "trainer.progress=false", *overrides])
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rows if "time/step" in r][1:]  # drop the warm-up step
    split = {k: statistics.mean(r[k] for r in rl) for k in PHASES}
    split["startup"] = next(r["time/startup"] for r in rows if "time/startup" in r)
    split["wall"] = wall
    return split


def rollout_overhead(rounds: int, overrides: list[str]) -> tuple[float, float, float]:
    import ray
    from vllm import SamplingParams

    from actors.rollout import RolloutWorker
    from rlaif.config import load_config
    from rlaif.sources import load_prompt_mix

    cfg = load_config(REPO / "configs/debug.yaml", overrides)
    texts = [p.text for p in load_prompt_mix(cfg.data.prompts).prompts[:32]]
    n, max_new = cfg.rollout.n_samples, cfg.rollout.max_new_tokens
    direct = RolloutWorker(cfg)  # the same engine class, called in this process without Ray
    prompt_ids, _ = direct.encode_prompts(texts)
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    actor = ray.remote(RolloutWorker).options(num_cpus=1).remote(cfg)
    ray.get(actor.__ray_ready__.remote(), timeout=300)
    actor_tps, direct_tps = [], []
    for r in range(rounds + 1):
        t = time.perf_counter()
        out = ray.get(actor.generate.remote(texts, n, 1000 + r), timeout=300)
        a = sum(map(len, out["response_ids"])) / (time.perf_counter() - t)
        params = [SamplingParams(n=n, max_tokens=max_new, logprobs=0, seed=1000 + r + i * n,
                                 temperature=cfg.rollout.temperature) for i in range(len(texts))]
        t = time.perf_counter()
        outs = direct.llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params, use_tqdm=False)
        d = sum(len(o.token_ids) for x in outs for o in x.outputs) / (time.perf_counter() - t)
        if r:  # round 0 warms both up
            actor_tps.append(a)
            direct_tps.append(d)
    ray.shutdown()
    a, d = statistics.median(actor_tps), statistics.median(direct_tps)
    return a, d, a / d


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    split = phase_split(args.steps, args.overrides)
    print(f"\ndebug run: {args.steps} RL steps, wall {split['wall']:.1f} s (startup {split['startup']:.1f} s)")
    print("seconds per RL step (mean over steps 2..N):")
    for k in PHASES:
        share = split[k] / split["time/step"]
        print(f"  {k.split('/')[1]:<12} {split[k]:8.3f} s  {share:6.1%}")
    a, d, ratio = rollout_overhead(args.rounds, args.overrides)
    print(f"rollout actor {a:.0f} tok/s vs vLLM called directly {d:.0f} tok/s: ratio {ratio:.3f} "
          f"(median of {args.rounds} alternating rounds)")


if __name__ == "__main__":
    main()
