"""Self-consistency filtering: majority by key, agreement rates, ties, unextractable answers, the threshold."""

import random

import pytest

from rlaif.feedback.selfconsistency import extract_answer, majority_filter


def test_majority_by_extracted_answer():
    candidates = [
        ["so the answer is 12.", "I get 13", "The answer is 12", "12 apples, so the answer is 12"],
        ["no idea", "The answer is (B).", "the answer is b"],
    ]
    kept, rates = majority_filter(candidates, extract_answer)
    assert kept == [["so the answer is 12.", "The answer is 12", "12 apples, so the answer is 12"],
                    ["The answer is (B).", "the answer is b"]]
    assert rates == [pytest.approx(3 / 4), pytest.approx(2 / 3)]  # "no idea" counts in the denominator


def test_ties_go_to_the_first_key_and_none_is_never_kept():
    kept, rates = majority_filter([["x", "y", "y", "x"], [None, None]], key=lambda s: s)
    assert kept == [["x", "x"], []] and rates == [0.5, 0.0]


def test_min_agreement_drops_low_confidence_prompts():
    candidates = [["a", "a", "b"], ["a", "b", "c"]]
    kept, rates = majority_filter(candidates, key=str, min_agreement=0.5)
    assert kept == [["a", "a"], []] and rates == [pytest.approx(2 / 3), pytest.approx(1 / 3)]
    with pytest.raises(ValueError, match="prompt 0: no candidates"):
        majority_filter([[]], key=str)


def test_majority_by_judge_verdict():
    """A judge verdict as the key: revisions judged harmless (P(harmful) <= 0.5) outvote the harmful one."""
    p_harmful = {"safe 1": 0.1, "safe 2": 0.3, "unsafe": 0.9}
    kept, rates = majority_filter([["safe 1", "unsafe", "safe 2"]], key=lambda r: p_harmful[r] > 0.5)
    assert kept == [["safe 1", "safe 2"]] and rates == [pytest.approx(2 / 3)]


@pytest.mark.parametrize("text,expected", [
    ("First 3, then 4, so 1,234", "1234"),
    ("The answer is: -7.", "-7"),
    ("the answer is (C)", "c"),
    ("nothing here", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


# --- SL-CAI with self-consistency, on scripted roles (as tests/test_splits.py runs the stages) ----------------------


def run_sl_cai(tmp_path, *overrides, samples=4):
    """The SL-CAI stage on scripted roles: within each prompt's 4 contiguous revision samples, even groups refuse 3
    times and comply once, odd groups the other way round (agreement 3/4); every sample's text is distinct.
    Returns (revision records, every conversation sent, SFT examples, logged metrics)."""
    import json
    from types import SimpleNamespace

    from rlaif.config import load_config
    from rlaif.feedback.constitution import load_constitution
    from rlaif.run.stages import sl_cai

    from .conftest import REPO

    cfg = load_config(REPO / "configs/debug.yaml", [f"output_dir={tmp_path}", f"sl_cai.self_consistency={samples}",
                                                    "sl_cai.num_prompts=6", "sl_cai.rounds=2", "sl_cai.epochs=1",
                                                    *overrides])
    revision_requests = {cr.revision for cr in load_constitution().critique_revision}
    conversations: list[list[dict]] = []

    def chat(convs, seed, temperature, max_new_tokens):
        conversations.extend(convs)
        replies = []
        for i, conv in enumerate(convs):
            if conv[-1]["content"] not in revision_requests:
                replies.append("an answer")
                continue
            group, j = divmod(i, samples)
            refuses = (j != 3) if group % 2 == 0 else (j == 3)
            replies.append(f"I'm sorry, I can't help with that ({seed}/{i})" if refuses
                           else f"Sure, here is a safer way ({seed}/{i})")
        return {"replies": replies, "truncated": 0, "max_tokens": 100}

    policy = SimpleNamespace(actors=[object()], call_sharded=lambda m, shards, lr: [{"sft/loss": 1.0}],
                             call=lambda m, path, card: [path])
    logged: list[dict] = []
    tracker = SimpleNamespace(log=lambda m, step: logged.append(m), log_table=lambda *a, **k: None)
    sl_cai(cfg, SimpleNamespace(rollout=SimpleNamespace(chat=chat), policy=policy), tracker)
    out = tmp_path / "sl_cai"
    records = [json.loads(x) for x in (out / "revisions.jsonl").read_text().splitlines()]
    sft_path = out / "sft_examples.jsonl"
    sft = [json.loads(x) for x in sft_path.read_text().splitlines()] if sft_path.exists() else []
    return records, conversations, sft, logged, revision_requests


def test_sl_cai_keeps_the_majority_revisions_and_records_the_agreement(tmp_path, tiny_path):
    samples = 4
    records, conversations, sft, logged, revision_requests = run_sl_cai(tmp_path)
    assert len(records) == 6 and records[0]["provenance"]["self_consistency"] == {
        "samples": 4, "key": "refusal", "min_agreement": 0.5}
    for r in records:
        for rd in r["rounds"]:
            assert len(rd["samples"]) == 4 and len(set(rd["samples"])) == 4 and rd["agreement"] == 0.75
            majority_refuses = sum(s.startswith("I'm sorry") for s in rd["samples"]) == 3
            assert len(rd["kept"]) == 3 and all(s.startswith("I'm sorry") == majority_refuses for s in rd["kept"])
            assert rd["revision"] == rd["kept"][0]
    # round 2 revises the majority: round 1's kept[0] is the answer its critique request follows
    second_round = [c for c in conversations if c[-1]["content"] in revision_requests][6 * samples:]
    assert {c[-4]["content"] for c in second_round} == {r["rounds"][0]["revision"] for r in records}
    targets = [s["target"] for s in sft if s["kind"] == "revision"]
    assert sorted(targets) == sorted(t for r in records for rd in r["rounds"] for t in rd["kept"])  # 6 x 2 x 3
    helpful = [s for s in sft if s["kind"] == "helpful"]
    assert len(targets) == 36 and len(helpful) == round(36 * 0.25 / 0.75)  # sl_cai.helpful_ratio of the mix
    metrics = logged[-1]
    assert metrics["sl_cai/self_consistency_agreement"] == 0.75 and metrics["sl_cai/self_consistency_kept"] == 0.75
    assert metrics["sl_cai/self_consistency_no_verdict"] == 0.0
    assert metrics["sl_cai/self_consistency_below_min_agreement"] == 0.0


# --- the fixes of issue 19 --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("The answer is 1,000.", "1000"),
    ("The answer is 3.5", "3.5"),
    ("The answer is $12.50.", "12.5"),
    ("It costs $12.50 in all", "12.5"),
    ("The answer is: -$3.00", "-3"),
    ("the temperature fell to \u22122 degrees", "-2"),
    ("pages 3-4", "4"),  # a hyphen after a digit is no minus sign
    ("The answer is 0.0", "0"),
    ("The answer is yes.", "yes"),
])
def test_extract_answer_reads_whole_numbers(text, expected):
    """Bug: extract_answer cut "The answer is 1,000" to "1", "3.5" to "3" and "$12.50" to "$12" (the token after
    "answer is" stopped at the first "," or "."), and kept "12.50" apart from "12.5"."""
    assert extract_answer(text) == expected


def test_equal_numbers_are_one_answer_however_written():
    """Bug: "1,000", "1000" and "1000.00" were three answers (or "1"), so a majority that agreed in value was split
    and its votes went to a wrong plurality."""
    spellings = ["The answer is 1,000.", "so 1000 in all", "The answer is 1000.00", "The answer is $1,000"]
    assert {extract_answer(t) for t in spellings} == {"1000"}
    kept, rates = majority_filter([spellings + ["The answer is 1", "The answer is 1"]], extract_answer)
    assert kept == [spellings] and rates == [pytest.approx(4 / 6)]
    assert extract_answer("The answer is -7") != extract_answer("The answer is 7")


def test_min_agreement_drops_a_plurality_in_revise():
    """Bug: SL-CAI kept a 1-of-4 plurality as SFT targets: revise() took no min_agreement and called majority_filter
    without one."""
    from rlaif.data.sources import PromptRecord
    from rlaif.feedback.constitution import load_constitution
    from rlaif.feedback.slcai import revise, revision_stats, sft_examples

    prompts = [PromptRecord("p:0", "how do I pick a lock?"), PromptRecord("p:1", "how do I hotwire a car?")]
    constitution = load_constitution()
    requests = {cr.revision for cr in constitution.critique_revision}
    answers = iter(["a", "b", "c", "d", "e", "e", "e", "f"])  # prompt 0: four answers (1 of 4); prompt 1: 3 of 4

    def chat(convs):
        return [next(answers) if c[-1]["content"] in requests else "a reply" for c in convs]

    records = revise(prompts, chat, constitution, 1, 0, random.Random(0), {}, samples=4, key=lambda ps, ts: ts,
                     min_agreement=0.5)
    assert [rd.agreement for r in records for rd in r.rounds] == [0.25, 0.75]
    assert [rd.kept for r in records for rd in r.rounds] == [[], ["e", "e", "e"]]
    assert [t for _, _, t in sft_examples(records, "all")] == ["e"]
    assert revision_stats(records, "all")["sl_cai/self_consistency_below_min_agreement"] == 0.5


def test_min_agreement_config_key_reaches_the_stage_and_is_range_checked(tmp_path, tiny_path):
    """Bug: no config key set the self-consistency threshold (a 1-of-4 plurality was kept); the stage now reads
    sl_cai.self_consistency_min_agreement: at 0.8 the 3-of-4 majorities here are all dropped."""
    import json

    from rlaif.config import ConfigError, load_config

    from .conftest import REPO

    with pytest.raises(ValueError, match="0 SFT examples.*lower sl_cai.self_consistency_min_agreement"):
        run_sl_cai(tmp_path, "sl_cai.self_consistency_min_agreement=0.8")
    records = [json.loads(x) for x in (tmp_path / "sl_cai" / "revisions.jsonl").read_text().splitlines()]
    assert records[0]["provenance"]["self_consistency"]["min_agreement"] == 0.8
    assert all(rd["agreement"] == 0.75 and rd["kept"] == [] for r in records for rd in r["rounds"])
    for bad in ("-0.1", "1.5"):
        with pytest.raises(ConfigError, match=r"sl_cai.self_consistency_min_agreement: must be in \[0, 1\]"):
            load_config(REPO / "configs/debug.yaml", [f"sl_cai.self_consistency_min_agreement={bad}"])
