"""Checkpoint building blocks: atomic commit, keep_last, resume=auto, manifest checks, RNG and batch round trips."""

import random

import numpy as np
import pytest
import torch

from rlaif.rl.batch import Batch
from rlaif.run import checkpoint as ck


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
    path, saved = ck.resolve("auto", tmp_path)
    assert path.name == "step_000003" and saved.step == 3
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


def test_resume_auto_falls_back_to_the_newest_checkpoint_that_verifies_and_sets_the_rest_aside(tmp_path, caplog):
    for step in (1, 2, 3):
        commit(tmp_path, step)
    (tmp_path / "checkpoints" / "step_000003" / "policy" / "shard.bin").write_bytes(b"torn")  # fails its sha256
    path, saved = ck.resolve("auto", tmp_path)
    assert path.name == "step_000002" and saved.step == 2
    assert "1 newer checkpoint(s) fail their check (step_000003: " in caplog.text and "resuming from step_000002" \
        in caplog.text
    moved = ck.set_aside_newer(tmp_path, saved.step)
    assert [p.name.split(".")[0] for p in moved] == ["step_000003"]
    assert ck.resolve("auto", tmp_path)[0].name == "step_000002"  # the abandoned branch never wins `auto` again
    (path / "policy" / "shard.bin").unlink()
    (tmp_path / "checkpoints" / "step_000001" / "trainer_state.json").write_text("{")
    with pytest.raises(ck.CheckpointError, match="no checkpoint in .* verifies: step_000002: .*; step_000001: "):
        ck.resolve("auto", tmp_path)
    with pytest.raises(ck.CheckpointError, match="missing"):  # a path given by hand: that one or an error
        ck.resolve(str(path), tmp_path)


def test_a_resume_that_would_compute_something_else_is_refused():
    from rlaif.config import load_config, to_dict

    cfg = to_dict(load_config(None, ["trainer.steps=3"]))
    saved = ck.TrainerState(step=2, loader={}, kl_coef=0.0, moments={}, config=cfg, data_hash="abc")
    ck.check_resumable(saved, to_dict(load_config(None, ["trainer.steps=9", "wandb.mode=disabled"])), "abc", "ck")
    with pytest.raises(ck.CheckpointError, match=r"policy\.lr: 1e-05 in the checkpoint, 0\.5 now; "
                                                 r"rl\.kl_coef: 0\.05 in the checkpoint, 0\.0 now"):
        ck.check_resumable(saved, to_dict(load_config(None, ["policy.lr=0.5", "rl.kl_coef=0"])), "abc", "ck")
    with pytest.raises(ck.CheckpointError, match="data.prompts: the RL training prompts differ"):
        ck.check_resumable(saved, cfg, "def", "ck")


def test_a_save_that_would_not_fit_is_refused_naming_the_folder_and_the_shortfall(tmp_path, monkeypatch):
    commit(tmp_path, 1)
    size = ck.folder_bytes(tmp_path / "checkpoints" / "step_000001")
    assert ck.checkpoint_bytes(tmp_path, estimate=10**12) == size  # the last checkpoint's size, once there is one
    assert ck.checkpoint_bytes(tmp_path / "fresh", estimate=123) == 123
    usage = type("Usage", (), {"free": 2_000_000_000})
    monkeypatch.setattr(ck.shutil, "disk_usage", lambda path: usage)
    ck.ensure_space(tmp_path, 1_000_000_000, "the checkpoint of step 2")  # 1.1 GB with the margin: fits in 2 GB
    with pytest.raises(ck.DiskSpaceError, match=r"the checkpoint of step 2 needs about 3\.00 GB in .*, but its "
                                                r"filesystem has 2\.00 GB free \(short by 1\.30 GB"):
        ck.ensure_space(tmp_path, 3_000_000_000, "the checkpoint of step 2")


def test_leftovers_of_interrupted_saves_are_swept_and_nothing_else(tmp_path):
    commit(tmp_path, 1)
    made = [tmp_path / "checkpoints" / ".tmp-step_000002", tmp_path / "checkpoint.tmp.ab12",
            tmp_path / "checkpoint.old", tmp_path / "eval" / "checkpoints" / "step_4.tmp.x9"]
    for p in made:
        p.mkdir(parents=True)
        (p / "half.bin").write_bytes(b"x")
    keep = [tmp_path / "notes.old.txt", tmp_path / "checkpoints" / "step_000001"]
    keep[0].write_text("a file, not a save")
    assert sorted(ck.sweep_leftovers(tmp_path)) == sorted(made)
    assert not any(p.exists() for p in made) and all(p.exists() for p in keep)


def test_a_checkpoint_whose_rank_files_the_driver_cannot_see_is_refused(tmp_path):
    """On a cluster whose output_dir is node-local storage, a rank on another node writes its ZeRO shard to its own
    disk; the driver's manifest would leave the file out and a resume would load a checkpoint without it. Bug caught:
    the ranks' reports not compared with what the driver sees (the commit goes ahead), or compared under the wrong
    role's folder."""
    from rlaif.run.checkpoint import CheckpointError, check_ranks_wrote_here

    staging = tmp_path / "run" / "checkpoints" / ".tmp-step_000001"
    (staging / "policy" / "policy").mkdir(parents=True)
    (staging / "policy" / "policy" / "rank0.pt").write_bytes(b"x")
    (staging / "critic").mkdir()
    (staging / "critic" / "rank0.pt").write_bytes(b"x")
    check_ranks_wrote_here(staging, {"policy": [["policy/rank0.pt"]], "critic": [["rank0.pt"]]})  # all visible
    with pytest.raises(CheckpointError, match=r"not the same storage on every node.*policy rank 1: policy/rank1.pt"):
        check_ranks_wrote_here(staging, {"policy": [["policy/rank0.pt"], ["policy/rank1.pt"]],
                                         "critic": [["rank0.pt"]]})
    with pytest.raises(CheckpointError, match="critic rank 0: policy/rank0.pt"):  # looked up under critic/, not policy/
        check_ranks_wrote_here(staging, {"critic": [["policy/rank0.pt"]]})


def test_block_digests_catch_a_byte_changed_in_any_block_and_older_manifests_still_verify(tmp_path, monkeypatch):
    """The manifest hashes 64 MB blocks on every core (here 1 KB blocks, to have many): the file's digest is the
    SHA-256 of its blocks' SHA-256s, written out here by hand. Bugs caught: a block skipped or hashed twice (a changed
    byte in it would pass), blocks combined out of order, an empty file without a digest, a checkpoint written
    before block digests no longer loading."""
    import hashlib
    import json

    monkeypatch.setattr(ck, "BLOCK", 1024)
    monkeypatch.setattr(ck, "TREE", "sha256-tree-test:")
    data = bytes(random.Random(0).getrandbits(8) for _ in range(3000))  # blocks of 1024, 1024, 952
    (tmp_path / "a.bin").write_bytes(data)
    (tmp_path / "empty.bin").write_bytes(b"")
    tree = hashlib.sha256(b"".join(hashlib.sha256(data[o:o + 1024]).digest() for o in (0, 1024, 2048))).hexdigest()
    empty = hashlib.sha256(hashlib.sha256(b"").digest()).hexdigest()
    assert ck.digests([tmp_path / "a.bin", tmp_path / "empty.bin"]) == ["sha256-tree-test:" + tree,
                                                                         "sha256-tree-test:" + empty]
    path = commit(tmp_path / "run", 1)
    shard = path / "policy" / "shard.bin"
    shard.write_bytes(data)  # three blocks; rewrite the manifest's entry as a save would have
    manifest = json.loads((path / ck.MANIFEST).read_text())
    manifest["files"]["policy/shard.bin"] = ck.digests([shard])[0]
    (path / ck.MANIFEST).write_text(json.dumps(manifest))
    assert ck.load(path).step == 1
    for offset in (5, 1500, 2999):  # one byte in each block
        changed = bytearray(data)
        changed[offset] ^= 1
        shard.write_bytes(bytes(changed))
        with pytest.raises(ck.CheckpointError, match="policy/shard.bin does not match"):
            ck.load(path)
    shard.write_bytes(data)
    manifest["files"]["policy/shard.bin"] = hashlib.sha256(data).hexdigest()  # a manifest of the old kind
    (path / ck.MANIFEST).write_text(json.dumps(manifest))
    assert ck.load(path).step == 1
