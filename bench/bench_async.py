"""One-step-off-policy overlap (trainer.async=true) vs synchronous RL steps: wall time per step, side by side.

    python bench/bench_async.py [--steps 6] [--rounds 2] [--quick] [key=value overrides ...]

Runs `rlaif train --config bench/peer.yaml` (SmolLM2-135M fp32, GRPO, the length reward, beta = 0; see bench/peer.yaml)
in fresh processes, trainer.async=false and =true alternately (ABBA order over rounds), on a workload chosen so that
generation and training take similar time on this 2-core machine: WORKLOAD below (fewer, longer responses than the
peer workload: vLLM's decode time grows with the number of tokens per sequence, the update's with the total tokens).
Extra key=value arguments override it (and are printed).

Counted: the steady state, i.e. rlaif's time/step of the steps after the first (warm-up; in async mode also the step
before any overlap) and before the last (in async mode the last step has no next generation to wait for, so it is
shorter for a reason that does not repeat). Printed per run: time per step, generate (vLLM's seconds inside the
engine), train (the DeepSpeed update), score and weight_sync; then async / sync wall time per step (median over
rounds; target <= 0.75x). The best overlap possible is max(generate, score + train + weight_sync) over their sum, as
the sync run's own phases give it; that bound is printed beside the ratio. The machine is shared: read the spread.

--quick: the tiny builtin Llama, 4 steps, 1 round.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench_vs_trl import run_rlaif, workload

# Generation ~ training on 2 cores (measured on this machine; see the report in the printed phases).
WORKLOAD = ["rl.prompts_per_step=4", "rollout.n_samples=2", "rollout.max_new_tokens=128"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="steps per run; the first and the last are not counted")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="", help="folder for the runs (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of bench/peer.yaml, after WORKLOAD")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = 4, 1
    wl = workload(args.quick)
    overrides = [*([] if args.quick else WORKLOAD), *args.overrides]
    wl.update({k.split(".")[-1]: int(v) for k, v in (o.split("=", 1) for o in overrides)
               if k in ("rl.prompts_per_step", "rollout.n_samples", "rollout.max_new_tokens")})
    root = Path(args.out or tempfile.mkdtemp(prefix="bench-async-"))
    print(f"workload: {wl['model']}, {' '.join(overrides) or 'peer.yaml as is'}; {args.steps} steps per run "
          f"({args.steps - 2} counted); runs in {root}", flush=True)
    per_step: dict[str, list[float]] = {"sync": [], "async": []}
    phases: dict[str, list[dict]] = {"sync": [], "async": []}
    for rnd in range(args.rounds):
        for mode in ("sync", "async") if rnd % 2 == 0 else ("async", "sync"):
            res = run_rlaif(mode, args.steps, wl, root / f"r{rnd}-{mode}",
                            [*overrides, f"trainer.async={str(mode == 'async').lower()}"])
            counted = res["rows"][1:-1]
            step = statistics.mean(r["time/step"] for r in counted)
            ph = {k: statistics.mean(r.get(f"time/{k}", 0.0) for r in counted)
                  for k in ("generate", "generate_wait", "score", "train", "weight_sync")}
            per_step[mode].append(step)
            phases[mode].append(ph)
            print(f"round {rnd + 1}: {mode:<5} {step:6.2f} s/step  ["
                  + "  ".join(f"{k} {v:5.2f}" for k, v in ph.items()) + f"]  (wall {res['wall_s']:.0f} s)", flush=True)
    ratios = [a / s for a, s in zip(per_step["async"], per_step["sync"])]
    sync_ph = {k: statistics.mean(p[k] for p in phases["sync"]) for k in phases["sync"][0]}
    rest = sync_ph["score"] + sync_ph["train"] + sync_ph["weight_sync"]
    bound = max(sync_ph["generate"], rest) / (sync_ph["generate"] + rest)
    print(f"\nsync: generate {sync_ph['generate']:.2f} s, score + train + weight_sync {rest:.2f} s per step")
    print(f"async / sync wall time per step: {statistics.median(ratios):.3f}x (rounds: "
          f"{', '.join(f'{r:.3f}' for r in ratios)}); target <= 0.75x; perfect overlap would give {bound:.3f}x")


if __name__ == "__main__":
    main()
