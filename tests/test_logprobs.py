"""Trainer-side log-probs and values: packed (padding-free) forwards, temperature and top-p as vLLM samples them,
chunked log-softmax, and dropout switched off. References: a plain padded forward, vLLM's own top-p code, and
hand-computed values."""

import math

import pytest
import torch

import rlaif.rl.logprobs as lpmod
from rlaif.data.loader import pad_sequences
from rlaif.models import disable_dropout, load_causal_lm, load_scalar_model
from rlaif.rl.batch import Batch
from rlaif.rl.logprobs import logprobs_from_logits, nucleus_mask, response_logprobs, response_values

PROMPTS = [[1, 5, 6, 7, 8, 9], [1, 10, 11], [1, 12, 13, 14, 15, 16, 17, 18, 19]]
RESPONSES = [[20, 21, 22], [23, 24, 25, 26, 27, 28, 29], [30]]


@pytest.fixture(scope="module")
def model(tiny_path):
    return load_causal_lm(tiny_path).eval()


def padded_reference(model, temperature: float) -> list[list[float]]:
    """log_softmax(logits / T) from an ordinary right-padded forward with an attention mask."""
    ids, attn, _ = pad_sequences(PROMPTS, RESPONSES, 0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float() / temperature
    lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return [lp[i, len(p) - 1 : len(p) - 1 + len(r)].tolist() for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES))]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_packed_logprobs_match_a_padded_forward(model, temperature):
    batch = Batch.from_token_lists(PROMPTS, RESPONSES, pad_id=0)
    with torch.no_grad():
        got = response_logprobs(model, batch, temperature)
    assert got.shape == (3, 7)
    for i, ref in enumerate(padded_reference(model, temperature)):
        assert got[i, : len(ref)].tolist() == pytest.approx(ref, abs=1e-5)
        assert got[i, len(ref) :].abs().sum() == 0  # padding stays 0
    # at T = 0.7 the distribution really differs from the raw one: a trainer ignoring T would be caught above
    assert padded_reference(model, 0.7)[1] != pytest.approx(padded_reference(model, 1.0)[1], abs=1e-2)


def test_nucleus_mask_is_vllms():
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    torch.manual_seed(0)
    logits = torch.randn(64, 300) * 3
    for p in (0.3, 0.7, 0.9, 0.99):
        theirs = apply_top_k_top_p_pytorch(logits.clone(), None, torch.full((64,), p)) == float("-inf")
        assert torch.equal(nucleus_mask(logits, p), theirs)
        assert 0 < theirs.sum() < theirs.numel()


def test_top_p_logprobs_hand_values():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]] * 3)
    # softmax = [.644, .237, .087, .032]; ascending cumsum .032, .119, .356, 1: top_p 0.8 drops the last two tokens
    lp = logprobs_from_logits(logits, torch.tensor([0, 1, 3]), temperature=1.0, top_p=0.8)
    assert lp[0].item() == pytest.approx(-math.log(1 + math.exp(-1)), abs=1e-6)
    assert lp[1].item() == pytest.approx(-math.log(1 + math.exp(1)), abs=1e-6)
    # a sampled token outside the trainer's nucleus (fp rounding at the edge) counts as inside, never -inf
    assert lp[2].item() == pytest.approx(-1 - math.log(math.exp(2) + math.exp(1) + math.exp(-1)), abs=1e-6)
    # temperature divides the logits before the softmax
    lp = logprobs_from_logits(logits[:1], torch.tensor([1]), temperature=0.5)
    assert lp.item() == pytest.approx(2 - math.log(sum(math.exp(2 * x) for x in (2, 1, 0, -1))), abs=1e-6)


def test_chunked_logprobs_and_gradients_match_one_log_softmax(monkeypatch):
    monkeypatch.setattr(lpmod, "CHUNK_ELEMENTS", 3 * 50)  # 3 rows per chunk: several chunks, one partial
    torch.manual_seed(1)
    logits = torch.randn(10, 50, requires_grad=True)
    targets = torch.randint(0, 50, (10,))
    got = logprobs_from_logits(logits, targets, temperature=0.8)
    (got * torch.arange(10.0)).sum().backward()
    grad = logits.grad.clone()
    logits.grad = None
    ref = torch.log_softmax(logits / 0.8, -1).gather(-1, targets[:, None]).squeeze(-1)
    (ref * torch.arange(10.0)).sum().backward()
    assert got.tolist() == pytest.approx(ref.tolist(), abs=1e-6)
    assert torch.allclose(grad, logits.grad, atol=1e-6)


def test_packed_values_match_a_padded_forward(tiny_path):
    critic = load_scalar_model(tiny_path).eval()
    batch = Batch.from_token_lists(PROMPTS, RESPONSES, pad_id=0)
    ids, attn, _ = pad_sequences(PROMPTS, RESPONSES, 0)
    with torch.no_grad():
        got = response_values(critic, batch)
        hidden = critic.base_model(input_ids=ids, attention_mask=attn).last_hidden_state
        ref = critic.score(hidden).squeeze(-1)[:, :-1]
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        assert got[i, : len(r)].tolist() == pytest.approx(ref[i, len(p) - 1 : len(p) - 1 + len(r)].tolist(), abs=1e-5)


def test_disable_dropout_makes_the_first_ratio_one(tiny_path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_path)
    config.attention_dropout = 0.5
    model = type(load_causal_lm(tiny_path)).from_pretrained(tiny_path, config=config).train()
    batch = Batch.from_token_lists(PROMPTS, RESPONSES, pad_id=0)
    torch.manual_seed(0)
    with torch.no_grad():
        a, b = response_logprobs(model, batch), response_logprobs(model, batch)
    assert not torch.allclose(a, b)  # train-mode dropout: the "same" policy gives two different log-probs
    disable_dropout(model)
    with torch.no_grad():
        a, b = response_logprobs(model, batch), response_logprobs(model, batch)
        model.eval()
        c = response_logprobs(model, batch)
    assert torch.equal(a, b) and torch.allclose(a, c, atol=1e-6)


def test_identical_policy_and_reference_at_top_p_give_kl_0_and_dpo_loss_ln2(model):
    """Issue 16.13: at T = 0.7, top_p = 0.9, a reference equal to the policy must give KL 0 and the online-DPO loss
    ln 2 at step 0. Bug caught: a reference scored without the nucleus is off by -log Z on every token (KL > 0, DPO
    loss off ln 2). Both actors' own methods are called, with the tiny model standing in for the DeepSpeed engine."""
    from types import SimpleNamespace

    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    from actors.policy import PolicyWorker
    from actors.reference import ReferenceWorker
    from rlaif.config import RLConfig
    from rlaif.rl.algorithms import make_experience, policy_loss

    torch.manual_seed(0)  # 2 prompts x 2 responses, sampled from the policy at T = 0.7, top_p = 0.9
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[2], PROMPTS[2]]
    with torch.no_grad():
        responses = [model.generate(torch.tensor([p]), do_sample=True, temperature=0.7, top_p=0.9, top_k=0,
                                    max_new_tokens=6 + i, pad_token_id=0, eos_token_id=None)[0, len(p):].tolist()
                     for i, p in enumerate(prompts)]
    batch = Batch.from_token_lists(prompts, responses, pad_id=0)
    batch.meta.update(temperature=0.7, top_p=0.9)
    policy = object.__new__(PolicyWorker)
    policy.engine, policy.cfg = model, SimpleNamespace(policy=SimpleNamespace(micro_batch_size=2, packing=True))
    reference = object.__new__(ReferenceWorker)
    reference.model, reference.batch_size, reference.packing = model, 3, True  # other micro-batches: no effect
    mine, ref = policy.logprobs(batch), reference.logprobs(batch)
    mask = batch.response_mask

    # Independent check of what both describe: log(softmax(l / T)[t] / Z), Z the mass of vLLM's own nucleus.
    with torch.no_grad():
        ids = torch.tensor([prompts[0] + responses[0]])
        logits = model(input_ids=ids).logits[0, len(prompts[0]) - 1 : -1].float() / 0.7
    kept = apply_top_k_top_p_pytorch(logits.clone(), None, torch.full((len(logits),), 0.9)) > float("-inf")
    probs = logits.softmax(-1)
    expected = (probs.gather(-1, torch.tensor(responses[0])[:, None]).squeeze(-1) / (probs * kept).sum(-1)).log()
    assert ref[0, : len(responses[0])].tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert (probs * kept).sum(-1).max() < 0.99  # the nucleus really cuts: a reference without it differs

    cfg = RLConfig(algorithm="online-dpo", kl_estimator="k1", dpo_preference="reward", dpo_beta=1.0)
    batch["ref_logprobs"], batch["old_logprobs"] = ref, mine
    batch["sampler_logprobs"] = mine
    batch["scores"] = torch.tensor([1.0, 0.0, 0.0, 1.0])
    stats = make_experience(cfg, 2, 0.0, batch)
    assert stats["kl/policy_ref"] == pytest.approx(0.0, abs=1e-6)
    assert (kl_k1 := ((mine - ref) * mask).abs().max().item()) < 1e-6, kl_k1
    loss, info = policy_loss(cfg, mine, batch, 0.0, len(batch) / 2, 6)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert info["dpo_margin"] == pytest.approx(0.0, abs=1e-5)  # summed over up to 9 tokens: fp order
