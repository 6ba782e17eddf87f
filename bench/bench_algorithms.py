"""Benchmark every RL algorithm on the debug config: RL steps per second and seconds per phase.

    python bench/bench_algorithms.py [--steps 6] [key=value overrides...]

Each algorithm runs the same debug config (same prompts, seeds and batch) in turn; the figures are means over the
steps after the first. Ratios to RLOO are printed so that machine noise matters less than absolute times.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_debug import phase_split  # noqa: E402

ALGORITHMS = ("rloo", "grpo", "dr-grpo", "reinforce++", "ppo", "online-dpo")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    results = {}
    for algo in ALGORITHMS:
        results[algo] = phase_split(args.steps, [f"rl.algorithm={algo}", "wandb.enabled=false", *args.overrides])
    base = results["rloo"]["time/step"]
    print(f"\n{'algorithm':<12} {'steps/s':>8} {'vs rloo':>8} {'generate':>9} {'score':>9} {'train':>9} {'sync':>9}")
    for algo, r in results.items():
        print(f"{algo:<12} {1 / r['time/step']:8.2f} {base / r['time/step']:8.2f} {r['time/generate']:9.3f} "
              f"{r['time/score']:9.3f} {r['time/train']:9.3f} {r['time/weight_sync']:9.3f}")


if __name__ == "__main__":
    main()
