"""ZeRO-3 exports gather layer by layer to rank 0 (issue 17, defect 4), on two real DeepSpeed ZeRO-3 ranks (gloo, CPU).

The export (PolicyWorker.save: every eval snapshot and the final model; the preference model's save uses the same
actors.group.full_state_dict) must hold the unsharded model's exact weights, and no rank may gather the whole model at
once: GatheredParameters(all parameters, modifier_rank=None) put a full copy on every GPU. What each rank gathers is
read by wrapping DeepSpeed's own GatheredParameters.__enter__ in the rank's process (the real gather still runs)."""

from __future__ import annotations

import math

import pytest
import ray
import torch
from safetensors.torch import load_file

from actors.group import ActorGroup
from actors.policy import PolicyWorker
from rlaif.config import load_config
from rlaif.models import load_causal_lm

from .conftest import REPO

pytestmark = pytest.mark.e2e


def record_gathers(worker) -> None:
    """In a rank's process: remember the most parameter elements one GatheredParameters context gathers."""
    import deepspeed

    ctx_cls = deepspeed.zero.GatheredParameters
    real = ctx_cls.__enter__
    worker.gathered_max = 0

    def enter(ctx):
        if ctx.enabled:
            worker.gathered_max = max(worker.gathered_max, sum(getattr(p, "ds_numel", p.numel()) for p in ctx.params))
        return real(ctx)

    ctx_cls.__enter__ = enter


@pytest.fixture(scope="module")
def zero3_policy(tmp_path_factory):
    cfg = load_config(REPO / "configs/debug.yaml", [
        f"output_dir={tmp_path_factory.mktemp('zero3')}", "policy.zero_stage=3", "policy.num_ranks=2",
    ])
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    policy = ActorGroup(PolicyWorker, 2, cfg, timeout=300, name="policy")
    yield cfg, policy
    policy.shutdown()
    ray.shutdown()


def test_zero3_export_is_the_unsharded_model_and_no_rank_gathers_all_of_it(zero3_policy, tmp_path, tiny_path):
    """Bugs caught: a gather of every parameter at once on every rank (the old GatheredParameters(all,
    modifier_rank=None): rank 1's largest gather is then the whole model); an export written from partitions
    (empty or 1/2-sized tensors) or from a gathered buffer reused by the next layer (wrong values)."""
    cfg, policy = zero3_policy
    ray.get([a.__ray_call__.remote(record_gathers) for a in policy.actors])
    paths = policy.call("save", str(tmp_path / "export"), {"README.md": "test export\n"})
    assert paths[0] and paths[1] is None  # rank 0 writes, the others only take part in the gathers
    saved = load_file(f"{paths[0]}/model.safetensors")

    unsharded = load_causal_lm(tiny_path, cfg.policy.model.dtype).state_dict()  # bf16 where the CPU has it
    for name, tensor in unsharded.items():
        if name in saved:
            assert torch.equal(saved[name], tensor), name
        else:  # a tied weight: saved once, under the name it is tied to
            assert name == "lm_head.weight" and any(torch.equal(v, tensor) for v in saved.values()), name
    assert set(saved) <= set(unsharded)

    total = sum(math.prod(t.shape) for t in dict(load_causal_lm(tiny_path).named_parameters()).values())
    largest = ray.get([a.__ray_call__.remote(lambda self: self.gathered_max) for a in policy.actors])
    assert 0 < largest[1] < total / 2, f"rank 1 gathered {largest[1]} of {total} parameters at once"
    assert largest[0] < total / 2, f"rank 0 gathered {largest[0]} of {total} parameters at once"
