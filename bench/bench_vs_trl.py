"""rlaif vs TRL on the peer workload (DESIGN.md section 8): completions per second, side by side, interleaved.

    python bench/bench_vs_trl.py [--steps 4] [--rounds 2] [--variants default,async] [--quick]

The workload, the same on both sides: SmolLM2-135M-Instruct fp32, the 32 chat questions of bench/peer_prompts.txt,
16 prompts x 2 samples = 32 completions per step, <= 64 new tokens at temperature 1, GRPO, the reward
-|len(text) - 200| / 200 (rlaif.rewards:length_200), beta = 0, lr 1e-6.

* rlaif: `rlaif train --config bench/peer.yaml` (vLLM rollout actor, DeepSpeed ZeRO-2 policy actor, gloo weight
  sync; no reference pass, no "old" log-prob pass, no labeling during RL), plus each variant's overrides.
* TRL 1.16: `GRPOTrainer`, stock, in its CPU mode (use_cpu=True, HF generate), per_device_train_batch_size=32,
  num_generations=2, max_completion_length=64, TRL's defaults otherwise (beta 0, gradient checkpointing on, loss_type
  "dapo", lr 1e-6) except bf16=False: TRL defaults to bf16 autocast, and this workload is fp32 on both sides.

Each run is a fresh process. A round runs every rlaif variant and TRL once, in ABBA order (the order reverses every
other round) so drift in the machine's load hits both sides alike. What counts is RL steps after the first (warm-up):
rlaif's time/step from metrics.jsonl (its pipeline before RL -- start-up, labeling, integrity -- is not counted), and
for TRL the wall time between consecutive step ends. completions/s = 32 / mean step time.

How to read the output: one line per run (completions/s and the per-phase split, seconds per step), then per rlaif
variant the ratio of its completions/s to TRL's in the same round (median over rounds; the issue's target is >= 3x).
rlaif phases: generate (vLLM, inside the actor), generate_wait (the trainer blocked on generation: equals generate
when synchronous, less when trainer.async overlaps it), score (rewards and whatever passes run beside them), train
(the DeepSpeed update), weight_sync. TRL phases come from its own profiling contexts (trl.extras.profiling):
generate (transformers.generate), inputs (_prepare_inputs: generation, reward, advantages), loss_fwd (compute_loss),
and backward+optim (the step's remainder). The machine is shared: run it when it is quiet and read the spread.

--quick swaps in the tiny builtin Llama, 4 prompts x 2 samples, 16 new tokens, 2 steps, 1 round: a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "bench" / "peer_prompts.txt"
PHASES = ("generate", "generate_wait", "score", "train", "weight_sync")

# rlaif configurations tried beside the default one (bench/peer.yaml); `env` is added to the run's environment.
VARIANTS: dict[str, dict] = {
    "default": {"overrides": []},
    "async": {"overrides": ["trainer.async=true"]},
    "gc": {"overrides": ["policy.gradient_checkpointing=true"]},
    "mb8": {"overrides": ["policy.micro_batch_size=8"]},
    "mb16": {"overrides": ["policy.micro_batch_size=16"]},
    "mb2": {"overrides": ["policy.micro_batch_size=2"]},
    "ranks2": {"overrides": ["policy.num_ranks=2"]},
    "omp2": {"overrides": [], "env": {"OMP_NUM_THREADS": "2"}},  # every actor's torch on 2 threads, not Ray's 1
    "async_omp2": {"overrides": ["trainer.async=true"], "env": {"OMP_NUM_THREADS": "2"}},
}
# TRL runs in one process whose torch uses every core by default ("trl"); on a loaded machine two OpenMP threads that
# spin-wait for each other lose most of their time (measured: HF generate 28 s on one thread, 105-225 s on two, at a
# load of ~4 from other users), so TRL is also run on one thread ("trl_1t"), and rlaif is compared with the faster.
TRL_VARIANTS: dict[str, dict] = {"trl": {}, "trl_1t": {"OMP_NUM_THREADS": "1"}}


def workload(quick: bool) -> dict:
    if quick:
        return {"model": "builtin:tiny-llama", "prompts_per_step": 4, "n": 2, "max_new_tokens": 16}
    return {"model": "builtin:smollm2-135m", "prompts_per_step": 16, "n": 2, "max_new_tokens": 64}


def run_logged(cmd: list[str], env: dict, log: Path, what: str) -> float:
    """Run a command with its output going to `log` as it comes; its wall seconds, or an error with the log's tail."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if code:
        raise RuntimeError(f"{what} failed (exit {code}); log {log}:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - t0


def run_rlaif(name: str, steps: int, wl: dict, out: Path, overrides: list[str] = (), env: dict | None = None
              ) -> dict:
    """One `rlaif train` of bench/peer.yaml in a fresh process; the metrics of its RL steps after the first."""
    out.mkdir(parents=True)  # the log beside the run's own folder (rlaif refuses a non-empty new output_dir)
    cmd = [sys.executable, "-m", "rlaif.cli", "train", "--config", str(REPO / "bench/peer.yaml"),
           f"output_dir={out / 'run'}", f"trainer.steps={steps}", f"policy.model.path={wl['model']}",
           f"labeler.model.path={wl['model']}", f"rl.prompts_per_step={wl['prompts_per_step']}",
           f"rollout.n_samples={wl['n']}", f"rollout.max_new_tokens={wl['max_new_tokens']}",
           f"data.prompts={PROMPTS}", *overrides]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", **(env or {})}
    wall = run_logged(cmd, env, out / "log.txt", f"rlaif {name}")
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    steps_rows = [r for r in rows if "time/step" in r]
    rl = steps_rows[1:]  # steps after the first
    step = statistics.mean(r["time/step"] for r in rl)
    return {"side": f"rlaif:{name}", "step_s": step, "cps": wl["prompts_per_step"] * wl["n"] / step,
            "phases": {p: statistics.mean(r.get(f"time/{p}", 0.0) for r in rl) for p in PHASES},
            "steps_measured": len(rl), "wall_s": wall, "rows": steps_rows}


def run_trl(name: str, steps: int, wl: dict, out: Path, quick: bool) -> dict:
    out.mkdir(parents=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--trl-worker", str(out), "--steps", str(steps)]
    if quick:
        cmd.append("--quick")
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", **TRL_VARIANTS[name]}
    wall = run_logged(cmd, env, out / "log.txt", name)
    res = json.loads((out / "trl.json").read_text())
    step = statistics.mean(res["step_s"])
    return {"side": f"{name} ({res['threads']}t)", "step_s": step, "cps": wl["prompts_per_step"] * wl["n"] / step,
            "phases": res["phases"], "steps_measured": len(res["step_s"]), "wall_s": wall}


def trl_worker(out: Path, steps: int, quick: bool) -> None:
    """One TRL GRPOTrainer run in this process; writes the step times and the profiling split to out/trl.json."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.extras import profiling

    from rlaif.models import load_causal_lm, resolve_model_path
    from rlaif.rewards import length_200

    wl = workload(quick)
    timings: list[tuple[int, str, float]] = []
    original = profiling.ProfilingContext._log_metrics

    def record(self, duration: float) -> None:  # TRL's own profiling contexts, read instead of sent to a tracker
        timings.append((self.step, self.name.split(".", 1)[1], duration))
        original(self, duration)

    profiling.ProfilingContext._log_metrics = record
    ends: list[float] = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())
            print(f"TRL step {state.global_step} ended, {ends[-1] - (ends[-2] if len(ends) > 1 else t_start):.1f} s",
                  flush=True)

    def length_reward(prompts, completions, **kwargs) -> list[float]:
        return length_200(prompts, [c[0]["content"] if isinstance(c, list) else c for c in completions])

    path = resolve_model_path(wl["model"])
    model = load_causal_lm(path, "float32")
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    texts = [line.strip() for line in PROMPTS.read_text().splitlines() if line.strip()]
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": t}]} for t in texts])
    args = GRPOConfig(
        output_dir=str(out), use_cpu=True, bf16=False, per_device_train_batch_size=wl["prompts_per_step"] * wl["n"],
        num_generations=wl["n"], max_completion_length=wl["max_new_tokens"], max_steps=steps, logging_steps=1,
        save_strategy="no", report_to="none", seed=0, disable_tqdm=True,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=length_reward, args=args, train_dataset=data,
                          processing_class=tokenizer, callbacks=[StepEnds()])
    t_start = time.perf_counter()
    trainer.train()
    step_s = [b - a for a, b in zip(ends, ends[1:])]  # steps after the first
    measured = {s for s in range(1, len(ends))}  # profiling steps are global_step at entry: 0-based per step

    def phase(name: str) -> float:
        vals = [d for s, n, d in timings if n == name and s in measured]
        return sum(vals) / len(step_s) if step_s else 0.0

    inputs, loss = phase("_prepare_inputs"), phase("compute_loss")
    phases = {"generate": phase("transformers.generate"), "inputs": inputs, "loss_fwd": loss,
              "backward+optim": statistics.mean(step_s) - inputs - loss if step_s else 0.0}
    (out / "trl.json").write_text(json.dumps({
        "step_s": step_s, "phases": phases, "threads": torch.get_num_threads(),
        "gradient_checkpointing": args.gradient_checkpointing, "loss_type": args.loss_type, "beta": args.beta,
        "learning_rate": args.learning_rate, "profiling": timings,
    }))


def describe(r: dict) -> str:
    ph = "  ".join(f"{k} {v:5.1f}" for k, v in r["phases"].items())
    return (f"{r['side']:<18} {r['cps']:6.3f} completions/s  {r['step_s']:6.1f} s/step  [{ph}]  "
            f"(wall {r['wall_s']:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="steps per run; the first is not counted")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default="default", help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--trl", default="trl,trl_1t", help=f"comma-separated, from {', '.join(TRL_VARIANTS)}; "
                        "empty: rlaif only (no ratio)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="", help="folder for the runs (default: a temporary one)")
    parser.add_argument("--trl-worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_worker:
        trl_worker(Path(args.trl_worker), args.steps, args.quick)
        return
    if args.quick:
        args.steps, args.rounds = 2, 1
    variants, trls = args.variants.split(","), [t for t in args.trl.split(",") if t]
    for v in variants:
        if v not in VARIANTS:
            parser.error(f"--variants: unknown variant {v!r}; known: {', '.join(VARIANTS)}")
    for t in trls:
        if t not in TRL_VARIANTS:
            parser.error(f"--trl: unknown variant {t!r}; known: {', '.join(TRL_VARIANTS)}")
    wl = workload(args.quick)
    root = Path(args.out or tempfile.mkdtemp(prefix="bench-vs-trl-"))
    print(f"workload: {wl}, {args.steps} steps per run ({args.steps - 1} measured), {args.rounds} rounds; runs in "
          f"{root}", flush=True)
    sides = [*variants, *trls]
    results: list[list[dict]] = []
    for rnd in range(args.rounds):
        order = sides if rnd % 2 == 0 else sides[::-1]
        got = {}
        for side in order:
            out = root / f"r{rnd}-{side}"
            got[side] = run_trl(side, args.steps, wl, out, args.quick) if side in TRL_VARIANTS \
                else run_rlaif(side, args.steps, wl, out, VARIANTS[side]["overrides"], VARIANTS[side].get("env"))
            print(f"round {rnd + 1}: {describe(got[side])}", flush=True)
        results.append([got[s] for s in sides])
    print("\nmean over rounds (completions/s, seconds per step by phase):")
    for i in range(len(sides)):
        runs = [r[i] for r in results]
        mean = {"side": runs[0]["side"], "cps": statistics.mean(r["cps"] for r in runs),
                "step_s": statistics.mean(r["step_s"] for r in runs),
                "phases": {k: statistics.mean(r["phases"][k] for r in runs) for k in runs[0]["phases"]},
                "wall_s": statistics.mean(r["wall_s"] for r in runs)}
        print("  " + describe(mean))
    if not trls:
        return
    print("\nrlaif completions/s / TRL completions/s in the same round, median over rounds (target >= 3x):")
    for i, side in enumerate(variants):
        line = []
        for j, t in enumerate([*trls, "best TRL"]):
            ratios = [r[i]["cps"] / (r[len(variants) + j]["cps"] if t != "best TRL"
                                     else max(x["cps"] for x in r[len(variants):])) for r in results]
            line.append(f"vs {t} {statistics.median(ratios):5.2f}x ({', '.join(f'{x:.2f}' for x in ratios)})")
        print(f"  {side:<12} " + "   ".join(line))


if __name__ == "__main__":
    main()
