"""Each RL phase's FLOP/s against this machine's matrix-product peak for the dtype in use, measured in the same run.

    python bench/bench_mfu.py [--rounds 2] [--threads 2] [--sync-rounds 2] [--profile] [--quick]
                              [key=value overrides of bench/peer.yaml ...]

The peer workload of bench/peer.yaml (SmolLM2-135M, 16 questions of bench/peer_prompts.txt x 2 samples, <= 64 new
tokens); `policy.model.dtype=bfloat16 preference_model.model.dtype=bfloat16` for bf16. Every phase runs rlaif's own
code in this process, on --threads torch threads (the trainer gives the policy and the engine all cores of this
2-core machine, the aux roles -- reference, PM -- a third of them: 1 here):

* generate:  RolloutWorker.generate (vLLM, in this process) of the 16 prompts x 2 samples.
* reference: ReferenceWorker.logprobs (packed, no grad) of the update's batch.
* pm score:  PreferenceScorer.score (the policy's LM with a fresh scalar head; padded batches) of the generated texts.
* update:    PolicyWorker.train (DeepSpeed, policy.zero_stage, one rank of a one-process gloo group) on
             bench/bench_update.make_batch's GRPO batch: one optimizer step over its micro-batches.
* sync:      bench/bench_weight_sync.py's sync/shared (the trainer's weight sync, policy actor -> vLLM actor) against
             its memory copy of the same bytes on --threads threads, run as a subprocess after the phases above.

FLOPs counted (model FLOPs: the useful work, not what padding or packing adds), per sequence of s tokens of which
k go through the LM head, with the matmul parameters split into the body (every linear layer but the LM head; an
embedding lookup is no matmul) and the head (vocab x hidden):
    forward = 2 * body * s + 2 * head * k + 4 * layers * hidden * s * s      (attention: every key of the
    update  = 3 * forward  (= 6 N T + 12 L h s T, bench/gpu_check.train_flops)   sequence, causal mask not discounted)
generate: the prompt's prefill once per prompt (its samples share it; k = 1), then each sample's generated tokens
but the last (k = s); pm score: k = 0 (a 1 x hidden head). The update and reference keep only the
response positions for the LM head (rlaif.rl.logprobs); tests/test_bench.py checks these against torch's
FlopCounterMode. The peak: torch.matmul at the model's own shapes ([4096 x hidden] times [hidden x hidden], [hidden x
intermediate] and the LM head's [hidden x vocab]) in this process, on --threads threads, for each dtype in use,
before and after the phases; the best median is the peak. Printed: each phase's median seconds over --rounds
rounds (after a warm-up round), TFLOP counted, TFLOP/s, the peak, the percentage and the cores the phase got
(CPU seconds / wall seconds: under --threads when other processes share the cores); --profile adds torch's
profiler top operators of one update step.

--quick: the tiny builtin Llama, 4 prompts, 16 new tokens, 1 round, no sync.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from bench_update import make_batch  # noqa: E402
from gpu_check import train_flops  # noqa: E402

PEAK_ROWS = 4096  # rows of the peak's matmuls (tokens of a long packed micro-batch)


# -- arithmetic (tests/test_bench.py) ----------------------------------------------------------------------------

def matmul_params(model) -> tuple[int, int]:
    """(body, head): weights of the model's matmuls other than the LM head, and the LM head's (0 for a scalar
    head). A tied embedding counts once, as the head; an untied input embedding is a lookup, and norm weights and
    biases (1-D) are no matmul: none of them counted."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head = out.weight if out is not None else None
    skip = {id(model.get_input_embeddings().weight)} | ({id(head)} if head is not None else set())
    body = sum(p.numel() for p in model.parameters() if id(p) not in skip and p.dim() >= 2)
    return body, (head.numel() if head is not None else 0)


def forward_flops(body: int, head: int, layers: int, hidden: int, seqs: Iterable[tuple[int, int]]) -> float:
    """One forward over sequences given as (s tokens in, k of them through the LM head): one third of
    gpu_check.train_flops per part (2 per parameter per token, 4 * layers * hidden * s attention per token)."""
    return sum(train_flops(body, s, layers, hidden, s) + train_flops(head, k, 0, 0, 0) for s, k in seqs) / 3


def update_flops(body: int, head: int, layers: int, hidden: int, seqs: Iterable[tuple[int, int]]) -> float:
    """Forward + backward (backward = 2 forwards)."""
    return 3 * forward_flops(body, head, layers, hidden, seqs)


def generation_flops(body: int, head: int, layers: int, hidden: int,
                     groups: Iterable[tuple[int, list[int]]]) -> float:
    """Sampling with a KV cache, groups of (prompt tokens P, generated tokens R_j of each of its samples): the
    prefill of P once with one LM-head row (its samples draw their first token from it), then each sample's R_j - 1
    fed-back tokens, each with its LM-head row, attending to the sample's P + R_j tokens."""
    total = 0.0
    for p, rs in groups:
        total += train_flops(body, p, layers, hidden, p) + train_flops(head, 1, 0, 0, 0)
        total += sum(train_flops(body + head, r - 1, layers, hidden, p + r) for r in rs if r > 0)
    return total / 3


def batch_seqs(batch) -> list[tuple[int, int]]:
    """(prompt + response tokens, response tokens) of each sample: what response_logprobs runs through the model."""
    return [(p + r, r) for p, r in zip(batch["prompt_len"].tolist(), batch["response_len"].tolist())]


def peak_shapes(cfg) -> dict[str, tuple[int, int, int]]:
    """(m, k, n) of the peak's matmuls: the model's hidden x hidden, MLP and LM-head products."""
    h, inter, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    return {"hidden x hidden": (PEAK_ROWS, h, h), "hidden x mlp": (PEAK_ROWS, h, inter),
            "lm head": (PEAK_ROWS, h, vocab)}


# -- measurements ------------------------------------------------------------------------------------------------

def matmul_tflops(m: int, k: int, n: int, dtype, rounds: int = 3) -> float:
    """Median TFLOP/s of torch.matmul [m, k] x [k, n] in `dtype` after one warm-up product."""
    import torch

    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    torch.matmul(a, b)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * m * k * n / statistics.median(times) / 1e12


def alternate(fns: dict[str, Callable[[], object]], rounds: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Each phase once per round, the order reversed every other round; round 0 (warm-up) dropped. Returns the
    seconds of each round and the cores each phase got (this process's CPU seconds / wall seconds, over its rounds:
    below the threads it runs on when other processes take the cores)."""
    got: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, float] = {k: 0.0 for k in fns}
    for rnd in range(rounds + 1):
        for name in (list(fns) if rnd % 2 else list(fns)[::-1]):
            t0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            if rnd:
                got[name].append(time.perf_counter() - t0)
                cpu[name] += time.process_time() - c0
        print(f"round {rnd}{' (warm-up)' if not rnd else ''}: "
              + "  ".join(f"{k} {v[-1]:.2f}s" for k, v in got.items() if v and rnd), flush=True)
    return got, {k: cpu[k] / sum(got[k]) for k in fns}


def weight_sync(overrides: list[str], rounds: int, threads: int) -> str:
    """bench/bench_weight_sync.py in a subprocess: the sync against a memory copy of the same bytes, one line."""
    proc = subprocess.run([sys.executable, str(REPO / "bench/bench_weight_sync.py"), "--rounds", str(rounds),
                           *overrides], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)})
    rates = {m[1]: (float(m[2]), float(m[3])) for m in
             re.finditer(r"^\s+(sync/shared|memcpy/\S+)\s+([\d.]+) s\s+([\d.]+) GB/s", proc.stdout, re.M)}
    weights = next((line for line in proc.stdout.splitlines() if line.startswith("weights:")), "")
    copy = rates.get(f"memcpy/{threads}t")
    if proc.returncode or "sync/shared" not in rates or copy is None:
        tail = proc.stdout.strip().splitlines()[-3:] + proc.stderr.strip().splitlines()[-2:]
        return (f"sync: bench_weight_sync.py gave no sync/shared and memcpy/{threads}t figures (exit "
                f"{proc.returncode}; found {sorted(rates)}): {' | '.join(tail)}")
    sync = rates["sync/shared"]
    return (f"sync (shared transport) {sync[0]:.3f} s = {sync[1]:.2f} GB/s vs memory copy on {threads} threads "
            f"{copy[0]:.3f} s = {copy[1]:.2f} GB/s: {sync[0] / copy[0]:.1f}x the copy's time  [{weights}]")


def profile_update(policy, batch, rows: int = 15) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        policy.train(batch, 0.0)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="measured rounds (after one warm-up round)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every phase and of the peak")
    parser.add_argument("--sync-rounds", type=int, default=2, help="bench_weight_sync.py's rounds; 0: no sync")
    parser.add_argument("--profile", action="store_true", help="torch profiler's top ops of one update step")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of bench/peer.yaml")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process, on its threads
    import torch

    set_threads = torch.set_num_threads  # vLLM's CPU worker replaces it with a no-op in its process

    from actors.policy import PolicyWorker
    from actors.preference import PreferenceScorer
    from actors.reference import ReferenceWorker
    from actors.rollout import RolloutWorker
    from rlaif.config import load_config
    from rlaif.models import DTYPES

    quick = ["policy.model.path=builtin:tiny-llama", "rl.prompts_per_step=4", "rollout.max_new_tokens=16"]
    overrides = [*(quick if args.quick else []), *args.overrides]
    cfg = load_config(REPO / "bench/peer.yaml", overrides)
    rounds, sync_rounds = (1, 0) if args.quick else (args.rounds, args.sync_rounds)
    texts = [t.strip() for t in (REPO / "bench/peer_prompts.txt").read_text().splitlines() if t.strip()]
    texts = texts[: cfg.rl.prompts_per_step]
    n = cfg.rollout.n_samples

    # The policy's one-rank group first: vLLM then reuses the default process group (the reverse order fails)
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    policy = PolicyWorker(cfg)
    policy.setup_distributed(0, 1, "127.0.0.1", free_port())
    rollout = RolloutWorker(cfg)
    torch.set_num_threads = set_threads
    reference = ReferenceWorker(cfg)
    scorer = PreferenceScorer(cfg, policy.path, 0.0, 1.0)
    set_threads(args.threads)
    batch = make_batch(cfg)
    generated = rollout.generate(texts, n, 1)
    pm_texts = {k: generated.texts[k] for k in ("prompt", "response")}

    lm = reference.model
    shape = lm.config
    body, head = matmul_params(lm)
    pm_body, _ = matmul_params(scorer.scoring_model)
    layers, hidden = shape.num_hidden_layers, shape.hidden_size
    prompt_ids, _ = rollout.encode_prompts(texts)
    lens = generated["response_len"].tolist()
    flops = {
        "generate": generation_flops(body, head, layers, hidden,
                                     [(len(p), lens[i * n:(i + 1) * n]) for i, p in enumerate(prompt_ids)]),
        "reference": forward_flops(body, head, layers, hidden, batch_seqs(batch)),
        "pm score": forward_flops(pm_body, 0, layers, hidden,
                                  [(len(a) + len(b), 0) for a, b in (scorer.encode(p, r) for p, r in
                                                                     zip(pm_texts["prompt"], pm_texts["response"]))]),
        "update": update_flops(body, head, layers, hidden, batch_seqs(batch)),
    }
    dtypes = {"generate": cfg.policy.model.dtype, "reference": cfg.policy.model.dtype,
              "pm score": cfg.preference_model.model.dtype, "update": cfg.policy.model.dtype}
    fns = {"generate": lambda: rollout.generate(texts, n, 1), "reference": lambda: reference.logprobs(batch),
           "pm score": lambda: scorer.score(pm_texts), "update": lambda: policy.train(batch, 0.0)}
    print(f"{cfg.policy.model.path}: body {body / 1e6:.1f}M + LM head {head / 1e6:.1f}M matmul parameters, "
          f"{layers} layers x {hidden}; {len(batch)} samples, {sum(s for s, _ in batch_seqs(batch))} tokens in the "
          f"update ({batch.token_count()} response), {generated.token_count()} generated; torch threads "
          f"{torch.get_num_threads()}", flush=True)

    def peaks() -> dict[str, dict[str, float]]:
        return {d: {name: matmul_tflops(*mkn, DTYPES[d]) for name, mkn in peak_shapes(shape).items()}
                for d in sorted(set(dtypes.values()))}

    before = peaks()
    seconds, cores = alternate(fns, rounds)
    after = peaks()
    print(f"\nmatmul TFLOP/s on {args.threads} threads, [{PEAK_ROWS} x hidden] x (before / after the phases):")
    for d, got in before.items():
        print(f"  {d:<9} " + "   ".join(f"{k} {v:.3f} / {after[d][k]:.3f}" for k, v in got.items()))
    peak = {d: max(max(before[d].values()), max(after[d].values())) for d in before}
    print(f"\nmedian of {rounds} round(s); % = achieved / the best matmul of that dtype:")
    print(f"  {'phase':<10} {'dtype':<9} {'seconds':>8} {'TFLOP':>8} {'TFLOP/s':>8} {'peak':>7} {'%':>6} "
          f"{'cores got':>9}")
    for k, v in seconds.items():
        s = statistics.median(v)
        rate = flops[k] / s / 1e12
        print(f"  {k:<10} {dtypes[k]:<9} {s:8.2f} {flops[k] / 1e12:8.3f} {rate:8.3f} {peak[dtypes[k]]:7.3f} "
              f"{rate / peak[dtypes[k]]:6.1%} {cores[k]:9.2f}")
    print(f"  (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: others' work slows every figure)")
    if args.profile:
        print("\ntorch profiler, one update step, top ops by self CPU time:")
        print(profile_update(policy, batch))
    if sync_rounds:
        fns.clear()  # the models' memory back before the sync's own actors load theirs
        del rollout, policy, reference, scorer
        print("\n" + weight_sync(overrides, sync_rounds, args.threads), flush=True)


if __name__ == "__main__":
    main()
