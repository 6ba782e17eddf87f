"""The debug run end to end through the `rlaif` command: real Ray, vLLM, DeepSpeed, wandb (offline)."""

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from .conftest import REPO
from .wandb_history import history

RLAIF = [sys.executable, "-m", "rlaif.cli"]


def run_cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run([*RLAIF, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.e2e
def test_debug_run_produces_checkpoint_config_and_wandb_history(tmp_path):
    out = tmp_path / "run"
    started = time.time()
    secrets = {"WANDB_API_KEY": f"wandb-sentinel-{uuid.uuid4().hex}", "HF_TOKEN": f"hf-sentinel-{uuid.uuid4().hex}"}
    proc = run_cli("train", "--config", "configs/debug.yaml", f"output_dir={out}", "trainer.steps=3", env=secrets)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # no secret of the environment is written anywhere: not in the run's files, not in Ray's logs (its agent logs
    # every runtime_env verbatim, readable by every user)
    sessions = [p for p in Path("/tmp/ray").glob("session_2*") if p.stat().st_mtime >= started - 5]
    assert sessions, "the run's Ray session folder was not found"
    for folder in [out, *sessions]:
        for f in folder.rglob("*"):
            try:
                data = f.read_bytes() if f.is_file() and not f.is_symlink() else b""
            except FileNotFoundError:  # a socket or log file removed while we read (another test's session)
                continue
            assert not any(v.encode() in data for v in secrets.values()), f"a secret was written to {f}"

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
    # a healthy run trips no default alarm; the ones that can judge 3 steps did check (bug caught: a default that fires
    # on ordinary noise, e.g. counting tied pairs against the reward, or not running at all)
    states = {k: v for r in rows if r["step"] == 3 for k, v in r.items() if k.startswith("alarms/")}
    assert states == {"alarms/boilerplate": 0.0, "alarms/reward_agreement": 0.0}
    assert not [r for r in rows if r.get("table") == "alarms"] and "ALARM" not in proc.stderr

    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    hist = {row["_step"]: row for row in history(runs[0])}
    for step in (1, 2, 3):
        for key in ("reward/score", "kl/policy_ref", "policy/loss", "time/generate", "time/train",
                    "time/weight_sync"):
            assert key in hist[step], f"wandb history step {step} lacks {key}"
    # the AI labels only monitor here: each step's are logged with the next step, the last step's with it
    assert "labels/p_first_mean" not in hist[1] and "samples/_type" not in hist[1]
    for step, labelled in ((2, 1), (3, 3)):
        assert hist[step]["labels/step"] == labelled and "labels/position_consistency" in hist[step]
        assert hist[step]["samples/_type"] == "table-file"
    assert "pm/loss_last" in hist[0]
    tables = list(runs[0].parent.glob("files/media/table/samples_*.table.json"))
    assert len(tables) == 3  # step 1's labels at step 2, step 2's at step 3, step 3's after it (at step 3)
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["step", "prompt", "response_1", "response_2", "principle", "ai_label_p1",
                                "reward_1", "reward_2"]
    assert all(0.0 <= row[5] <= 1.0 for row in table["data"])

    # The debug labeler is a random tiny model: its feedback fails the trust gate, the debug config trains on anyway
    # (trust.accept_untrusted_feedback) and every result says so: the console, the model card, wandb's summary and tags
    trust = json.loads((out / "feedback" / "trust.json").read_text())
    assert trust["status"] == "untrusted" and trust["accepted"]
    assert "trust gate: the AI feedback did not pass, and the run trains on it anyway" in proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"rlaif: UNTRUSTED: {trust['summary']}. Every checkpoint of this " \
        "run carries this mark in its README.md and trust.json."
    assert "**Trust: UNTRUSTED.**" in (ckpt / "README.md").read_text()
    assert json.loads((ckpt / "trust.json").read_text())["checks"] == trust["checks"]
    summary, tags = wandb_summary_and_tags(runs[0])
    assert summary["trust/status"] == "untrusted" and summary["trust/summary"] == trust["summary"]
    assert "untrusted-feedback" in tags
    assert hist[0]["trust/untrusted"] == 1


@pytest.mark.e2e
def test_labels_that_only_monitor_never_hold_their_step(tmp_path):
    """A labeler that takes 6 s a step (tests.eval_judges:slow_on_few_pairs), several RL steps' time, labelling 2
    pairs every other step. Bugs caught: a step waiting for its own monitoring labels (steps 1 and 3 take >= 6 s),
    labels logged with the wrong step or never (the last step's), rl.label_pairs not bounding the labeler's work
    (calls of 4 pairs: no sleep, and 4 rows a step in the sample table)."""
    out = tmp_path / "run"
    proc = run_cli("train", "--config", "configs/debug.yaml", f"output_dir={out}", "trainer.steps=5",
                   "rl.label_every=2", "rl.label_pairs=2", "labeler.function=tests.eval_judges:slow_on_few_pairs",
                   "trainer.progress=false")
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step = {r["step"]: r for r in rows if "time/step" in r}
    assert step[1]["time/step"] < 4.5 and step[3]["time/step"] < 4.5, [step[s]["time/step"] for s in step]
    assert "labels/step" not in step[1] and "labels/step" not in step[3]
    assert step[2]["labels/step"] == 1 and step[4]["labels/step"] == 3 and "labels/step" not in step[5]
    # the last step's own labels: awaited after it (nothing runs beside them then), logged at it in a row of their own
    (own,) = [r for r in rows if r.get("labels/step") == 5]
    assert own["step"] == 5 and own["time/labels_wait"] > 1.0
    samples = [row for r in rows if r.get("table") == "samples" for row in r["rows"]]
    assert sorted(row["step"] for row in samples) == [1, 1, 3, 3, 5, 5]
    assert "rl.label_pairs (now 2)" in proc.stdout + proc.stderr  # the labeler is slower than a step: said once


def wandb_summary_and_tags(run) -> tuple[dict, set[str]]:
    """The summary values and the tags an offline wandb run file records."""
    from wandb.proto import wandb_internal_pb2

    from .wandb_history import records

    summary, tags = {}, set()
    for raw in records(run):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "summary":
            summary |= {item.key: json.loads(item.value_json) for item in rec.summary.update}
        elif kind == "run":
            tags |= set(rec.run.tags)
    return summary, tags


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
