import os
from pathlib import Path

import pytest

# Builtin models are built once per machine into this cache and shared by every test (and by the e2e runs).
os.environ.setdefault("RLAIF_CACHE", str(Path(os.environ.get("TMPDIR", "/tmp")) / "rlaif-test-cache"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_path() -> str:
    from rlaif.models import TINY, resolve_model_path

    return resolve_model_path(TINY)
