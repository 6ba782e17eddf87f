"""The NCCL weight sync cannot hang and cannot silently do nothing (issue 17, defect 3), tested on CPU.

NCCL collectives take no timeout: `actors.weight_sync.bounded` runs one under a watchdog that aborts the communicator
past trainer.timeout_s and raises SyncFailed naming the engines, which Roles.sync recovers from. A stand-in callable
plays the hung collective: like ncclBroadcast + stream synchronize with a dead peer, it blocks until the communicator
is aborted. vLLM's PyNcclCommunicator cannot be constructed without CUDA, so the disabled check is given a stand-in
object with the same `disabled` attribute vLLM sets when NCCL fails to load (pynccl.py)."""

from __future__ import annotations

import os
import pickle
import threading
import time
import types

import pytest

from actors.weight_sync import SyncFailed, bounded, require_enabled


class HungCollective:
    """Blocks like a broadcast whose peer died; only `abort` (ncclCommAbort) releases it, with NCCL's error."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.aborts = 0

    def __call__(self) -> None:
        if not self.released.wait(30):
            raise AssertionError("never aborted")
        raise RuntimeError("NCCL error: remote process exited or there was a network error (ncclCommAbort)")

    def abort(self) -> None:
        self.aborts += 1
        self.released.set()


def test_a_hung_collective_is_aborted_within_the_bound_and_names_the_engine():
    """Bug caught: no bound on the NCCL path (the call would block for the stand-in's 30 s, i.e. forever), or a
    timeout that leaves the communicator un-aborted (the rank stays blocked in NCCL), or an error that is not the
    SyncFailed Roles.sync recovers from, or one that does not name the engines."""
    hung = HungCollective()
    t0 = time.monotonic()
    with pytest.raises(SyncFailed) as info:
        bounded(hung, 0.5, hung.abort, "bucket 3/7 (sending to engines [2])", [2])
    elapsed = time.monotonic() - t0
    assert 0.5 <= elapsed < 3.0, elapsed
    assert hung.aborts == 1
    assert info.value.engines == [2] and info.value.policy_ranks == []
    assert "bucket 3/7" in str(info.value) and "engines [2]" in str(info.value)
    assert "trainer.timeout_s" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)  # NCCL's own error stays attached


def test_a_collective_released_without_an_error_by_the_abort_still_fails():
    """Bug caught: treating a broadcast that returned only because its communicator was aborted as a success: the
    buffer it filled is not the weights."""
    released = threading.Event()
    with pytest.raises(SyncFailed, match="engines \\[0, 1\\]"):
        bounded(lambda: released.wait(30), 0.3, released.set, "bucket 1/1", [0, 1])


def test_a_collective_that_finishes_in_time_is_not_aborted():
    """Bug caught: a watchdog that fires after a successful call (it must stop when the call returns), aborting a
    communicator the next bucket still needs."""
    aborts = []
    assert bounded(lambda: "done", 0.2, lambda: aborts.append(1), "bucket 1/1", [0]) == "done"
    time.sleep(0.4)
    assert aborts == []


def test_the_collectives_own_error_passes_unchanged_when_nothing_timed_out():
    """Bug caught: every failure turned into a timeout, hiding e.g. a dtype or shape error."""
    def fails() -> None:
        raise ValueError("shape mismatch")

    with pytest.raises(ValueError, match="shape mismatch"):
        bounded(fails, 5.0, lambda: None, "bucket 1/1", [0])


def test_sync_failed_crosses_ray_with_its_engines():
    """Bug caught: SyncFailed's three-argument constructor breaking unpickling (Ray would turn it into a bare
    RayTaskError and the driver could not read which engines the watchdog named)."""
    again = pickle.loads(pickle.dumps(SyncFailed([], [1, 3], "bucket 2/5 timed out")))
    assert (again.policy_ranks, again.engines, again.detail) == ([], [1, 3], "bucket 2/5 timed out")


class StandInCommunicator:
    """What vLLM's PyNcclCommunicator sets when the NCCL library fails to load (or VLLM_DISABLE_PYNCCL): `disabled`
    True, and every collective then returns at once without moving a byte."""

    def __init__(self, disabled: bool) -> None:
        self.disabled = disabled


def test_a_disabled_nccl_communicator_is_refused():
    """Bug caught: accepting vLLM's silently disabled communicator: every broadcast returns immediately and the
    engines reload uninitialised buffers as the policy's weights."""
    with pytest.raises(RuntimeError, match="disabled on sync rank 2.*VLLM_DISABLE_PYNCCL"):
        require_enabled(StandInCommunicator(disabled=True), 2)
    working = StandInCommunicator(disabled=False)
    assert require_enabled(working, 0) is working


class StandInPolicyRank:
    """Policy rank 0 whose NCCL watchdog fired: its send raises the SyncFailed `bounded` raises."""

    def send_weights(self) -> dict:
        raise SyncFailed([], [0, 1], "bucket 1/3 (sending to engines [0, 1]) blocked for more than 2s")


class StandInEngine:
    """A live engine stuck in the aborted group (a hung GPU, a lost link): it never answers the sync."""

    def pid(self) -> int:
        return os.getpid()

    def receive_weights(self, buckets: list, version: int) -> float:
        time.sleep(3600)
        return 0.0


@pytest.mark.e2e
def test_engines_named_by_the_watchdog_are_restarted_and_reported_to_the_recovery():
    """On a real Ray, with stand-ins for the GPU processes. Bug caught: a watchdog timeout with no dead process
    (Ray reports no death) ending as SyncFailed([], []), which Roles.sync re-raises instead of recovering, and the
    stuck engines left blocked in the aborted group (every later call to them would queue behind it)."""
    import ray

    from actors.roles import wait_restarted
    from actors.weight_sync import WeightSync

    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    try:
        rank = ray.remote(StandInPolicyRank).remote()
        engines = [ray.remote(StandInEngine).options(max_restarts=1).remote() for _ in range(2)]
        pids = ray.get([e.pid.remote() for e in engines])
        sync = object.__new__(WeightSync)
        sync.policy, sync.engines, sync.timeout, sync.buckets, sync.shared = \
            types.SimpleNamespace(actors=[rank]), engines, 2.0, [], False
        sync.get = lambda refs, what: ray.get(refs, timeout=2.0)
        with pytest.raises(SyncFailed) as info:
            sync(1)
        assert info.value.engines == [0, 1] and info.value.policy_ranks == []
        assert "watchdog" in str(info.value)
        for k, e in enumerate(engines):  # as Roles.sync then waits for them
            wait_restarted(e, f"rollout engine {k}", 60)
        again = ray.get([e.pid.remote() for e in engines], timeout=60)  # restarted: fresh processes answer
        assert all(a != b for a, b in zip(again, pids))
    finally:
        ray.shutdown()
