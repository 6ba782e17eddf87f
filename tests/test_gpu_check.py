"""bench/gpu_check.sh and bench/gpu_check.py without a GPU: the arithmetic behind each figure (GB/s, training
FLOPs, MFU), argument handling, the one-line refusal when no CUDA device is visible, the script going on after a
failed check, and the debug loop's cuda overrides passing the config checks and the planner."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import gpu_check  # noqa: E402

SCRIPT = str(REPO / "bench/gpu_check.sh")


def test_gbps_and_mfu_arithmetic():
    """2 GB in 0.5 s is 4 GB/s; half the peak is MFU 0.5; zero seconds is an error, not infinity."""
    assert gpu_check.gbps(2_000_000_000, 0.5) == pytest.approx(4.0)
    assert gpu_check.mfu(989.4e12, 2.0, 989.4e12) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        gpu_check.gbps(1, 0.0)
    with pytest.raises(ValueError):
        gpu_check.mfu(1.0, 1.0, 0.0)


def test_train_flops_match_torch_flop_counter():
    """train_flops (6 N T + 12 L h s T) against torch's FlopCounterMode over a real forward + backward of a tiny
    tied Llama with eager attention (every matmul counted): within 1 % (measured 0.05 %). Dropping the attention
    term (-12 %) or counting forward only (2 N T) fails this."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=True,
                      attn_implementation="eager")
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    b, seq = 2, 128
    ids = torch.randint(0, 512, (b, seq))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    params = sum(p.numel() for p in model.parameters())
    assert counter.get_total_flops() == pytest.approx(gpu_check.train_flops(params, b * seq, 2, 128, seq), rel=0.01)


def test_peak_flops_by_device_name():
    """The H100 SXM and PCIe differ (989 vs 756 dense bf16 TFLOP/s): the longest matching name wins; the
    environment overrides; an unknown device gives None (the check then fails asking for GPU_PEAK_TFLOPS)."""
    assert gpu_check.peak_flops("NVIDIA H100 80GB HBM3", {}) == pytest.approx(989.4e12)
    assert gpu_check.peak_flops("NVIDIA H100 PCIe", {}) == pytest.approx(756e12)
    assert gpu_check.peak_flops("NVIDIA H200", {}) == pytest.approx(989.4e12)
    assert gpu_check.peak_flops("Some GPU", {}) is None
    assert gpu_check.peak_flops("Some GPU", {"GPU_PEAK_TFLOPS": "100"}) == pytest.approx(100e12)


def test_select_only_and_errors():
    """--only keeps CHECKS' order, takes commas and repeats; an unknown name or a bare --only is one clear error."""
    assert gpu_check.select([]) == list(gpu_check.CHECKS)
    assert gpu_check.select(["--only", "zero2-mfu,debug"]) == ["debug", "zero2-mfu"]
    assert gpu_check.select(["--only", "sleep-wake", "--only=ipc-handoff"]) == ["ipc-handoff", "sleep-wake"]
    for bad, says in ((["--only", "nope"], r"unknown check\(s\) nope; allowed: debug"), (["--only"], "needs a check"),
                      (["--fast"], "unknown argument '--fast'")):
        with pytest.raises(SystemExit, match=says):
            gpu_check.select(bad)


def test_budgets_fit_eight_minutes():
    """Every check's budget together stays under the 8 minutes the script promises on one H100."""
    assert sum(seconds for seconds, _ in gpu_check.CHECKS.values()) < 8 * 60
    assert set(gpu_check.RUN) == set(gpu_check.CHECKS)


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_script_refuses_without_cuda_in_one_line():
    """No CUDA device visible (this machine; CUDA_VISIBLE_DEVICES empty): exit 2 and one line that says so, before
    any check starts. --list works anywhere; a wrong --only is refused in one line too."""
    proc = run_script(env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "no CUDA device is visible" in proc.stderr
    listed = run_script("--list")
    assert listed.returncode == 0 and all(name in listed.stdout for name in gpu_check.CHECKS)
    bad = run_script("--only", "nope")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_script_goes_on_after_a_failed_check(tmp_path):
    """With a stand-in for the Python helper (PYTHON=...; the helper is what needs a GPU): a check that fails, one
    that passes and one that outlives its budget each get their line, every check runs, and the exit status is 1.
    A script that stopped at the first failure (set -e) or ignored a timeout fails this."""
    helper = tmp_path / "python"
    helper.write_text("""#!/usr/bin/env bash
case "$2" in
  select) printf 'debug\\nzero2-mfu\\ntp1-generate\\n' ;;
  require-cuda) exit 0 ;;
  budget) echo 2 ;;
  run) case "$3" in
         debug) echo "FAIL debug: exit 1"; exit 1 ;;
         zero2-mfu) echo "PASS zero2-mfu: MFU 30.0%" ;;
         tp1-generate) sleep 30 ;;
       esac ;;
esac
""")
    helper.chmod(0o755)
    proc = run_script(env={"PYTHON": str(helper)})
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "FAIL debug: exit 1" and lines[1] == "PASS zero2-mfu: MFU 30.0%"
    assert lines[2].startswith("FAIL tp1-generate: did not finish within its 2s budget")
    assert proc.returncode == 1


def test_run_prints_one_line_for_a_check_that_raises(tmp_path, monkeypatch, capfd):
    """A check that raises becomes a FAIL line naming the exception (exit 1), its output in its log file."""
    def broken() -> tuple[str, str]:
        print("library noise")
        raise RuntimeError("CUDA error: out of memory\nmore detail")

    monkeypatch.setitem(gpu_check.RUN, "debug", broken)
    monkeypatch.setenv("GPU_CHECK_LOGS", str(tmp_path))
    fd1, fd2 = os.dup(1), os.dup(2)
    try:
        code = gpu_check.run("debug")
    finally:
        os.dup2(fd1, 1)
        os.dup2(fd2, 2)
    out = capfd.readouterr().out
    assert code == 1 and out.splitlines()[-1].startswith("FAIL debug: RuntimeError: CUDA error: out of memory (log:")
    assert "library noise" in (tmp_path / "debug.log").read_text() + out


def test_debug_cuda_overrides_are_valid_and_fit():
    """The debug check's overrides pass every config check for device cuda (one colocated bundle, 0.9 of its GPU
    asked, no preference model) and the planner places them on one GPU of 24 GiB, so a failing debug check on a GPU
    is about the GPU path, not the config."""
    from rlaif.config import load_config
    from rlaif.run import plan

    cfg = load_config(REPO / "configs/debug.yaml", gpu_check.DEBUG_CUDA)
    (p,) = plan.check(cfg, gpu_memory_gib=24)
    assert {a.gpus for a in p.actors} == {(0,)}
    assert sum(a.gpu for a in p.actors) == pytest.approx(0.9)


def test_engine_configs_of_the_checks_are_valid():
    """sleep-wake's and tp1-generate's configs pass the cuda config checks (sleep mode needs colocation), and
    sleep-wake's engine is asked to sleep (enable_sleep_mode) while tp1-generate's serves bf16 as training does."""
    from actors.rollout import engine_kwargs

    sleep = gpu_check._engine_cfg(gpu_check.SLEEP_CUDA)
    assert engine_kwargs(sleep, "rl")["enable_sleep_mode"] is True
    gen = engine_kwargs(gpu_check._engine_cfg(gpu_check.GENERATE_CUDA), "rl")
    assert "enable_sleep_mode" not in gen and gen["dtype"] == "bfloat16" and gen["tensor_parallel_size"] == 1
