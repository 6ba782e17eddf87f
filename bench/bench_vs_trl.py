"""rlaif vs TRL on the peer workload (DESIGN.md section 8): completions per second, side by side, interleaved.

    python bench/bench_vs_trl.py [--steps 4] [--rounds 2] [--quick]      # the four cells (issue 18 item 5)
    python bench/bench_vs_trl.py --variants same,async --trl trl,trl_1t   # any rlaif variants against any TRL ones
    python bench/bench_vs_trl.py --variants defaults,lora                 # full fine-tuning and LoRA, each vs TRL's

The workload, the same on both sides: SmolLM2-135M-Instruct, the 32 chat questions of bench/peer_prompts.txt,
16 prompts x 2 samples = 32 completions per step, <= 64 new tokens at temperature 1, GRPO, the reward
-|len(text) - 200| / 200 (rlaif.rewards:length_200), beta = 0, lr 1e-6.

The four cells (the default, or --cells), each a fresh process per round:
* rlaif "defaults": what rlaif does on this workload with its own defaults. bench/peer.yaml without the keys in
  DEFAULTS_UNSET (written to the run folder as config.yaml): labeler.function (so the labeler model, SmolLM2, labels
  instead of a rule), rl.label_every (so every step's pairs are AI-labelled, monitoring: labels/* metrics and the
  alarms), rl.measure_kl (so the reference pass measures KL every step) and policy.model.dtype (rlaif's default
  dtype, not fp32). Everything else stays: beta = 0 (rl.kl_coef, the workload's objective, as TRL's), the
  rule-based reward without a preference model, and the stages before RL kept small (no human set, no audit: they
  are not timed). Add keys with --defaults-set KEY=VALUE.
* rlaif "same work as TRL": `rlaif train --config bench/peer.yaml` as it is (vLLM rollout actor, DeepSpeed policy
  actor, gloo weight sync; fp32, no reference pass, no "old" log-prob pass, no labeling during RL); add keys with
  --same-set KEY=VALUE (e.g. --same-set policy.model.dtype=bfloat16).
* TRL fp32 and TRL bf16: TRL 1.16 `GRPOTrainer`, stock, in its CPU mode (use_cpu=True, HF generate),
  per_device_train_batch_size=32, num_generations=2, max_completion_length=64, TRL's defaults otherwise (beta 0,
  gradient checkpointing on, loss_type "dapo", lr 1e-6), the model loaded in fp32; "trl" sets bf16=False, "trl_bf16"
  bf16=True (TRL's own default when fp16 is unset: bf16 autocast over fp32 weights).

A round runs every side once, in ABBA order (the order reverses every other round) so drift in the machine's load
hits every side alike. What counts is RL steps after the first (warm-up): rlaif's time/step from metrics.jsonl (its
pipeline before RL -- start-up, labeling, integrity -- is not counted), and for TRL the wall time between consecutive
step ends. completions/s = 32 / mean step time.

How to read the output: one line per run (completions/s and the per-phase split, seconds per step), the mean per side
over rounds, then a table: each rlaif side's completions/s over each TRL side's in the same round (median over rounds,
each round's ratio in brackets), and against the faster TRL side of each round; last, the issue's goal: rlaif
defaults >= 3x TRL's faster setting. rlaif phases: generate (vLLM, inside the actor), generate_wait (the trainer
blocked on generation: equals generate when synchronous, less when trainer.async overlaps it), score (rewards and
whatever passes run beside them), train (the DeepSpeed update), labels_wait (how much longer than the update the
monitoring labels took), weight_sync. TRL phases come from its own profiling contexts (trl.extras.profiling): generate
(transformers.generate), inputs (_prepare_inputs: generation, reward, advantages), loss_fwd (compute_loss), and
backward+optim (the step's remainder). The machine is shared: run it when it is quiet and read the spread.

LoRA: the rlaif variant "lora" is the "defaults" cell plus policy.lora.rank=16, policy.lora.alpha=32 (every linear
layer, rlaif's default target_modules "all-linear") and policy.lr=1e-5; the TRL sides "trl_lora", "trl_lora_bf16",
"trl_lora_1t", "trl_lora_bf16_1t" are their namesakes plus GRPOTrainer(peft_config=LoraConfig(r=16, lora_alpha=32,
target_modules="all-linear", task_type="CAUSAL_LM")) and learning_rate=1e-5 -- the lr raised tenfold on both sides, as
LoRA usually needs (the step's cost does not depend on it). Each rlaif side is compared only with its kind of TRL
side: full fine-tuning with the TRL sides without LoRA, "lora" with the TRL LoRA sides; without --trl, the TRL sides
are the default ones ("trl,trl_1t" with --variants) plus their LoRA twins when a LoRA variant runs, so
`--variants defaults,lora` prints two ratios: rlaif defaults / the faster TRL, rlaif lora / the faster TRL LoRA side.
(The name "default" is the old name of "same", not "defaults": `--variants default,lora` pairs the same-work side
with TRL, and lora with TRL LoRA.)

--quick swaps in the tiny builtin Llama (as policy and labeler), 4 prompts x 2 samples, 16 new tokens, 2 steps,
1 round: a smoke test.
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

import yaml

REPO = Path(__file__).resolve().parents[1]
PEER = REPO / "bench" / "peer.yaml"
PROMPTS = REPO / "bench" / "peer_prompts.txt"
PHASES = ("generate", "generate_wait", "score", "train", "labels_wait", "weight_sync")

# The keys of bench/peer.yaml that turn rlaif's own defaults off; the "defaults" cell is peer.yaml without them.
DEFAULTS_UNSET = (
    "labeler.function",  # rlaif.judges:prefer_shorter, a rule: without it the labeler model (SmolLM2) labels
    "rl.label_every",  # 1000000: no AI labels during RL; default 1: every step's pairs, monitoring
    "rl.measure_kl",  # false: no reference pass; default true: KL to the reference measured every step
    "policy.model.dtype",  # float32; default: rlaif's ("auto": bf16 where the processor supports it)
)

# LoRA on both sides: rank, alpha, every linear layer; the learning rate raised from the workload's 1e-6 (full
# fine-tuning) to 1e-5 on both sides, as LoRA usually needs.
LORA = {"rank": 16, "alpha": 32, "lr": 1e-5}

# rlaif configurations: `overrides` on top of bench/peer.yaml, `unset` keys removed from it first, `env` added to the
# run's environment. "same" is peer.yaml as it is (the same work as TRL); "defaults" is rlaif's defaults.
VARIANTS: dict[str, dict] = {
    "defaults": {"overrides": [], "unset": DEFAULTS_UNSET},
    "same": {"overrides": []},
    "async": {"overrides": ["trainer.async=true"]},
    "gc": {"overrides": ["policy.gradient_checkpointing=true"]},
    "mb8": {"overrides": ["policy.micro_batch_size=8"]},
    "mb16": {"overrides": ["policy.micro_batch_size=16"]},
    "mb2": {"overrides": ["policy.micro_batch_size=2"]},
    "ranks2": {"overrides": ["policy.num_ranks=2"]},
    "omp2": {"overrides": [], "env": {"OMP_NUM_THREADS": "2"}},  # every actor's torch on 2 threads, not Ray's 1
    "async_omp2": {"overrides": ["trainer.async=true"], "env": {"OMP_NUM_THREADS": "2"}},
    # the defaults cell with LoRA (its keys, --defaults-set too), compared with the TRL LoRA sides (TRL_VARIANTS)
    "lora": {"overrides": [f"policy.lora.rank={LORA['rank']}", f"policy.lora.alpha={LORA['alpha']}",
                           f"policy.lr={LORA['lr']}"], "unset": DEFAULTS_UNSET, "base": "defaults", "lora": True},
}
ALIASES = {"default": "same"}  # the name "same" had before the four cells
# TRL runs in one process whose torch uses every core by default ("trl"); on a loaded machine two OpenMP threads that
# spin-wait for each other lose most of their time (measured: HF generate 28 s on one thread, 105-225 s on two, at a
# load of ~4 from other users), so TRL can also run on one thread ("_1t"). bf16: GRPOConfig(bf16=...).
TRL_VARIANTS: dict[str, dict] = {
    "trl": {"bf16": False, "env": {}},
    "trl_bf16": {"bf16": True, "env": {}},
    "trl_1t": {"bf16": False, "env": {"OMP_NUM_THREADS": "1"}},
    "trl_bf16_1t": {"bf16": True, "env": {"OMP_NUM_THREADS": "1"}},
}

def lora_twin(trl: str) -> str:
    """A TRL side's LoRA twin: "trl" -> "trl_lora", "trl_bf16_1t" -> "trl_lora_bf16_1t"."""
    return "trl_lora" + trl[len("trl"):]


# Each TRL side's LoRA twin: the same plus GRPOTrainer(peft_config=LoraConfig(...LORA)) and learning_rate LORA["lr"]
TRL_VARIANTS.update({lora_twin(name): {**spec, "lora": True} for name, spec in list(TRL_VARIANTS.items())})
CELLS = (["defaults", "same"], ["trl", "trl_bf16"])  # issue 18 item 5: rlaif's two sides, TRL's two
LABELS = {"defaults": "rlaif defaults", "same": "rlaif same work", "trl": "TRL fp32", "trl_bf16": "TRL bf16",
          "trl_1t": "TRL fp32 1 thread", "trl_bf16_1t": "TRL bf16 1 thread", "lora": "rlaif defaults LoRA"}
LABELS.update({lora_twin(t): LABELS[t].replace("TRL", "TRL LoRA", 1)
               for t in ("trl", "trl_bf16", "trl_1t", "trl_bf16_1t")})


def is_lora(side: str) -> bool:
    """Whether an rlaif or TRL side trains LoRA adapters (then it is compared only with sides that do too)."""
    spec = TRL_VARIANTS.get(side) or VARIANTS.get(ALIASES.get(side, side), {})
    return bool(spec.get("lora"))


def paired(variant: str, trls: list[str]) -> list[str]:
    """The TRL sides an rlaif side is compared with: those that train as it does (LoRA or every weight)."""
    return [t for t in trls if is_lora(t) == is_lora(variant)]
GOAL = 3.0  # issue 18: rlaif with its own defaults >= 3x TRL's faster setting


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


def peer_config(unset: tuple[str, ...] | list[str], path: Path) -> Path:
    """bench/peer.yaml with the dotted keys `unset` removed, written to `path`. A key peer.yaml no longer sets is an
    error: the cell would silently be the same as "same" there."""
    tree = yaml.safe_load(PEER.read_text())
    for key in unset:
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            raise KeyError(f"{PEER} does not set {key}: the cell that removes it would not differ there")
        del node[leaf]
    path.write_text(f"# {PEER.name} without {', '.join(unset)} (bench/bench_vs_trl.py)\n"
                    + yaml.safe_dump(tree, sort_keys=False))
    return path


def rlaif_args(name: str, steps: int, wl: dict, out: Path, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """`rlaif train`'s arguments for variant `name` writing into out/run: --config (peer.yaml, or a copy without the
    variant's `unset` keys in out/config.yaml), the workload, the variant's overrides, then `extra`."""
    spec = VARIANTS[ALIASES.get(name, name)]
    config = peer_config(spec["unset"], out / "config.yaml") if spec.get("unset") else PEER
    return ["--config", str(config), f"output_dir={out / 'run'}", f"trainer.steps={steps}",
            f"policy.model.path={wl['model']}", f"labeler.model.path={wl['model']}",
            f"rl.prompts_per_step={wl['prompts_per_step']}", f"rollout.n_samples={wl['n']}",
            f"rollout.max_new_tokens={wl['max_new_tokens']}", f"data.prompts={PROMPTS}", *spec["overrides"], *extra]


def run_rlaif(name: str, steps: int, wl: dict, out: Path, extra: list[str] | tuple[str, ...] = ()) -> dict:
    """One `rlaif train` of variant `name` in a fresh process; the metrics of its RL steps after the first."""
    out.mkdir(parents=True)  # the log beside the run's own folder (rlaif refuses a non-empty new output_dir)
    cmd = [sys.executable, "-m", "rlaif.cli", "train", *rlaif_args(name, steps, wl, out, extra)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline",
           **VARIANTS[ALIASES.get(name, name)].get("env", {})}
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
    if TRL_VARIANTS[name]["bf16"]:
        cmd.append("--trl-bf16")
    if TRL_VARIANTS[name].get("lora"):
        cmd.append("--trl-lora")
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", **TRL_VARIANTS[name]["env"]}
    wall = run_logged(cmd, env, out / "log.txt", name)
    res = json.loads((out / "trl.json").read_text())
    step = statistics.mean(res["step_s"])
    return {"side": f"{name} ({res['threads']}t)", "step_s": step, "cps": wl["prompts_per_step"] * wl["n"] / step,
            "phases": res["phases"], "steps_measured": len(res["step_s"]), "wall_s": wall}


def trl_worker(out: Path, steps: int, quick: bool, bf16: bool, lora: bool = False) -> None:
    """One TRL GRPOTrainer run in this process; writes the step times and the profiling split to out/trl.json.
    `lora`: peft's LoRA (LORA: rank, alpha, every linear layer) through GRPOTrainer's peft_config, at LORA's lr."""
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
    peft = {}
    if lora:
        from peft import LoraConfig

        peft = {"peft_config": LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], target_modules="all-linear",
                                          task_type="CAUSAL_LM")}
    args = GRPOConfig(
        output_dir=str(out), use_cpu=True, bf16=bf16, per_device_train_batch_size=wl["prompts_per_step"] * wl["n"],
        num_generations=wl["n"], max_completion_length=wl["max_new_tokens"], max_steps=steps, logging_steps=1,
        save_strategy="no", report_to="none", seed=0, disable_tqdm=True,
        **({"learning_rate": LORA["lr"]} if lora else {}),
    )
    trainer = GRPOTrainer(model=model, reward_funcs=length_reward, args=args, train_dataset=data,
                          processing_class=tokenizer, callbacks=[StepEnds()], **peft)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
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
        "step_s": step_s, "phases": phases, "threads": torch.get_num_threads(), "bf16": args.bf16,
        "gradient_checkpointing": args.gradient_checkpointing, "loss_type": args.loss_type, "beta": args.beta,
        "learning_rate": args.learning_rate, "lora": lora, "trainable_params": trainable, "profiling": timings,
    }))


def describe(r: dict) -> str:
    ph = "  ".join(f"{k} {v:5.1f}" for k, v in r["phases"].items())
    return (f"{r['side']:<20} {r['cps']:6.3f} completions/s  {r['step_s']:6.1f} s/step  [{ph}]  "
            f"(wall {r['wall_s']:.0f} s)")


def sides_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """The rlaif and TRL sides to run: the four cells unless --variants or --trl pick others (then the one not given
    keeps its old default: "same", and "trl,trl_1t" plus their LoRA twins when a LoRA variant runs). Every rlaif
    side needs a TRL side of its kind (LoRA or not) to be compared with, unless --trl is empty."""
    if args.cells and (args.variants is not None or args.trl is not None):
        parser.error("--cells runs the four cells; pick sides with --variants/--trl instead")
    if args.variants is None and args.trl is None:
        return list(CELLS[0]), list(CELLS[1])
    variants = list(dict.fromkeys(ALIASES.get(v, v) for v in (args.variants or "same").split(",") if v))
    if args.trl is not None:
        trls = list(dict.fromkeys(t for t in args.trl.split(",") if t))
    else:
        default = ["trl", "trl_1t"]
        kinds = {is_lora(v) for v in variants}
        trls = [*(default if False in kinds else []), *([lora_twin(t) for t in default] if True in kinds else [])]
    for v in variants:
        if v not in VARIANTS:
            parser.error(f"--variants: unknown variant {v!r}; known: {', '.join([*VARIANTS, *ALIASES])}")
    for t in trls:
        if t not in TRL_VARIANTS:
            parser.error(f"--trl: unknown variant {t!r}; known: {', '.join(TRL_VARIANTS)}")
    if not variants:
        parser.error("--variants: at least one rlaif variant")
    for v in variants:
        if trls and not paired(v, trls):
            kind = "a TRL LoRA side (" + ", ".join(t for t in TRL_VARIANTS if is_lora(t)) + ")" if is_lora(v) \
                else "a TRL side without LoRA (" + ", ".join(t for t in TRL_VARIANTS if not is_lora(t)) + ")"
            parser.error(f"--variants {v}: nothing to compare it with; --trl needs {kind}")
    return variants, trls


def side_overrides(args: argparse.Namespace, variants: list[str]) -> dict[str, list[str]]:
    """Each rlaif side's extra overrides: --defaults-set for "defaults" and the variants built on it ("lora"),
    --same-set for every other."""
    def on_defaults(v: str) -> bool:
        return v == "defaults" or VARIANTS[ALIASES.get(v, v)].get("base") == "defaults"

    return {v: list(args.defaults_set if on_defaults(v) else args.same_set) for v in variants}


def ratio_table(results: list[dict[str, dict]], variants: list[str], trls: list[str]) -> list[str]:
    """Lines: each rlaif side's completions/s over each TRL side's of its kind (LoRA or not; "-" against the other
    kind) in the same round, and over the faster TRL side of its kind of each round (median over rounds, each round's
    ratio in brackets); the faster TRL side per round (of each kind that ran); with LoRA sides, one line per rlaif side
    with its ratio to the faster TRL side of its kind; then the issue's goal if "defaults" ran."""
    def label(side: str) -> str:
        return f"{LABELS.get(side, side)} [{side}]" if side in LABELS else side

    def cell(ratios: list[float]) -> str:
        return f"{statistics.median(ratios):5.2f}x ({', '.join(f'{x:.2f}' for x in ratios)})"

    kinds = [k for k in (False, True) if any(is_lora(t) == k for t in trls)]
    faster = {k: [max((t for t in trls if is_lora(t) == k), key=lambda t: r[t]["cps"]) for r in results]
              for k in kinds}

    def vs_faster(v: str) -> list[float]:
        return [r[v]["cps"] / r[f]["cps"] for r, f in zip(results, faster[is_lora(v)])]

    cols = [*(f"vs {label(t)}" for t in trls), "vs the faster TRL" + (" of its kind" if len(kinds) > 1 else "")]
    width = max(len(label(v)) for v in variants) + 2
    rows = {v: [cell([r[v]["cps"] / r[t]["cps"] for r in results]) if is_lora(t) == is_lora(v) else "-"
                for t in trls] + [cell(vs_faster(v))] for v in variants}
    widths = [max(26, len(c), *(len(row[i]) for row in rows.values())) for i, c in enumerate(cols)]
    lines = ["rlaif completions/s / TRL completions/s in the same round, median over rounds (each round's):",
             (" " * width + "  ".join(f"{c:<{w}}" for c, w in zip(cols, widths))).rstrip()]
    for v in variants:
        lines.append((f"{label(v):<{width}}" + "  ".join(f"{c:<{w}}" for c, w in zip(rows[v], widths))).rstrip())
    for k in kinds:
        lines.append(f"the faster TRL{' LoRA' if k else ''} side per round: {', '.join(faster[k])}")
    if True in kinds:  # the pairs, one line each: what the issue asks for (rlaif / TRL, full and LoRA)
        for v in variants:
            lines.append(f"{label(v)} / the faster TRL{' LoRA' if is_lora(v) else ''} side: {cell(vs_faster(v))}")
    if "defaults" in variants:
        got = statistics.median(vs_faster("defaults"))
        lines.append(f"goal (issue 18): rlaif defaults >= {GOAL:g}x TRL's faster setting: {got:.2f}x -- "
                     + ("met" if got >= GOAL else f"NOT met (needs {GOAL / got:.1f}x more)"))
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="steps per run; the first is not counted")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cells", action="store_true", help="the four cells (also the default without "
                        "--variants/--trl): rlaif defaults and same work, TRL fp32 and bf16")
    parser.add_argument("--variants", default=None, help="comma-separated rlaif sides, from "
                        f"{', '.join(VARIANTS)} (default: same, or the four cells if --trl is not given either)")
    parser.add_argument("--trl", default=None, help=f"comma-separated TRL sides, from {', '.join(TRL_VARIANTS)} "
                        "(default: trl,trl_1t and, with a LoRA variant, trl_lora,trl_lora_1t; or the four cells); "
                        "empty: rlaif only (no ratio)")
    parser.add_argument("--same-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for the 'same' side (and every variant but 'defaults' and 'lora'); "
                        "repeatable")
    parser.add_argument("--defaults-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for the 'defaults' side (and 'lora', built on it); repeatable")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="", help="folder for the runs (default: a temporary one)")
    parser.add_argument("--trl-worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--trl-bf16", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trl-lora", action="store_true", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.trl_worker:
        trl_worker(Path(args.trl_worker), args.steps, args.quick, args.trl_bf16, args.trl_lora)
        return
    if args.quick:
        args.steps, args.rounds = 2, 1
    variants, trls = sides_from_args(args, parser)
    extra = side_overrides(args, variants)
    wl = workload(args.quick)
    root = Path(args.out or tempfile.mkdtemp(prefix="bench-vs-trl-"))
    print(f"workload: {wl}, {args.steps} steps per run ({args.steps - 1} measured), {args.rounds} rounds; runs in "
          f"{root}", flush=True)
    print(f"sides (ABBA): {', '.join(f'{LABELS.get(s, s)} [{s}]' for s in [*variants, *trls])}"
          + (f"; 'defaults' is bench/peer.yaml without {', '.join(DEFAULTS_UNSET)}" if "defaults" in variants else "")
          + "".join(f"; {v} + {' '.join(x)}" for v, x in extra.items() if x), flush=True)
    sides = [*variants, *trls]
    results: list[dict[str, dict]] = []
    for rnd in range(args.rounds):
        order = sides if rnd % 2 == 0 else sides[::-1]
        got = {}
        for side in order:
            out = root / f"r{rnd}-{side}"
            got[side] = run_trl(side, args.steps, wl, out, args.quick) if side in TRL_VARIANTS \
                else run_rlaif(side, args.steps, wl, out, extra[side])
            print(f"round {rnd + 1}: {describe(got[side])}", flush=True)
        results.append(got)
    print("\nmean over rounds (completions/s, seconds per step by phase):")
    for side in sides:
        runs = [r[side] for r in results]
        mean = {"side": runs[0]["side"], "cps": statistics.mean(r["cps"] for r in runs),
                "step_s": statistics.mean(r["step_s"] for r in runs),
                "phases": {k: statistics.mean(r["phases"][k] for r in runs) for k in runs[0]["phases"]},
                "wall_s": statistics.mean(r["wall_s"] for r in runs)}
        print("  " + describe(mean))
    if trls:
        print("\n" + "\n".join(ratio_table(results, variants, trls)))


if __name__ == "__main__":
    main()
