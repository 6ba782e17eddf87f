"""The self-improvement stage (Huang et al. 2022): which reasoning paths it keeps, the formats it trains on, and
`rlaif self-improve` end to end on a scripted model (real vLLM sampling, DeepSpeed SFT)."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from rlaif.config import ConfigError, load_config
from rlaif.feedback.selfconsistency import extract_answer
from rlaif.run.self_improve import COT_CUE, select_paths, sft_pairs

from .conftest import REPO
from .scripted_models import fixed_distribution_checkpoint


def paths(*answers: str | None) -> list[str]:
    """One scripted reasoning path per answer, each worded differently; None: a path that never answers."""
    return [f"Path {'abcdefgh'[i]}: we count {'carefully' if i % 2 else 'again'}. "
            + (f"The answer is {a}." if a else "Hmm.") for i, a in enumerate(answers)]


# A scripted model's samples where the majority is known: q1 "1000" (5 of 8, written two ways), q2 no confident
# majority (3 of 8 at best), q3 "3.5" (8 of 8).
Q1 = paths("1,000", "1000", "999", "1,000", None, "999", "1,000", "$1,000")
Q2 = paths("12", "13", "12", "13", None, "12", "13", None)
Q3 = paths(*["3.5"] * 8)


def test_only_the_paths_of_a_confident_majority_are_kept():
    """Bugs caught: minority paths kept (999 in q1), a 3-of-8 plurality kept as confident (q2), one value split by
    its spelling ("1,000" / "1000" / "$1,000"), 3.5 read as 3, paths reordered or copied."""
    q1, q2, q3 = select_paths(["a", "b", "c"], ["Q1?", "Q2?", "Q3?"], [Q1, Q2, Q3], min_agreement=0.5)
    assert (q1.majority, q1.agreement) == ("1000", 5 / 8)
    assert q1.kept == [Q1[i] for i in (0, 1, 3, 6, 7)]
    assert q1.answers == ["1000", "1000", "999", "1000", None, "999", "1000", "1000"]
    assert (q2.agreement, q2.kept) == (3 / 8, [])  # "12" leads 3-3 with "13" (first to the top): not confident
    assert (q3.majority, q3.kept) == ("3.5", Q3)
    # the threshold is the key's: at 0.375 q2's first-reached plurality is kept, at 0.7 q1 is not
    loose = select_paths(["b"], ["Q2?"], [Q2], min_agreement=0.375)[0]
    assert loose.kept == [Q2[i] for i in (0, 2, 5)] and loose.majority == "12"
    assert select_paths(["a"], ["Q1?"], [Q1], min_agreement=0.7)[0].kept == []


def test_kept_paths_become_sft_examples_in_mixed_formats():
    """Bugs caught: a format missing or duplicated per path, the direct answer not the majority's (or repeated once
    per path), the chain-of-thought cue missing from the cue format, a question without kept paths trained on."""
    records = select_paths(["a", "b", "c"], ["Q1?", "Q2?", "Q3?"], [Q1, Q2, Q3], min_agreement=0.5)
    pairs = sft_pairs(records, ["cot", "cot-cue", "direct"])
    assert len(pairs) == 5 * 2 + 1 + 8 * 2 + 1 and not [p for p in pairs if p[1] == "b"]
    assert ("cot", "a", "Q1?", Q1[0]) in pairs and ("cot-cue", "a", f"Q1?\n{COT_CUE}", Q1[0]) in pairs
    assert [p for p in pairs if p[0] == "direct"] == [("direct", "a", "Q1?", "The answer is 1000."),
                                                       ("direct", "c", "Q3?", "The answer is 3.5.")]
    assert [p[0] for p in sft_pairs(records, ["direct"])] == ["direct", "direct"]


def test_formats_are_checked_by_the_config():
    with pytest.raises(ConfigError, match=r"^self_improve.formats: got \['cot', 'cots'\]; allowed: .*cot, cot-cue, "):
        load_config(REPO / "configs/debug.yaml", ["self_improve.formats=[cot, cots]"])
    with pytest.raises(ConfigError, match=r"self_improve.samples"):
        load_config(REPO / "configs/debug.yaml", ["self_improve.samples=1"])


def numeric_checkpoint(tiny_path: str, out) -> str:
    """The tiny Llama rewired to one next-token distribution at every position, whatever the context
    (tests/scripted_models.py): word pieces 0.6, a bare space 0.2, "3" 0.15, "7" 0.05. Its reasoning paths are words
    with numbers among them, mostly 3s: answers extract_answer reads, with a majority."""

    def logits(tok, vocab):
        words = [i for i, t in enumerate(vocab) if t.startswith("\u0120") and t[1:].isascii() and t[1:].isalpha()]
        logit = torch.full((len(vocab),), -50.0)
        logit[words] = math.log(0.6 / len(words))
        for token, p in (("\u0120", 0.2), ("3", 0.15), ("7", 0.05)):
            logit[vocab.index(token)] = math.log(p)
        return logit

    return fixed_distribution_checkpoint(tiny_path, out, logits)


@pytest.mark.e2e
def test_self_improve_command_keeps_the_majority_paths_and_fine_tunes(tmp_path, tiny_path):
    """`rlaif self-improve` on the scripted model. Bugs caught: the paths kept not those the majority reached (each
    is re-read here with extract_answer), samples grouped under the wrong question, the SFT examples not the kept
    paths', the checkpoint not written or not fine-tuned (its weights still the start's)."""
    model = numeric_checkpoint(tiny_path, tmp_path / "numeric")
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"How many apples are in basket {i}?"}) + "\n"
                                 for i in range(12)))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "rlaif.cli", "self-improve", "--config", "configs/debug.yaml", f"output_dir={out}",
         f"policy.model.path={model}", f"data.prompts={questions}", "data.eval_fraction=0", "self_improve.samples=6",
         "self_improve.min_agreement=0.6", "self_improve.max_new_tokens=24", "self_improve.lr=1e-3"],
        cwd=REPO, env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(line) for line in (out / "self_improve" / "paths.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(f"q{i}" for i in range(12))
    assert all(len(r["paths"]) == 6 for r in records)
    for r in records:
        answers = [extract_answer(p) for p in r["paths"]]
        top = max((answers.count(a) for a in set(answers) if a is not None), default=0)
        assert r["agreement"] == top / 6 and r["answers"] == answers
        assert r["kept"] == ([p for p, a in zip(r["paths"], answers) if a == r["majority"]] if top >= 4 else [])
    kept = [r for r in records if r["kept"]]
    assert 0 < len(kept) < 12, "the scripted model's 3s give some questions 4 of 6 and others only 3"
    examples = [json.loads(line) for line in (out / "self_improve" / "sft_examples.jsonl").read_text().splitlines()]
    assert len(examples) == sum(2 * len(r["kept"]) + 1 for r in kept)
    assert {e["target"] for e in examples if e["format"] == "cot"} == {p for r in kept for p in r["kept"]}
    assert f"{len(kept)} of 12 questions reached a confident majority" in proc.stderr
    from safetensors.torch import load_file

    start, tuned = (load_file(f"{m}/model.safetensors") for m in (model, out / "self_improve" / "checkpoint"))
    assert any(not torch.equal(start[k].float(), tuned[k].float()) for k in start)
