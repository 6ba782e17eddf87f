"""Across nodes: a local two-node Ray cluster (a head and a second raylet, each with its own CPUs, as Ray's own tests
build one) runs `rlaif train` with the policy ranks and the rollout engines spread one per node (STRICT_SPREAD):
DeepSpeed's rendezvous between the ranks and the weight sync from policy rank 0 into the engine on the other node
both cross nodes, and the run finishes."""

import json
import os
import subprocess
import sys

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
