"""Long runs on real Ray, vLLM and DeepSpeed, through the `rlaif` command: a run killed with SIGKILL resumes from its
last checkpoint and ends exactly where an uninterrupted run ends; SIGTERM stops after the current step with a
checkpoint and leaves no process behind; a rollout engine whose process dies is restarted and the run finishes with
the same samples.

What "the same" means: every metric of every RL step is equal to the uninterrupted run's (floats compared exactly),
except wall-clock timings and rates derived from them (time/*, *seconds, *per_second), which no two runs share, and
faults/* (which count the injected fault). The sample tables (prompt, both responses, AI label, rewards) are equal
row for row: identical prompt order and sampling seeds.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from .conftest import REPO

pytestmark = pytest.mark.e2e
STEPS = 6
ARGS = ["train", "--config", "configs/debug.yaml", f"trainer.steps={STEPS}", "trainer.save_every=1",
        "trainer.keep_last=2", "trainer.progress=false",
        "policy.lr_scheduler=cosine", "policy.warmup_steps=2"]  # a resumed run must go on along the schedule
ENV = {**os.environ, "WANDB_MODE": "offline"}


def start(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rlaif.cli", *ARGS, f"output_dir={out}", *extra], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 900) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def wait_for_step(out: Path, proc: subprocess.Popen, step: int, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before step {step}: {proc.communicate()[1][-3000:]}"
        if any(r.get("step", 0) >= step and "time/step" in r for r in rows(out)):
            return
        time.sleep(0.05)
    raise TimeoutError(f"no step {step} within {timeout}s")


def rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    out_rows = []
    for line in path.read_text().splitlines():
        try:
            out_rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written
    return out_rows


def steps(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in rows(out) if "time/step" in r}


def tables(out: Path) -> dict[int, list]:
    return {r["step"]: r["rows"] for r in rows(out) if r.get("table") == "samples"}


def comparable(row: dict) -> dict:
    timing = ("time/", "seconds", "per_second", "faults/")
    return {k: v for k, v in row.items() if not any(t in k for t in timing)}


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    code, err = finish(start(out))
    assert code == 0, err[-4000:]
    return out


def test_a_killed_run_resumes_exactly(reference, tmp_path):
    out = tmp_path / "run"
    proc = start(out)
    wait_for_step(out, proc, 2)
    for p in tree(proc.pid):  # SIGKILL: no handler runs, no checkpoint is written on the way out
        p.kill()
    proc.wait()
    done = steps(out)
    assert len(done) < STEPS, "the run finished before it could be killed"
    code, err = finish(start(out, "trainer.resume=auto"))
    assert code == 0, err[-4000:]
    resumed, ref = steps(out), steps(reference)
    assert sorted(resumed) == list(range(1, STEPS + 1))  # each step once: rows after the checkpoint were dropped
    for step in ref:
        assert comparable(resumed[step]) == comparable(ref[step]), f"step {step} differs after the resume"
    assert tables(out) == tables(reference)
    # the learning rate at every step is the schedule's (warm-up 0, 0.5, then the half cosine), the resumed run's too
    from rlaif.rl.schedule import lr_at

    base = 1e-4  # configs/debug.yaml's policy.lr
    assert [resumed[s]["policy/lr"] for s in range(1, STEPS + 1)] == \
        pytest.approx([lr_at(s, STEPS, base, "cosine", 2) for s in range(STEPS)])
    assert resumed[2]["policy/lr"] == pytest.approx(base / 2) and resumed[STEPS]["policy/lr"] < base / 4
    runs = {p.name.split("-")[-1] for p in (out / "wandb").glob("offline-run-*")}
    assert len(runs) == 1, f"the resumed run is not the same wandb run: {runs}"
    from safetensors.torch import load_file

    a, b = (load_file(p / "checkpoint" / "model.safetensors") for p in (out, reference))
    assert all((a[k] == b[k]).all() for k in a)  # bit for bit the same final policy


def test_sigterm_stops_after_the_step_with_a_checkpoint_and_no_process_left(tmp_path):
    out = tmp_path / "run"
    proc = start(out)
    wait_for_step(out, proc, 1)
    procs = tree(proc.pid)
    proc.send_signal(signal.SIGTERM)  # what `ray job stop` and a preempting scheduler send
    code, err = finish(proc, timeout=300)
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by SIGTERM after RL step" in err and "trainer.resume=auto" in err
    stopped = max(steps(out))
    assert stopped < STEPS and (out / "checkpoints" / f"step_{stopped:06d}" / "manifest.json").is_file()
    alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left behind: {[p.name() for p in alive]}"


def test_a_dead_rollout_engine_is_restarted_and_no_sample_is_lost(reference, tmp_path):
    out = tmp_path / "run"
    proc = start(out)
    wait_for_step(out, proc, 1)
    engines = [p for p in tree(proc.pid) if "RolloutWorker" in " ".join(p.cmdline())]
    assert len(engines) == 1
    engines[0].kill()
    code, err = finish(proc)
    assert code == 0, err[-4000:]
    got, ref = steps(out), steps(reference)
    assert got[STEPS]["faults/restarts"] == 1 and got[STEPS]["faults/rollout"] == 1
    assert all(r["rollout/samples"] == 4 * 2 for r in got.values())  # rl.prompts_per_step x rollout.n_samples
    assert tables(out) == tables(reference)  # the same samples, step by step: none lost, none twice
    for step in ref:
        assert comparable(got[step]) == comparable(ref[step]), f"step {step} differs after the restart"


def test_a_dead_policy_rank_ends_the_run_naming_the_checkpoint_to_resume_from(tmp_path):
    """A DeepSpeed rank cannot rejoin its process group: the run must end (not hang in the surviving rank's
    collective), say which checkpoint `trainer.resume=auto` will take, and leave no process behind. Bugs caught: the
    death not detected (the run hangs until the timeout), a generic traceback instead of the resume hint, actors or
    vLLM left running."""
    out = tmp_path / "run"
    proc = start(out)
    wait_for_step(out, proc, 1)
    while not (out / "checkpoints" / "step_000001" / "manifest.json").is_file():  # killed after, not during, a save
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    procs = tree(proc.pid)
    ranks = [p for p in procs if "PolicyWorker" in " ".join(p.cmdline())]
    assert len(ranks) == 2  # configs/debug.yaml: policy.num_ranks=2
    ranks[1].kill()
    code, err = finish(proc, timeout=300)
    assert code == 1, err[-3000:]
    last = err.strip().splitlines()[-1]  # one line, not Ray's many-line error
    assert last.startswith("rlaif: ") and "class_name: PolicyWorker" in last
    assert "run the same command with trainer.resume=auto" in last
    newest = sorted((out / "checkpoints").glob("step_*"))[-1]
    assert f"the newest checkpoint is {newest}" in last and (newest / "manifest.json").is_file()
    assert max(steps(out)) < STEPS
    alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left behind: {[p.name() for p in alive]}"


def test_dead_labeler_reference_and_pm_scorer_are_restarted_and_the_run_is_unchanged(reference, tmp_path):
    """The single-process roles Ray restarts: each one's call is retried on the new process, and what the policy is
    trained on may not change. Bugs caught: a restarted role whose call is not retried (the run ends), a call retried
    twice or not at all (a step missing or doubled), state kept only in the dead process (the PM's reward
    normalisation, the reference's weights, the labeler's principle draws: the trainer passes a seed per step) lost,
    so rewards, KL, the update or the online AI labels differ from the uninterrupted run."""
    out = tmp_path / "run"
    proc = start(out)
    wait_for_step(out, proc, 1)
    names = ("LabelerWorker", "ReferenceWorker", "PreferenceScorer")
    victims = [p for p in tree(proc.pid) if any(n in " ".join(p.cmdline()) for n in names)]
    assert len(victims) == 3, [" ".join(p.cmdline()) for p in victims]
    for p in victims:
        p.kill()
    code, err = finish(proc)
    assert code == 0, err[-4000:]
    got, ref = steps(out), steps(reference)
    assert got[STEPS]["faults/restarts"] == 3
    assert got[STEPS]["faults/labeler"] == got[STEPS]["faults/reference"] == got[STEPS]["faults/preference_model"] == 1
    assert tables(out) == tables(reference)  # samples, rewards, PM scores, principles and AI labels
    for step in ref:
        assert comparable(got[step]) == comparable(ref[step]), f"step {step} differs after the restarts"
