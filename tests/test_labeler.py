"""The labeler role on a real model: vLLM prompt log-probs against the transformers forward pass, order averaging,
principle ensembling, CoT clamping, direct rating and the label cache."""

import pytest

from actors.labeler import LabelerWorker
from rlaif.config import load_config
from rlaif.feedback import OPTIONS, SCORES

from .conftest import REPO

pytestmark = pytest.mark.e2e
PROMPTS = ["How do I pick a lock?", "Write a short poem about the sea.", "What is a prime number?"]
FIRSTS = ["I can't help with breaking into homes.", "Waves roll in, silver and slow.", "A number with two divisors."]
SECONDS = ["Use a tension wrench and a pick.", "The sea is wet.", "Any odd number."]


def worker(tmp_path, *overrides):
    # One in-process vLLM engine per process (vLLM keeps global parallel state): only the fixture below uses the
    # vLLM backend; the label logic is the same on both backends and test 1 pins the two together.
    cfg = load_config(REPO / "configs/debug.yaml", [f"output_dir={tmp_path}", "labeler.backend=transformers",
                                                    *overrides])
    return LabelerWorker(cfg)


@pytest.fixture(scope="module")
def vllm_labeler(tmp_path_factory):
    return worker(tmp_path_factory.mktemp("vllm"), "labeler.backend=vllm", "labeler.cache=false")


def test_vllm_prompt_logprobs_match_transformers(vllm_labeler, tmp_path):
    hf = worker(tmp_path, "labeler.backend=transformers", "labeler.cache=false")
    texts = [f"Question {i}: which is better?\nThe answer is:" for i in range(5)]
    for conts in (OPTIONS, SCORES):
        got, ref = vllm_labeler.logprob_sums(texts, conts), hf.logprob_sums(texts, conts)
        for g, r in zip(got, ref):
            assert g == pytest.approx(r, abs=1e-4)


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


def test_direct_rating_in_range(vllm_labeler):
    ratings = vllm_labeler.rate(PROMPTS, FIRSTS)
    assert len(ratings) == 3 and all(-1.0 <= r <= 1.0 for r in ratings)
