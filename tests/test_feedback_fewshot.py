"""CAI's few-shot feedback prompt (issue 19): the constitution's labelled comparisons, answered, before the question the
labeler scores (labeler.few_shot_examples), checked on the prompt builder and through the labeler's scored inputs."""

import pytest

import actors.labeler as labeler_module
from actors.labeler import LabelerWorker
from rlaif.config import ConfigError, load_config
from rlaif.feedback.constitution import ConstitutionError, load_constitution
from rlaif.feedback.labeling import ANSWER_CUE, OPTIONS, comparison_prompt, feedback_examples, few_shot_feedback
from rlaif.models import load_tokenizer

from .conftest import REPO
from .labeler_fakes import FakeLM

QUESTION = "Consider the following conversation between a human and an assistant:\nHuman: hi?\n\n"


def test_builtin_constitution_carries_labelled_comparisons_of_both_choices():
    """Bug: the constitution had no labelled comparisons, so CAI's few-shot feedback prompt could not be built."""
    c = load_constitution()
    assert len(c.comparisons) >= 2 and {e.choice for e in c.comparisons} == {"A", "B"}
    assert [e.choice for e in c.comparisons[:2]] == ["B", "A"]  # the first two already teach no slot


def test_few_shot_examples_come_before_the_question_each_answered():
    """Bug: the multiple-choice prompt had no way to carry few-shot labelled comparisons (CAI's feedback prompt)."""
    c = load_constitution()
    shots = feedback_examples(c, 2)
    prompt = comparison_prompt("hi?", "Which is kinder?", "one", "two", shots)
    assert prompt.startswith(shots) and prompt.endswith(QUESTION + "Which is kinder?\nOptions:\n(A) one\n(B) two\n"
                                                        + ANSWER_CUE)
    for e in c.comparisons[:2]:  # each example is the same question, answered with the scored option's spelling
        block = comparison_prompt(e.conversation, e.principle, e.response_a, e.response_b) + OPTIONS["AB".index(
            e.choice)] + "\n\n"
        assert block in shots
    assert shots.index(c.comparisons[0].conversation) < shots.index(c.comparisons[1].conversation)
    assert c.comparisons[2].conversation not in shots
    assert feedback_examples(c, 0) == few_shot_feedback([]) == ""
    assert comparison_prompt("hi?", "Which is kinder?", "one", "two", "") == comparison_prompt(
        "hi?", "Which is kinder?", "one", "two")
    with pytest.raises(ValueError, match="labeler.few_shot_examples = 99.*has 4 labelled comparisons"):
        feedback_examples(c, 99)


@pytest.mark.parametrize("item,message", [
    ("{conversation: c, principle: p, response_a: a, response_b: b, choice: C}", r"comparisons\[0\].choice must be A"),
    ("{conversation: c, principle: p, response_a: a}", r"comparisons\[0\] must have exactly the keys"),
    ("{conversation: c, principle: p, response_a: a, response_b: '', choice: A}", "must be non-empty strings"),
])
def test_bad_comparisons_are_named(tmp_path, item, message):
    """Bug: a constitution's comparisons were not read, so a malformed one (a choice that is neither A nor B, a
    missing response) would not be reported; each is now an error naming the entry."""
    path = tmp_path / "c.yaml"
    path.write_text(f"feedback: [ok]\ncomparisons: [{item}]\n")
    with pytest.raises(ConstitutionError, match=message):
        load_constitution(str(path))


def labeler(tmp_path, monkeypatch, tiny_path, *overrides):
    """A transformers-backend labeler whose model is a FakeLM that records every sequence it scores."""
    cfg = load_config(REPO / "configs/debug.yaml", [f"output_dir={tmp_path}", "labeler.backend=transformers",
                                                    f"labeler.model.path={tiny_path}", *overrides])
    fakes = []

    def fake_loader(path, dtype, trust_remote_code, attn_implementation=None):
        fakes.append(FakeLM(load_tokenizer(path), lambda text: {}))
        return fakes[-1]

    monkeypatch.setattr(labeler_module, "load_causal_lm", fake_loader)
    worker = LabelerWorker(cfg)
    worker.fakes = fakes
    return worker


def scored_texts(worker) -> list[str]:
    return [worker.tokenizer.decode(row) for batch in worker.fakes[0].forward_batches for row in batch]


def test_few_shot_examples_reach_the_sequences_the_labeler_scores(tmp_path, monkeypatch, tiny_path):
    """Bug: the labeler scored the bare question; with labeler.few_shot_examples = 2 every scored sequence, in both
    presentation orders, now holds the two answered examples before the question, and the label cache keeps labels
    with and without examples apart."""
    worker = labeler(tmp_path, monkeypatch, tiny_path, "labeler.few_shot_examples=2")
    worker.compare(["How do I calm down?"], ["Breathe slowly."], ["Scream."])
    texts = scored_texts(worker)
    assert len(texts) == 4  # 2 orders x 2 options
    c = load_constitution()
    for text in texts:
        first, second, question = (text.index(c.comparisons[0].conversation), text.index(c.comparisons[1].conversation),
                                   text.index("Human: How do I calm down?"))
        assert first < second < question and text.count(ANSWER_CUE) == 3
    # the same pair without examples: not read from the cache the few-shot labels went into, and scored bare
    bare = labeler(tmp_path, monkeypatch, tiny_path)
    bare.compare(["How do I calm down?"], ["Breathe slowly."], ["Scream."])
    texts = scored_texts(bare)
    assert len(texts) == 4 and all(c.comparisons[0].conversation not in t and t.count(ANSWER_CUE) == 1
                                   for t in texts)


def test_few_shot_examples_config_checks(tmp_path, monkeypatch, tiny_path):
    """A function judge sees no prompt, so examples for it are a config error; more examples than the constitution
    carries fail when the labeler starts, naming the key."""
    with pytest.raises(ConfigError, match="labeler.few_shot_examples = 0"):
        load_config(None, ["labeler.function=rlaif.judges:prefer_shorter", "labeler.few_shot_examples=1"])
    with pytest.raises(ConfigError, match=r"labeler.few_shot_examples: must be >= 0"):
        load_config(None, ["labeler.few_shot_examples=-1"])
    with pytest.raises(ValueError, match="labeler.few_shot_examples = 9"):
        labeler(tmp_path, monkeypatch, tiny_path, "labeler.few_shot_examples=9")


def test_a_prompt_past_the_labelers_context_names_the_few_shot_key(tmp_path, monkeypatch, tiny_path):
    """The examples come before every question, so they can push it past labeler.max_model_len: the error is a
    ConfigError (the CLI prints it in one line, exit 2, even from inside the labeler's actor) that names
    labeler.few_shot_examples beside the other keys; without examples the same context fits. Bugs caught: a bare
    ValueError (a page of Ray traceback at the console), the key that grew the prompt left unnamed."""
    fits = labeler(tmp_path, monkeypatch, tiny_path, "labeler.max_model_len=200")
    fits.compare(["How do I calm down?"], ["Breathe slowly."], ["Scream."])  # the bare question fits in 200
    worker = labeler(tmp_path, monkeypatch, tiny_path, "labeler.few_shot_examples=2", "labeler.max_model_len=200",
                     "labeler.cache=false")
    with pytest.raises(ConfigError, match=r"exceed the labeler's context of 200 tokens .*labeler.few_shot_examples "
                                          r"\(its 2 answered examples"):
        worker.compare(["How do I calm down?"], ["Breathe slowly."], ["Scream."])
