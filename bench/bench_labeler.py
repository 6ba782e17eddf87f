"""Labeled pairs per second of the AI labeler's vLLM backend, before and after both orders share one call and the cache.

    python bench/bench_labeler.py [--pairs 16] [--rounds 3] [--models tiny,smollm2] [key=value overrides ...]

Each model runs two labelers, each in its own process (vLLM allows one in-process engine per process), built from
the model's config (tiny: configs/debug.yaml, the tiny builtin Llama; smollm2: configs/smollm2.yaml,
builtin:smollm2-135m with its chat template) with labeler.backend=vllm and labeler.cache=false:

* before: the vLLM path as it was (TodayLabeler): an engine without prefix caching (vLLM's CPU default blocks of
  128 tokens), scoring requests that would not read it anyway (vLLM skips the cache for any request asking for
  prompt log-probs), and the old layout: every forward question, then every swapped one, in chunks of
  labeler.batch_size sequences, so a pair's two orders go to the engine in two different calls;
* after: actors.labeler.LabelerWorker as it is: prefix caching on in blocks of 32 tokens on CPU, each pair's two
  orders side by side in one call, and scoring requests that read the cached prefix (LabelerWorker.scoring_params).

Every round labels fresh pairs (labeler.human_eval's builtin:pyrit pairs: real prompts and responses) with the same
principle seed, in both labelers, interleaved (the order alternates by round), after an untimed warm-up; the label
cache and vLLM's prefix cache are emptied before each timed compare, so only the sharing inside one compare counts.
Printed per labeler: pairs/s per round and their median, engine calls per compare, the share of prompt tokens read
from the prefix cache; then after/before (ratio of the medians) and how far the two labelers' labels differ.
Threads: the labeler's torch threads as the trainer gives them (ray.cpu_threads_aux; 1 on a 2-core machine).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONFIGS = {"tiny": "configs/debug.yaml", "smollm2": "configs/smollm2.yaml"}
SEED = 11  # the principle seed of every compare: both labelers draw the same principles


def labelers():
    """The two labeler classes (imported in the worker process, after its environment is set)."""
    from actors.labeler import LabelerWorker

    class TodayLabeler(LabelerWorker):
        """The vLLM path before the change: no prefix caching, requests as before, every forward question first."""

        prefix_caching, cpu_block_size = False, None  # vLLM's CPU default block, 128 tokens

        def scoring_params(self, n_prompt: int, n_total: int):
            from vllm import SamplingParams

            return SamplingParams(max_tokens=1, prompt_logprobs=0)

        def p_a(self, questions: list[str]) -> list[float]:
            if not self.lc.both_orders:
                return super().p_a(questions)
            # compare hands the vLLM path each pair's orders side by side: score them in the old layout
            n = len(questions) // 2
            scored = super().p_a(questions[0::2] + questions[1::2])
            return [x for pair in zip(scored[:n], scored[n:]) for x in pair]

    return {"before": TodayLabeler, "after": LabelerWorker}


class Counting:
    """The labeler's engine, with its generate calls counted and the prompt tokens it read from its prefix cache."""

    def __init__(self, llm) -> None:
        self.llm, self.calls, self.tokens, self.cached = llm, 0, 0, 0

    def generate(self, prompts, params, use_tqdm=False):
        outs = self.llm.generate(prompts, params, use_tqdm=use_tqdm)
        self.calls += 1
        self.tokens += sum(len(o.prompt_token_ids) for o in outs)
        self.cached += sum(o.num_cached_tokens or 0 for o in outs)
        return outs

    def __getattr__(self, name):
        return getattr(self.llm, name)


def worker(conn, config: str, overrides: list[str], variant: str) -> None:
    """One labeler in this process: answers (prompts, firsts, seconds) with (seconds, labels, calls, tokens, cached)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from rlaif.config import load_config
    from rlaif.feedback.labeling import LabelCache

    cfg = load_config(REPO / config, ["labeler.backend=vllm", "labeler.cache=false", *overrides])
    lab = labelers()[variant](cfg)
    lab.load()
    lab.llm = engine = Counting(lab.llm)
    conn.send(("ready", lab.lc.model.dtype, lab.block_size))
    while (msg := conn.recv()) is not None:
        lab.cache = LabelCache(None)
        engine.llm.reset_prefix_cache()
        engine.calls = engine.tokens = engine.cached = 0
        t0 = time.perf_counter()
        out = lab.compare(*msg, seed=SEED)
        seconds = time.perf_counter() - t0
        conn.send((seconds, [(r["p_first_in_a"], r["p_first_in_b"]) for r in out], engine.calls, engine.tokens,
                   engine.cached))


def bench_model(name: str, pairs: list[tuple[str, str, str]], n: int, rounds: int, overrides: list[str]) -> float:
    ctx = mp.get_context("spawn")
    procs, conns = {}, {}
    for variant in ("before", "after"):
        parent, child = ctx.Pipe()
        procs[variant] = ctx.Process(target=worker, args=(child, CONFIGS[name], overrides, variant), daemon=True)
        procs[variant].start()
        conns[variant] = parent
    try:
        info = {v: c.recv() for v, c in conns.items()}
        _, dtype, block = info["after"]
        batches = [pairs[(r * n) % len(pairs):][:n] for r in range(rounds + 1)]
        times: dict[str, list[float]] = {"before": [], "after": []}
        stats: dict[str, tuple[int, int, int]] = {}
        labels: dict[str, list] = {"before": [], "after": []}
        for r, batch in enumerate(batches):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for v in order:
                conns[v].send(tuple(map(list, zip(*batch))))
                seconds, labs, calls, tokens, cached = conns[v].recv()
                if r == 0:
                    continue  # warm-up: the engine's first requests
                times[v].append(seconds)
                labels[v] += labs
                stats[v] = (calls, tokens, cached)
        print(f"\n{name} ({CONFIGS[name]}, labeler dtype {dtype}, vLLM block {block}): {n} pairs per compare, "
              f"both orders, {rounds} rounds")
        med = {}
        for v in ("before", "after"):
            rates = [n / t for t in times[v]]
            med[v] = statistics.median(rates)
            calls, tokens, cached = stats[v]
            print(f"  {v:6s}: {med[v]:7.2f} pairs/s (rounds {', '.join(f'{x:.2f}' for x in rates)}); "
                  f"{calls} engine calls per compare; {cached / max(tokens, 1):.0%} of prompt tokens read from cache")
        ratio = med["after"] / med["before"]
        per_round = [b / a for a, b in zip(times["after"], times["before"])]
        diffs = [abs(x - y) for a, b in zip(labels["before"], labels["after"]) for x, y in zip(a, b)]
        same = sum(a == b for a, b in zip(labels["before"], labels["after"]))
        print(f"  after/before: {ratio:.2f}x (rounds {', '.join(f'{x:.2f}' for x in per_round)}); labels: "
              f"{same}/{len(labels['after'])} pairs bit-identical, max |difference| {max(diffs):.1e}")
        return ratio
    finally:
        for c in conns.values():
            c.send(None)
        for p in procs.values():
            p.join(timeout=60)
            if p.is_alive():
                p.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=16, help="pairs per compare (the peer workload labels 16 per step)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides for both labelers")
    args = ap.parse_args()
    from rlaif.data.human_labels import build_pyrit_human_set

    human = build_pyrit_human_set(max_pairs=args.pairs * (args.rounds + 1), seed=0).pairs
    pairs = [(p.prompt, p.response_a, p.response_b) for p in human]
    ratios = {m: bench_model(m, pairs, args.pairs, args.rounds, args.overrides) for m in args.models.split(",")}
    print("\nlabeled pairs/s, after/before: " + ", ".join(f"{m} {r:.2f}x" for m, r in ratios.items()))


if __name__ == "__main__":
    main()
