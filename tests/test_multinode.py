"""Across nodes: a local two-node Ray cluster (a head and a second raylet, each with its own CPUs, as Ray's own tests
build one) runs `rlaif train` with the policy ranks and the rollout engines spread one per node (STRICT_SPREAD):
DeepSpeed's rendezvous between the ranks and the weight sync from policy rank 0 into the engine on the other node
both cross nodes, and the run finishes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import REPO

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "resources": {"node_a": 1}})
    cluster.add_node(num_cpus=4, resources={"node_b": 1})
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def test_policy_ranks_and_engines_on_different_nodes(two_nodes, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "rlaif.cli", "train", "--config", "configs/debug.yaml", f"output_dir={out}",
         f"ray.address={two_nodes.address}", "ray.placement_policy=STRICT_SPREAD",
         "ray.placement_rollout=STRICT_SPREAD", "policy.num_ranks=2", "policy.zero_stage=3", "rollout.num_engines=2",
         "trainer.steps=2", "trainer.progress=false", "wandb.enabled=false"],
        cwd=REPO, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, capture_output=True, text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    placement = json.loads((out / "logs" / "placement.json").read_text())
    assert len(set(placement["policy"])) == 2, placement  # one ZeRO-3 rank per node
    assert len(set(placement["rollout"])) == 2, placement  # so one engine is on the other node than policy rank 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "weight_sync/bytes" in r]
    assert len(steps) == 2 and all(r["weight_sync/bytes"] > 0 for r in steps)
    # rollout.sync_transport=auto: an engine on another node cannot map policy rank 0's /dev/shm, so: broadcast
    assert all(r["weight_sync/shared_buffer"] == 0 for r in steps)


def test_losing_an_engines_node_regenerates_its_part_and_the_run_goes_on(tmp_path):
    """A node is removed (its raylet killed, as a preempted or crashed VM) while the run is in its RL loop; it held
    one rollout engine, and possibly the labeler, reference or PM scorer. Ray reschedules the engine's bundle on the
    node that is left free and restarts the actors; the trainer resubmits the lost part of the batch (or repeats the
    weight sync, if the node went during one) and finishes every step with every sample. Bugs caught: an
    ObjectLostError or ActorDiedError from the lost node escaping as a traceback (exit 1), the part not resubmitted
    (samples missing), a retry loop that never ends (timeout), the restart not counted in faults/*."""
    import psutil
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    # The head holds no CPU, so every actor is on a worker node that may be removed; three workers with room for
    # every role twice over, so whichever node is lost, the rest can host what it held.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        workers = [cluster.add_node(num_cpus=8) for _ in range(3)]
        cluster.wait_for_nodes()
        out = tmp_path / "run"
        steps = 3
        proc = subprocess.Popen(
            [sys.executable, "-m", "rlaif.cli", "train", "--config", "configs/debug.yaml", f"output_dir={out}",
             f"ray.address={cluster.address}", "ray.placement_rollout=STRICT_SPREAD", "policy.num_ranks=1",
             "rollout.num_engines=2", f"trainer.steps={steps}", "trainer.progress=false", "wandb.enabled=false",
             "trainer.timeout_s=180", "rl.use_preference_model=false", "rl.reward_functions=[rlaif.rewards:brevity]",
             "labeler.human_eval=", "labeler.audit_samples=0"],  # no PM stage: the RL loop is what is tested
            cwd=REPO, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        metrics = out / "metrics.jsonl"
        deadline = time.monotonic() + 600
        while not (metrics.is_file() and '"time/step"' in metrics.read_text()):  # RL step 1 is done
            assert proc.poll() is None, proc.communicate()[1][-4000:]
            assert time.monotonic() < deadline, "no RL step within 600 s"
            time.sleep(0.05)
        placement = json.loads((out / "logs" / "placement.json").read_text())
        victim = next(n for n in workers if n.node_id in placement["rollout"] and n.node_id not in placement["policy"])
        # The driver is frozen while the node goes and until every process the node ran has exited: on the debug
        # model the two steps left take under a second, less than an orphaned worker takes to notice its raylet is
        # gone, so without the freeze the run could end before its engine died (a CI run did: no restart, no fault).
        raylet = victim.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
        node_procs = psutil.Process(raylet).children(recursive=True)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            cluster.remove_node(victim, allow_graceful=False)
            _, alive = psutil.wait_procs(node_procs, timeout=120)
            assert not alive, f"processes of the removed node still run: {alive}"
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-4000:]
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        done = {r["step"]: r for r in rows if "time/step" in r}
        assert sorted(done) == list(range(1, steps + 1))
        assert all(r["rollout/samples"] == 4 * 2 for r in done.values())  # rl.prompts_per_step x rollout.n_samples
        # the lost engine was restarted, and counted: as a rollout fault when its call failed, as a weight-sync
        # fault when the sync broke before Ray reported the node dead
        assert done[steps]["faults/restarts"] >= 1, done[steps]
    finally:
        cluster.shutdown()
