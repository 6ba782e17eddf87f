"""The trainer and vLLM agree: at T = 0.7 with top-p 0.9 the policy's and the reference's log-probs of vLLM's samples
are vLLM's own; after a real DeepSpeed ZeRO-3 update on two ranks, vLLM generates exactly what transformers does with
the trained weights (same greedy tokens, same log-probs)."""

import dataclasses

import pytest
import ray
import torch

from actors.group import ActorGroup, get
from actors.policy import PolicyWorker
from actors.reference import ReferenceWorker
from actors.rollout import RolloutEngines, RolloutWorker
from actors.weight_sync import WeightSync
from rlaif.config import load_config
from rlaif.models import load_causal_lm
from rlaif.rl.logprobs import batch_logprobs

from .conftest import REPO

pytestmark = pytest.mark.e2e
PROMPTS = ["How do I bake bread?", "Write a short poem about the sea.", "How do I pick a lock?", "What is a prime?"]


@pytest.fixture(scope="module")
def roles(tmp_path_factory):
    cfg = load_config(REPO / "configs/debug.yaml", [
        f"output_dir={tmp_path_factory.mktemp('sync')}", "policy.zero_stage=3", "policy.num_ranks=2",
        "policy.lr=0.05", "rl.prompts_per_step=4", "rollout.n_samples=2", "policy.micro_batch_size=2",
        "rollout.max_new_tokens=24", "rollout.sync_bucket_mb=1",  # several buckets for a 2.2 MB model
        "policy.model.dtype=float32",  # exact agreement to 1e-4 needs fp32; bf16: test_a_bf16_policy_reaches_vllm...
    ])
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    policy = ActorGroup(PolicyWorker, 2, cfg, timeout=300, name="policy")
    rollout = ray.remote(RolloutWorker).options(num_cpus=1).remote(cfg)
    yield cfg, policy, rollout
    policy.shutdown()
    ray.shutdown()


def logprobs(policy, batch):
    return torch.cat(policy.call_sharded("logprobs", batch.split(2)))


def masked_max_diff(a, b, batch):
    return ((a - b).abs() * batch.response_mask).max().item()


# Runs first: the reference must still equal the policy's starting weights.
def test_trainer_and_reference_logprobs_describe_what_vllm_sampled(roles):
    cfg, policy, rollout = roles
    batch = get(rollout.generate.remote(PROMPTS, 2, 5, temperature=0.7, top_p=0.9), 300, "sample")
    assert batch.meta["temperature"] == 0.7 and batch.meta["top_p"] == 0.9 and batch.token_count() > 40
    mine = logprobs(policy, batch)
    assert masked_max_diff(mine, batch["sampler_logprobs"], batch) < 1e-4
    reference = ReferenceWorker(cfg)
    raw = batch_logprobs(reference.model, batch, 4)  # T = 1, no top-p
    assert masked_max_diff(raw, batch["sampler_logprobs"], batch) > 0.05  # what a trainer ignoring T would use

    # The reference (same weights): the sampling temperature and its own nucleus, so KL = 0 at top_p < 1 too.
    ref = reference.logprobs(batch)
    assert masked_max_diff(ref, batch["sampler_logprobs"], batch) < 1e-4


def rollout_path(rollout) -> str:
    return get(rollout.__ray_call__.remote(lambda self: self.path), 60, "path")


def test_two_engines_sample_what_one_engine_samples(roles):
    """rollout.num_engines=2: prompts balanced over the engines by length, each keeping its own seed, gathered back
    in order: the same tokens as one engine sampling every prompt with those seeds."""
    cfg, _, _ = roles
    two = RolloutEngines(dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, num_engines=2)), 0, 300)
    try:
        prompts = PROMPTS + ["Tell me a joke about cats.", "Explain photosynthesis briefly."]
        split = two.generate(prompts, 2, 11, temperature=0.7)
        alone = get(two.actors[0].generate.remote(prompts, 2, 11, temperature=0.7), 300, "one engine")
        assert split.texts["prompt"] == alone.texts["prompt"] == [p for p in prompts for _ in range(2)]
        assert split.response_lists() == alone.response_lists()
        assert torch.equal(split["sampler_logprobs"], alone["sampler_logprobs"])
    finally:
        for a in two.actors:
            ray.kill(a)


def greedy(rollout, seed=0):
    return get(rollout.generate.remote(PROMPTS, 1, seed, temperature=0.0, max_new_tokens=16), 300, "greedy")


@pytest.mark.parametrize("transport", ["shared", "broadcast"])
def test_vllm_matches_transformers_after_a_zero3_update(roles, tmp_path, transport):
    """After a ZeRO-3 update on 2 ranks and a weight sync through /dev/shm (shared) or a gloo broadcast, vLLM samples
    what transformers computes from the saved checkpoint. Bugs caught: a bucket cut or ordered wrongly, ZeRO-3 shards
    sent ungathered, the reload skipping vLLM's CPU weight repacking, the transport setting ignored."""
    cfg, policy, rollout = roles
    cfg = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, sync_transport=transport))
    before = greedy(rollout)
    batch = get(rollout.generate.remote(PROMPTS, 2, 1), 300, "sample")
    batch["advantages"] = torch.where(torch.arange(8) % 2 == 0, 1.0, -1.0)[:, None] * batch.response_mask
    batch.meta["denom"] = float(batch.token_count())
    metrics = policy.call_sharded("train", batch.split(2), 0.0)
    assert all(abs(m["approx_kl_old"]) < 1e-6 for m in metrics)  # first step: ratio 1 (one optimizer step)

    sync = WeightSync(cfg, policy, [rollout])  # bucketed, from both ZeRO-3 ranks' shards
    metrics = sync(version=1)
    assert metrics["weight_sync/shared_buffer"] == (transport == "shared")
    params = load_causal_lm(rollout_path(rollout)).parameters()
    assert metrics["weight_sync/bytes"] == sum(p.numel() * 4 for p in params)  # every parameter, once
    after = greedy(rollout)
    checkpoint = policy.call("save", str(tmp_path / "ckpt"), {"README.md": "test checkpoint"})[0]
    assert checkpoint is not None

    model = load_causal_lm(checkpoint).eval()
    prompts, responses = after.prompt_lists(), after.response_lists()
    hf_lp = batch_logprobs(model, after, 4)
    changed = 0
    for i in range(len(PROMPTS)):
        with torch.no_grad():
            hf = model.generate(torch.tensor([prompts[i]]), max_new_tokens=16, do_sample=False, pad_token_id=0,
                                eos_token_id=None)
        hf_ids = hf[0, len(prompts[i]):].tolist()[: len(responses[i])]
        assert responses[i] == hf_ids, f"prompt {i}: vLLM greedy {responses[i]} != transformers greedy {hf_ids}"
        n = len(responses[i])
        assert after["sampler_logprobs"][i, :n].tolist() == pytest.approx(hf_lp[i, :n].tolist(), abs=1e-4)
        changed += not torch.allclose(before["sampler_logprobs"][i], after["sampler_logprobs"][i], atol=1e-3)
    assert changed == len(PROMPTS), "the update did not reach vLLM"
    # the trained policy's own log-probs (through DeepSpeed) agree with the checkpoint's in transformers
    assert masked_max_diff(logprobs(policy, dataclasses.replace(after)), hf_lp, after) < 1e-4


def test_zero_stage_0_takes_the_same_step_as_zero_2(roles):
    """policy.zero_stage=0 (nothing partitioned: the fast choice on one rank) must train exactly what ZeRO-2 trains,
    here on two ranks. Bugs caught: stage 0 not averaging the two ranks' gradients (each rank would step on its own
    shard and the ranks drift apart), accumulation or clipping scaled differently, the stage setting ignored."""
    cfg, _, rollout = roles
    batch = get(rollout.generate.remote(PROMPTS, 2, 3), 300, "sample")
    batch["advantages"] = torch.where(torch.arange(8) % 2 == 0, 1.0, -1.0)[:, None] * batch.response_mask
    batch.meta["denom"] = float(batch.token_count())
    after, before = {}, None
    for stage in (0, 2):
        c = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, zero_stage=stage, lr=1e-3))
        group = ActorGroup(PolicyWorker, 2, c, timeout=300, name=f"policy-zero{stage}")
        try:
            assert group.call("__ray_call__", lambda self: self.engine.zero_optimization_stage()) == [stage, stage]
            before = logprobs(group, batch) if before is None else before
            group.call_sharded("train", batch.split(2), 0.0)
            # each rank scores the whole batch: ranks that drifted apart disagree
            both = group.call("logprobs", batch)
            assert masked_max_diff(both[0], both[1], batch) < 1e-6
            after[stage] = both[0]
        finally:
            group.shutdown()
    assert masked_max_diff(after[0], before, batch) > 0.05  # the step moved the policy
    assert masked_max_diff(after[0], after[2], batch) < 1e-3


def test_a_bf16_policy_reaches_vllm_and_their_log_probs_agree_to_bf16_precision(roles):
    """The default where the CPU computes bf16 (model.dtype auto): DeepSpeed trains in bf16 (fp32 master weights), vLLM
    serves bf16, the sync sends 2 bytes a parameter. After a large step, vLLM's log-probs of its own samples agree with
    the trainer's to bf16 precision: far closer than before the sync. Bugs caught: bf16 weights upcast on the way
    (4 bytes a parameter), the update not reaching a bf16 engine, a bf16 mismatch so large TIS would clip it all."""
    cfg, _, _ = roles
    cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, zero_stage=2, model=dataclasses.replace(
        cfg.policy.model, dtype="bfloat16")))
    group = ActorGroup(PolicyWorker, 2, cfg, timeout=300, name="policy-bf16")
    engine = ray.remote(RolloutWorker).options(num_cpus=1).remote(cfg)
    try:
        batch = get(engine.generate.remote(PROMPTS, 2, 1), 300, "sample")
        start = masked_max_diff(logprobs(group, batch), batch["sampler_logprobs"], batch)
        batch["advantages"] = torch.where(torch.arange(8) % 2 == 0, 1.0, -1.0)[:, None] * batch.response_mask
        batch.meta["denom"] = float(batch.token_count())
        group.call_sharded("train", batch.split(2), 0.0)
        fresh = get(engine.generate.remote(PROMPTS, 2, 2), 300, "sample")
        stale = masked_max_diff(logprobs(group, fresh), fresh["sampler_logprobs"], fresh)
        metrics = WeightSync(cfg, group, [engine])(version=1)
        params = load_causal_lm(rollout_path(engine)).parameters()
        assert metrics["weight_sync/bytes"] == sum(p.numel() * 2 for p in params)
        synced = get(engine.generate.remote(PROMPTS, 2, 2), 300, "sample")
        diff = (logprobs(group, synced) - synced["sampler_logprobs"]).abs() * synced.response_mask
        mean = (diff.sum() / synced.response_mask.sum()).item()
        print(f"bf16 vLLM vs trainer: max {start:.4f} at start, {stale:.4f} before the sync, "
              f"{diff.max().item():.4f} after (mean {mean:.5f})")
        assert stale > 0.5 and diff.max().item() < 0.2 * stale and mean < 0.02
    finally:
        group.shutdown()
        ray.kill(engine)


@ray.remote(num_cpus=0)
class _Peer:
    def fail(self) -> None:
        raise RuntimeError("Connection closed by peer")  # what gloo tells the sender when a receiver dies

    def die_in(self, seconds: float) -> None:
        import os
        import time

        time.sleep(seconds)
        os._exit(1)


def test_a_receiver_that_dies_after_the_sender_failed_is_named_dead(roles):
    """The sender's gloo error arrives before Ray fails the dead engine's call. Bug caught (CI, stop 13): the deaths
    were read at once, no engine was named dead, so the trainer did not restart the engine and the run ended."""
    from actors.weight_sync import sync_failure

    sender, engine = _Peer.remote(), _Peer.remote()
    sends, receives = [sender.fail.remote()], [engine.die_in.remote(1.0)]
    with pytest.raises(ray.exceptions.RayTaskError):
        ray.get(sends)
    failure = sync_failure(sends, receives, grace_s=30)
    assert failure.engines == [0] and failure.policy_ranks == []
