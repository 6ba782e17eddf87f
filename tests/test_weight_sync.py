"""After a real DeepSpeed ZeRO-3 update on two ranks, vLLM generates exactly what transformers does with the
trained weights: same greedy tokens, same log-probs."""

import random

import pytest
import ray
import torch

from actors.group import ActorGroup, get
from actors.policy import PolicyWorker
from actors.rollout import RolloutWorker
from rlaif.config import load_config
from rlaif.models import load_causal_lm, token_logprobs

from .conftest import REPO

pytestmark = pytest.mark.e2e
PROMPTS = ["How do I bake bread?", "Write a short poem about the sea.", "How do I pick a lock?", "What is a prime?"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def greedy(rollout, seed=0):
    return get(rollout.generate.remote(PROMPTS, 1, seed, temperature=0.0, max_new_tokens=16), 300, "greedy")


def test_vllm_matches_transformers_after_a_zero3_update(local_ray, tmp_path):
    cfg = load_config(REPO / "configs/debug.yaml", [
        f"output_dir={tmp_path}", "policy.zero_stage=3", "policy.num_ranks=2", "policy.lr=0.05",
        "rl.prompts_per_step=4", "rollout.n_samples=2", "policy.micro_batch_size=2",
    ])
    policy = ActorGroup(PolicyWorker, 2, cfg, timeout=300, name="policy")
    rollout = ray.remote(RolloutWorker).options(num_cpus=1).remote(cfg)
    before = greedy(rollout)

    samples = get(rollout.generate.remote(PROMPTS, 2, 1), 300, "sample")
    batch = {"prompt_ids": samples["prompt_ids"], "response_ids": samples["response_ids"]}
    shards = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]
    old = [x for part in policy.call_sharded("logprobs", shards) for x in part]
    rng = random.Random(0)
    batch.update(old_logprobs=old, sampler_logprobs=samples["logprobs"],
                 advantages=[[rng.choice([-1.0, 1.0])] * len(r) for r in samples["response_ids"]])
    shards = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]
    metrics = policy.call_sharded("train", shards, 0.0)
    assert all(m["loss"] == m["loss"] for m in metrics)

    refs = [a.state_dict.remote() for a in policy.actors]
    get(rollout.load_weights.remote(refs[0], 1), 300, "load_weights")
    after = greedy(rollout)
    checkpoint = policy.call("save", str(tmp_path / "ckpt"))[0]
    assert checkpoint is not None

    model = load_causal_lm(checkpoint).eval()
    changed = 0
    for i in range(len(PROMPTS)):
        prompt, vllm_ids = after["prompt_ids"][i], after["response_ids"][i]
        with torch.no_grad():
            hf = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, pad_token_id=0,
                                eos_token_id=None)
        hf_ids = hf[0, len(prompt):].tolist()[: len(vllm_ids)]
        assert vllm_ids == hf_ids, f"prompt {i}: vLLM greedy {vllm_ids} != transformers greedy {hf_ids}"
        ids = torch.tensor([prompt + vllm_ids])
        with torch.no_grad():
            hf_lp = token_logprobs(model, ids, torch.ones_like(ids))[0, len(prompt) - 1 :].tolist()
        assert after["logprobs"][i] == pytest.approx(hf_lp, abs=1e-4)
        changed += before["logprobs"][i] != pytest.approx(after["logprobs"][i], abs=1e-3)
    assert changed == len(PROMPTS), "the update did not reach vLLM"
    policy.shutdown()
