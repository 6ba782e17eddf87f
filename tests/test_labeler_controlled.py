"""The labeler against a known answer: a labeler model whose next-token distribution the test sets (FakeLM behind the
transformers backend) and rule-based function judges. Direct-RLAIF ratings, label orientation in both presentation
orders, position consistency, one token context for generation and scoring, the labeler's own length and batch
limits, and the function judge's cache, errors and lazy model loading."""

import math

import pytest

import actors.labeler as labeler_module
from actors.labeler import LabelerWorker
from rlaif.audit.integrity import integrity_report
from rlaif.config import ConfigError, load_config
from rlaif.feedback.labeling import ANSWER_CUE, COT_CUE, RATIONALE_END, SCORE_CUE, SCORES, continuation_ids
from rlaif.models import load_tokenizer

from .conftest import REPO
from .labeler_fakes import FakeLM, make_bos_model, prefer_shorter_rule

SHORT, LONG = "Be kind.", "Here is a much longer answer that rambles on and on."
PROMPTS = ["How do I calm down?", "What should I say?", "Any advice?"]
JUDGE_CALLS: list[tuple[list[str], list[str], list[str]]] = []


# -- function judges used through labeler.function="tests.test_labeler_controlled:<name>" --
def counting_shorter(prompts, firsts, seconds):
    JUDGE_CALLS.append((list(prompts), list(firsts), list(seconds)))
    return [0.5 if len(a) == len(b) else float(len(a) < len(b)) for a, b in zip(firsts, seconds)]


def always_a(prompts, firsts, seconds):
    """A judge that always answers (A): P(first shown as (A) is better) = 0.9 whatever the content."""
    return [0.9] * len(prompts)


def raises(prompts, firsts, seconds):
    raise KeyError("boom")


def wrong_length(prompts, firsts, seconds):
    return [0.5] * (len(prompts) + 1)


def returns_nan(prompts, firsts, seconds):
    return [math.nan] * len(prompts)


def out_of_range(prompts, firsts, seconds):
    return [1.5] * len(prompts)


NOT_CALLABLE = 3


def make_worker(tmp_path, monkeypatch, model_path, rule=None, *overrides):
    """A transformers-backend labeler whose model is a FakeLM with `rule` (the model is built on first use)."""
    cfg = load_config(REPO / "configs/debug.yaml", [f"output_dir={tmp_path}", "labeler.backend=transformers",
                                                    "labeler.cache=false", f"labeler.model.path={model_path}",
                                                    *overrides])
    fakes = []

    def fake_loader(path, dtype, trust_remote_code, attn_implementation=None):
        fakes.append(FakeLM(load_tokenizer(path), rule or (lambda text: {})))
        return fakes[-1]

    monkeypatch.setattr(labeler_module, "load_causal_lm", fake_loader)
    worker = LabelerWorker(cfg)
    worker.fakes = fakes  # the model the worker loaded, once it has: fakes[0]
    return worker


@pytest.fixture(scope="module")
def bos_path(tiny_path, tmp_path_factory):
    return make_bos_model(tiny_path, tmp_path_factory.mktemp("bos") / "tiny-bos")


# -- 1. direct RLAIF ratings: scores are mutually exclusive continuations --
def rating_rule(tok, probs: dict[int, float]):
    """Next-token logits log P(digit) on the score digits (probabilities over the scores, the rest ~0)."""
    digit = {i: tok.encode(str(i), add_special_tokens=False)[0] for i in range(1, 10)}
    logits = {digit[i]: (math.log(p) + 40.0 if p > 0 else -40.0) for i, p in probs.items()}
    return lambda text: logits


@pytest.mark.parametrize("probs, expected", [
    ({9: 1.0}, 1.0),  # certain of the top score (on a 1-10 scale scored as " 1".." 10": (9-1)/9*2-1 = 0.78)
    ({1: 1.0}, -1.0),  # certain of the bottom score
    ({3: 0.25, 7: 0.75}, 0.25),  # E = 0.25 * 3 + 0.75 * 7 = 6 -> (6 - 1) / 8 * 2 - 1 = 0.25
    ({5: 1.0}, 0.0),  # the middle of 1..9
    ({2: 0.5, 9: 0.5}, 0.125),  # E = 5.5 -> 4.5 / 8 * 2 - 1
])
def test_rating_with_a_labeler_of_known_distribution(tmp_path, monkeypatch, tiny_path, probs, expected):
    tok = load_tokenizer(tiny_path)
    for i, s in enumerate(SCORES, start=1):  # the digit is the last id of each score continuation in context
        assert continuation_ids(tok, SCORE_CUE, s)[1][-1] == tok.encode(str(i), add_special_tokens=False)[0]
    worker = make_worker(tmp_path, monkeypatch, tiny_path, rating_rule(tok, probs))
    assert worker.rate(PROMPTS[:2], [SHORT, LONG]) == pytest.approx([expected] * 2, abs=1e-6)


def test_rating_question_matches_the_scale():
    from rlaif.feedback.labeling import rating_question

    text = rating_question("hi", "Which is kinder?", "hello")
    assert "from 1 to 9, where 9 is best" in text and SCORES == tuple(f" {i}" for i in range(1, 10))


# -- 4. label orientation against a known preference, both presentations --
def orientation(worker) -> tuple[list[dict], list[dict]]:
    """Labels with the better (shorter) response first, then second."""
    better_first = worker.compare(PROMPTS, [SHORT] * 3, [LONG] * 3)
    better_second = worker.compare(PROMPTS, [LONG] * 3, [SHORT] * 3)
    return better_first, better_second


def test_model_labeler_orientation_and_consistency(tmp_path, monkeypatch, tiny_path):
    tok = load_tokenizer(tiny_path)
    unbiased = make_worker(tmp_path, monkeypatch, tiny_path, prefer_shorter_rule(tok, strength=3.0))
    first, second = orientation(unbiased)
    s = 1 / (1 + math.exp(-3.0))  # the label is exactly sigmoid of the logit margin
    for lab in first:
        assert lab["p_first_in_a"] == pytest.approx(s) and lab["p_first_in_b"] == pytest.approx(s)
        assert lab["p_first"] == pytest.approx(s) and lab["consistent"] is True
    for lab in second:
        assert lab["p_first"] == pytest.approx(1 - s) and lab["consistent"] is True
    assert integrity_report(first + second).position_consistency == 1.0

    # slot-biased: 5 logits toward (A) beat the 3-logit content preference, so (A) wins in every presentation
    biased = make_worker(tmp_path / "b", monkeypatch, tiny_path, prefer_shorter_rule(tok, 3.0, slot_bias=5.0))
    first, second = orientation(biased)
    report = integrity_report(first + second)
    assert report.position_consistency == 0.0 and report.slot_a_rate == 1.0
    # averaging the orders still points to the better response: 0.5 * (sigmoid(8) + 1 - sigmoid(2)) > 0.5
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert all(lab["p_first"] == pytest.approx(0.5 * (sig(8) + 1 - sig(2))) for lab in first)
    assert all(lab["p_first"] == pytest.approx(0.5 * (sig(2) + 1 - sig(8))) for lab in second)


def test_function_judge_orientation_and_consistency(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}", "labeler.cache=false",
                             "labeler.function=rlaif.judges:prefer_shorter"])
    first, second = orientation(LabelerWorker(cfg))
    assert all(lab["p_first"] == 1.0 and lab["consistent"] is True for lab in first)
    assert all(lab["p_first"] == 0.0 and lab["consistent"] is True for lab in second)
    assert all(lab["principles"] == ["function:rlaif.judges:prefer_shorter"] for lab in first + second)
    assert integrity_report(first + second).position_consistency == 1.0

    cfg = load_config(None, [f"output_dir={tmp_path}", "labeler.cache=false",
                             "labeler.function=tests.test_labeler_controlled:always_a"])
    first, second = orientation(LabelerWorker(cfg))
    report = integrity_report(first + second)
    assert report.position_consistency == 0.0 and report.slot_a_rate == 1.0
    # forward P(A) = 0.9; swapped P(A) = 0.9, so the first response (now in B) gets 0.1: the average says "no idea"
    assert all(lab["p_first"] == pytest.approx(0.5) and lab["p_first_in_b"] == pytest.approx(0.1)
               for lab in first + second)


# -- 3. the function judge: cache, both orders, lazy model, errors, config --
def test_function_judge_both_orders_cache_and_lazy_model(tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a function judge must not load the labeler model to compare")

    monkeypatch.setattr(labeler_module, "load_causal_lm", no_model)
    monkeypatch.setattr(labeler_module, "resolve_model_path", no_model)
    JUDGE_CALLS.clear()
    spec = "tests.test_labeler_controlled:counting_shorter"
    cfg = load_config(REPO / "configs/debug.yaml", [f"output_dir={tmp_path}", "labeler.backend=transformers",
                                                    f"labeler.function={spec}"])
    worker = LabelerWorker(cfg)
    out = worker.compare(PROMPTS, [SHORT, LONG, SHORT], [LONG, SHORT, SHORT])
    # called once per order, the second call with the responses swapped
    assert JUDGE_CALLS == [(PROMPTS, [SHORT, LONG, SHORT], [LONG, SHORT, SHORT]),
                           (PROMPTS, [LONG, SHORT, SHORT], [SHORT, LONG, SHORT])]
    assert [lab["p_first"] for lab in out] == [1.0, 0.0, 0.5] and worker.model is None and worker.llm is None
    # a second labeler on the same output_dir reads every label from the cache file: the judge is not called
    again = LabelerWorker(cfg)
    assert again.compare(PROMPTS, [SHORT, LONG, SHORT], [LONG, SHORT, SHORT]) == out
    assert again.cache_hits == 3 and len(JUDGE_CALLS) == 2
    # the key holds the judge's spec: another judge on the same pairs is not served this judge's labels
    other = load_config(REPO / "configs/debug.yaml", [f"output_dir={tmp_path}", "labeler.backend=transformers",
                                                      "labeler.function=tests.test_labeler_controlled:always_a"])
    worker = LabelerWorker(other)
    assert [lab["p_first"] for lab in worker.compare(PROMPTS, [SHORT] * 3, [LONG] * 3)] == [0.5] * 3
    assert worker.cache_hits == 0


def test_function_judge_loads_the_model_only_for_critiques(tmp_path, monkeypatch, tiny_path):
    worker = make_worker(tmp_path, monkeypatch, tiny_path, None, "labeler.function=rlaif.judges:prefer_shorter",
                         "labeler.cot_max_tokens=8")
    worker.compare(PROMPTS, [SHORT] * 3, [LONG] * 3)
    assert worker.fakes == [] and worker.tokenizer is None
    critiques = worker.critique(PROMPTS[:1], [SHORT])
    assert len(worker.fakes) == 1 and critiques == ["because it is short"]  # the fake model's rationale, decoded


@pytest.mark.parametrize("name, error, match", [
    ("raises", RuntimeError, r"labeler.function 'tests.test_labeler_controlled:raises' raised KeyError: 'boom'"),
    ("wrong_length", ValueError, r"'tests.test_labeler_controlled:wrong_length' returned 4 values for 3 pairs"),
    ("returns_nan", ValueError, r"'tests.test_labeler_controlled:returns_nan' returned nan for pair 0"),
    ("out_of_range", ValueError, r"'tests.test_labeler_controlled:out_of_range' returned 1.5 for pair 0"),
])
def test_function_judge_bad_output_names_the_function(tmp_path, name, error, match):
    cfg = load_config(None, [f"output_dir={tmp_path}", f"labeler.function=tests.test_labeler_controlled:{name}"])
    worker = LabelerWorker(cfg)
    with pytest.raises(error, match=match):
        worker.compare(PROMPTS, [SHORT] * 3, [LONG] * 3)
    assert worker.cache.entries == {}  # nothing cached from a failed call


@pytest.mark.parametrize("spec, match", [
    ("nocolon", r"labeler.function: 'nocolon' must look like 'package.module:function'"),
    ("rlaif.nosuchmodule:f", r"labeler.function: cannot import 'rlaif.nosuchmodule:f'"),
    ("rlaif.judges:nosuchjudge", r"labeler.function: cannot import 'rlaif.judges:nosuchjudge'"),
    ("tests.test_labeler_controlled:NOT_CALLABLE", r"labeler.function: '.*NOT_CALLABLE' is not callable"),
])
def test_bad_function_spec_is_a_config_error(spec, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [f"labeler.function={spec}"])


def test_function_judge_config_conflicts():
    spec = "labeler.function=rlaif.judges:prefer_shorter"
    for bad in ("labeler.mode=cot", "labeler.principles_per_pair=2"):
        with pytest.raises(ConfigError, match="labeler.function: a function judge takes no principle"):
            load_config(None, [spec, bad])
    with pytest.raises(ConfigError, match="labeler.gpu_memory_utilization"):
        load_config(None, ["labeler.gpu_memory_utilization=1.5"])


def test_example_judges_hand_values():
    from rlaif.judges import prefer_shorter, prefer_vowels

    assert prefer_shorter(["p"] * 3, ["ab", "abc", "ab"], ["abc", "ab", "cd"]) == [1.0, 0.0, 0.5]
    # vowel fractions: "aaa" 1, "bbb" 0, "ab" 0.5 -> sigmoid(10 * margin)
    got = prefer_vowels(["p"] * 3, ["aaa", "bbb", "ab"], ["bbb", "ab", "ab"])
    assert got == pytest.approx([1 / (1 + math.exp(-10)), 1 / (1 + math.exp(5)), 0.5])


# -- 2. one context for generation and scoring --
@pytest.mark.parametrize("chat", [False, True])
def test_cot_rationale_is_generated_and_scored_on_the_same_ids(tmp_path, monkeypatch, bos_path, chat):
    tok = load_tokenizer(bos_path)
    bos = tok.bos_token_id
    assert tok.encode("x")[0] == bos  # this tokenizer adds BOS to plain text
    worker = make_worker(tmp_path, monkeypatch, bos_path, None, "labeler.mode=cot", "labeler.cot_max_tokens=16",
                         f"labeler.chat_template={str(chat).lower()}")
    worker.compare(PROMPTS[:2], [SHORT] * 2, [LONG] * 2)
    fake = worker.fakes[0]
    generated_from = [row for batch in fake.generate_batches for row in batch]
    scored = [row for batch in fake.forward_batches for row in batch]
    assert len(generated_from) == 4 and len(scored) == 8  # 2 pairs x 2 orders; x 2 options
    for g in generated_from:  # one BOS: the tokenizer's for plain text, the template's own for chat, never two
        assert g[0] == bos and g[1] != bos
        text = tok.decode(g)
        assert text.endswith(COT_CUE) and text.startswith("<|im_start|>user\n" if chat else "<|im_start|>Consider")
    tail = continuation_ids(tok, RATIONALE_END, " (A)")[0]
    for s in scored:  # each scored sequence = a generation prompt + the rationale as generated + the answer cue
        g = next(g for g in generated_from if s[: len(g)] == g)
        assert s[len(g) : len(g) + len(fake.rationale)] == fake.rationale
        assert s[len(g) + len(fake.rationale) : len(g) + len(fake.rationale) + len(tail)] == tail
        assert tok.decode(s[len(g) + len(fake.rationale) :]).startswith("\n" + ANSWER_CUE)


def test_logprob_mode_scores_with_the_tokenizers_bos(tmp_path, monkeypatch, bos_path):
    tok = load_tokenizer(bos_path)
    worker = make_worker(tmp_path, monkeypatch, bos_path)
    worker.compare(PROMPTS[:1], [SHORT], [LONG])
    worker.critique(PROMPTS[:1], [SHORT])
    fake = worker.fakes[0]
    for row in [r for b in fake.forward_batches for r in b] + [r for b in fake.generate_batches for r in b]:
        assert row[0] == tok.bos_token_id and row[1] != tok.bos_token_id


# -- 5. labeler.max_model_len and labeler.batch_size on the transformers backend --
def test_over_long_prompt_is_an_error_naming_the_keys(tmp_path, monkeypatch, tiny_path):
    worker = make_worker(tmp_path, monkeypatch, tiny_path, None, "labeler.max_model_len=96")
    with pytest.raises(ValueError, match=r"labeler.max_model_len = 96.*labeler.max_response_tokens"):
        worker.compare(PROMPTS[:1], [LONG * 3], [LONG * 3])
    assert worker.fakes[0].forward_batches == []  # refused before the model saw anything
    cot = make_worker(tmp_path, monkeypatch, tiny_path, None, "labeler.max_model_len=200", "labeler.mode=cot",
                      "labeler.cot_max_tokens=150")
    with pytest.raises(ValueError, match=r"labeler generation: \d+ prompt tokens \+ 150 to generate.*cot_max_tokens"):
        cot.compare(PROMPTS[:1], [SHORT], [LONG])


def test_an_audit_critique_of_a_very_long_prompt_fits_the_context(tmp_path, monkeypatch, tiny_path):
    """The audit sheet draws any labelled pair, whatever its prompt's length: the critique cuts the prompt to
    labeler.max_response_tokens as comparisons do. Bug caught: the prompt went in whole and the labeler's own
    context check raised (a traceback from inside Ray where the audit sheet should have been)."""
    worker = make_worker(tmp_path, monkeypatch, tiny_path, None, "labeler.max_model_len=200",
                         "labeler.max_response_tokens=40", "labeler.cot_max_tokens=8")
    (critique,) = worker.critique([LONG * 20], [SHORT])
    assert isinstance(critique, str)


def test_batch_size_bounds_every_model_call(tmp_path, monkeypatch, tiny_path):
    worker = make_worker(tmp_path, monkeypatch, tiny_path, None, "labeler.batch_size=3", "labeler.mode=cot",
                         "labeler.cot_max_tokens=4")
    worker.compare(PROMPTS + PROMPTS[:2], [SHORT] * 5, [LONG] * 5)  # 10 rationales, 20 scored sequences
    fake = worker.fakes[0]
    assert [len(b) for b in fake.generate_batches] == [3, 3, 3, 1]
    assert [len(b) for b in fake.forward_batches] == [3] * 6 + [2]


def test_a_seeded_call_draws_its_principles_from_the_seed_not_the_process_history(tmp_path, monkeypatch, tiny_path):
    """Issue 16.11: the trainer passes one seed per step and call, so a restarted labeler (a fresh process) draws the
    same principles as one that has served calls before: for comparisons, direct ratings and audit critiques. Bug
    caught: a call drawing from the role's RNG, whose state a restart loses."""
    tok = load_tokenizer(tiny_path)
    used = make_worker(tmp_path / "used", monkeypatch, tiny_path, prefer_shorter_rule(tok), "labeler.cache=false")
    used.compare(PROMPTS, [SHORT] * 3, [LONG] * 3)  # history: the role's RNG has moved on
    used.rate(PROMPTS, [SHORT] * 3)
    used.critique(PROMPTS, [SHORT] * 3)
    fresh = make_worker(tmp_path / "fresh", monkeypatch, tiny_path, prefer_shorter_rule(tok), "labeler.cache=false")

    def seen(worker, seed: int) -> tuple[list, list, list]:
        labels = worker.compare(PROMPTS, [SHORT] * 3, [LONG] * 3, seed)
        fake = worker.fakes[0]
        before = len(fake.forward_batches)
        worker.rate(PROMPTS, [SHORT] * 3, seed)
        rated = [tok.decode(row) for batch in fake.forward_batches[before:] for row in batch]
        before = len(fake.generate_batches)
        worker.critique(PROMPTS, [SHORT] * 3, seed)
        critiqued = [tok.decode(row) for batch in fake.generate_batches[before:] for row in batch]
        return [lab["principles"] for lab in labels], rated, critiqued

    a, b = seen(used, 5), seen(fresh, 5)
    assert a == b
    other = seen(fresh, 6)  # another step's seed draws other principles (16 to choose from: some differ)
    assert all(x != y for x, y in zip(a, other))
