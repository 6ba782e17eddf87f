"""The peer benchmark's inputs (bench/peer.yaml, bench/peer_prompts.txt, rlaif.rewards:length_200) still describe
the workload of DESIGN.md section 8 that bench/bench_vs_trl.py compares with TRL."""

import pytest

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


# -- bench/bench_mfu.py's FLOP counts against torch's FlopCounterMode ----------------------------------------------

def _tiny_llama(tied: bool = True):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=tied,
                      attn_implementation="eager")  # eager: attention is plain matmuls the counter sees
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def _bench_mfu():
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    import bench_mfu

    return bench_mfu


def _rl_batch():
    """Two samples of unequal prompt and response lengths, as rlaif.logprobs packs them."""
    import torch

    from rlaif.batch import Batch

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 512, (n,), generator=g).tolist() for n in (40, 25)]
    responses = [torch.randint(3, 512, (n,), generator=g).tolist() for n in (30, 55)]
    return Batch.from_token_lists(prompts, responses, 0, prompt=["", ""], response=["", ""])


def test_matmul_params_split_body_and_lm_head():
    """A tied embedding is the LM head's weight, counted once as the head; an untied input embedding is a lookup,
    norm weights no matmul: counting the embedding (or the head twice) would inflate every phase's FLOPs by ~20% on
    SmolLM2."""
    mfu = _bench_mfu()
    for tied in (True, False):
        model = _tiny_llama(tied)
        body, head = mfu.matmul_params(model)
        assert head == 512 * 128
        assert body == sum(p.numel() for p in model.model.layers.parameters() if p.dim() == 2)


def test_update_and_reference_flops_match_torch_flop_counter():
    """update_flops (6 N T + 12 L h s T, the LM head on response positions only) and forward_flops (a third of it)
    against FlopCounterMode over rlaif's own response_logprobs (packed=False: one forward per sequence, so the
    attention the counter sees is each sequence's own): within 1% (measured: exact). Counting the LM head over the
    prompt tokens too (6 N T as gpu_check.train_flops does for a plain LM loss: +5.7% here) or counting forward only
    for the update fails this."""
    from torch.utils.flop_counter import FlopCounterMode

    from rlaif.logprobs import batch_logprobs, response_logprobs

    mfu = _bench_mfu()
    model, batch = _tiny_llama(), _rl_batch()
    body, head = mfu.matmul_params(model)
    seqs = mfu.batch_seqs(batch)
    assert seqs == [(70, 30), (80, 55)]
    with FlopCounterMode(display=False) as counter:
        response_logprobs(model, batch, packed=False).sum().backward()
    assert counter.get_total_flops() == pytest.approx(mfu.update_flops(body, head, 2, 128, seqs), rel=0.01)
    with FlopCounterMode(display=False) as counter:
        batch_logprobs(model, batch, 2, packed=False)
    assert counter.get_total_flops() == pytest.approx(mfu.forward_flops(body, head, 2, 128, seqs), rel=0.01)


def test_generation_flops_match_a_kv_cache_decode():
    """generation_flops' matmul part (layers = 0: no attention) against FlopCounterMode's linear-layer FLOPs (mm,
    addmm) of one prompt's prefill and two samples decoded token by token from its KV cache, as vLLM samples n
    completions of a prompt: exact. Counting the prompt once per sample, or the LM head on every prompt token,
    fails this."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    mfu = _bench_mfu()
    model = _tiny_llama()
    body, head = mfu.matmul_params(model)
    prompt, lengths = torch.randint(3, 512, (1, 9)), [4, 6]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        cache = model(input_ids=prompt, use_cache=True, logits_to_keep=1).past_key_values
        for r in lengths:
            kv = copy.deepcopy(cache)
            for _ in range(r - 1):  # the last sampled token is never fed back
                kv = model(input_ids=torch.randint(3, 512, (1, 1)), past_key_values=kv, use_cache=True).past_key_values
    ops = counter.get_flop_counts()["Global"]
    linear = sum(v for op, v in ops.items() if str(op).split(".")[1] in ("mm", "addmm"))
    assert linear == mfu.generation_flops(body, head, 0, 128, [(9, lengths)])
    assert mfu.generation_flops(body, head, 2, 128, [(9, lengths)]) > linear  # + the attention term
