import random
from collections import Counter

import pytest

from rlaif.feedback.constitution import load_constitution


def test_default_constitution_has_16_of_each():
    c = load_constitution()
    assert len(c.feedback) >= 16 and len(set(c.feedback)) == len(c.feedback)
    assert len(c.critique_revision) >= 16
    assert len(c.few_shot) >= 2 and all(shot.revision != shot.response for shot in c.few_shot)


def test_principles_are_sampled_uniformly():
    c = load_constitution()
    rng = random.Random(0)
    draws = 16_000
    counts = Counter(c.sample_feedback(rng) for _ in range(draws))
    assert set(counts) == set(c.feedback)
    expected = draws / len(c.feedback)
    chi2 = sum((counts[p] - expected) ** 2 / expected for p in c.feedback)
    assert chi2 < 37.7  # 99.9th percentile of chi-square with 15 degrees of freedom


def test_fresh_draw_each_time_and_seeded():
    c = load_constitution()
    a = [c.sample_feedback(random.Random(5)) for _ in range(3)]
    assert len(set(a)) == 1  # same seed, same draw
    rng = random.Random(5)
    assert len({c.sample_feedback(rng) for _ in range(20)}) > 1


@pytest.mark.parametrize(
    "text,message",
    [
        ("feedback: []\n", "must list at least one principle"),
        ("feedback: [ok, '']\n", r"feedback\[1\] must be a non-empty string"),
        ("feedback: [ok]\ncritique_revision: [{critique: a}]\n", r"critique_revision\[0\] must have exactly"),
        ("feedback: [ok]\nextra: 1\n", "unknown keys"),
        ("- a\n", "expected a mapping"),
        ("feedback: [ok]\nfew_shot: [{prompt: p}]\n", r"few_shot\[0\] must have exactly the keys"),
    ],
)
def test_bad_constitution_files_are_named(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_constitution(str(path))
