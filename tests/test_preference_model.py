"""The preference model learns a separable preference and generalises to pairs it never saw; its ECE helper
matches a hand computation.

The PM role (actors/preference.py) runs as a real DeepSpeed ZeRO-2 group on a local Ray, on the tiny builtin model.
The preference is synthetic and separable: of two otherwise identical responses, the better one contains a marker
word where the other has a different word of the same shape. The held-out pairs use prompts, filler sentences and
replacement words that never occur in training, so > 90% held-out accuracy means the PM learned the marker, not the
pairs.
"""

import random

import pytest
import ray

from actors.group import ActorGroup
from actors.preference import PreferenceModelWorker
from rlaif.audit.integrity import calibration_summary, expected_calibration_error, preference_probs
from rlaif.config import load_config

from .conftest import REPO

MARKER = "banana"
# Same-shape stand-ins for the marker; the two halves are disjoint, so held-out pairs use unseen stand-ins.
TRAIN_OTHERS = ["window", "garden", "pencil", "bottle", "candle", "rabbit", "silver", "forest", "castle", "button"]
HELD_OTHERS = ["kettle", "planet", "marble", "tunnel", "violet", "saddle"]
WORDS = ("the a we you it is was can will should might help answer explain question careful idea plan step simple "
         "today later people time way good short long quick clear kind safe open small large first next last "
         "because so and but or then here there this that").split()
PROMPTS = ["How do I bake bread?", "Write a short poem about the sea.", "What is a prime number?",
           "Give me a tip for studying.", "How do I fix a flat tyre?", "Explain photosynthesis briefly.",
           "What should I cook tonight?", "How do plants grow?", "Tell me about the moon.", "Why is the sky blue?",
           "How can I sleep better?", "What is a good hobby?", "Describe a cat.", "How do I learn to swim?",
           "Name a famous painter.", "How do magnets work?"]
P_GOOD = 0.9  # soft label of the pair whose first response carries the marker


def make_pairs(n: int, prompts: list[str], others: list[str], seed: int) -> dict[str, list]:
    rng = random.Random(seed)
    out = {"prompt": [], "first": [], "second": [], "p_first": []}
    for _ in range(n):
        filler = [rng.choice(WORDS) for _ in range(rng.randint(6, 12))]
        k = rng.randint(0, len(filler))
        good = " ".join(filler[:k] + [MARKER] + filler[k:]).capitalize() + "."
        bad = " ".join(filler[:k] + [rng.choice(others)] + filler[k:]).capitalize() + "."
        marker_first = rng.random() < 0.5
        out["prompt"].append(rng.choice(prompts))
        out["first"].append(good if marker_first else bad)
        out["second"].append(bad if marker_first else good)
        out["p_first"].append(P_GOOD if marker_first else 1.0 - P_GOOD)
    return out


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.e2e
@pytest.mark.parametrize("ranks", [1, 2])
def test_pm_learns_separable_preference_and_generalises(local_ray, tmp_path, ranks):
    train = make_pairs(128, PROMPTS[:12], TRAIN_OTHERS, seed=1)
    held = make_pairs(48, PROMPTS[12:], HELD_OTHERS, seed=2)
    # held-out pairs are never trained on: no held-out response text or prompt occurs in training
    train_texts = set(train["first"]) | set(train["second"])
    assert not train_texts & (set(held["first"]) | set(held["second"]))
    assert not set(train["prompt"]) & set(held["prompt"])
    assert 0.3 < sum(p > 0.5 for p in held["p_first"]) / 48 < 0.7  # the marker is in either slot

    cfg = load_config(REPO / "configs/debug.yaml", [
        f"output_dir={tmp_path}", f"preference_model.num_ranks={ranks}", "preference_model.zero_stage=2",
        "preference_model.lr=1.0e-3", "preference_model.epochs=4", "preference_model.batch_size=16",
        "preference_model.max_tokens=64",
    ])
    pm = ActorGroup(PreferenceModelWorker, ranks, cfg, timeout=300, name="pm")
    try:
        def evaluate(pairs: dict[str, list]) -> tuple[dict, list[float]]:
            """Accuracy and ECE of P(first better) = sigmoid(r_first - r_second) against the marker, and the
            probability the PM gives the marked response of each pair."""
            n = len(pairs["prompt"])
            # every rank scores the full list (the forward is collective under ZeRO-3; identical here)
            s = pm.call("score", {"prompt": pairs["prompt"] * 2, "response": pairs["first"] + pairs["second"]},
                        False)[0]
            probs = preference_probs(s[:n], s[n:])
            marked_first = [float(p > 0.5) for p in pairs["p_first"]]
            p_marked = [p if y else 1.0 - p for p, y in zip(probs, marked_first)]
            return calibration_summary(probs, marked_first), p_marked

        before, _ = evaluate(held)
        shards = [{k: v[r::ranks] for k, v in train.items()} for r in range(ranks)]  # equal: 128 pairs
        metrics = pm.call_sharded("train", shards)
        after, p_marked = evaluate(held)
    finally:
        pm.shutdown()
    assert all(m["pm/loss_last"] < m["pm/loss_first"] for m in metrics)
    acc, ece = after["accuracy"], after["ece"]
    assert acc > 0.9, f"held-out accuracy {acc:.3f} (before training {before['accuracy']:.3f})"
    assert acc > before["accuracy"] + 0.2, f"accuracy did not come from training: {before['accuracy']:.3f} -> {acc:.3f}"
    # Soft targets of 0.9 are a fitted probability, not a hard 1: the PM's confidence in the marked response
    # settles near 0.9 (a hard-label loss would push it to 1), so its ECE against the 0/1 outcome is about 0.1.
    mean_p = sum(p_marked) / len(p_marked)
    assert abs(mean_p - P_GOOD) < 0.07, f"mean P(marked response better) = {mean_p:.3f}, soft target {P_GOOD}"
    assert 0.0 <= ece < 0.2, f"held-out ECE {ece:.3f}"
    print(f"PM ranks={ranks}: held-out accuracy {before['accuracy']:.3f} -> {acc:.3f}, ECE {ece:.3f}, "
          f"mean P(marked) {mean_p:.3f}, loss {metrics[0]['pm/loss_first']:.3f} -> {metrics[0]['pm/loss_last']:.3f}")


def test_expected_calibration_error_by_hand():
    probs = [0.1, 0.3, 0.35, 0.8, 0.9, 1.0]
    outcomes = [0, 1, 0, 1, 1, 0]
    # 5 equal-width bins [0, .2) [.2, .4) [.4, .6) [.6, .8) [.8, 1.0] (the last one closed, so p = 1.0 is in it):
    #   bin 0: p = {0.1},            mean p 0.1,   outcome frequency 0/1 = 0    -> |0 - 0.1|       = 0.1,   weight 1/6
    #   bin 1: p = {0.3, 0.35},      mean p 0.325, outcome frequency 1/2 = 0.5  -> |0.5 - 0.325|   = 0.175, weight 2/6
    #   bin 4: p = {0.8, 0.9, 1.0},  mean p 0.9,   outcome frequency 2/3        -> |2/3 - 0.9|     = 0.7/3, weight 3/6
    #   ECE = 0.1/6 + 0.35/6 + 0.7/6 = 1.15/6 = 0.191666...
    assert expected_calibration_error(probs, outcomes, n_bins=5) == pytest.approx(1.15 / 6, abs=1e-12)
    # 1 bin: |mean(y) - mean(p)| = |3/6 - 3.45/6| = 0.45/6 = 0.075
    assert expected_calibration_error(probs, outcomes, n_bins=1) == pytest.approx(0.075, abs=1e-12)
    # perfectly confident and right: ECE 0; confidently wrong: ECE 1
    assert expected_calibration_error([1.0, 0.0], [1, 0]) == pytest.approx(0.0)
    assert expected_calibration_error([1.0, 0.0], [0, 1]) == pytest.approx(1.0)
    # the PM's form: P(first better) = sigmoid(r_a - r_b); margins +-ln 3 give 0.75 / 0.25
    p = preference_probs([1.0986122886681098, 0.0], [0.0, 1.0986122886681098])
    assert p == pytest.approx([0.75, 0.25])
    # both in their own bins with outcome 1 and 0: |1 - 0.75| / 2 + |0 - 0.25| / 2 = 0.25
    assert expected_calibration_error(p, [1, 0]) == pytest.approx(0.25)
