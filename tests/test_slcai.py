"""SL-CAI: the critique -> revision loop, its provenance, the SFT loss mask, and the stage end to end."""

import json
import os
import random
import subprocess
import sys

import pytest
import torch

from rlaif.constitution import load_constitution
from rlaif.data import Prompt, pad_sequences
from rlaif.slcai import NO_CHANGE, few_shot_messages, revise, sft_examples, sft_token_ids

from .conftest import REPO

CONSTITUTION = load_constitution()


class ScriptedChat:
    """Stands in for the rollout engine: records every conversation and answers by turn type."""

    def __init__(self) -> None:
        self.calls: list[list[list[dict]]] = []

    def __call__(self, conversations):
        self.calls.append(conversations)
        out = []
        for conv in conversations:
            last = conv[-1]["content"]
            if any(last == cr.critique for cr in CONSTITUTION.critique_revision):
                out.append("No changes are needed." if "poem" in conv[-3]["content"] else "It helps with a crime.")
            elif any(last == cr.revision for cr in CONSTITUTION.critique_revision):
                out.append(f"revised#{len(self.calls)}")
            else:
                out.append("original answer")
        return out


def test_revise_rounds_principles_and_provenance():
    prompts = [Prompt("harmbench:0001", "How do I pick a lock?"), Prompt("benign:0002", "Write a poem.")]
    chat = ScriptedChat()
    records = revise(prompts, chat, CONSTITUTION, rounds=3, few_shot=2, rng=random.Random(0),
                     provenance={"model": "m", "seed": 0})
    assert len(chat.calls) == 1 + 2 * 3  # one answer call, then a critique and a revision call per round, batched
    assert all(len(call) == 2 for call in chat.calls)
    shots = few_shot_messages(CONSTITUTION, 2)
    assert len(shots) == 12 and chat.calls[0][0][:12] == shots  # the worked examples open every conversation
    assert chat.calls[0][0][12] == {"role": "user", "content": "How do I pick a lock?"}
    lock, poem = records
    assert lock.original == "original answer" and lock.final == "revised#7" and len(lock.rounds) == 3
    assert lock.source == "harmbench" and lock.provenance == {"model": "m", "seed": 0}
    assert [r.no_change for r in lock.rounds] == [False] * 3 and all(r.no_change for r in poem.rounds)
    # the critique request and the revision request of a round come from the same sampled principle
    for rd in lock.rounds:
        cr = CONSTITUTION.critique_revision[rd.principle]
        assert (rd.critique_request, rd.revision_request) == (cr.critique, cr.revision)
    # principles are drawn afresh each round (3 rounds x 2 prompts from 16: all equal is vanishingly unlikely)
    assert len({rd.principle for r in records for rd in r.rounds}) > 1
    # round 2 revises the latest revision, not the original
    assert chat.calls[3][0][13] == {"role": "assistant", "content": "revised#3"}
    # the SFT targets are revisions, never critiques
    assert [t for _, t in sft_examples(records, "all")] == [rd.revision for r in records for rd in r.rounds]
    assert [t for _, t in sft_examples(records, "last")] == ["revised#7", "revised#7"]
    assert json.loads(json.dumps(lock.to_dict()))["final"] == "revised#7"
    # a revision that only repeats its critique is flagged and never becomes an SFT target
    lock.rounds[0].copies_critique = True
    assert len(sft_examples(records, "all")) == 5


def test_no_change_detector():
    assert NO_CHANGE.search("The response is already appropriate, so no changes are needed.")
    assert NO_CHANGE.search("Nothing harmful here.")
    assert not NO_CHANGE.search("The response explains how to build a weapon, which is harmful.")


def test_sft_loss_mask_token_by_token(tiny_path):
    from rlaif.models import load_tokenizer

    tok = load_tokenizer(tiny_path)
    p, t = sft_token_ids(tok, "How do I bake bread?", "Mix flour and water.", max_tokens=256)
    assert tok.decode(p) == "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n"
    assert t[-1] == tok.eos_token_id and tok.decode(t[:-1]) == "Mix flour and water."
    ids, _, mask = pad_sequences([p, p[:3]], [t, t[:2]], tok.pad_token_id)
    targets = ids[:, 1:]
    assert targets[0][mask[0].bool()].tolist() == t  # exactly the target tokens (and the end of turn) count
    assert targets[1][mask[1].bool()].tolist() == t[:2]
    assert mask[0, : len(p) - 1].sum() == 0 and mask.sum() == len(t) + 2
    assert torch.all(mask[1, 4:] == 0)  # padding never counts


@pytest.mark.e2e
def test_train_runs_sl_cai_then_rl_from_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "rlaif.cli", "train", "--config", "configs/debug.yaml", f"output_dir={out}",
         "sl_cai.enabled=true", "sl_cai.epochs=3", "trainer.steps=1", "wandb.enabled=false"],
        cwd=REPO, env=os.environ, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(x) for x in (out / "sl_cai/revisions.jsonl").read_text().splitlines()]
    assert len(records) == 8
    for r in records:
        assert len(r["rounds"]) == 2 and r["final"] == r["rounds"][-1]["revision"]
        assert set(r["provenance"]) >= {"model", "model_path", "seed", "rounds", "few_shot", "sampling"}
        assert r["source"] and r["id"] and r["original"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    sft = [r["sft/loss"] for r in rows if "sft/loss" in r]
    assert len(sft) >= 4 and sum(sft[-2:]) / 2 < sum(sft[:2]) / 2, f"SFT loss did not fall: {sft}"
    assert any("reward/score" in r for r in rows)  # RL ran after SL-CAI
    ckpt = out / "sl_cai/checkpoint"
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(ckpt)
    # the SFT checkpoint serves in vLLM (in a fresh process: one in-process engine per process)
    code = ("from vllm import LLM, SamplingParams; import sys; llm = LLM(model=sys.argv[1], dtype='float32', "
            "enforce_eager=True, max_model_len=256); "
            "print('VLLM_OK', len(llm.generate(['Hello'], SamplingParams(max_tokens=4))[0].outputs[0].token_ids))")
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run([sys.executable, "-c", code, str(ckpt)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert "VLLM_OK" in proc.stdout, proc.stderr[-3000:]
    assert (out / "checkpoint" / "model.safetensors").is_file()


@pytest.mark.e2e
def test_smollm2_critiques_and_revises_red_team_prompts(tmp_path):
    """The real SmolLM2-135M-Instruct on a handful of HarmBench prompts, through the rollout actor."""
    import ray

    from actors.group import get
    from actors.rollout import RolloutWorker
    from rlaif.config import load_config
    from rlaif.sources import load_source

    cfg = load_config(REPO / "configs/smollm2.yaml", [f"output_dir={tmp_path}", "sl_cai.enabled=true",
                                                      "rollout.kv_cache_gib=1"])
    prompts = load_source("builtin:harmbench")[:3]
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        rollout = ray.remote(RolloutWorker).options(num_cpus=1).remote(cfg)

        calls = iter(range(100))

        def chat(convs):
            return get(rollout.chat.remote(convs, 1000 * next(calls), 0.7, 40), 600, "rollout.chat")

        provenance = {"model": cfg.policy.model.path, "seed": 0, "rounds": 1, "sampling": {"temperature": 0.7}}
        records = revise(prompts, chat, CONSTITUTION, rounds=1, few_shot=2, rng=random.Random(0),
                         provenance=provenance)
    finally:
        ray.shutdown()
    for r, p in zip(records, prompts):
        assert r.id == p.id and r.source == "harmbench" and r.prompt == p.text and r.provenance == provenance
        (rd,) = r.rounds
        assert rd.critique.strip() and rd.revision.strip() and r.original.strip()
        assert rd.revision != r.original
        assert rd.copies_critique == (rd.revision.strip() == rd.critique.strip())
    print(json.dumps(records[0].to_dict(), indent=1)[:1500])
