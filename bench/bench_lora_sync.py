"""LoRA weight sync on CPU: merged weights into a plain engine vs vLLM's LoRA adapters, per RL step, side by side.

    python bench/bench_lora_sync.py [--versions 3] [--dtype bfloat16|float32] [--rank 16] [--alpha 32] [--quick]
    python bench/bench_lora_sync.py --dtype float32 --versions 1 --prompts 8 --tokens 16   # the agreement check

Run time on the 2-core CPU: about 1 min of start-up, then per version one merged step (sync 1-4 s + generate
10-40 s) and one adapter step (generate 12-150 s: vLLM-CPU's LoRA ops are slow, and slower the busier the machine)
for 32 prompts x 64 tokens; --prompts/--tokens shrink it (and move the verdict toward the adapter: see break-even).

What a LoRA policy must get into vLLM after each update, two ways, on SmolLM2-135M-Instruct (builtin:smollm2-135m),
a LoRA of rank --rank on every linear layer (peft's "all-linear": q/k/v/o, gate/up/down; not the LM head):

* merged:  the engine has no LoRA. The sync computes W + alpha/r * B @ A out of place for every adapted weight
           (torch addmm into a preallocated send buffer, every other weight copied into it: what the trainer sends,
           the whole model, as full fine-tuning does), then vLLM's worker `reload_weights(weights_iterator=...)`
           copies each one out of the buffer (as actors/weight_sync.receive_shared does) and reloads layer by layer,
           then the prefix cache is reset -- rlaif's shared-buffer sync less the gloo signalling.
* adapter: the engine is started with enable_lora=True, max_lora_rank=--rank, max_loras=1. The sync saves the
           adapter with peft's `save_pretrained` (to /dev/shm: vLLM 0.32's LoRARequest takes only a path, no
           tensors -- vllm/lora/request.py, worker_manager._load_adapter reads the folder), loads it as a new
           LoRARequest(name, id=version, path) (`llm_engine.add_lora`, so the load is timed as sync, not inside
           generate) and removes the previous version's adapter. Generation then runs with that LoRA active
           (vLLM-CPU's punica ops in plain torch).
Then both generate the same fixed batch: --prompts chat prompts of bench/peer_prompts.txt x --tokens new tokens,
greedy, ignore_eos (every sequence exactly --tokens long: equal work), with the sampled token's log-prob.

Each side is its own process (two in-process vLLM engines in one Python process share vLLM's global state) holding
the HF model with peft's LoRA and its engine; the parent drives them version by version, interleaved (the order
alternates every version: A B B A ...) so drift in the shared machine's load hits both alike, while the side that
is not running waits on a pipe. Every version gets new adapter weights (seeded by the version, identical on both
sides: A ~ N(0, 1/in), B ~ N(0, --b-std), B nonzero so the adapter changes the outputs). Version 0 is a warm-up and
not counted. Both engines: enforce_eager (rlaif's default; an engine with LoRA runs uncompiled on CPU anyway),
no chunked prefill, 1 GiB KV cache, bound to every core of this process; the merge's torch on every core too.

How to read the output: one line per version and side (sync split into its parts, generate), then the medians,
their spread (min-max over versions) and the ratios adapter / merged of sync, generate and the step's total (sync +
generate), median over versions with each version's ratio in brackets; then the agreement check -- for each
version, how many of the greedy sequences are identical between the two sides and the mean |log-prob difference|
on their common prefix, beside the same figures for the base model (no LoRA) against the adapter side, to show the
LoRA's own effect is much larger than the two paths' difference (so they compute the same thing); last the verdict:
which path is cheaper per RL step (sync + generation of this batch) on this CPU. In fp32 the two paths agree to
the token (|dlogprob| < 1e-4); in bf16 they differ by bf16 rounding (the merged weight W + scale * B @ A is rounded
to bf16 once, the adapter path keeps W and B, A apart), still well below the LoRA's own effect. Generation cost
scales with the batch (the RL step's rollouts) and sync cost with the model: the verdict is for this model and batch,
and the per-token gap tells how it moves with a bigger batch (printed too). The machine is shared: read the spread.

--quick: the tiny builtin Llama, 8 prompts x 16 tokens, 2 measured versions: a smoke test.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "bench" / "peer_prompts.txt"
SIDES = ("merged", "adapter")


# -- one side, in its own process ----------------------------------------------------------------------------------

def _reload(worker, weights) -> None:
    """Inside vLLM's worker (collective_rpc runs a callable in-process on the in-process engine)."""
    worker.reload_weights(weights_iterator=weights)


class Side:
    """The HF model with peft's LoRA (the trainer's copy) and a vLLM engine, for one sync path."""

    def __init__(self, side: str, opts: dict) -> None:
        cores = sorted(os.sched_getaffinity(0))
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process, as rlaif's rollout actor
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
        import torch
        from peft import LoraConfig, get_peft_model
        from vllm import LLM

        from rlaif.models import DTYPES, load_causal_lm, load_tokenizer, resolve_model_path

        torch.set_num_threads(len(cores))
        self.side, self.opts = side, opts
        self.dtype = DTYPES[opts["dtype"]]
        path = resolve_model_path(opts["model"])
        tok = load_tokenizer(path)
        texts = [t.strip() for t in PROMPTS.read_text().splitlines() if t.strip()]
        texts = (texts * (opts["prompts"] // len(texts) + 1))[: opts["prompts"]]
        self.prompts = [{"prompt_token_ids": tok.apply_chat_template([{"role": "user", "content": t}],
                                                                     add_generation_prompt=True, tokenize=True,
                                                                     return_dict=False)} for t in texts]
        self.model = load_causal_lm(path, opts["dtype"])
        self.peft = get_peft_model(self.model, LoraConfig(r=opts["rank"], lora_alpha=opts["alpha"], lora_dropout=0.0,
                                                          target_modules="all-linear", task_type="CAUSAL_LM"))
        from peft.tuners.lora import Linear as LoraLinear

        self.loras = {name: m for name, m in self.model.named_modules() if isinstance(m, LoraLinear)}
        # What the merged sync sends: every weight of the model under its HF name (tied ones once), each adapted one
        # as W + scale * B @ A; one send buffer for all of them (rlaif's is a bucket; the bytes are the same).
        self.send: list[tuple[str, torch.Tensor, LoraLinear | None]] = []
        for name, p in self.model.named_parameters():
            if "lora_" in name:
                continue
            module = name.rsplit(".", 2)[0] if ".base_layer." in name else None
            self.send.append((name.replace(".base_layer", ""), p.detach(), self.loras.get(module)))
        self.buffer = torch.empty(sum(p.numel() for _, p, _ in self.send), dtype=self.dtype)
        self.sent_bytes = self.buffer.numel() * self.buffer.element_size()
        kwargs = dict(dtype=opts["dtype"], seed=0, enforce_eager=True, max_model_len=opts["max_model_len"],
                      enable_chunked_prefill=False)
        if side == "adapter":
            kwargs.update(enable_lora=True, max_lora_rank=opts["rank"], max_loras=1)
        self.llm = LLM(model=path, **kwargs)
        shm = "/dev/shm" if Path("/dev/shm").is_dir() else None  # a RAM disk: the save is not a disk write
        self.folder = Path(tempfile.mkdtemp(prefix="bench-lora-", dir=shm))
        self.current = None  # the adapter side's active LoRARequest

    def set_adapter(self, version: int) -> None:
        """The trainer's adapter weights after update `version`: seeded, the same on both sides."""
        import torch

        g = torch.Generator().manual_seed(1000 + version)
        with torch.no_grad():
            for name in sorted(self.loras):
                m = self.loras[name]
                a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
                a.copy_(torch.randn(a.shape, generator=g) / a.shape[1] ** 0.5)
                b.copy_(torch.randn(b.shape, generator=g) * self.opts["b_std"])

    def sync_merged(self, version: int) -> dict:
        import torch

        merge = [0.0]

        def weights():
            offset = 0
            for name, w, lora in self.send:
                t0 = time.perf_counter()
                out = self.buffer[offset: offset + w.numel()].view(w.shape)
                out.copy_(w)
                if lora is not None:  # W + scale * B @ A, accumulated in fp32 by the matmul, rounded once
                    a = lora.lora_A["default"].weight.to(self.dtype)
                    b = lora.lora_B["default"].weight.to(self.dtype)
                    out.addmm_(b, a, alpha=lora.scaling["default"])
                merge[0] += time.perf_counter() - t0
                offset += w.numel()
                yield name, out.clone()  # the receiver's copy out of the shared buffer (receive_shared)

        t0 = time.perf_counter()
        with torch.no_grad():
            self.llm.collective_rpc(_reload, args=(weights(),))
        t1 = time.perf_counter()
        self.llm.reset_prefix_cache()
        t2 = time.perf_counter()
        return {"sync": t2 - t0, "merge": merge[0], "reload": t1 - t0 - merge[0], "reset": t2 - t1}

    def sync_adapter(self, version: int) -> dict:
        from vllm.lora.request import LoRARequest

        t0 = time.perf_counter()
        folder = self.folder / f"v{version}"
        self.peft.save_pretrained(str(folder))
        t1 = time.perf_counter()
        request = LoRARequest(f"policy-v{version}", version + 1, str(folder))  # ids start at 1
        assert self.llm.llm_engine.add_lora(request)
        t2 = time.perf_counter()
        if self.current is not None:
            self.llm.llm_engine.remove_lora(self.current.lora_int_id)
            shutil.rmtree(self.current.lora_path)
        self.current = request
        t3 = time.perf_counter()
        return {"sync": t3 - t0, "save": t1 - t0, "load": t2 - t1, "remove": t3 - t2}

    def generate(self, lora: bool) -> tuple[float, list[list[int]], list[list[float]]]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=self.opts["tokens"], ignore_eos=True, logprobs=0)
        t0 = time.perf_counter()
        outs = self.llm.generate(self.prompts, params, use_tqdm=False,
                                 lora_request=self.current if lora else None)
        seconds = time.perf_counter() - t0
        tokens = [list(o.outputs[0].token_ids) for o in outs]
        logprobs = [[lp[t].logprob for t, lp in zip(o.outputs[0].token_ids, o.outputs[0].logprobs)] for o in outs]
        return seconds, tokens, logprobs

    def step(self, version: int) -> dict:
        self.set_adapter(version)
        parts = self.sync_merged(version) if self.side == "merged" else self.sync_adapter(version)
        gen, tokens, logprobs = self.generate(lora=self.side == "adapter")
        return {"parts": parts, "sync": parts["sync"], "generate": gen, "tokens": tokens, "logprobs": logprobs}

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def serve(side: str, opts: dict, conn) -> None:
    """The side's process: answer the parent's commands until "stop"."""
    import sys

    sys.path.insert(0, str(REPO))
    s = None
    try:
        t0 = time.perf_counter()
        s = Side(side, opts)
        conn.send({"ready": time.perf_counter() - t0, "sent_bytes": s.sent_bytes,
                   "adapter_params": sum(m.lora_A["default"].weight.numel() + m.lora_B["default"].weight.numel()
                                         for m in s.loras.values()), "lora_modules": len(s.loras)})
        while True:
            cmd, arg = conn.recv()
            if cmd == "stop":
                break
            if cmd == "step":
                conn.send(s.step(arg))
            elif cmd == "base":  # the base model's outputs (adapter side, no LoRA request): the LoRA's own effect
                gen, tokens, logprobs = s.generate(lora=False)
                conn.send({"generate": gen, "tokens": tokens, "logprobs": logprobs})
    except BaseException as exc:  # the parent reads the error instead of waiting forever
        import traceback

        conn.send({"error": f"{side}: {exc!r}\n{traceback.format_exc()}"})
    finally:
        if s is not None:
            s.close()
        conn.close()


# -- the parent: drive both, compare -------------------------------------------------------------------------------

def agreement(a: dict, b: dict) -> tuple[int, float, float]:
    """Identical greedy sequences, mean first-divergence position (of the sequences that differ, else the length),
    and the mean |log-prob difference| of the sampled tokens on the common prefixes."""
    same, firsts, diffs = 0, [], []
    for ta, tb, la, lb in zip(a["tokens"], b["tokens"], a["logprobs"], b["logprobs"]):
        n = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
        same += ta == tb
        if ta != tb:
            firsts.append(n)
        diffs += [abs(x - y) for x, y in zip(la[:n], lb[:n])]
    return same, (statistics.mean(firsts) if firsts else float(len(a["tokens"][0]))), \
        (statistics.mean(diffs) if diffs else float("nan"))


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):7.3f} s ({min(xs):.3f}-{max(xs):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", type=int, default=3, help="measured policy versions (after one warm-up)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--b-std", type=float, default=0.02, help="std of the adapters' B entries")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    model = "builtin:tiny-llama" if args.quick else "builtin:smollm2-135m"
    if args.quick:
        args.versions, args.prompts, args.tokens = 2, 8, 16
    opts = {"model": model, "dtype": args.dtype, "rank": args.rank, "alpha": args.alpha, "prompts": args.prompts,
            "tokens": args.tokens, "b_std": args.b_std, "max_model_len": 512}
    import sys

    sys.path.insert(0, str(REPO))
    from rlaif.models import resolve_model_path

    resolve_model_path(model)  # build/convert the builtin once, before the two sides start
    print(f"{model} {args.dtype}, LoRA r={args.rank} alpha={args.alpha:g} all-linear, {args.prompts} prompts x "
          f"{args.tokens} tokens greedy, {args.versions} measured versions + 1 warm-up; load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    ctx = mp.get_context("spawn")
    conns, procs, info = {}, {}, {}
    try:
        for side in SIDES:  # one after the other: the start-ups do not compete
            parent, child = ctx.Pipe()
            procs[side] = ctx.Process(target=serve, args=(side, opts, child), daemon=True)
            procs[side].start()
            conns[side] = parent
            info[side] = _recv(conns[side], side, procs[side])
            print(f"{side}: engine and model ready in {info[side]['ready']:.1f} s", flush=True)
        print(f"merged sync sends {info['merged']['sent_bytes'] / 1e6:.0f} MB; the adapter: "
              f"{info['adapter']['lora_modules']} LoRA modules, {info['adapter']['adapter_params'] / 1e6:.2f} M "
              "parameters (saved in peft's dtype, fp32)", flush=True)
        conns["adapter"].send(("base", None))
        base = _recv(conns["adapter"], "adapter", procs["adapter"])
        results: dict[str, list[dict]] = {s: [] for s in SIDES}
        for version in range(args.versions + 1):
            order = SIDES if version % 2 == 0 else SIDES[::-1]
            got = {}
            for side in order:
                conns[side].send(("step", version))
                got[side] = _recv(conns[side], side, procs[side])
            same, first, dlp = agreement(got["merged"], got["adapter"])
            tag = " (warm-up)" if version == 0 else ""
            for side in SIDES:
                r = got[side]
                parts = " ".join(f"{k} {v:.3f}" for k, v in r["parts"].items() if k != "sync")
                print(f"v{version}{tag} {side:<8} sync {r['sync']:6.3f} s [{parts}]  generate {r['generate']:6.3f} s"
                      f"  step {r['sync'] + r['generate']:6.3f} s", flush=True)
            print(f"v{version}{tag} agreement: {same}/{args.prompts} sequences identical, mean |dlogprob| on the "
                  f"common prefix {dlp:.4f}", flush=True)
            if version:
                for side in SIDES:
                    results[side].append(got[side])
        for side in SIDES:
            conns[side].send(("stop", None))
    finally:
        for p in procs.values():
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    report(results, base, args)


def _recv(conn, side: str, proc) -> dict:
    while not conn.poll(5):
        if not proc.is_alive():
            raise RuntimeError(f"{side}: the process died (exit {proc.exitcode})")
    msg = conn.recv()
    if "error" in msg:
        raise RuntimeError(msg["error"])
    return msg


def report(results: dict[str, list[dict]], base: dict, args) -> None:
    m, a = results["merged"], results["adapter"]
    n_tokens = args.prompts * args.tokens
    print(f"\nmedian over {len(m)} versions (min-max), seconds:")
    for side, rs in results.items():
        keys = list(rs[0]["parts"])
        print(f"  {side:<8} sync {spread([r['sync'] for r in rs])}  generate {spread([r['generate'] for r in rs])}"
              f"  step {spread([r['sync'] + r['generate'] for r in rs])}")
        print("           sync parts: " + ", ".join(
            f"{k} {statistics.median(r['parts'][k] for r in rs):.3f}" for k in keys if k != "sync"))

    def ratio(key) -> tuple[float, list[float]]:
        xs = [key(y) / key(x) for x, y in zip(m, a)]
        return statistics.median(xs), xs

    print("adapter / merged, median over versions (each version's in brackets):")
    for what, key in (("sync", lambda r: r["sync"]), ("generate", lambda r: r["generate"]),
                      ("step (sync + generate)", lambda r: r["sync"] + r["generate"])):
        med, xs = ratio(key)
        print(f"  {what:<24} {med:5.2f}x ({', '.join(f'{x:.2f}' for x in xs)})")
    print("agreement (same adapter weights), per version: merged vs adapter | base (no LoRA) vs adapter:")
    for i, (x, y) in enumerate(zip(m, a), 1):
        s1, f1, d1 = agreement(x, y)
        s0, f0, d0 = agreement(base, y)
        print(f"  v{i}: {s1}/{args.prompts} identical, first divergence at token {f1:.1f}, mean |dlogprob| {d1:.4f} | "
              f"{s0}/{args.prompts} identical, first divergence at {f0:.1f}, mean |dlogprob| {d0:.4f}")
    sync_m = statistics.median(r["sync"] for r in m)
    sync_a = statistics.median(r["sync"] for r in a)
    gen_m = statistics.median(r["generate"] for r in m)
    gen_a = statistics.median(r["generate"] for r in a)
    step_m, step_a = sync_m + gen_m, sync_a + gen_a
    per_token = (gen_a - gen_m) / n_tokens
    print(f"generation: {n_tokens / gen_m:.0f} tokens/s merged, {n_tokens / gen_a:.0f} tokens/s with the adapter "
          f"({per_token * 1e3:+.3f} ms per generated token with LoRA); the sync difference "
          f"{sync_m - sync_a:.3f} s")
    if per_token > 0 and sync_m > sync_a:
        print(f"  break-even: the adapter path is cheaper per step below ~{(sync_m - sync_a) / per_token:.0f} "
              f"generated tokens per step (this batch: {n_tokens})")
    cheaper = "merged" if step_m <= step_a else "adapter"
    print(f"VERDICT: {cheaper} is cheaper per RL step on this CPU ({args.dtype}, {args.prompts} x {args.tokens} "
          f"tokens): merged {step_m:.3f} s vs adapter {step_a:.3f} s per step (sync + generate), adapter / merged "
          f"{step_a / step_m:.2f}x")


if __name__ == "__main__":
    main()
