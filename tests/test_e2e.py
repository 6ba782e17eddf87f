"""The debug run end to end through the `rlaif` command: real Ray, vLLM, DeepSpeed, wandb (offline)."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from .conftest import REPO
from .wandb_history import history

RLAIF = [sys.executable, "-m", "rlaif.cli"]


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run([*RLAIF, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.e2e
def test_debug_run_produces_checkpoint_config_and_wandb_history(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--config", "configs/debug.yaml", f"output_dir={out}", "trainer.steps=3")
    assert proc.returncode == 0, proc.stderr[-4000:]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = out / "checkpoint"
    assert (ckpt / "model.safetensors").is_file() and not list(ckpt.glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    assert model.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids["input_ids"].shape[1]

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["trainer"]["steps"] == 3 and saved["output_dir"] == str(out)

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward/score" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(r["weight_sync/shared_buffer"] == 1 for r in steps)  # one node: the engine maps the policy's buffer
    assert any("pm/loss_last" in r for r in rows)

    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    hist = {row["_step"]: row for row in history(runs[0])}
    for step in (1, 2, 3):
        for key in ("reward/score", "kl/policy_ref", "policy/loss", "labels/p_first_mean",
                    "labels/position_consistency", "time/generate", "time/train", "time/weight_sync"):
            assert key in hist[step], f"wandb history step {step} lacks {key}"
        assert hist[step]["samples/_type"] == "table-file"
    assert "pm/loss_last" in hist[0]
    tables = list(runs[0].parent.glob("files/media/table/samples_*.table.json"))
    assert len(tables) == 3
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["step", "prompt", "response_1", "response_2", "principle", "ai_label_p1",
                                "reward_1", "reward_2"]
    assert all(0.0 <= row[5] <= 1.0 for row in table["data"])


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["policy.model.path=/no/such/model"], "model path not found: /no/such/model"),
        (["trainer.stepz=2"], "unknown config key 'trainer.stepz'"),
        (["policy.zero_stage=5"], "policy.zero_stage: got 5; allowed values: 0, 1, 2, 3"),
    ],
)
def test_bad_input_fails_clearly_and_writes_nothing(tmp_path, overrides, message):
    out = tmp_path / "run"
    proc = run_cli("train", "--config", "configs/debug.yaml", f"output_dir={out}", *overrides, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("content,message", [("", "no prompts found"), ('{"prompt": 3}\n', "p.jsonl:1")])
def test_bad_prompt_file_fails_clearly(tmp_path, content, message):
    (tmp_path / "p.jsonl").write_text(content)
    out = tmp_path / "run"
    proc = run_cli("train", "--config", "configs/debug.yaml", f"output_dir={out}",
                   f"data.prompts={tmp_path / 'p.jsonl'}", timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and not out.exists()


def test_malformed_config_file(tmp_path):
    (tmp_path / "c.yaml").write_text("trainer: [1, 2\n")
    proc = run_cli("train", "--config", str(tmp_path / "c.yaml"), timeout=120)
    assert proc.returncode == 2 and "malformed YAML" in proc.stderr
