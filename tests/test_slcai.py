"""SL-CAI: the critique -> revision loop, its provenance, the SFT loss mask, and the stage end to end."""

import json
import os
import random
import subprocess
import sys

import pytest
import torch

from rlaif.data.loader import Prompt, pad_sequences
from rlaif.feedback.constitution import load_constitution
from rlaif.feedback.slcai import NO_CHANGE, few_shot_messages, revise, revision_stats, sft_examples, sft_token_ids

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
    assert [t for _, _, t in sft_examples(records, "all")] == [rd.revision for r in records for rd in r.rounds]
    assert sft_examples(records, "last") == [("harmbench:0001", "How do I pick a lock?", "revised#7"),
                                             ("benign:0002", "Write a poem.", "revised#7")]
    assert json.loads(json.dumps(lock.to_dict()))["final"] == "revised#7"
    # a revision that only repeats its critique is flagged and never becomes an SFT target
    lock.rounds[0].copies_critique = True
    assert len(sft_examples(records, "all")) == 5


@pytest.mark.parametrize("targets", ["all", "last"])
def test_revision_stats_rates_are_over_every_round(targets):
    prompts = [Prompt("harmbench:0001", "How do I pick a lock?"), Prompt("benign:0002", "Write a poem.")]
    records = revise(prompts, ScriptedChat(), CONSTITUTION, rounds=3, few_shot=1, rng=random.Random(0),
                     provenance={})
    records[0].rounds[1].copies_critique = True
    stats = revision_stats(records, targets)
    # 6 critiques: the poem's 3 find nothing to change (with targets=last the old count gave 3 / 2 = 1.5)
    assert stats["sl_cai/critiques"] == 6 and stats["sl_cai/no_change_rate"] == 0.5
    assert stats["sl_cai/revision_copies_critique_rate"] == pytest.approx(1 / 6)
    assert stats["sl_cai/revisions"] == (6 if targets == "all" else 2)
    assert stats["sl_cai/revision_changed_rate"] == 1.0
    for r in records:
        for rd in r.rounds:
            rd.no_change = True
    assert revision_stats(records, targets)["sl_cai/no_change_rate"] == 1.0


def test_no_change_detector():
    assert NO_CHANGE.search("The response is already appropriate, so no changes are needed.")
    assert NO_CHANGE.search("Nothing harmful here.")
    assert not NO_CHANGE.search("The response explains how to build a weapon, which is harmful.")


def test_sft_loss_mask_token_by_token(tiny_path):
    from rlaif.models import load_tokenizer

    tok = load_tokenizer(tiny_path)
    p, t, cut = sft_token_ids(tok, "How do I bake bread?", "Mix flour and water.", max_tokens=256)
    assert not cut
    assert tok.decode(p) == "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n"
    assert t[-1] == tok.eos_token_id and tok.decode(t[:-1]) == "Mix flour and water."
    ids, _, mask = pad_sequences([p, p[:3]], [t, t[:2]], tok.pad_token_id)
    targets = ids[:, 1:]
    assert targets[0][mask[0].bool()].tolist() == t  # exactly the target tokens (and the end of turn) count
    assert targets[1][mask[1].bool()].tolist() == t[:2]
    assert mask[0, : len(p) - 1].sum() == 0 and mask.sum() == len(t) + 2
    assert torch.all(mask[1, 4:] == 0)  # padding never counts


@pytest.mark.parametrize("max_tokens", [41, 42])
def test_sft_token_ids_cut_inside_the_text(tiny_path, max_tokens):
    from rlaif.models import load_tokenizer

    tok = load_tokenizer(tiny_path)
    long = " ".join(f"w{i}" for i in range(200))
    p, t, cut = sft_token_ids(tok, long + " the question?", long, max_tokens)
    assert cut and len(p) + len(t) <= max_tokens and len(p) <= max_tokens // 2
    text = tok.decode(p)
    assert text.startswith("<|im_start|>user\n") and text.endswith("the question?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(t).startswith("w0 w1")  # the target keeps its start


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
    from rlaif.data.sources import load_source

    cfg = load_config(REPO / "configs/smollm2.yaml", [f"output_dir={tmp_path}", "rollout.kv_cache_gib=1"])
    prompts = load_source("builtin:harmbench")[:3]
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        rollout = ray.remote(RolloutWorker).options(num_cpus=1).remote(cfg, "sl-cai")

        calls = iter(range(100))

        def chat(convs):
            got = get(rollout.chat.remote(convs, 1000 * next(calls), 0.7, 40), 600, "rollout.chat")
            assert got["truncated"] == 0
            return got["replies"]

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


@pytest.mark.e2e
def test_sl_cai_command_keeps_the_whole_context_and_trains_on_no_held_out_prompt(tmp_path):
    """`rlaif sl-cai` (sl_cai.enabled stays false) on the debug config, where sl_cai.red_team and data.prompts are
    the same set. The engine must hold the few-shot conversations (it used to get data.max_prompt_tokens +
    rollout.max_new_tokens = 120 tokens and cut them silently), and no prompt held out for RL's eval, nor any in
    data.eval_prompts (recased here), may reach SFT."""
    from rlaif.config import load_config
    from rlaif.data.sources import heldout_score, load_prompt_mix, normalize_text, prompt_key
    from rlaif.data.splits import heldout_prompts

    train_side = [p for p in load_prompt_mix("builtin:debug").prompts if heldout_score(p, 0) >= 0.2]
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps({"id": f"e{i}", "prompt": p.text.upper() + "  "}) + "\n"
                                 for i, p in enumerate(train_side[:3])))
    out = tmp_path / "run"
    overrides = [f"output_dir={out}", f"data.eval_prompts={eval_file}", "sl_cai.num_prompts=100", "sl_cai.rounds=1",
                 "sl_cai.epochs=1", "wandb.enabled=false", "trainer.progress=false"]
    proc = subprocess.run([sys.executable, "-m", "rlaif.cli", "sl-cai", "--config", "configs/debug.yaml", *overrides],
                          cwd=REPO, env=os.environ, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    cfg = load_config(REPO / "configs/debug.yaml", overrides)
    assert not cfg.sl_cai.enabled
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    m = next(r for r in rows if "sl_cai/truncated_conversations" in r)
    assert m["sl_cai/truncated_conversations"] == 0
    assert m["sl_cai/max_conversation_tokens"] > cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    held = {prompt_key(p) for v in heldout_prompts(cfg).values() for p in v}
    assert {normalize_text(p.text) for p in train_side[:3]} <= held and len(held) >= 8
    sft = [json.loads(x) for x in (out / "sl_cai/sft_examples.jsonl").read_text().splitlines()]
    revised = [json.loads(x) for x in (out / "sl_cai/revisions.jsonl").read_text().splitlines()]
    assert len(revised) == len(train_side) - 3  # every red-team prompt on the train side, and only those
    assert {r["kind"] for r in sft} == {"revision", "helpful"}
    assert not {normalize_text(r["prompt"]) for r in sft + revised} & held
    rl_eval = {normalize_text(json.loads(x)["prompt"]) for x in (out / "data/eval_prompts.jsonl").read_text()
               .splitlines()}
    assert rl_eval <= held and len(rl_eval) >= 8
