"""Checkpoint manifest hashing: one whole-file SHA-256 pass on one thread (before) against block digests on every
core (rlaif.run.checkpoint.digests, now), on the files a SmolLM2-135M policy checkpoint holds, side by side in one run.

    python bench/bench_checkpoint.py [--rounds 3] [--params 134515008] [--dtype bf16]

A ZeRO checkpoint of P parameters on one rank: the model states (P x 2 bytes in bf16, 4 in fp32) and the optimizer
states (fp32 master weights and Adam's two moments: P x 12 bytes). The files are random bytes of those sizes, in the
page cache (as just after DeepSpeed wrote them), so what is timed is the hashing a save (commit) and a resume (load)
do over them. Prints seconds per pass and the ratio, per round and the median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlaif.run.checkpoint import _sha256, digests  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--params", type=int, default=134_515_008)  # SmolLM2-135M
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    args = ap.parse_args()
    sizes = {"mp_rank_00_model_states.pt": args.params * (2 if args.dtype == "bf16" else 4),
             "zero_pp_rank_0_mp_rank_00_optim_states.pt": args.params * 12}
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, size in sizes.items():
            path = Path(tmp) / name
            with open(path, "wb") as f:
                for _ in range(0, size, 64 << 20):
                    f.write(os.urandom(min(64 << 20, size - f.tell())))
            paths.append(path)
        total = sum(sizes.values())
        print(f"{len(paths)} files, {total / 2**30:.2f} GiB ({args.params:,} parameters, {args.dtype}); "
              f"{os.cpu_count()} cores", flush=True)
        ratios = []
        for r in range(args.rounds):
            order = [("before", lambda: [_sha256(p) for p in paths]), ("now", lambda: digests(paths))]
            times = {}
            for name, fn in order if r % 2 == 0 else order[::-1]:
                t = time.perf_counter()
                fn()
                times[name] = time.perf_counter() - t
            ratios.append(times["before"] / times["now"])
            before = total / times["before"] / 2**30
            print(f"round {r + 1}: one thread, whole files {times['before']:.2f} s ({before:.2f} GiB/s); "
                  f"block digests on every core {times['now']:.2f} s "
                  f"({total / times['now'] / 2**30:.2f} GiB/s): {ratios[-1]:.2f}x", flush=True)
        print(f"median: block digests {statistics.median(ratios):.2f}x faster; a save and a resume each hash once")


if __name__ == "__main__":
    main()
