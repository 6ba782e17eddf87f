"""The peer benchmark's inputs (bench/peer.yaml, bench/peer_prompts.txt, rlaif.rewards:length_200) still describe
the workload of DESIGN.md section 8 that bench/bench_vs_trl.py compares with TRL."""

from rlaif.algorithms import needs_old_logprobs, needs_reference
from rlaif.config import load_config
from rlaif.rewards import length_200
from rlaif.sources import load_prompt_mix

from .conftest import REPO


def test_length_reward_is_minus_distance_to_200_characters_over_200():
    assert length_200(["p"] * 4, ["", "x" * 200, "y" * 450, "z" * 150]) == [-1.0, 0.0, -1.25, -0.25]


def test_peer_config_is_the_peer_workload():
    cfg = load_config(REPO / "bench/peer.yaml", [f"data.prompts={REPO / 'bench/peer_prompts.txt'}"])
    assert cfg.policy.model.path == "builtin:smollm2-135m" and cfg.policy.model.dtype == "float32"
    assert cfg.rl.prompts_per_step * cfg.rollout.n_samples == 32 and cfg.rollout.n_samples == 2
    assert cfg.rollout.max_new_tokens == 64 and cfg.rollout.temperature == 1.0 and cfg.policy.lr == 1e-6
    assert cfg.rl.algorithm == "grpo" and cfg.rl.reward_functions == ["rlaif.rewards:length_200"]
    assert not cfg.rl.use_preference_model and cfg.rl.label_every > cfg.trainer.steps
    # beta = 0 and one epoch: neither a reference pass nor an "old" log-prob pass runs (as in TRL)
    assert not needs_reference(cfg.rl) and not needs_old_logprobs(cfg.rl)
    assert cfg.data.eval_fraction == 0.0  # all 32 prompts train, as TRL's dataset does
    prompts = load_prompt_mix(cfg.data.prompts).prompts
    assert len(prompts) == 32  # 32 distinct questions (duplicates would be dropped)
