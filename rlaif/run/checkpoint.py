"""Resumable checkpoints: what one RL step leaves behind, written so that a checkpoint is visible only when complete.

    <output_dir>/checkpoints/step_000012/
        trainer_state.json   the step, the prompt loader's position, the KL controller, the reward-normalisation
                             moments, every RNG of the trainer process, the labeler's principle RNG, the wandb run id,
                             the paths the run started from (SL-CAI checkpoint, preference model)
        policy/ critic/      DeepSpeed ZeRO checkpoints written by the ranks themselves (weights, optimizer states)
        next_batch/          async mode: the samples already generated for the next step (so a resumed run trains
                             on exactly what the uninterrupted run would have)
        manifest.json        a SHA-256 digest of every file above (blocks hashed on every core); written last

Each checkpoint is assembled in a temporary folder beside its final name and renamed into place once complete, so
a run killed while saving leaves no checkpoint that looks usable. On resume the manifest is checked before anything
is loaded; the newest complete checkpoint is used with `trainer.resume=auto`.

DeepSpeed writes its optimizer states with torch.save; the manifest's hashes make sure a resume only ever loads files
this run wrote. Exported models (the final policy, the preference model) are safetensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import signal
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rlaif.rl.batch import Batch

MANIFEST = "manifest.json"
log = logging.getLogger("rlaif")


class Preempted(Exception):
    """The run stopped on SIGTERM (preemption, `ray job stop`) or Ctrl-C after writing a checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        name = signal.Signals(signum).name
        if checkpoint:
            text = f"checkpoint {checkpoint}; resume with the same command and trainer.resume=auto"
        else:
            text = "no checkpoint was written yet; start again with --overwrite"
        when = f"after RL step {step}" if step else "before the first RL step"
        super().__init__(f"stopped by {name} {when}; {text}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or altered; the message names it."""


@dataclass
class TrainerState:
    step: int  # RL steps completed
    loader: dict[str, int]
    kl_coef: float
    moments: dict[str, float]
    rng: dict[str, Any] = field(default_factory=dict)
    wandb_run_id: str | None = None
    policy_init: str = ""  # the model RL started from (the SL-CAI checkpoint when SL-CAI ran)
    preference_model: str = ""  # the trained preference model's folder (rl.reward_model's, resolved), "" without one
    pm_normalization: tuple[float, float] = (0.0, 1.0)
    judge_start: list | None = None  # the held-out judge's starting responses (alarms.divergence_window)
    trust: dict = field(default_factory=dict)  # the trust gate's record (rlaif.audit.trust.TrustRecord.to_dict())
    config: dict = field(default_factory=dict)  # the run's config (rlaif.config.to_dict): a resume must match it
    data_hash: str = ""  # sha256 of the RL training prompts, in order: a resume must train on the same ones


def capture_rng() -> dict[str, Any]:
    """Python, NumPy and torch RNG states of this process, as JSON."""
    np_state = np.random.get_state()
    return {"python": jsonable(random.getstate()),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "torch": torch.get_rng_state().tolist()}


def restore_rng(state: dict[str, Any]) -> None:
    if not state:
        return
    random.setstate(as_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def jsonable(x: Any) -> Any:
    return [jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def as_tuples(x: Any) -> Any:
    return tuple(as_tuples(v) for v in x) if isinstance(x, list) else x


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


class DiskSpaceError(RuntimeError):
    """Not enough room in output_dir's filesystem for what the run must write; the message names the folder and the
    shortfall."""


def folder_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def ensure_space(folder: str | Path, needed: int, what: str) -> None:
    """Refuse to start writing `what` (about `needed` bytes) into `folder` when its filesystem has less free space,
    with a 10% margin: a write that runs out mid-way ends in a torn file and a raw error from deep in torch."""
    folder = Path(folder)
    probe = folder if folder.exists() else next(p for p in folder.absolute().parents if p.exists())
    free = shutil.disk_usage(probe).free
    if free < needed * 1.1:
        raise DiskSpaceError(f"{what} needs about {needed / 1e9:.2f} GB in {folder}, but its filesystem has "
                             f"{free / 1e9:.2f} GB free (short by {(needed * 1.1 - free) / 1e9:.2f} GB with a 10% "
                             "margin): free some space or move output_dir, then resume with trainer.resume=auto")


def checkpoint_bytes(output_dir: str | Path, estimate: int) -> int:
    """What the next checkpoint will take: the newest complete one's size, or `estimate` before the first."""
    found = complete_checkpoints(checkpoints_dir(output_dir))
    return folder_bytes(found[-1]) if found else estimate


LEFTOVERS = (".tmp-step_*", "*.tmp.*", "*.old")  # what an interrupted save leaves (staging_dir, save_pretrained_atomic)


def sweep_leftovers(output_dir: str | Path) -> list[Path]:
    """Remove the folders that saves interrupted in an earlier attempt left behind (they are never loaded, but hold
    disk space forever). Only names rlaif's own writers use, inside a folder rlaif owns."""
    out, gone = Path(output_dir), []
    for folder in (out, checkpoints_dir(out), out / "eval" / "checkpoints", out / "sl_cai"):
        for pattern in LEFTOVERS if folder.is_dir() else ():
            for path in folder.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                    gone.append(path)
    if gone:
        log.warning("removed %d folder(s) that interrupted saves left behind: %s", len(gone),
                    ", ".join(str(p.relative_to(out)) for p in gone))
    return gone


def staging_dir(output_dir: str | Path, step: int) -> Path:
    """An empty folder to assemble step `step`'s checkpoint in (beside its final name, so the rename is atomic)."""
    root = checkpoints_dir(output_dir)
    tmp = root / f".tmp-step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _sha256(path: Path) -> str:
    """A whole file's SHA-256 in one pass (manifests written before the block digests)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


BLOCK = 64 << 20  # bytes per hashed block
TREE = f"sha256-tree-{BLOCK >> 20}m:"  # a block-digest manifest entry: this prefix, then the hex digest


def digests(paths: list[Path]) -> list[str]:
    """Each file's digest: the SHA-256 of its blocks' SHA-256s (a two-level hash tree, as strong as one pass: a
    changed byte changes its block's digest and so the file's). Every block of every file is hashed on its own
    thread (hashlib releases the GIL), so the ZeRO optimizer states -- 16 bytes a parameter, the bulk of a
    checkpoint -- hash on every core instead of one."""
    from concurrent.futures import ThreadPoolExecutor

    local = threading.local()

    def block(task: tuple[int, int]) -> bytes:
        i, offset = task
        if not hasattr(local, "buf"):  # one reused buffer per thread: fresh 64 MB reads page-fault, serially
            local.buf = bytearray(1 << 20)
        view, h, left = memoryview(local.buf), hashlib.sha256(), BLOCK
        with open(paths[i], "rb", buffering=0) as f:
            f.seek(offset)
            while left and (n := f.readinto(view[: min(left, len(view))])):
                h.update(view[:n])
                left -= n
        return h.digest()

    sizes = [p.stat().st_size for p in paths]
    tasks = [(i, off) for i, size in enumerate(sizes) for off in range(0, max(size, 1), BLOCK)]
    with ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1)) as pool:
        hashed = list(pool.map(block, tasks))
    trees = [hashlib.sha256() for _ in paths]
    for (i, _), h in zip(tasks, hashed):
        trees[i].update(h)
    return [TREE + t.hexdigest() for t in trees]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def check_ranks_wrote_here(staging: Path, written: dict[str, list[list[str]]]) -> None:
    """Every file each rank says it wrote ({role: [files of rank 0, of rank 1, ...]}, relative to staging/role) must
    be visible here, or the manifest would leave it out and a resume would miss it: on a cluster whose output_dir is
    not one storage shared by every node, each rank writes its shards to its own node's disk."""
    unseen = [f"{role} rank {i}: {f}" for role, ranks in written.items() for i, files in enumerate(ranks)
              for f in files if not (staging / role / f).is_file()]
    if unseen:
        raise CheckpointError(
            f"output_dir {staging.parent.parent} is not the same storage on every node: the driver cannot see files "
            f"the ranks wrote ({', '.join(unseen[:3])}{', ...' if len(unseen) > 3 else ''}); use a folder on storage "
            "every node shares")


def commit(staging: Path, state: TrainerState, keep_last: int) -> Path:
    """Write the trainer state and the manifest into the staging folder, fsync, rename it into place, and prune
    all but the newest `keep_last` checkpoints (0 keeps every one)."""
    (staging / "trainer_state.json").write_text(json.dumps(asdict(state)))
    files = _files(staging)
    manifest = dict(zip((str(p.relative_to(staging)) for p in files), digests(files)))
    with open(staging / MANIFEST, "w") as f:
        json.dump({"step": state.step, "files": manifest}, f)
        f.flush()
        os.fsync(f.fileno())
    final = checkpoints_dir(staging.parent.parent) / f"step_{state.step:06d}"
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    if keep_last > 0:
        for old in complete_checkpoints(final.parent)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints (those with a manifest), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / MANIFEST).is_file())


def resolve(resume: str, output_dir: str | Path) -> tuple[Path, TrainerState] | None:
    """trainer.resume: "" (start fresh), "auto" (the newest checkpoint of output_dir that verifies against its
    manifest, falling back to older ones, saying so) or a path (that one, or an error). Returns it with its state."""
    if not resume:
        return None
    if resume == "auto":
        found, failed = complete_checkpoints(checkpoints_dir(output_dir)), []
        for path in reversed(found):
            try:
                state = load(path)
            except (CheckpointError, OSError, ValueError, TypeError) as exc:
                failed.append(f"{path.name}: {exc}")
                continue
            if failed:
                log.warning("trainer.resume=auto: %d newer checkpoint(s) fail their check (%s); resuming from %s, the "
                            "newest that verifies", len(failed), "; ".join(failed), path.name)
            return path, state
        if failed:
            raise CheckpointError(f"trainer.resume=auto: no checkpoint in {checkpoints_dir(output_dir)} verifies: "
                                  + "; ".join(failed))
        return None
    path = Path(resume)
    if not (path / MANIFEST).is_file():
        raise CheckpointError(f"trainer.resume: {resume} is not a complete checkpoint (no {MANIFEST}); complete "
                              f"ones: {[str(p) for p in complete_checkpoints(path.parent)] or 'none'}")
    return path, load(path)


def set_aside_newer(output_dir: str | Path, step: int) -> list[Path]:
    """A run resumed from step `step` abandons the checkpoints after it (a newer branch that failed its check, or one
    the user chose to go back from): move them to checkpoints/abandoned/ so that `auto` never picks them again."""
    moved = []
    root = checkpoints_dir(output_dir)
    for path in complete_checkpoints(root):
        if int(path.name.split("_")[1]) > step:
            target = root / "abandoned" / f"{path.name}.{os.getpid()}"
            target.parent.mkdir(exist_ok=True)
            path.rename(target)
            moved.append(target)
    if moved:
        log.warning("resumed at step %d: %d newer checkpoint(s) set aside in %s", step, len(moved), root / "abandoned")
    return moved


# What may change between a run and its resume: how long it runs, how it saves and logs, where its processes go.
RESUMABLE_KEYS = ("trainer.steps", "trainer.save_every", "trainer.keep_last", "trainer.resume", "trainer.progress",
                  "trainer.log_samples", "trainer.timeout_s", "trainer.stop_on_alarm", "wandb.", "ray.", "cache_dir",
                  "output_dir", "eval.", "alarms.", "trust.")


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        out |= _flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v}
    return out


def check_resumable(state: TrainerState, config: dict, data_hash: str, where: Path) -> None:
    """Refuse a resume whose config or training prompts differ from the checkpoint's where that changes what is
    computed (RESUMABLE_KEYS may differ); the error names every key with both values."""
    if not state.config:  # written before checkpoints recorded their config
        return
    old, new = _flatten(state.config), _flatten(config)
    changed = [f"{k}: {old.get(k)!r} in the checkpoint, {new.get(k)!r} now" for k in sorted(old.keys() | new.keys())
               if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_KEYS) and k not in RESUMABLE_KEYS]
    if state.data_hash and state.data_hash != data_hash:
        changed.append("data.prompts: the RL training prompts differ from the checkpoint's (a prompt file changed)")
    if changed:
        raise CheckpointError(f"trainer.resume: {where} was written by a run that computed something else; "
                              f"{'; '.join(changed)}. Resume with the checkpoint's settings (its config.yaml beside "
                              f"it in the run folder), or start a new run")


def load(path: Path) -> TrainerState:
    """Check every file against the manifest, then read the trainer state."""
    manifest = json.loads((path / MANIFEST).read_text())["files"]
    missing = [rel for rel in manifest if not (path / rel).is_file()]
    if missing:
        raise CheckpointError(f"{path}: {missing[0]} is missing; the checkpoint is incomplete")
    tree = [rel for rel, digest in manifest.items() if digest.startswith(TREE)]
    found = dict(zip(tree, digests([path / rel for rel in tree])))  # on every core, as at save
    for rel, digest in manifest.items():
        got = found[rel] if rel in found else _sha256(path / rel)  # older manifests: one whole-file SHA-256
        if got != digest:
            raise CheckpointError(f"{path}: {rel} does not match its sha256 in {MANIFEST}; refusing to load it")
    extra = sorted(str(p.relative_to(path)) for p in _files(path) if str(p.relative_to(path)) not in manifest)
    if extra:
        raise CheckpointError(f"{path}: files not in {MANIFEST}: {', '.join(extra)}; refusing to load them")
    data = json.loads((path / "trainer_state.json").read_text())
    data["pm_normalization"] = tuple(data["pm_normalization"])
    data.pop("labeler_rng", None)  # older checkpoints: the labeler now draws from a seed per step, nothing to restore
    return TrainerState(**data)


def save_batch(batch: Batch, folder: Path) -> None:
    """A Batch as safetensors (tensors) + JSON (texts, meta)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in batch.tensors.items()}, folder / "tensors.safetensors")
    (folder / "rest.json").write_text(json.dumps({"texts": batch.texts, "meta": batch.meta}))


def load_batch(folder: Path) -> Batch:
    rest = json.loads((folder / "rest.json").read_text())
    return Batch(load_file(folder / "tensors.safetensors"), rest["texts"], rest["meta"])
