"""Checkpoint building blocks: atomic commit, keep_last, resume=auto, manifest checks, RNG and batch round trips."""

import random

import numpy as np
import pytest
import torch

from rlaif import checkpoint as ck
from rlaif.batch import Batch


def state(step: int) -> ck.TrainerState:
    return ck.TrainerState(step=step, loader={"epoch": 1, "pos": 3}, kl_coef=0.05,
                           moments={"count": 4, "mean": 0.25, "m2": 1.5}, rng=ck.capture_rng(), wandb_run_id="abc")


def commit(out, step: int, keep_last: int = 0):
    tmp = ck.staging_dir(out, step)
    (tmp / "policy").mkdir()
    (tmp / "policy" / "shard.bin").write_bytes(b"weights %d" % step)
    return ck.commit(tmp, state(step), keep_last)


def test_commit_is_atomic_and_keep_last_prunes(tmp_path):
    for step in (1, 2, 3):
        commit(tmp_path, step, keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_000002", "step_000003"]
    # a save killed before its commit leaves only a hidden staging folder, never a usable-looking checkpoint
    tmp = ck.staging_dir(tmp_path, 4)
    (tmp / "trainer_state.json").write_text("{}")
    assert ck.resolve("auto", tmp_path).name == "step_000003"
    assert ck.load(ck.resolve("auto", tmp_path)).step == 3
    assert ck.resolve("", tmp_path) is None


def test_resume_auto_without_checkpoints_starts_fresh_and_a_bad_path_is_an_error(tmp_path):
    assert ck.resolve("auto", tmp_path) is None
    with pytest.raises(ck.CheckpointError, match="not a complete checkpoint"):
        ck.resolve(str(tmp_path / "nope"), tmp_path)


def test_a_changed_or_missing_file_is_refused(tmp_path):
    path = commit(tmp_path, 1)
    (path / "policy" / "shard.bin").write_bytes(b"tampered")
    with pytest.raises(ck.CheckpointError, match="does not match its sha256"):
        ck.load(path)
    path = commit(tmp_path, 2)
    (path / "policy" / "shard.bin").unlink()
    with pytest.raises(ck.CheckpointError, match="missing"):
        ck.load(path)
    path = commit(tmp_path, 3)
    (path / "policy" / "extra.pt").write_bytes(b"x")
    with pytest.raises(ck.CheckpointError, match="not in manifest"):
        ck.load(path)


def test_rng_round_trip_through_json(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = commit(tmp_path, 1)  # captures the RNGs as JSON
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ck.restore_rng(ck.load(path).rng)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_batch_round_trip(tmp_path):
    b = Batch.from_token_lists([[1, 2], [3]], [[4], [5, 6, 7]], pad_id=0, prompt=["p", "q"], response=["a", "bcd"])
    b["sampler_logprobs"] = torch.tensor([[-0.5, 0, 0], [-1.0, -2.0, -3.0]])
    b.meta.update(temperature=0.7, weight_version=3)
    ck.save_batch(b, tmp_path / "next")
    got = ck.load_batch(tmp_path / "next")
    assert got.texts == b.texts and got.meta == b.meta
    assert all(torch.equal(got[k], b[k]) for k in b.tensors)
