"""`rlaif train` with a pretrained reward model (rl.reward_model) on real Ray, vLLM and DeepSpeed: the tiny reward
model of tests/reward_models.py (its preference known: good-word tokens) in the trained PM's place.

Human labels that agree with it: the trust gate passes it (one console sentence), no preference model trains (no
preference_model/ folder, no PM pairs, no AI-labeller integrity stage: the labels train nothing), and RL's rewards are
its scores, normalised by the mean and std kept in the checkpoint: each logged sample's reward equals the reward
model's own score of that response; a resumed run scores with the same model and normalisation. Human labels that
contradict it stop the run at the gate: tests/test_reward_model.py, on the same stage without Ray.
"""

import json
import os
import random
import subprocess
import sys

import pytest
import torch

from rlaif.data.human_labels import write_human_labels

from .conftest import REPO
from .reward_models import build_reward_model, words

pytestmark = pytest.mark.e2e
PROMPT = "How do I bake bread?"
FAST = ["trust.accept_untrusted_feedback=false", "labeler.function=tests.eval_judges:more_characters",
        "labeler.audit_samples=0", "policy.num_ranks=1", "preference_model.label_prompts=4", "trainer.eval_every=0",
        "trainer.progress=false", "preference_model.model.dtype=float32"]


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "rlaif.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def human_set(rm_path: str, path, agree: bool) -> str:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rm_path)
    good, bad, rng, rows = words(tok, True), words(tok, False), random.Random(1), []
    for i in range(16):
        g, b = " ".join(rng.sample(good, 6)), " ".join(rng.sample(bad, 6))
        first, p = rng.random() < 0.5, 1.0 if agree else 0.0
        rows.append({"id": f"h{i}", "prompt": PROMPT, "response_a": g if first else b, "response_b": b if first else g,
                     "p_a": p if first else 1 - p})
    return str(write_human_labels(path, rows))


@pytest.fixture(scope="module")
def agreed(tiny_path, tmp_path_factory):
    """The reward model, the run's command line and its folder after a 2-step run on human labels that agree."""
    tmp = tmp_path_factory.mktemp("rm-run")
    rm = build_reward_model(tiny_path, tmp / "acme-rm")
    out = tmp / "run"
    args = ["train", "--config", "configs/debug.yaml", f"output_dir={out}", f"rl.reward_model={rm}",
            f"labeler.human_eval={human_set(rm, tmp / 'agree.jsonl', True)}", *FAST]
    proc = run_cli(*args, "trainer.steps=2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return rm, args, out, proc.stderr


def samples(out) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("reward/pm" in r for r in rows if "reward/score" in r)
    return [row for r in rows if r.get("table") == "samples" for row in r["rows"]]


def check_rewards(out, rm: str, rows: list[dict]) -> None:
    """Each logged sample's rewards are the reward model's own scores, normalised as the checkpoint says."""
    from actors.preference import PreferenceScorer
    from rlaif.config import load_config
    from rlaif.run import checkpoint

    saved = checkpoint.load(checkpoint.complete_checkpoints(checkpoint.checkpoints_dir(out))[-1])
    assert saved.preference_model == rm and saved.pm_normalization[1] != 1.0
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    scorer = PreferenceScorer(load_config(out / "config.yaml"), rm, *saved.pm_normalization)
    torch.set_num_threads(threads)  # the scorer set this process's share of the cores: not the runs' below
    os.environ.pop("OMP_NUM_THREADS") if omp is None else os.environ.update(OMP_NUM_THREADS=omp)
    assert rows
    got = scorer.score({"prompt": [r["prompt"] for r in rows] * 2,
                        "response": [r["response_1"] for r in rows] + [r["response_2"] for r in rows]})
    assert got == pytest.approx([r["reward_1"] for r in rows] + [r["reward_2"] for r in rows], abs=2e-3)


def test_a_reward_model_the_humans_agree_with_passes_the_gate_and_is_the_reward(agreed):
    """Bugs caught: a PM trained anyway (preference_model/, pm_pairs.jsonl) or the AI labels labelled and gated when
    they train nothing; the gate not applied to the reward model (no rm_human_accuracy check, no TRUSTED mark on the
    checkpoint) or said as a dict; rewards that are not the reward model's scores (another model, template or
    normalisation)."""
    rm, _, out, stderr = agreed
    assert f"reward model {rm}: accuracy on 16 held-out human pairs 1.00 [0.81, 1.00]; trust gate: TRUSTED" in stderr
    assert not (out / "preference_model").exists() and not (out / "feedback" / "pm_pairs.jsonl").exists()
    assert not (out / "feedback" / "integrity.json").exists()  # the labels train nothing: not labelled before RL
    trust = json.loads((out / "feedback" / "trust.json").read_text())
    assert trust["status"] == "trusted" and [c["name"] for c in trust["checks"]] == ["rm_human_accuracy"]
    assert json.loads((out / "checkpoint" / "trust.json").read_text())["status"] == "trusted"
    check_rewards(out, rm, samples(out))


def test_a_resumed_run_scores_with_the_same_reward_model_and_normalisation(agreed):
    """One more step resumed from the run's last checkpoint. Bug caught: a resumed run that loads the reward model
    as a fresh PM head (num_labels forced), or scores unnormalised or with another model."""
    rm, args, out, _ = agreed
    proc = run_cli(*args, "trainer.steps=3", "trainer.resume=auto")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "held-out human pairs" not in proc.stderr  # the stage before RL did not run again
    check_rewards(out, rm, [r for r in samples(out) if r["step"] == 3])
