"""The process side of a run: a quiet console with everything else in <output_dir>/logs, and DeepSpeed's JIT-built
ops in a folder of this install that a lock left by a killed build can never block.

A building block: no Ray import. Ray runs `setup_worker` in every worker process (the runtime_env's
worker_process_setup_hook names it by its dotted path).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
import time
from pathlib import Path

LOG_DIR_ENV = "RLAIF_LOG_DIR"  # set for the workers of a quiet run: where their stdout and stderr go
CONSOLE_FORMAT = "rlaif: %(message)s"
WARNING_FORMAT = "rlaif: %(levelname)s: %(message)s"
FILE_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"

log = logging.getLogger("rlaif")


class _ConsoleFilter(logging.Filter):
    """Quiet console: rlaif's own lines; from any other library only errors (the rest goes to the log files)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == "rlaif" or record.name.startswith("rlaif.")
        return ours or record.levelno >= logging.ERROR


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        self._style._fmt = CONSOLE_FORMAT if record.levelno < logging.WARNING else WARNING_FORMAT
        return super().format(record)


def setup_console(verbose: bool) -> None:
    """The driver's logging: rlaif's lines and other libraries' errors on stderr; with verbose, every INFO line."""
    handler = logging.StreamHandler(sys.stderr)
    if verbose:
        handler.setFormatter(logging.Formatter(FILE_FORMAT))
    else:
        handler.setFormatter(_ConsoleFormatter())
        handler.addFilter(_ConsoleFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # warnings.warn from libraries become log records: console only when verbose
    if not verbose:
        os.environ.setdefault("WANDB_SILENT", "true")


def log_to_dir(log_dir: Path) -> Path:
    """Also write every log record of this process (INFO and up, all libraries) to log_dir/driver.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / "driver.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    logging.getLogger().addHandler(handler)
    return path


def setup_worker() -> None:
    """Ray worker hook: the process's stdout and stderr (Python and C alike: vLLM, DeepSpeed, transformers, torch)
    go to $RLAIF_LOG_DIR/worker-<host>-<pid>.log; rlaif's own warnings still reach the driver's console."""
    log_dir = os.environ.get(LOG_DIR_ENV)
    if not log_dir:
        return
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    console = os.fdopen(os.dup(2), "w", buffering=1)  # what Ray streams to the driver
    fd = os.open(Path(log_dir) / f"worker-{socket.gethostname()}-{os.getpid()}.log",
                 os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    # A file, not a terminal, is block-buffered: lines still in the buffer when Ray kills the actor at shutdown
    # (vLLM's start-up log, for one) would never reach the file.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    to_file = logging.StreamHandler(sys.stderr)
    to_file.setFormatter(logging.Formatter(FILE_FORMAT))
    root = logging.getLogger()
    root.addHandler(to_file)
    root.setLevel(logging.INFO)
    to_console = logging.StreamHandler(console)
    to_console.setLevel(logging.WARNING)
    to_console.setFormatter(logging.Formatter(WARNING_FORMAT))
    log.addHandler(to_console)
    logging.captureWarnings(True)


# --- DeepSpeed's JIT-built ops -------------------------------------------------------------------------------------


def _open_paths() -> set[str]:
    """Every path some process on this machine holds open (as far as /proc lets us see)."""
    held = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone, or another user's process (which cannot hold a lock in this install's folder)
            continue
        for fd in fds:
            try:
                held.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
    return held


def clear_stale_build_locks(root: Path, settle_s: float = 1.0) -> list[Path]:
    """Remove the `lock` of a torch JIT build (<root>/<op>/lock) that no live process holds.

    torch's FileBaton creates the lock and keeps it open for the whole build; every other process waits, forever,
    until the file is gone. A builder that was killed leaves the file and nobody holding it. A lock seen unheld
    twice, `settle_s` apart, with the same inode, is stale (a live builder closes and deletes it in one go).
    """
    locks = list(root.glob("*/lock")) if root.is_dir() else []
    if not locks:
        return []

    def unheld(held: set[str]) -> dict[Path, int]:
        out = {}
        for lock in locks:
            try:  # a live builder may release (delete) its lock at any moment
                inode = lock.stat().st_ino
            except FileNotFoundError:
                continue
            if str(lock.resolve()) not in held:
                out[lock] = inode
        return out

    suspects = unheld(_open_paths())
    if not suspects:
        return []
    time.sleep(settle_s)
    again = unheld(_open_paths())
    removed = []
    for lock, inode in suspects.items():
        if again.get(lock) != inode:  # gone, replaced by a new lock, or held now
            continue
        try:
            lock.unlink()
        except FileNotFoundError:
            continue
        removed.append(lock)
        log.warning("removed a stale DeepSpeed/torch build lock %s (the process that took it is gone)", lock)
    return removed


def prepare_torch_extensions() -> Path:
    """Point TORCH_EXTENSIONS_DIR (unless set) at a folder of this install, its Python prefix (two installs sharing
    one folder rebuild the op for each other, taking its lock each time), and clear stale build locks there. Call
    before deepspeed.init_distributed, which builds or loads the deepspeed_shm_comm op on CPU."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        root = Path(os.environ["TORCH_EXTENSIONS_DIR"])
    elif os.access(sys.prefix, os.W_OK):
        root = Path(sys.prefix) / "var" / "torch_extensions"
    else:
        tag = hashlib.sha256(str(Path(sys.prefix).resolve()).encode()).hexdigest()[:12]
        root = Path.home() / ".cache" / "torch_extensions" / f"rlaif-{tag}"
    os.environ["TORCH_EXTENSIONS_DIR"] = str(root)
    clear_stale_build_locks(root)
    return root


def build_deepspeed_ops() -> None:
    """At install time: build the CPU communication op DeepSpeed would otherwise JIT-build (~1 min) inside the
    first run, where a kill mid-build used to leave the lock that hung every later run."""
    root = prepare_torch_extensions()
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        print(f"rlaif: no DeepSpeed shared-memory op for accelerator {get_accelerator()._name}; nothing to build")
        return
    builder.load(verbose=False)
    print(f"rlaif: DeepSpeed {builder.NAME} op built in {root}")
