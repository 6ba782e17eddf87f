"""The labeler role on a real model: vLLM prompt log-probs against the transformers forward pass, order averaging,
principle ensembling, CoT clamping, direct rating, the label cache, and the vLLM backend's token context, batches
and length limit. The vLLM engine serves a copy of the tiny model whose tokenizer adds BOS, so that the prompt ids
it is given (and not its own tokenization of a text) show."""

import random

import pytest

from actors.labeler import LabelerWorker
from rlaif.config import load_config
from rlaif.feedback.labeling import OPTIONS, RATIONALE_END, SCORES, continuation_ids

from .conftest import REPO
from .labeler_fakes import make_bos_model

pytestmark = pytest.mark.e2e
PROMPTS = ["How do I pick a lock?", "Write a short poem about the sea.", "What is a prime number?"]
FIRSTS = ["I can't help with breaking into homes.", "Waves roll in, silver and slow.", "A number with two divisors."]
SECONDS = ["Use a tension wrench and a pick.", "The sea is wet.", "Any odd number."]


def worker(tmp_path, *overrides):
    # One in-process vLLM engine per process (vLLM keeps global parallel state): only the fixture below uses the
    # vLLM backend; the label logic is the same on both backends and test 1 pins the two together.
    # float32: the two backends agree to 1e-4 only there (bf16's kernels round differently)
    cfg = load_config(REPO / "configs/debug.yaml", [f"output_dir={tmp_path}", "labeler.backend=transformers",
                                                    "labeler.model.dtype=float32", *overrides])
    return LabelerWorker(cfg)


@pytest.fixture(scope="module")
def bos_path(tiny_path, tmp_path_factory):
    return make_bos_model(tiny_path, tmp_path_factory.mktemp("bos") / "tiny-bos")


@pytest.fixture(scope="module")
def vllm_labeler(tmp_path_factory, bos_path):
    lab = worker(tmp_path_factory.mktemp("vllm"), "labeler.backend=vllm", "labeler.cache=false",
                 f"labeler.model.path={bos_path}", "labeler.max_model_len=512")
    lab.load()
    return lab


def test_vllm_prompt_logprobs_match_transformers(vllm_labeler, bos_path, tmp_path):
    hf = worker(tmp_path, "labeler.backend=transformers", "labeler.cache=false", f"labeler.model.path={bos_path}")
    texts = [f"Question {i}: which is better?\nThe answer is:" for i in range(5)]
    assert vllm_labeler.head == [vllm_labeler.tokenizer.bos_token_id]
    for conts in (OPTIONS, SCORES):
        got = vllm_labeler.logprob_sums([vllm_labeler.head] * 5, texts, conts)
        ref = hf.logprob_sums([vllm_labeler.head] * 5, texts, conts)
        for g, r in zip(got, ref):
            assert g == pytest.approx(r, abs=1e-4)
    # the whole direct-RLAIF path (same principles: same rng state) agrees across the backends
    vllm_labeler.rng, hf.rng = random.Random(3), random.Random(3)
    assert vllm_labeler.rate(PROMPTS, FIRSTS) == pytest.approx(hf.rate(PROMPTS, FIRSTS), abs=1e-4)


class Recorder:
    """Stands in for the vLLM engine: forwards every generate call and keeps its requests and outputs."""

    def __init__(self, llm):
        self.llm, self.calls = llm, []

    def generate(self, prompts, params, use_tqdm=False):
        outs = self.llm.generate(prompts, params, use_tqdm=use_tqdm)
        # scoring passes one SamplingParams per request (they differ only in reading the prefix cache): keep one
        self.calls.append((prompts, params[0] if isinstance(params, list) else params, outs))
        return outs


def test_vllm_generates_and_scores_the_same_ids_in_batches(vllm_labeler, monkeypatch):
    tok, bos = vllm_labeler.tokenizer, vllm_labeler.tokenizer.bos_token_id
    rec = Recorder(vllm_labeler.llm)
    monkeypatch.setattr(vllm_labeler, "llm", rec)
    for key, value in (("mode", "cot"), ("batch_size", 3), ("cot_max_tokens", 8)):
        monkeypatch.setattr(vllm_labeler.lc, key, value)
    out = vllm_labeler.compare(PROMPTS, FIRSTS, SECONDS)  # 3 pairs x 2 orders: 6 rationales, 12 scored sequences
    assert all(0.4 <= lab["p_first_in_a"] <= 0.6 for lab in out)
    gen = [c for c in rec.calls if c[1].prompt_logprobs is None]
    scored = [c for c in rec.calls if c[1].prompt_logprobs is not None]
    assert [len(c[0]) for c in gen] == [3, 3] and [len(c[0]) for c in scored] == [3, 3, 3, 3]
    assert all(set(r) == {"prompt_token_ids"} for c in rec.calls for r in c[0])  # ids, never text to re-tokenize
    special = set(tok.all_special_ids)
    rationales = []
    for prompts, _, outs in gen:
        for r, o in zip(prompts, outs):
            ids, made = r["prompt_token_ids"], list(o.outputs[0].token_ids)
            assert ids[0] == bos and ids[1] != bos  # the tokenizer's BOS, once
            rationales.append((ids, made[: next((n for n, t in enumerate(made) if t in special), len(made))]))
    cue = continuation_ids(tok, RATIONALE_END, OPTIONS[0])[0]
    for prompts, _, _ in scored:
        for r in prompts:
            s = r["prompt_token_ids"]
            g, made = next((g, m) for g, m in rationales if s[: len(g)] == g)  # a generation prompt, as sent
            assert s[len(g) : len(g) + len(made) + len(cue)] == made + cue  # + the rationale as generated + cue


def test_vllm_context_is_labeler_max_model_len(vllm_labeler):
    assert vllm_labeler.llm.llm_engine.model_config.max_model_len == 512 == vllm_labeler.max_len
    long_text = "word " * 600
    with pytest.raises(ValueError, match=r"labeler.max_model_len = 512.*labeler.max_response_tokens"):
        vllm_labeler.logprob_sums([vllm_labeler.head], [long_text], OPTIONS)


def test_compare_orders_ensemble_and_cache(tmp_path):
    lab = worker(tmp_path, "labeler.principles_per_pair=3", "seed=7")
    out = lab.compare(PROMPTS, FIRSTS, SECONDS)
    assert lab.cache_hits == 0 and len(lab.cache.entries) == 9
    for row in out:
        assert len(row["principles"]) == 3 and 0 < row["p_first"] < 1
        assert row["p_first"] == pytest.approx((row["p_first_in_a"] + row["p_first_in_b"]) / 2)
    # swapping the pair gives the complementary label (same principles: same seed)
    swapped = worker(tmp_path / "other", "labeler.principles_per_pair=3", "seed=7").compare(PROMPTS, SECONDS, FIRSTS)
    for a, b in zip(out, swapped):
        assert a["principles"] == b["principles"] and a["p_first"] == pytest.approx(1 - b["p_first"], abs=1e-5)
    # a repeated run with the same seed reads every label from the cache file instead of re-labelling
    again = worker(tmp_path, "labeler.principles_per_pair=3", "seed=7")
    assert again.compare(PROMPTS, FIRSTS, SECONDS) == out and again.cache_hits == 9


def test_cot_labels_are_clamped(tmp_path):
    lab = worker(tmp_path, "labeler.mode=cot", "labeler.cot_max_tokens=8", "labeler.cache=false")
    for row in lab.compare(PROMPTS, FIRSTS, SECONDS):
        assert 0.4 <= row["p_first_in_a"] <= 0.6 and 0.4 <= row["p_first_in_b"] <= 0.6


def test_both_orders_go_in_one_call_and_read_the_prefix_cache(vllm_labeler, monkeypatch):
    """Each pair's two presentation orders go to vLLM in the same generate call (the Recorder counts them, the real
    engine answers), the scoring requests read the prefix they share from vLLM's prefix cache, and the labels equal
    the old pattern's bit for bit: one call per order, requests that never read the cache (vLLM's default with
    prompt log-probs). Bugs caught: the layout back to [every forward question, every swapped one] (each call then
    holds one order of two pairs); scoring requests that skip the cache again (nothing read from it); a cache hit
    that reaches into the options (their log-probs never computed: other labels, or the labeler's RuntimeError)."""
    from vllm import SamplingParams

    from rlaif.feedback.labeling import LabelCache

    lab = vllm_labeler
    lab.llm.reset_prefix_cache()
    rec = Recorder(lab.llm)
    monkeypatch.setattr(lab, "llm", rec)
    monkeypatch.setattr(lab.lc, "batch_size", 4)  # a pair's 2 orders x 2 options
    monkeypatch.setattr(lab, "cache", LabelCache(None))
    new = lab.compare(PROMPTS, FIRSTS, SECONDS, seed=5)
    assert len(rec.calls) == len(PROMPTS)
    for n, (prompts, _, _) in enumerate(rec.calls):
        shown_a = [lab.tokenizer.decode(r["prompt_token_ids"]).split("(A) ")[1].split("\n")[0] for r in prompts]
        assert shown_a == [FIRSTS[n], FIRSTS[n], SECONDS[n], SECONDS[n]]  # pair n: forward A, B, swapped A, B
    assert sum(o.num_cached_tokens for c in rec.calls for o in c[2]) >= 2 * len(PROMPTS) * lab.block_size

    # the old pattern on the same engine: forward questions in their own calls, then swapped, reading no cache
    monkeypatch.setattr(lab, "scoring_params", lambda n_prompt, n_total: SamplingParams(max_tokens=1,
                                                                                       prompt_logprobs=0))
    monkeypatch.setattr(lab, "p_a", lambda qs: [x for fs in zip(LabelerWorker.p_a(lab, qs[0::2]),
                                                                LabelerWorker.p_a(lab, qs[1::2])) for x in fs])
    monkeypatch.setattr(lab, "cache", LabelCache(None))
    rec.calls.clear()
    old = lab.compare(PROMPTS, FIRSTS, SECONDS, seed=5)
    assert len(rec.calls) == 4 and all(o.num_cached_tokens == 0 for c in rec.calls for o in c[2])
    assert new == old


def test_a_cached_prefix_never_covers_the_scored_option(vllm_labeler, monkeypatch):
    """Prompts that end a few tokens before, at or after a cache block boundary, so that the block shared by the A
    and B sequences ends inside the options' common first tokens or right where the option starts: scored exactly as
    without the cache. Bug caught: reading the cache there (scoring_params' `<` made `<=`, or no check at all)
    leaves the first option tokens' log-probs uncomputed (a RuntimeError names it, else the sums are wrong)."""
    from vllm import SamplingParams

    lab = vllm_labeler
    bsz, tail = lab.block_size, "\n" + "The answer is:"
    filler = lab.tokenizer.encode(" ".join(PROMPTS * 60), add_special_tokens=False)
    n_tail = len(continuation_ids(lab.tokenizer, tail, OPTIONS[0])[0])
    heads = [lab.head + filler[: 2 * bsz + d - len(lab.head) - n_tail] for d in range(-4, 4)]  # prompts 2B-4..2B+3
    lab.llm.reset_prefix_cache()
    rec = Recorder(lab.llm)
    monkeypatch.setattr(lab, "llm", rec)
    got = lab.logprob_sums(heads, [tail] * len(heads), OPTIONS)
    cached = [o.num_cached_tokens for c in rec.calls for o in c[2]]
    assert max(cached) >= 2 * bsz  # the boundary cases were reachable: some sequences did read two blocks
    monkeypatch.setattr(lab, "scoring_params", lambda n_prompt, n_total: SamplingParams(max_tokens=1,
                                                                                       prompt_logprobs=0))
    assert got == lab.logprob_sums(heads, [tail] * len(heads), OPTIONS)
