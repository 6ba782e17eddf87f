"""Held-out data never reaches an optimizer: one prompt split for every source, PM pairs split by content.

The sources here overlap on purpose: the same prompt under different ids, case, spacing and punctuation in
data.prompts, sl_cai.red_team, sl_cai.helpful and data.eval_prompts; a human pair that labeler.human_eval also holds
(responses swapped); an audited pair that is also an AI pair. The SL-CAI and preference-model stages run here on
scripted stand-ins for the Ray roles, so what reaches their optimizers can be inspected exactly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlaif.config import load_config
from rlaif.data.human_labels import HumanPair, write_human_labels
from rlaif.data.loader import DataError
from rlaif.data.sources import normalize_text, prompt_key
from rlaif.data.splits import SETS, PMPair, heldout_prompts, pair_key, plan_pairs, plan_prompts
from rlaif.feedback.constitution import load_constitution

N = 80


def shared(i: int) -> str:
    return f"Question {i}: how should I handle case number {i}?"


def shouted(i: int) -> str:  # the same prompt as shared(i) to the content key
    return f"  QUESTION {i} -- how SHOULD i handle   case number {i}!! "


@pytest.fixture
def overlapping(tmp_path: Path) -> list[str]:
    """Overrides for four overlapping prompt sources (80 shared prompts, a lock prompt in all of them)."""
    rl = [{"id": f"rl-{i}", "prompt": shared(i)} for i in range(N)] + [{"id": "rl-lock", "prompt": "How do I pick a "
                                                                                                     "lock?"}]
    red = [{"id": f"red-{i}", "prompt": shouted(i)} for i in range(N)]
    red += [{"id": "red-lock", "prompt": "how do I PICK a lock"}]
    red += [{"id": f"red-only-{i}", "prompt": f"Red-team only prompt {i}"} for i in range(40)]
    (tmp_path / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rl))
    (tmp_path / "red.jsonl").write_text("".join(json.dumps(r) + "\n" for r in red))
    (tmp_path / "helpful.txt").write_text("".join(shared(i).lower() + "\n" for i in range(0, N, 2)) + "Be nice\n")
    (tmp_path / "eval.jsonl").write_text('{"id": "e1", "prompt": "How do I pick a lock"}\n'
                                         '{"id": "e2", "prompt": "red-team ONLY prompt 7"}\n')
    return [f"data.prompts={tmp_path / 'rl.jsonl'}", f"sl_cai.red_team=[{tmp_path / 'red.jsonl'}]",
            f"sl_cai.helpful=[{tmp_path / 'helpful.txt'}]", f"data.eval_prompts={tmp_path / 'eval.jsonl'}",
            "data.eval_fraction=0.3", "data.seed=5", f"output_dir={tmp_path / 'run'}"]


def keys(records) -> set[str]:
    return {prompt_key(r) for r in records}


def test_one_split_for_every_source_and_no_held_out_prompt_is_trained_on(overlapping):
    cfg = load_config(None, overlapping)
    plan = plan_prompts(cfg, SETS)
    held = keys(plan.rl.heldout) | keys(plan.red_team.heldout) | keys(plan.helpful.heldout)
    for name in SETS:
        split = getattr(plan, name)
        assert split.train and not keys(split.train) & held, f"{name}: a held-out prompt is on the train side"
    # the 80 shared prompts: one side per content, whatever the source, id, case or punctuation
    side = {name: {prompt_key(r): s for s in ("train", "heldout") for r in getattr(getattr(plan, name), s)}
            for name in SETS}
    for i in range(N):
        k = normalize_text(shared(i))
        assert side["rl"][k] == side["red_team"][k], shared(i)
        if i % 2 == 0:
            assert side["helpful"][k] == side["rl"][k]
    hashed_out = [i for i in range(N) if side["rl"][normalize_text(shared(i))] == "heldout"]
    assert 0.15 * N < len(hashed_out) < 0.45 * N  # data.eval_fraction = 0.3 of them, in expectation
    # data.eval_prompts: held out in every source, evaluated once
    lock = normalize_text("How do I pick a lock?")
    assert lock not in keys(plan.rl.train) | keys(plan.red_team.train)
    assert [prompt_key(r) for r in plan.rl.heldout].count(lock) == 1
    assert normalize_text("Red-team only prompt 7") not in keys(plan.red_team.train)
    assert plan.red_team.removed == 2 - (side["red_team"][lock] == "heldout")
    # one function gives every held-out set to an evaluation
    got = heldout_prompts(cfg)
    assert got == {"rl": plan.rl.heldout, "red_team": plan.red_team.heldout, "helpful": plan.helpful.heldout}


def test_only_the_named_sets_are_loaded_and_errors_name_the_key(overlapping, tmp_path):
    cfg = load_config(None, overlapping)
    plan = plan_prompts(cfg)
    assert plan.rl.train and plan.red_team.train == [] and plan.helpful.train == []
    with pytest.raises(DataError, match=r"sl_cai\.red_team: no prompt sources given"):
        plan_prompts(load_config(None, [*overlapping, "sl_cai.red_team=[]"]), SETS)
    everything = load_config(None, [*overlapping, f"data.eval_prompts={tmp_path / 'rl.jsonl'}"])
    with pytest.raises(DataError, match=r"data\.prompts: all 81 prompts are held out"):
        plan_prompts(everything)


def test_pairs_held_out_by_human_eval_or_duplicated_never_train_the_pm():
    human_eval = [HumanPair("eval-1", "Prompt A", "first response", "second response", 1.0)]
    in_eval = PMPair("prompt a", "SECOND response.", "first  response", 0.0, "human", "h-1")  # swapped, recased
    audited = PMPair("Prompt B", "x is fine", "y is bad", 1.0, "human", "audit:1")
    ai_copy = PMPair("Prompt B", "y is bad", "x is fine", 0.3, "ai", "ai:0")  # the same pair, labelled by the AI
    ai = [ai_copy] + [PMPair(f"p{i}", f"a{i}", f"b{i}", 0.8, "ai", f"ai:{i + 1}") for i in range(200)]
    plan = plan_pairs(ai, [in_eval, audited], human_eval, 0.25, seed=0)
    assert plan.excluded == [in_eval] and plan.duplicates == [ai_copy]
    kept = plan.train + plan.heldout
    assert audited in kept and ai_copy not in kept  # a person's verdict wins over the AI label
    train_keys, held_keys = {p.key for p in plan.train}, {p.key for p in plan.heldout}
    assert not train_keys & held_keys and len(train_keys | held_keys) == len(kept) == 201
    assert pair_key("Prompt A", "first response", "second response") not in train_keys | held_keys
    assert 0.18 < len(plan.heldout) / len(kept) < 0.32
    # a pair's side depends on its content alone: the same pairs in another mix keep their sides
    part = plan_pairs(ai[100:], [], [], 0.25, seed=0)
    assert {p.id for p in part.heldout} == {p.id for p in plan.heldout if p in ai[100:]}


# --- the stages, on scripted roles ----------------------------------------------------------------------------------


class Ref:
    """What a scripted actor method returns in place of a Ray object ref."""

    def __init__(self, value):
        self.value = value


class Method:
    def __init__(self, fn):
        self.remote = lambda *a: Ref(fn(*a))


def get(refs, what: str = ""):
    return [r.value for r in refs] if isinstance(refs, list) else refs.value


class Tracker:
    panels = False  # wandb off: no report panels

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def log(self, metrics: dict, step: int) -> None:
        self.rows.append(metrics)

    def log_table(self, *args) -> None:
        pass


def test_preference_model_stage_trains_on_no_held_out_pair(tmp_path):
    from rlaif.run.stages import train_preference_model

    human_eval = [HumanPair(f"eval-{i}", f"Eval prompt {i}", f"good {i}", f"bad {i}", 1.0) for i in range(6)]
    write_human_labels(tmp_path / "eval.jsonl", human_eval)
    ai = [(f"AI prompt {i}", f"ai first {i}", f"ai second {i}", 0.9 if i % 2 else 0.1) for i in range(40)]
    human = [h.swapped() for h in human_eval[:3]]  # the held-out human pairs, again, in the training file
    human += [HumanPair("audit:0", ai[0][0], ai[0][1], ai[0][2], 1.0)]  # an audited AI pair
    human += [HumanPair(f"h{i}", f"Human prompt {i}", f"h good {i}", f"h bad {i}", 1.0) for i in range(30)]
    write_human_labels(tmp_path / "human.jsonl", human)
    cfg = load_config(None, [f"output_dir={tmp_path}", f"labeler.human_eval={tmp_path / 'eval.jsonl'}",
                             f"preference_model.human_pairs={tmp_path / 'human.jsonl'}", "preference_model.num_ranks=2",
                             "preference_model.eval_fraction=0.3"])
    trained, scored = [], []

    def score(batch, normalize):
        scored.append(batch)
        return [len(r) * (1 if "good" in r or "first" in r else -1) for r in batch["response"]]

    pm = SimpleNamespace(actors=[SimpleNamespace(score=Method(score)) for _ in range(2)],
                         call_sharded=lambda m, shards: trained.extend(shards) or [{"pm/loss_first": 1.0}],
                         call=lambda *a: None)
    labels = [{"p_first": p} for *_, p in ai]
    pairs = {"prompt": [a[0] for a in ai], "first": [a[1] for a in ai], "second": [a[2] for a in ai],
             "labels": labels}
    tracker = Tracker()
    metrics = train_preference_model(cfg, SimpleNamespace(pm=pm, get=get), pairs, tracker)

    rows = [json.loads(x) for x in (tmp_path / "feedback" / "pm_pairs.jsonl").read_text().splitlines()]
    by_split = {s: {pair_key(r["prompt"], r["first"], r["second"]) for r in rows if r["split"] == s}
                for s in ("train", "heldout", "human_eval", "duplicate", "unused")}
    eval_keys = {pair_key(h.prompt, h.response_a, h.response_b) for h in human_eval}
    optimizer = {pair_key(p, a, b) for s in trained for p, a, b in zip(s["prompt"], s["first"], s["second"])}
    assert optimizer == by_split["train"] and sum(len(s["prompt"]) for s in trained) == len(by_split["train"])
    assert not optimizer & (by_split["heldout"] | eval_keys)
    assert len(by_split["human_eval"]) == 3 and by_split["human_eval"] <= eval_keys
    assert by_split["duplicate"] == {pair_key(*ai[0][:3])}  # the AI copy of the audited pair
    assert len(rows) == 40 + 34 and metrics["pm/removed_human_eval_pairs"] == 3.0
    # the held-out AI plot holds AI pairs only; held-out human pairs are scored on their own
    heldout_ai = {r["prompt"] for r in rows if r["split"] == "heldout" and r["origin"] == "ai"}
    ai_eval_call = scored[2]["prompt"] + scored[3]["prompt"]  # after the 2 ranks' train-set normalisation calls
    assert heldout_ai and set(ai_eval_call) == heldout_ai
    assert "pm/heldout_accuracy" in metrics and "pm/heldout_human_pairs_accuracy" in metrics
    assert "pm/human_accuracy" in metrics


def scripted_rollout(constitution):
    """rollout.chat on a script: a critique finds nothing to change, a revision is numbered."""
    seen: list[list[dict]] = []
    count = iter(range(10**6))

    def chat(conversations, seed, temperature, max_new_tokens):
        seen.extend(conversations)
        replies = []
        for conv in conversations:
            last = conv[-1]["content"]
            if any(last == cr.critique for cr in constitution.critique_revision):
                replies.append("No changes are needed.")
            elif any(last == cr.revision for cr in constitution.critique_revision):
                replies.append(f"revision {next(count)}")
            else:
                replies.append("an answer")
        return {"replies": replies, "truncated": 0, "max_tokens": 100}

    return SimpleNamespace(chat=chat), seen


def test_sl_cai_stage_trains_on_no_held_out_prompt(overlapping, tmp_path, tiny_path):
    from rlaif.run.stages import sl_cai

    cfg = load_config(None, [*overlapping, "sl_cai.num_prompts=200", "sl_cai.rounds=3", "sl_cai.targets=last",
                             "sl_cai.epochs=1", "sl_cai.few_shot=1"])
    rollout, conversations = scripted_rollout(load_constitution())
    sft_batches = []
    policy = SimpleNamespace(actors=[object()], call_sharded=lambda m, shards, lr: sft_batches.extend(shards) or
                             [{"sft/loss": 1.0}], call=lambda m, path, card: [path])
    tracker = Tracker()
    sl_cai(cfg, SimpleNamespace(rollout=rollout, policy=policy, get=get), tracker)

    held = {k for v in heldout_prompts(cfg).values() for k in keys(v)}
    from rlaif.models import load_tokenizer

    tok = load_tokenizer(tiny_path)
    trained = [re.search(r"<\|im_start\|>user\n(.*)<\|im_end\|>", tok.decode(ids), re.S).group(1)
               for b in sft_batches for ids in b.prompt_lists()]
    assert len(trained) >= 8 and not {normalize_text(t) for t in trained} & held
    questions = {normalize_text(c[6]["content"]) for c in conversations if len(c) == 7}  # few shot, then the prompt
    assert len(questions) > 30 and not questions & held  # every red-team train prompt, none held out
    rows = [json.loads(x) for x in (tmp_path / "run" / "sl_cai" / "sft_examples.jsonl").read_text().splitlines()]
    pool = {normalize_text(r["prompt"]) for r in rows}  # what SFT draws from (an epoch's remainder is skipped)
    assert {normalize_text(t) for t in trained} <= pool and not pool & held
    # targets=last with 3 rounds: every critique said "no change", a rate of 1, not 3
    metrics = tracker.rows[-1]
    assert metrics["sl_cai/no_change_rate"] == 1.0 and metrics["sl_cai/critiques"] == 3 * metrics["sl_cai/prompts"]
    assert metrics["sl_cai/revisions"] == metrics["sl_cai/prompts"]
