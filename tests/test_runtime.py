"""The process side of a run (rlaif.runtime): worker output redirected to log files, DeepSpeed's JIT-op folder and
its stale build locks, and metrics.jsonl without bare NaN."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlaif.config import Config
from rlaif.run.tracking import Tracker
from rlaif.runtime import clear_stale_build_locks, prepare_torch_extensions

from .conftest import REPO

PY = sys.executable


def run_py(code: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **env},
                          capture_output=True, text=True, timeout=timeout)


def test_worker_hook_sends_everything_to_the_log_file_and_only_rlaif_warnings_to_the_console(tmp_path):
    code = (
        "import logging, os, sys\n"
        "from rlaif.runtime import setup_worker\n"
        "setup_worker()\n"
        "print('python stdout noise'); print('python stderr noise', file=sys.stderr)\n"
        "os.write(2, b'C-level noise\\n')\n"
        "logging.getLogger('vllm').warning('library warning')\n"
        "logging.getLogger('rlaif').info('rlaif info')\n"
        "logging.getLogger('rlaif').warning('this matters')\n"
    )
    proc = run_py(code, {"RLAIF_LOG_DIR": str(tmp_path / "logs")}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == ["rlaif: WARNING: this matters"]
    (log,) = (tmp_path / "logs").glob("worker-*.log")
    text = log.read_text()
    for line in ("python stdout noise", "python stderr noise", "C-level noise", "library warning", "rlaif info",
                 "this matters"):
        assert line in text


def test_worker_hook_without_a_log_dir_changes_nothing(tmp_path):
    proc = run_py("from rlaif.runtime import setup_worker\nsetup_worker()\nprint('shown')", {"RLAIF_LOG_DIR": ""}, 60)
    assert proc.stdout == "shown\n"


@pytest.mark.parametrize("verbose", [False, True])
def test_the_driver_console_shows_rlaif_and_errors_quiet_everything_verbose(tmp_path, verbose):
    code = (
        "import logging, warnings\n"
        "from pathlib import Path\n"
        "from rlaif.runtime import setup_console, log_to_dir\n"
        f"setup_console({verbose})\n"
        f"log_to_dir(Path({str(tmp_path)!r}))\n"
        "logging.getLogger('rlaif').info('stage one')\n"
        "logging.getLogger('rlaif.run.stages').warning('labels look biased')\n"
        "logging.getLogger('transformers').warning('library chatter')\n"
        "warnings.warn('a deprecation nobody acts on', FutureWarning)\n"
        "logging.getLogger('ray').error('a library error')\n"
    )
    proc = run_py(code, {}, timeout=60)
    lines = proc.stderr.splitlines()
    if verbose:
        for text in ("stage one", "labels look biased", "library chatter", "a deprecation nobody acts on",
                     "a library error"):
            assert any(text in line for line in lines), proc.stderr
    else:
        assert lines == ["rlaif: stage one", "rlaif: WARNING: labels look biased", "rlaif: ERROR: a library error"]
    driver_log = (tmp_path / "driver.log").read_text()
    for text in ("stage one", "library chatter", "a deprecation nobody acts on", "a library error"):
        assert text in driver_log  # the file has everything either way


def test_torch_extensions_dir_is_this_installs_own_unless_set(monkeypatch):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    if os.access(sys.prefix, os.W_OK):
        assert prepare_torch_extensions() == Path(sys.prefix) / "var" / "torch_extensions"
    else:
        assert prepare_torch_extensions().parent == Path.home() / ".cache" / "torch_extensions"
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(prepare_torch_extensions())  # what torch will use
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/x/y")
    assert prepare_torch_extensions() == Path("/x/y")


def test_a_stale_lock_is_removed_and_a_held_one_kept(tmp_path):
    stale, held = tmp_path / "op_a" / "lock", tmp_path / "op_b" / "lock"
    for p in (stale, held):
        p.parent.mkdir()
        p.touch()
    # A live "builder" holding its lock open, as torch's FileBaton does for the whole build.
    holder = subprocess.Popen([PY, "-c", f"import os, time; fd = os.open({str(held)!r}, os.O_RDONLY); time.sleep(60)"])
    try:
        time.sleep(1.0)
        removed = clear_stale_build_locks(tmp_path, settle_s=0.2)
        assert removed == [stale]
        assert not stale.exists() and held.exists()
    finally:
        holder.kill()
        holder.wait()
    assert clear_stale_build_locks(tmp_path, settle_s=0.2) == [held]  # its owner is gone now


def test_a_lock_released_while_being_checked_is_no_error(tmp_path, monkeypatch):
    """A live builder may delete its lock between the glob and the checks (seen with a folder shared by several
    runs: the check itself raised FileNotFoundError and failed the rank)."""
    import rlaif.runtime as runtime

    lock = tmp_path / "op" / "lock"
    lock.parent.mkdir()
    lock.touch()
    real = runtime._open_paths

    def release_then_scan() -> set[str]:
        lock.unlink(missing_ok=True)  # the builder finishes right after the glob
        return real()

    monkeypatch.setattr(runtime, "_open_paths", release_then_scan)
    assert clear_stale_build_locks(tmp_path, settle_s=0.1) == []


def built_shm_op() -> Path | None:
    """A folder where DeepSpeed's shm op was already built on this machine (copied: the test never rebuilds it)."""
    torch_default = Path.home() / ".cache" / "torch_extensions" / f"py{sys.version_info[0]}{sys.version_info[1]}_cpu"
    for root in (os.environ.get("TORCH_EXTENSIONS_DIR"), str(Path(sys.prefix) / "var" / "torch_extensions"),
                 str(torch_default)):
        if root and (Path(root) / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").is_file():
            return Path(root) / "deepspeed_shm_comm"
    return None


@pytest.mark.skipif(built_shm_op() is None, reason="needs DeepSpeed's shm op built once (install.sh or any CPU run)")
def test_a_lock_left_by_a_killed_build_does_not_hang_joining_the_group(tmp_path):
    """Before: torch waits for the lock file forever, so every later run hung in setup_distributed."""
    shutil.copytree(built_shm_op(), tmp_path / "deepspeed_shm_comm", symlinks=True)
    (tmp_path / "deepspeed_shm_comm" / "lock").touch()  # what a build killed mid-way leaves behind
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("from actors.group import join_group\n"
            f"join_group('cpu', 0, 1, '127.0.0.1', {port})\n"
            "import torch.distributed as dist\nprint('joined', dist.get_world_size())\n")
    try:
        proc = run_py(code, {"TORCH_EXTENSIONS_DIR": str(tmp_path)}, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("join_group waited on the stale build lock")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "joined 1" in proc.stdout
    assert "removed a stale DeepSpeed/torch build lock" in proc.stderr
    assert not (tmp_path / "deepspeed_shm_comm" / "lock").exists()


def test_metrics_jsonl_never_holds_bare_nan(tmp_path, caplog):
    cfg = Config()
    cfg.wandb.enabled = False
    tracker = Tracker(cfg, tmp_path)
    tracker.log({"reward/score": float("nan"), "kl/policy_ref": float("inf"), "ok": 1.5, "text": "x"}, step=1)
    tracker.log({"reward/score": float("nan")}, step=2)
    tracker.log_table("samples", [{"prompt": "p", "reward_1": float("nan"), "nested": [float("-inf"), 2.0]}], step=1)
    tracker.finish()

    def no_constants(name):
        raise AssertionError(f"bare {name} in metrics.jsonl")

    rows = [json.loads(line, parse_constant=no_constants) for line in (tmp_path / "metrics.jsonl").read_text()
            .splitlines()]
    assert rows[0] == {"step": 1, "reward/score": None, "kl/policy_ref": None, "ok": 1.5}
    assert rows[2]["rows"] == [{"prompt": "p", "reward_1": None, "nested": [None, 2.0]}]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len([w for w in warnings if "reward/score" in w]) == 1  # said once, not every step
    assert any("kl/policy_ref is inf at step 1" in w for w in warnings)


DEAD_WANDB = """
import json, logging, signal, sys, time
from pathlib import Path
import psutil
from rlaif.config import Config
from rlaif.run.tracking import Tracker
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(message)s")
out = Path(sys.argv[1])
cfg = Config()
cfg.wandb.enabled, cfg.wandb.mode = True, "offline"
tracker = Tracker(cfg, out)
run_id = tracker.run_id
tracker.log({"a": 1.0}, step=1)
# what `ray job stop` does to the driver's process tree: SIGTERM to every child, wandb's service among them
service = [p for p in psutil.Process().children(recursive=True) if p.name().startswith("wandb")]
assert service, [p.name() for p in psutil.Process().children(recursive=True)]
for p in service:
    p.send_signal(signal.SIGTERM)
psutil.wait_procs(service, timeout=30)
tracker.log_table("samples", [{"prompt": "p"}], step=2)
tracker.log({"a": 2.0}, step=2)
tracker.alert("title", "text")
print("FINISH", tracker.finish(), tracker.run_id == run_id)
"""


def test_a_dead_wandb_service_switches_wandb_off_and_the_run_goes_on(tmp_path):
    """`ray job stop` (and SLURM, Kubernetes) SIGTERM the whole process tree, wandb's service with it, while the run
    still finishes its step and checkpoints. Bug caught: a wandb call raising ConnectionResetError ends the run before
    the checkpoint (what the Ray-job stop test saw), or wandb's exit hook raising again at exit."""
    proc = subprocess.run([PY, "-c", DEAD_WANDB, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "WANDB_SILENT": "true"}, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FINISH None True" in proc.stdout, proc.stdout
    assert proc.stdout.count("wandb failed (") == 1, proc.stdout  # said once, then wandb is off
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0] == {"step": 1, "a": 1.0}
    assert rows[1]["table"] == "samples" and rows[1]["rows"] == [{"prompt": "p"}]
    assert rows[2] == {"step": 2, "a": 2.0, "tracking/wandb_failed": 1.0}


def test_an_actor_whose_constructor_raised_is_told_in_one_line_with_its_own_error():
    """Ray's creation-task failure in one console line keeps the error the constructor raised. Bug caught: the line
    keeping only Ray's "The actor died because of an error raised in its creation task", so a person sees that an
    actor died but not why (an ImportError, a missing model file) without digging through worker logs."""
    from actors import actor_death

    raw = ("The actor died because of an error raised in its creation task, \x1b[36mray::RolloutWorker.__init__()"
           "\x1b[39m (pid=1, ip=127.0.0.1)\nTraceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
           "RuntimeError: The actor with name RolloutWorker failed to import on the worker.\n"
           "ImportError: cannot import name 'train_dtype' from 'actors.group'\n")
    line = actor_death(RuntimeError(raw))
    assert "\n" not in line and "RolloutWorker" in line
    assert line.endswith("ImportError: cannot import name 'train_dtype' from 'actors.group'")


WANDB_KEYS = """
import logging, sys
from pathlib import Path
from rlaif.config import load_config
from rlaif.run.tracking import Tracker
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")
cfg = load_config(None, ["wandb.mode=offline", "wandb.group=sweep-3", "wandb.tags=[bf16, small]",
                         "wandb.notes=a note", "wandb.entity=acme"])
tracker = Tracker(cfg, Path(sys.argv[1]), job_type="sl-cai+rl")
tracker.log({"a": 1.0}, step=1)
tracker.finish()
"""


def test_wandb_keys_reach_the_run_and_the_console_says_where_it_is(tmp_path):
    """wandb.entity/group/tags/notes and the job type (the command's stages unless wandb.job_type) on the wandb run;
    the console says where the offline run is and how to upload it. Bugs caught: a key read but not passed to
    wandb.init, the job type missing, the offline folder not named (a person cannot find what to sync)."""
    from wandb.proto import wandb_internal_pb2

    from .wandb_history import records

    proc = subprocess.run([PY, "-c", WANDB_KEYS, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "WANDB_SILENT": "true"}, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    assert f"offline run in {run_file.parent}; upload it with `wandb sync {run_file.parent}`" in proc.stdout
    runs = []
    for raw in records(run_file):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "run":
            runs.append(rec.run)
    run = runs[0]
    assert (run.run_group, run.job_type, run.notes, run.entity) == ("sweep-3", "sl-cai+rl", "a note", "acme")
    assert set(run.tags) == {"bf16", "small"}


def test_raylet_disk_full_repeats_become_one_sentence_and_other_raylet_lines_still_print(tmp_path, caplog):
    """Ray's raylet repeats "<dir> is over 95% full" every few seconds while a disk stays full, and Ray forwards it
    to the driver's console (a CI machine's full /tmp broke the quiet-console test with two of them). Through Ray's
    own dispatcher: the warning is said once by rlaif, never printed raw; a raylet crash line and a worker line still
    print; every raylet line is kept in logs/raylet.err. Bugs caught: the repeats reaching the console, the warning
    said per repeat, other raylet lines swallowed with it, worker lines routed as raylet ones."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    from rlaif.run.session import route_raylet_messages

    printed: list[dict] = []
    dispatcher.add_handler("ray_print_logs", printed.append)
    try:
        route_raylet_messages(tmp_path / "logs")
        full = ("[2026-12-06 23:40:46,221 E 20705 20716] (raylet) file_system_monitor.cc:116: /tmp/ray/session_x is "
                "over 95% full, available space: 5.95297 GB; capacity: 251.972 GB. Object creation will fail if "
                "spilling is required.")
        crash = "[2026-12-06 23:41:00,000 E 20705 20716] (raylet) worker_pool.cc:1: a worker died: SIGSEGV"
        with caplog.at_level("WARNING", logger="rlaif"):
            for lines in ([full], [full, crash], [full]):
                dispatcher.emit({"pid": "raylet", "ip": "10.0.0.2", "is_err": True, "lines": lines})
            dispatcher.emit({"pid": 1234, "ip": "10.0.0.2", "is_err": True, "lines": ["a worker's own line"]})
    finally:
        dispatcher.remove_handler("ray_print_logs")
    assert [d["lines"] for d in printed] == [[crash], ["a worker's own line"]]
    warnings = [r.getMessage() for r in caplog.records if "over 95% full" in r.getMessage()]
    assert len(warnings) == 1 and "/tmp/ray/session_x on 10.0.0.2" in warnings[0] and "5.95297 GB free" in warnings[0]
    kept = (tmp_path / "logs" / "raylet.err").read_text().splitlines()
    assert len(kept) == 4 and sum("95% full" in line for line in kept) == 3
