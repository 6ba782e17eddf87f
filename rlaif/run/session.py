"""One command's life cycle: check every input, start (or join) Ray, own the run folder, stop cleanly.

Nothing is written before every input is checked and Ray has room for every stage; on any exit (done, error,
Ctrl-C, SIGTERM) the tracker is closed and every process of the run has ended before the command returns.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import ray

from actors.roles import check_resources, role_plan
from rlaif.config import Config, ConfigError, native_bf16, save_config
from rlaif.data.human_labels import HumanLabelError, load_human_labels, write_jsonl
from rlaif.data.splits import plan_prompts
from rlaif.feedback.constitution import load_constitution
from rlaif.models import resolve_models
from rlaif.rl.algorithms import load_reward_functions
from rlaif.run.checkpoint import TrainerState, checkpoints_dir, complete_checkpoints, sweep_leftovers
from rlaif.run.stages import human_eval_pairs
from rlaif.run.tracking import Tracker
from rlaif.runtime import LOG_DIR_ENV, log_to_dir

log = logging.getLogger("rlaif")
_RAY_PROCESSES: list = []  # the processes of the local Ray this driver started (raylet, GCS, ...)


def local_ray(cfg: Config) -> bool:
    """Start a private Ray on this machine, or join a cluster (`ray job submit` sets RAY_ADDRESS)?"""
    return not os.environ.get("RAY_ADDRESS") and cfg.ray.address == "local"


def init_ray(cfg: Config, stages: tuple[str, ...], verbose: bool = False) -> None:
    """Start (or join) Ray with worker output going to <output_dir>/logs, then check that every stage's actors fit.

    A local Ray binds to 127.0.0.1 only. Quiet (not verbose): Ray's own start-up chatter is not printed and each
    worker's stdout/stderr goes to its log file (rlaif.runtime.setup_worker); rlaif's warnings still show.

    The runtime_env carries the log folder and nothing else: Ray's agent writes every runtime_env verbatim into a
    log that every user of the machine can read, so no token or key may travel in it. A local Ray's workers
    inherit the driver's environment (RLAIF_*, VLLM_*, HF_*) from the raylet it starts; on a cluster, the job's
    runtime_env (cluster/runtime_env.yaml) or the nodes' own environment supply what workers need.
    """
    import psutil

    env = {} if verbose else {LOG_DIR_ENV: str(Path(cfg.output_dir).resolve() / "logs")}
    runtime_env = {"env_vars": env} | ({} if verbose else {"worker_process_setup_hook": "rlaif.runtime.setup_worker"})
    level = logging.INFO if verbose else logging.ERROR
    if not local_ray(cfg):
        # Inside `ray job submit` RAY_ADDRESS points at the cluster: join it, never start a second Ray. The job's
        # runtime_env (cluster/runtime_env.yaml) carries code and environment to the actors; ours adds the log folder.
        address = os.environ.get("RAY_ADDRESS") or cfg.ray.address
        hint = ("start one (`ray start --head`), submit with cluster/submit.sh, or run locally with "
                "ray.address=local")
        key = "RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else f"ray.address = {cfg.ray.address}"
        if not address.startswith("ray://") and not _gcs_answers(address):  # Ray itself would retry for minutes
            raise ConfigError(f"{key}: no Ray cluster answers at {address}; {hint}")
        try:
            ray.init(address=address, logging_level=level, runtime_env=runtime_env)
        except ConnectionError as exc:
            raise ConfigError(f"{key}: no Ray cluster at {address} ({exc}); {hint}") from None
        log.info("Ray: joined the cluster at %s", ray.get_runtime_context().gcs_address)
    else:
        # Loopback only. Ray advertises a local cluster on the machine's routable address, with its servers on all
        # interfaces, unless it runs in its single-machine mode (the one it uses on macOS and Windows): then the
        # GCS, raylet, object manager, agents and workers all listen on 127.0.0.1. The driver reads the flag from
        # its constants (read at import), the processes it starts from the environment.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        ray._private.ray_constants.ENABLE_RAY_CLUSTER = False
        before = {p.pid for p in psutil.Process().children()}
        ray.init(address="local", num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus, include_dashboard=False,
                 _node_ip_address="127.0.0.1", logging_level=level, runtime_env=runtime_env)
        _RAY_PROCESSES[:] = [p for p in psutil.Process().children() if p.pid not in before]
        log.info("Ray: local on %s, %d CPUs, %d GPUs", ray.get_runtime_context().gcs_address.rsplit(":", 1)[0],
                 cfg.ray.num_cpus, cfg.ray.num_gpus)
    private_token_file()
    if not verbose:
        route_raylet_messages(Path(cfg.output_dir) / "logs")
    have = ray.cluster_resources()
    node_gpus = max((n["Resources"].get("GPU", 0.0) for n in ray.nodes() if n["Alive"]), default=0.0)
    for stage in stages:
        check_resources(role_plan(cfg, stage), have.get("CPU", 0.0), have.get("GPU", 0.0), node_gpus,
                        f"the Ray cluster at {ray.get_runtime_context().gcs_address}")


_DISK_FULL = re.compile(r"(\S+) is over (\d+)% full, available space: ([\d.]+) GB")


def route_raylet_messages(logs: Path) -> None:
    """Ray forwards its raylets' error output to the driver's console. Its disk monitor repeats "<dir> is over 95%
    full ..." every few seconds for as long as the disk stays full: say that once, as a sentence, and keep every
    raylet line in logs/raylet.err. Other raylet lines (a crash, a task killed for memory) still print as Ray
    prints them."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    printer = dict(dispatcher.handlers).get("ray_print_logs")
    if printer is None:  # log_to_driver is off: nothing reaches this console
        return
    warned: list[str] = []

    def handle(data: dict) -> None:
        if data.get("pid") == "raylet":
            lines = data.get("lines") or []
            logs.mkdir(parents=True, exist_ok=True)
            with open(logs / "raylet.err", "a") as f:
                f.writelines(f"{data.get('ip', '')} {line}\n" for line in lines)
            full = [m for m in map(_DISK_FULL.search, lines) if m]
            if full and not warned:
                folder, percent, free = full[0].groups()
                warned.append(folder)
                log.warning("the disk holding Ray's session folder %s on %s is over %s%% full (%s GB free): Ray "
                            "fails to create an object when it must spill one to disk. Free space there; Ray's "
                            "repeats of this go to %s", folder, data.get("ip") or "a node", percent, free,
                            logs / "raylet.err")
            lines = [line for line in lines if not _DISK_FULL.search(line)]
            if not lines:
                return
            data = {**data, "lines": lines}
        printer(data)

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", handle)


def _gcs_answers(address: str, timeout: float = 3.0) -> bool:
    """Does a Ray GCS accept connections at `address` (host:port as given; "auto": the cluster this machine last
    started)? One TCP connect; True where the address cannot be resolved here (ray.init then says why)."""
    from ray._private.services import canonicalize_bootstrap_address

    try:  # Ray's canonical form swaps a loopback host for the node's address: keep the host as given
        resolved = canonicalize_bootstrap_address(address) if address == "auto" else address
    except (ConnectionError, ValueError):
        return True
    if not resolved:
        return True
    host, _, port = resolved.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def private_token_file() -> None:
    """Ray 2.60's token authentication keeps its token in RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, which ray.init
    creates readable by every user (0644): whoever reads it may submit jobs to this Ray. Make it the owner's only."""
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        if path.is_file() and path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
            path.chmod(0o600)
    except OSError as exc:
        log.warning("could not make Ray's token file %s private (%s); chmod 600 it yourself", path, exc.strerror)


def shutdown_ray(timeout: float = 30.0) -> None:
    """ray.shutdown(), then wait for every process of the local Ray (and its workers, the roles) to exit; those
    still alive after `timeout` are killed. The CLI never returns while a process of its run lives on."""
    import psutil

    procs = []
    for p in _RAY_PROCESSES:
        try:
            procs += [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    if ray.is_initialized():
        ray.shutdown()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=10)
    _RAY_PROCESSES.clear()


MARKER = ".rlaif-run"  # written by rlaif into every output_dir it owns; --overwrite removes no folder without it
LOCK = ".rlaif-lock"  # held (flock) by the process that runs in output_dir; names it
_LOCKS: dict[Path, int] = {}


def _contents(out: Path, limit: int = 8) -> str:
    """What a folder holds, for a message: its first entries, how many files and how many bytes in all."""
    files = [p for p in out.rglob("*") if p.is_file() and p.name != LOCK]
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir() if p.name != LOCK)
    shown = ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
    return f"{shown} ({len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.1f} MB)"


def check_output_dir(out: Path, overwrite: bool, resuming: bool = False) -> bool:
    """True if `out` holds an earlier rlaif run that --overwrite lets this one replace; errors name output_dir.

    A folder is replaced only when rlaif made it (the MARKER file), never when it holds, or is, the current folder
    or the home folder; the message lists what would go. A run that resumes from a checkpoint of `out` continues
    it."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir: {out} is a file, not a folder")
    earlier = out.is_dir() and any(p.name != LOCK for p in out.iterdir())
    if earlier and not (out / MARKER).is_file():
        raise ConfigError(f"output_dir: {out} is not empty and is not a folder rlaif made (no {MARKER} file in it), "
                          f"so it is never written into or replaced: it holds {_contents(out)}. Choose a new or empty "
                          "folder")
    if earlier and overwrite and not resuming:
        resolved = out.resolve()
        for what, path in (("the current folder", Path.cwd().resolve()), ("your home folder", Path.home().resolve())):
            if path == resolved or resolved in path.parents:
                raise ConfigError(f"output_dir: {out} is or contains {what} ({path}); --overwrite will not remove it")
    if earlier and not (overwrite or resuming):
        found = complete_checkpoints(checkpoints_dir(out))
        state = f"its newest checkpoint is {found[-1].name}" if found else "it has no complete checkpoint to resume"
        raise ConfigError(f"output_dir: {out} holds an earlier run ({state}); trainer.resume=auto continues it, "
                          f"--overwrite removes it: {_contents(out)}. A new run never mixes its files with an old one")
    probe = out if out.is_dir() else next(p for p in out.absolute().parents if p.exists())
    try:
        tempfile.TemporaryDirectory(dir=probe).cleanup()
    except OSError as exc:
        raise ConfigError(f"output_dir: cannot create {out}: {probe} is not writable ({exc.strerror})") from exc
    return earlier and not resuming


def own_output_dir(out: Path, replace: bool, command: str) -> None:
    """Take output_dir for this process (a lock: a second run on the same folder, such as a job resubmitted while
    the first still runs, is refused rather than deleting or mixing the first one's files), remove the earlier run
    that check_output_dir allowed to replace, and mark the folder as rlaif's."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() not in _LOCKS:
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "a process that did not say"
            os.close(fd)
            raise ConfigError(f"output_dir: {out} is in use by another rlaif run ({holder}); let it finish or stop "
                              "it, or choose another output_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{command}, pid {os.getpid()} on {socket.gethostname()}\n".encode())
        _LOCKS[out.resolve()] = fd
    if replace:
        log.warning("--overwrite: removing the earlier run in %s: %s", out, _contents(out))
        for path in out.iterdir():  # the earlier run goes; its files never mix with this one's (the lock stays)
            if path.name != LOCK:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    if not (out / MARKER).is_file():
        (out / MARKER).write_text(json.dumps({"command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
                                  + "\n")


def release_output_dir(out: Path) -> None:
    fd = _LOCKS.pop(out.resolve(), None)
    if fd is not None:
        os.close(fd)


def prepare(cfg: Config, stages: tuple[str, ...], overwrite: bool = False, resuming: bool = False):
    """Fail on bad input before anything is started or written. Returns the config the roles run with (every
    model resolved to a checked local folder), the prompt plan (rlaif.data.splits: one split for every prompt source)
    and the reward functions."""
    check_output_dir(Path(cfg.output_dir), overwrite, resuming)
    if not local_ray(cfg) and not Path(cfg.output_dir).is_absolute():
        raise ConfigError(f"output_dir: {cfg.output_dir} is relative; on a cluster it would land in Ray's per-node "
                          "copy of the working dir, and the ranks' checkpoints on other nodes would never meet it: "
                          "give an absolute path on storage every node shares")
    sl_cai_runs = "sl-cai" in stages
    plan = plan_prompts(cfg, ("rl", "red_team", "helpful") if sl_cai_runs else ("rl",))
    if cfg.preference_model.human_pairs and "rl" in stages:
        load_human_labels(cfg.preference_model.human_pairs)
    reward_fns = load_reward_functions(cfg.rl.reward_functions)
    constitution = load_constitution(cfg.constitution.path)
    if sl_cai_runs and not constitution.critique_revision:
        raise ConfigError(f"constitution.path: {cfg.constitution.path} has no critique_revision pairs, which SL-CAI "
                          "needs")
    if cfg.labeler.human_eval and stages != ("sl-cai",):
        try:
            human_eval_pairs(cfg)
        except HumanLabelError as exc:
            raise ConfigError(f"labeler.human_eval: {exc}") from exc
    if local_ray(cfg):
        for stage in stages:
            check_resources(role_plan(cfg, stage), cfg.ray.num_cpus, cfg.ray.num_gpus, cfg.ray.num_gpus,
                            f"ray.num_cpus = {cfg.ray.num_cpus}, ray.num_gpus = {cfg.ray.num_gpus}")
    run_cfg = resolve_models(cfg)
    if cfg.rl.reward_model and "rl" in stages:  # checked and fetched now, like every role's model
        from rlaif.run.reward_model import resolve

        run_cfg = resolve(run_cfg)
    if cfg.device == "cuda":  # the memory and placement plan (rlaif plan): refuse what cannot fit, before Ray starts
        from rlaif.run.plan import check, report

        log.info("the plan (rlaif plan):\n%s", report(check(run_cfg, stages=stages)))
    # The rollout engine's context must hold what it is asked to: vLLM would refuse it only once started.
    config = json.loads((Path(run_cfg.policy.model.path) / "config.json").read_text(encoding="utf-8"))
    limit = config.get("max_position_embeddings")
    needs = {"data.max_prompt_tokens + rollout.max_new_tokens": cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens}
    if sl_cai_runs:
        needs["sl_cai.max_context_tokens"] = cfg.sl_cai.max_context_tokens
    for keys, tokens in needs.items():
        if limit and tokens > limit:
            raise ConfigError(f"{keys} = {tokens} exceeds the policy model's context of {limit} tokens "
                              f"(max_position_embeddings of {cfg.policy.model.path})")
    return run_cfg, plan, reward_fns


@contextlib.contextmanager
def session(cfg: Config, stages: tuple[str, ...], overwrite: bool, verbose: bool, plan=None,
            resume: TrainerState | None = None) -> Iterator[Tracker]:
    """Ray, the run folder and the tracker for one command (see the module docstring). A resumed run keeps its
    folder, its metrics.jsonl up to the checkpoint's step and its wandb run."""
    out, tracker = Path(cfg.output_dir), None
    try:
        init_ray(cfg, stages, verbose)
        own_output_dir(out, check_output_dir(out, overwrite, resume is not None), "/".join(stages))
        sweep_leftovers(out)  # what saves of an earlier, interrupted attempt left behind
        save_config(cfg, out / "config.yaml")
        if plan is not None:
            for name, records in (("train_prompts", plan.rl.train), ("eval_prompts", plan.rl.heldout)):
                write_jsonl(out / "data" / f"{name}.jsonl", [r.to_dict() for r in records])
        log_to_dir(out / "logs")
        log.info("precision: %s; %s", precision(cfg), native_bf16(cfg.device)[1])
        tracker = Tracker(cfg, out, resume.step if resume else None, resume.wandb_run_id if resume else None,
                          job_type="+".join(stages))
        yield tracker
    finally:
        if tracker is not None:
            tracker.finish()
        shutdown_ray()
        release_output_dir(out)


def precision(cfg: Config) -> str:
    """The dtype each model role computes in, in words ("bfloat16 for the policy, float32 for the labeler")."""
    roles = {"policy": cfg.policy.model, "labeler": cfg.labeler.model, "preference model": cfg.preference_model.model}
    by_dtype: dict[str, list[str]] = {}
    for role, model in roles.items():
        by_dtype.setdefault(model.dtype, []).append(role)
    return ", ".join(f"{dtype} for the {' and the '.join(names)}" for dtype, names in by_dtype.items())


class StopSignal:
    """SIGTERM or a first Ctrl-C asks the run to stop after the current step (with a checkpoint); a second Ctrl-C
    interrupts at once. Installed only in the main thread; restored on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.saved = {}

    def __enter__(self) -> StopSignal:
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self.saved[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s received: stopping after this step with a checkpoint (Ctrl-C again to abandon it)",
                    signal.Signals(signum).name)

    def __exit__(self, *exc) -> None:
        for s, handler in self.saved.items():
            signal.signal(s, handler)
