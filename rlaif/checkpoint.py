"""Resumable checkpoints: what one RL step leaves behind, written so that a checkpoint is visible only when complete.

    <output_dir>/checkpoints/step_000012/
        trainer_state.json   the step, the prompt loader's position, the KL controller, the reward-normalisation
                             moments, every RNG of the trainer process, the labeler's principle RNG, the wandb run id,
                             the paths the run started from (SL-CAI checkpoint, preference model)
        policy/ critic/      DeepSpeed ZeRO checkpoints written by the ranks themselves (weights, optimizer states)
        next_batch/          async mode: the samples already generated for the next step (so a resumed run trains
                             on exactly what the uninterrupted run would have)
        manifest.json        sha256 of every file above; written last

Each checkpoint is assembled in a temporary folder beside its final name and renamed into place once complete, so
a run killed while saving leaves no checkpoint that looks usable. On resume the manifest is checked before anything
is loaded; the newest complete checkpoint is used with `trainer.resume=auto`.

DeepSpeed writes its optimizer states with torch.save; the manifest's hashes make sure a resume only ever loads files
this run wrote. Exported models (the final policy, the preference model) are safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rlaif.batch import Batch

MANIFEST = "manifest.json"


class Preempted(Exception):
    """The run stopped on SIGTERM (preemption, `ray job stop`) or Ctrl-C after writing a checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        name = signal.Signals(signum).name
        if checkpoint:
            text = f"checkpoint {checkpoint}; resume with the same command and trainer.resume=auto"
        else:
            text = "no checkpoint was written yet; start again with --overwrite"
        super().__init__(f"stopped by {name} after RL step {step}; {text}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


class RoleDied(RuntimeError):
    """An actor that cannot be restarted (a DeepSpeed rank, or one out of restarts) died; the run stops, and
    resumes from its last checkpoint."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or altered; the message names it."""


@dataclass
class TrainerState:
    step: int  # RL steps completed
    loader: dict[str, int]
    kl_coef: float
    moments: dict[str, float]
    rng: dict[str, Any] = field(default_factory=dict)
    labeler_rng: Any = None
    wandb_run_id: str | None = None
    policy_init: str = ""  # the model RL started from (the SL-CAI checkpoint when SL-CAI ran)
    preference_model: str = ""  # the trained preference model's folder, "" without one
    pm_normalization: tuple[float, float] = (0.0, 1.0)
    judge_start: list | None = None  # the held-out judge's starting responses (alarms.divergence_window)
    trust: dict = field(default_factory=dict)  # the trust gate's record (rlaif.trust.TrustRecord.to_dict())


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


def staging_dir(output_dir: str | Path, step: int) -> Path:
    """An empty folder to assemble step `step`'s checkpoint in (beside its final name, so the rename is atomic)."""
    root = checkpoints_dir(output_dir)
    tmp = root / f".tmp-step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def commit(staging: Path, state: TrainerState, keep_last: int) -> Path:
    """Write the trainer state and the manifest into the staging folder, fsync, rename it into place, and prune
    all but the newest `keep_last` checkpoints (0 keeps every one)."""
    (staging / "trainer_state.json").write_text(json.dumps(asdict(state)))
    manifest = {str(p.relative_to(staging)): _sha256(p) for p in _files(staging)}
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


def resolve(resume: str, output_dir: str | Path) -> Path | None:
    """trainer.resume: "" (start fresh), "auto" (the newest complete checkpoint of output_dir, if any) or a path."""
    if not resume:
        return None
    if resume == "auto":
        found = complete_checkpoints(checkpoints_dir(output_dir))
        return found[-1] if found else None
    path = Path(resume)
    if not (path / MANIFEST).is_file():
        raise CheckpointError(f"trainer.resume: {resume} is not a complete checkpoint (no {MANIFEST}); complete "
                              f"ones: {[str(p) for p in complete_checkpoints(path.parent)] or 'none'}")
    return path


def load(path: Path) -> TrainerState:
    """Check every file against the manifest, then read the trainer state."""
    manifest = json.loads((path / MANIFEST).read_text())["files"]
    for rel, digest in manifest.items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"{path}: {rel} is missing; the checkpoint is incomplete")
        if _sha256(f) != digest:
            raise CheckpointError(f"{path}: {rel} does not match its sha256 in {MANIFEST}; refusing to load it")
    extra = sorted(str(p.relative_to(path)) for p in _files(path) if str(p.relative_to(path)) not in manifest)
    if extra:
        raise CheckpointError(f"{path}: files not in {MANIFEST}: {extra}; refusing to load them")
    data = json.loads((path / "trainer_state.json").read_text())
    data["pm_normalization"] = tuple(data["pm_normalization"])
    return TrainerState(**data)


def save_batch(batch: Batch, folder: Path) -> None:
    """A Batch as safetensors (tensors) + JSON (texts, meta)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in batch.tensors.items()}, folder / "tensors.safetensors")
    (folder / "rest.json").write_text(json.dumps({"texts": batch.texts, "meta": batch.meta}))


def load_batch(folder: Path) -> Batch:
    rest = json.loads((folder / "rest.json").read_text())
    return Batch(load_file(folder / "tensors.safetensors"), rest["texts"], rest["meta"])
