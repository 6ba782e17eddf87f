"""Operations end to end through the `rlaif` command on real Ray, vLLM and DeepSpeed: every role's model by Hub id
from an offline Hub cache, a quiet console with the workers' logs in output_dir/logs, a local Ray on loopback, no
process of the run left once the command returns (after success, a failure and Ctrl-C)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from .conftest import REPO

MARKER = "RLAIF_TEST_RUN_MARKER"  # local Ray passes RLAIF_* to every process of the run
REV = "c3" * 20
# measured: 17 (Ray, the precision, where the wandb run is, AI feedback, the integrity and trust line and its warning,
# the PM and trust line, two checkpoints, the progress bar, saved, done, UNTRUSTED); 7 before the trust gate; 161
# before the quiet console; and the one sentence for Ray's disk-full repeats, which this test provokes
CONSOLE_LINES_MAX = 19
# What a Python repr looks like on a console line: a dict or list of strings or tuples, a Path, an object's default
# repr, a bare None. The console reports in sentences; dicts go to metrics.jsonl, wandb and the logs.
REPR = re.compile(r"\{'|\{\"|': |\['|\[\(|\(\(|PosixPath\(|<[\w.]+ object at 0x|\bNone\b(?! of)|\w+\(\w+=")


def env_with_marker(marker: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", MARKER: marker, **extra}


def processes_with(marker: str) -> list[tuple[int, str]]:
    """Live processes of this run (the marker is in their environment): Ray's, the roles', vLLM's."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                    continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append((int(pid), Path(f"/proc/{pid}/cmdline").read_bytes()[:120].decode(errors="replace")))
        except (OSError, IndexError):
            continue
    return found


def listening_addresses(marker: str) -> set[tuple[str, int, str]]:
    """(ip, port, process title) of every listening socket of the run."""
    import psutil

    out = set()
    for pid, _ in processes_with(marker):
        try:
            proc = psutil.Process(pid)
            title = (proc.cmdline() or [proc.name()])[0]
            out |= {(c.laddr.ip, c.laddr.port, title) for c in proc.net_connections(kind="inet")
                    if c.status == psutil.CONN_LISTEN}
        except psutil.Error:
            continue
    return out


def kill_leftovers(marker: str) -> None:
    for pid, _ in processes_with(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.e2e
def test_hub_ids_for_every_role_quiet_console_and_worker_logs(tmp_path, tiny_path):
    hub = tmp_path / "hub" / "models--acme--tiny"
    shutil.copytree(tiny_path, hub / "snapshots" / REV)
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text(REV)
    out, marker = tmp_path / "run", uuid.uuid4().hex
    models = [f"{s}.model.path=acme/tiny" for s in ("policy", "labeler", "preference_model", "critic")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlaif.cli", "train", "--config", "configs/debug.yaml", f"output_dir={out}",
         "trainer.steps=2", "rl.algorithm=ppo", *models], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        # Ray's disk monitor at a threshold of 1% (0 turns it off): every raylet finds its disk "over 1% full" and
        # repeats so every few seconds, as on a machine whose /tmp is nearly full (a CI machine's was)
        text=True, env=env_with_marker(marker, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1",
                                       RAY_local_fs_capacity_threshold="0.01"))
    try:
        listening = set()
        deadline = time.monotonic() + 900
        while proc.poll() is None and time.monotonic() < deadline:
            listening |= listening_addresses(marker)  # every server of the run, sampled while it runs
            time.sleep(2)
        stdout, stderr = proc.communicate(timeout=60)
        left = processes_with(marker)
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_leftovers(marker)
    proc.stdout, proc.stderr = stdout, stderr
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not left, f"processes of the run outlived the command: {left}"
    # Loopback only: Ray's GCS, raylet, object manager, agents and every worker's server, and torch.distributed's
    # rendezvous stores (the DeepSpeed groups', hosted by rank 0 of each, and the weight sync's, by policy rank 0),
    # whose own server would listen on every interface (rlaif hands it a socket bound to the group's address).
    loopback = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
    ray_servers = {(ip, port) for ip, port, title in listening if not title.startswith(("ray::PolicyWorker",
                                                                                      "ray::CriticWorker",
                                                                                      "ray::PreferenceModelWorker"))}
    assert len(ray_servers) >= 5, sorted(listening)
    assert {ip for ip, _, _ in listening} <= loopback, sorted(listening)

    # Quiet: rlaif's lines and the progress bar; nothing from vLLM, DeepSpeed, transformers, wandb or Ray's workers.
    console = (proc.stdout + proc.stderr).split("\n")
    console = [line for line in console if line.strip()]
    assert len(console) <= CONSOLE_LINES_MAX, "\n".join(console)
    assert all(line.startswith(("rlaif: ", "RL:")) for line in console), "\n".join(console)
    assert not [line for line in console if REPR.search(line)], "\n".join(console)  # sentences, not reprs
    full = [line for line in console if "is over 1% full" in line]  # said once, by rlaif; the repeats in a log file
    assert len(full) == 1 and full[0].startswith("rlaif: WARNING: the disk holding Ray's session folder"), full
    assert (out / "logs" / "raylet.err").read_text().count("is over 1% full") >= 1
    pm = next(line for line in console if "preference model trained on" in line)
    assert re.search(r"held-out AI pairs accuracy \d\.\d\d \[\d\.\d\d, \d\.\d\d\] n=\d+", pm), pm  # with its interval
    assert proc.stderr.split("\n")[0] == "rlaif: Ray: local on 127.0.0.1, 8 CPUs, 0 GPUs"
    done, untrusted = proc.stdout.splitlines()  # the debug labeler's feedback is untrusted, and the run says so
    assert done == f"rlaif: done; policy checkpoint at {out / 'checkpoint'}"
    assert untrusted.startswith("rlaif: UNTRUSTED")

    # ... and everything else in output_dir/logs, one file per worker process, each naming its role.
    logs = out / "logs"
    assert "rlaif INFO AI feedback -> preference model" in (logs / "driver.log").read_text()
    texts = {p.name: p.read_text(errors="replace") for p in logs.glob("worker-*.log")}
    roles = {line.split(":actor_name:")[1] for t in texts.values() for line in t.splitlines() if ":actor_name:" in line}
    assert {"RolloutWorker", "LabelerWorker", "ReferenceWorker", "PreferenceModelWorker", "PolicyWorker",
            "CriticWorker"} <= roles
    snapshot = str(hub / "snapshots" / REV)
    rollout = next(t for t in texts.values() if ":actor_name:RolloutWorker" in t)
    assert f"vLLM 0.32.0 serving {snapshot}\n" in rollout  # vLLM got the folder

    # The saved config is the user's (the Hub id), the checkpoint a Hugging Face folder.
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert {saved[s]["model"]["path"] for s in ("policy", "labeler", "preference_model", "critic")} == {"acme/tiny"}
    assert (out / "checkpoint" / "model.safetensors").is_file()

    # The integrity and PM figures as wandb panels beside the HTML reports (their rows: tests/test_panels.py).
    from .wandb_history import charts, logged_tables

    (run_file,) = out.glob("wandb/offline-run-*/run-*.wandb")
    assert {"integrity/agreement", "integrity/reliability", "pm/reliability", "pm/accuracy"} <= set(charts(run_file))
    assert {"integrity/audit", "integrity/reliability_table", "pm/accuracy_table"} <= set(logged_tables(run_file))


@pytest.mark.e2e
def test_a_failed_start_up_leaves_no_process_behind(tmp_path, tiny_path):
    """The labeler's weights are corrupt (a truncated download): its vLLM engine fails while the other roles start,
    and the command says so in one line.
    With vLLM's engine in its own process (its default outside these tests), the labeler's worker, vLLM's worker and
    its resource tracker outlived the command by many seconds; now the command returns only after they are gone."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_path, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    marker, out = uuid.uuid4().hex, tmp_path / "run"
    out.mkdir()  # an earlier run, which --overwrite replaces once every check has passed and Ray is up
    (out / ".rlaif-run").write_text("{}\n")
    (out / "config.yaml").write_text("seed: 0\n")
    (out / "metrics.jsonl").write_text('{"step": 7, "reward/score": 0.5}\n')
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "rlaif.cli", "train", "--config", "configs/debug.yaml", "--overwrite",
             f"output_dir={out}", f"labeler.model.path={broken}"],
            cwd=REPO, capture_output=True, text=True, timeout=900,
            env=env_with_marker(marker, VLLM_ENABLE_V1_MULTIPROCESSING="1"))
        left = processes_with(marker)
    finally:
        kill_leftovers(marker)
    assert proc.returncode == 1, proc.stderr[-3000:]
    # one line naming the call and its own error, not a page of remote traceback (that goes to logs/driver.log)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.rstrip().splitlines()[-1].startswith(
        "rlaif: error: starting the roles failed: LabelerWorker.load raised "), proc.stderr[-3000:]
    driver_log = (out / "logs" / "driver.log").read_text()
    assert "start-up failed:" in driver_log and 'File "' in driver_log, driver_log[-3000:]  # the remote traceback
    assert not left, f"processes of the run outlived the command: {left}"
    assert yaml.safe_load((out / "config.yaml").read_text())["labeler"]["model"]["path"] == str(broken)
    assert '"step": 7' not in (out / "metrics.jsonl").read_text()  # never mixed with the earlier run's


@pytest.mark.e2e
def test_ctrl_c_stops_the_run_says_so_and_leaves_no_process(tmp_path):
    out, marker = tmp_path / "run", uuid.uuid4().hex
    # Its own process group, as a terminal's foreground job: Ctrl-C sends SIGINT to the whole group.
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlaif.cli", "train", "--config", "configs/debug.yaml", f"output_dir={out}",
         "trainer.steps=50"], cwd=REPO, env=env_with_marker(marker), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        log = out / "logs" / "driver.log"
        while time.monotonic() < deadline and proc.poll() is None:
            if log.is_file() and "AI feedback -> preference model" in log.read_text():
                break  # the roles are up: interrupt a running run
            time.sleep(1)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
        left = processes_with(marker)
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_leftovers(marker)
    assert proc.returncode == 130, stderr[-3000:]
    # a first Ctrl-C lets the stages before RL finish into the step-0 checkpoint, which a resume starts from
    assert stderr.rstrip().splitlines()[-1] == (f"rlaif: stopped by SIGINT before the first RL step; checkpoint "
                                                f"{out / 'checkpoints' / 'step_000000'}; resume with the same command "
                                                "and trainer.resume=auto")
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert not left, f"processes of the run outlived the command: {left}"
