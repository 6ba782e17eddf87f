#!/usr/bin/env bash
# One GPU check of rlaif's GPU paths, one line each, under 8 minutes on one H100 (budgets: --list):
#   debug         rlaif train --config configs/debug.yaml with device=cuda (colocated on one GPU)
#   nccl-sync     weight-sync NCCL broadcast GB/s vs a device-to-device copy of the same bytes (2+ GPUs, else SKIP)
#   ipc-handoff   the CUDA-IPC colocated hand-off of a weight bucket to a second process
#   sleep-wake    vLLM sleep mode frees the engine's memory and wake_up restores it
#   zero2-mfu     bf16 DeepSpeed ZeRO-2 update MFU on SmolLM2-135M
#   tp1-generate  TP=1 generation tokens/s, rlaif's rollout engine vs raw vLLM
# Usage: bench/gpu_check.sh [--only NAME[,NAME]] [--list]
# Each check prints PASS/FAIL/SKIP and its figure; a failed check does not stop the next; the exit status is 1 if
# any failed, 2 when no CUDA device is visible or an argument is wrong. Library output: $GPU_CHECK_LOGS (default
# /tmp/gpu_check)/NAME.log. The measuring code is bench/gpu_check.py.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
for arg in "$@"; do
  if [ "$arg" = "--list" ]; then exec "$PY" bench/gpu_check.py list; fi
done
names="$("$PY" bench/gpu_check.py select "$@")" || exit 2
"$PY" bench/gpu_check.py require-cuda || exit 2
failed=0
for name in $names; do
  budget="$("$PY" bench/gpu_check.py budget "$name")"
  timeout -k 10 "$budget" "$PY" bench/gpu_check.py run "$name"
  rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "FAIL $name: did not finish within its ${budget}s budget (log: ${GPU_CHECK_LOGS:-/tmp/gpu_check}/$name.log)"
  fi
  [ "$rc" -ne 0 ] && failed=1
done
exit "$failed"
