"""The human-label JSONL format and the held-out pairs built from pyrit's human-scored CSVs."""

import csv
import importlib.util
import io
import json
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from rlaif.data.human_labels import (
    HumanLabelError,
    HumanPair,
    build_pyrit_human_set,
    load_human_labels,
    main,
    pyrit_file_pairs,
    pyrit_scorer_evals_dir,
    read_scored_csv,
    write_human_labels,
)

needs_pyrit = pytest.mark.skipif(importlib.util.find_spec("pyrit") is None,
                                 reason="pyrit not installed: pip install --no-deps pyrit==1.1.0")


def _pair(i: int, p: float = 1.0, **kw) -> HumanPair:
    return HumanPair(f"id{i}", f"prompt {i} ünïcode", f"a{i}", f"b{i}", p, **kw)


def test_write_load_round_trip(tmp_path):
    recs = [_pair(0), _pair(1, 0.0, source="s", principle="harmless", annotator="x", note="n"), _pair(2, 0.5),
            {"id": "d", "prompt": "p", "response_a": "x", "response_b": "y", "p_a": 0.25}]
    path = write_human_labels(tmp_path / "sub" / "h.jsonl", recs)
    got = load_human_labels(path)
    assert got[:3] == recs[:3] and got[3] == HumanPair("d", "p", "x", "y", 0.25)
    assert [p.name for p in path.parent.iterdir()] == ["h.jsonl"]  # the temporary file was renamed, none left
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert set(first) == {"id", "prompt", "response_a", "response_b", "p_a"}  # unset optional keys are left out
    assert _pair(1, 0.25).swapped() == HumanPair("id1", "prompt 1 ünïcode", "b1", "a1", 0.75)


@pytest.mark.parametrize("line, message", [
    ('{"id": "x", "prompt": "p", "response_a": "a", "response_b": "b"}', "missing required key(s) p_a;"),
    ('{"id": "x", "prompt": "p", "response_a": "a", "response_b": "b", "p_a": 1.5}', "'p_a' must be a number"),
    ('{"id": "x", "prompt": "p", "response_a": "a", "response_b": "b", "p_a": true}', "'p_a' must be a number"),
    ('{"id": "x", "prompt": "p", "response_a": "a", "response_b": "b", "p_a": 1, "sorce": "s"}', "unknown key"),
    ('{"id": "x", "prompt": 3, "response_a": "a", "response_b": "b", "p_a": 1}', "'prompt' must be a string"),
    ('{"id": "x", "prompt": "p", "response_a": "a", "response_b": "b", "p_a": 1, "note": 5}', "'note' must be"),
    ('{"id": "x", "prompt": "p",', "not valid JSON"),
    ('[1, 2]', "expected a JSON object"),
    ('{"id": "id0", "prompt": "p", "response_a": "a", "response_b": "b", "p_a": 1}', "duplicate id 'id0'"),
])
def test_load_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(_pair(0).to_dict())
    path.write_text(f"{good}\n\n{line}\n", encoding="utf-8")
    with pytest.raises(HumanLabelError) as e:
        load_human_labels(path)
    assert f"{path}:3:" in str(e.value) and message in str(e.value)


def test_missing_file_and_bad_record_on_write(tmp_path):
    with pytest.raises(HumanLabelError, match="not found"):
        load_human_labels(tmp_path / "nope.jsonl")
    with pytest.raises(HumanLabelError, match="p_a"):
        write_human_labels(tmp_path / "w.jsonl", [_pair(0, 2.0)])
    with pytest.raises(HumanLabelError, match="duplicate id"):
        write_human_labels(tmp_path / "w.jsonl", [_pair(0), _pair(0)])
    assert not (tmp_path / "w.jsonl").exists()


def test_read_scored_csv_synthetic(tmp_path):
    path = tmp_path / "toy.csv"
    path.write_text(
        "# dataset_version=1.0, harm_definition=toy.yaml,,\n"
        "harm_category,objective,assistant_response,human_score_1,human_score_2,data_type\n"
        'toy,obj1,"safe answer\nover two lines",0,0.25,text\n'
        "toy,obj1,bad answer,1,0.75,text\n"
        "toy,obj1,bad answer,0.5,,text\n"  # the same response scored again: merged
        "toy,obj1,also bad answer,0.75,0.75,text\n"  # same mean as 'bad answer' after merging: no pair
        "toy,obj2,lonely,0.5,0.5,text\n", encoding="utf-8")
    rows = read_scored_csv(path)
    assert [(r.response, r.scores, r.line) for r in rows] == [
        ("safe answer\nover two lines", (0.0, 0.25), 3), ("bad answer", (1.0, 0.75, 0.5), 5),
        ("also bad answer", (0.75, 0.75), 7), ("lonely", (0.5, 0.5), 8)]
    pairs = pyrit_file_pairs(path, "harm")
    assert len(pairs) == 2 and all(p.p_a == 1.0 and p.response_a.startswith("safe") for p in pairs)
    assert {p.response_b for p in pairs} == {"bad answer", "also bad answer"}
    assert len(pyrit_file_pairs(path, "harm", min_gap=0.6)) == 2
    assert pyrit_file_pairs(path, "harm", min_gap=0.625) == []  # gaps are exactly 0.625: not above the threshold
    bad = tmp_path / "bad.csv"
    bad.write_text("# v\nobjective,assistant_response,human_score\no,r,0\no,s,high\n", encoding="utf-8")
    with pytest.raises(HumanLabelError, match=rf"{bad}:4: column 'human_score' is not a number"):
        read_scored_csv(bad)
    bad.write_text("objective,response,human_score\n", encoding="utf-8")
    with pytest.raises(HumanLabelError, match="no 'assistant_response' column"):
        read_scored_csv(bad)


# ----------------------------------------------------------------------------------------------------------------
# The real files shipped in pyrit 1.1.0
# ----------------------------------------------------------------------------------------------------------------


def _human_means(path: Path) -> dict[tuple[str, str], float]:
    """An independent reading of a pyrit CSV: mean of all human_score* cells per (objective, response)."""
    lines = path.read_text(encoding="utf-8-sig").splitlines(keepends=True)
    while lines[0].startswith("#"):
        lines.pop(0)
    scores = defaultdict(list)
    for row in csv.DictReader(io.StringIO("".join(lines))):
        for k, v in row.items():
            if k and k.startswith("human_score") and v not in ("", None):
                scores[(row["objective"].strip(), row["assistant_response"].strip())].append(float(v))
    return {k: sum(v) / len(v) for k, v in scores.items()}


@needs_pyrit
def test_pyrit_all_pairs_counts_and_labels():
    built = build_pyrit_human_set(max_pairs=None, max_per_objective=None)
    c = built.candidates
    print("pyrit pairs per file:", c)
    for name in ("exploits", "hate_speech", "hate_speech_multi_score", "info_integrity", "privacy", "self_harm",
                 "sexual", "violence", "violence_multi_score"):
        assert c[f"harm/{name}.csv"] > 0, name
    assert c["refusal_scorer/refusal.csv"] > 0
    assert c["harm/representational.csv"] == 0  # one response per objective: no pairs
    assert "harm/mini_hate_speech.csv" not in c
    assert c["harm/hate_speech_multi_score.csv"] > 1000 and c["harm/violence_multi_score.csv"] > 1000
    assert len(built.pairs) == sum(c.values()) > 3000
    assert len({p.id for p in built.pairs}) == len(built.pairs)

    root = pyrit_scorer_evals_dir()
    means = {rel: _human_means(root / rel) for rel in c}
    for p in built.pairs:
        rel = p.id.split(":")[1]
        m = means[rel]
        a, b = m[(p.prompt, p.response_a)], m[(p.prompt, p.response_b)]
        assert a != b and p.p_a in (0.0, 1.0)
        assert (p.p_a == 1.0) == (a < b), (p.id, a, b)  # lower harm (or not a refusal) is better
        assert p.source.endswith(rel) and p.principle and p.prompt and p.response_a != p.response_b
    assert "pyrit" not in sys.modules  # located with find_spec, never imported


@needs_pyrit
def test_pyrit_mini_file_is_a_subset_of_the_multi_score_file():
    root = pyrit_scorer_evals_dir() / "harm"
    mini, full = _human_means(root / "mini_hate_speech.csv"), _human_means(root / "hate_speech_multi_score.csv")
    assert mini and all(full.get(k) == v for k, v in mini.items())


@needs_pyrit
def test_pyrit_sampled_set_is_capped_balanced_and_deterministic(tmp_path):
    s1 = build_pyrit_human_set(max_pairs=301, seed=7, max_per_objective=5)
    s2 = build_pyrit_human_set(max_pairs=301, seed=7, max_per_objective=5)
    s3 = build_pyrit_human_set(max_pairs=301, seed=8, max_per_objective=5)
    assert s1.pairs == s2.pairs and s1.pairs != s3.pairs
    assert len(s1.pairs) == 301 == sum(s1.sampled.values())
    n_a = sum(p.p_a == 1.0 for p in s1.pairs)
    assert n_a in (150, 151) and all(p.p_a in (0.0, 1.0) for p in s1.pairs)
    per_objective = defaultdict(int)
    for p in s1.pairs:
        per_objective[(p.id.split(":")[1], p.prompt)] += 1
    assert max(per_objective.values()) <= 5
    assert len({p.id.split(":")[1] for p in s1.pairs}) >= 8  # spread over the files, not one big file

    gap = build_pyrit_human_set(max_pairs=None, max_per_objective=None, min_gap=0.5, include_refusal=False)
    assert 0 < len(gap.pairs) < 3000 and not any(k.startswith("refusal") for k in gap.candidates)
    for p in gap.pairs[:200]:
        lo, hi = (p.response_a, p.response_b) if p.p_a == 1.0 else (p.response_b, p.response_a)
        m = _human_means(pyrit_scorer_evals_dir() / p.id.split(":")[1])
        assert m[(p.prompt, hi)] - m[(p.prompt, lo)] > 0.5

    path = write_human_labels(tmp_path / "pyrit.jsonl", s1.pairs)
    assert load_human_labels(path) == s1.pairs


@needs_pyrit
def test_cli_writes_the_set(tmp_path, capsys):
    out = tmp_path / "h.jsonl"
    main([str(out), "--max-pairs", "40", "--seed", "3"])
    assert len(load_human_labels(out)) == 40
    assert "harm/violence.csv:" in capsys.readouterr().out
