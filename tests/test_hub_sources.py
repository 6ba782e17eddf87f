"""Prompt sources from Hub datasets (`hf:ORG/NAME?config=...&split=...&column=...`), read offline: a dataset laid out
as a Hub cache (datasets--ORG--NAME/snapshots/<rev> with refs/main and a README naming two configs), or prepared by
an earlier load in the datasets cache; HF_HUB_CACHE / HF_DATASETS_CACHE + HF_HUB_OFFLINE=1, sockets refused."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from pathlib import Path

import datasets  # imported before any fixture sets HF_HUB_OFFLINE (it reads it once): the reader must switch it on
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlaif.data.loader import DataError
from rlaif.data.sources import load_prompt_mix, load_source


def commit(repo: str, label: str) -> str:
    """A commit hash per repository, as on the Hub (datasets names its prepared cache after the snapshot folder)."""
    return hashlib.sha1(f"{repo}@{label}".encode()).hexdigest()


README = """---
configs:
- config_name: easy
  data_files:
  - split: train
    path: easy/train.jsonl
  - split: test
    path: easy/test.jsonl
- config_name: chat
  data_files:
  - split: train
    path: chat/train.jsonl
---
"""


def _dataset(folder: Path, easy_train: list[dict], readme: str = README) -> Path:
    """A dataset repository's files: config easy (train, test: a `question` column), config chat (train only)."""
    (folder / "easy").mkdir(parents=True)
    (folder / "chat").mkdir()
    (folder / "README.md").write_text(readme)
    tables = {
        "easy/train.jsonl": easy_train,
        "easy/test.jsonl": [{"question": f"Test question {i}?", "n": i} for i in range(3)],
        "chat/train.jsonl": [
            {"id": "c1", "category": "cooking", "messages": [{"role": "user", "content": "How do I boil an egg?"}]},
            {"id": "c2", "messages": [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Name a prime."},
                                      {"role": "assistant", "content": "7."},
                                      {"role": "user", "content": "Another?"}]},
        ],
    }
    for name, rows in tables.items():
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _train_rows(n: int = 5) -> list[dict]:
    return [{"question": f"Train question {i}?", "n": i, "kind": "benign" if i == 0 else None} for i in range(n)]


def hub_cache(root: Path, repo: str = "acme/prompts", easy_train: list[dict] | None = None) -> Path:
    """A Hub cache holding dataset `repo` at two commits: main, and tag v1 whose easy/train has one row."""
    folder = root / ("datasets--" + repo.replace("/", "--"))
    _dataset(folder / "snapshots" / commit(repo, "main"), easy_train or _train_rows())
    _dataset(folder / "snapshots" / commit(repo, "v1"), [{"question": "Old question?", "n": 0}])
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit(repo, "main"))
    (folder / "refs" / "v1").write_text(commit(repo, "v1"))
    return folder


@pytest.fixture
def no_network(monkeypatch):
    """Any name lookup or socket connection fails the test, at the end too (datasets swallows errors on its way to
    its cache fallback): an offline read must never reach the Hub."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: refuse(*a))
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield
    assert not attempts, f"network access attempted: {attempts}"


@pytest.fixture
def offline(tmp_path, monkeypatch, no_network):
    """HF_HUB_OFFLINE=1 with an (empty) Hub cache and datasets cache under tmp_path: returns the hub cache folder."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    (tmp_path / "hub").mkdir()
    return tmp_path / "hub"


def test_a_cached_dataset_is_read_offline_with_the_config_split_and_column_asked_for(offline):
    """Catches: the Hub cache not honoured offline (a network attempt or an error), the wrong config or split read
    (easy/test vs easy/train vs chat), `column=` ignored, ids not `<source>:<row>`, the kind= default overriding a
    row's own kind or not applied."""
    hub_cache(offline)
    test = load_source("hf:acme/prompts?config=easy&split=test&column=question")
    assert [(r.id, r.text, r.source) for r in test] == [
        (f"prompts/easy/test:{i + 1:04d}", f"Test question {i}?", "prompts/easy/test") for i in range(3)]
    train = load_source("hf:acme/prompts?config=easy&split=train&column=question&kind=red-team")
    assert [r.text for r in train] == [f"Train question {i}?" for i in range(5)]
    assert [r.kind for r in train] == ["benign"] + ["red-team"] * 4  # a row's own kind wins over kind=
    chat = load_source("hf:acme/prompts?config=chat")  # one split: no split= needed; the record format's columns
    assert [(r.id, r.text, r.category) for r in chat] == [("c1", "How do I boil an egg?", "cooking"),
                                                          ("c2", "Another?", None)]
    assert chat[1].chat()[0] == {"role": "system", "content": "Be brief."} and chat[0].messages is None
    mix = load_prompt_mix(["hf:acme/prompts?config=easy&split=test&column=question",
                           "hf:acme/prompts?config=easy&split=train&column=question"])
    assert len(mix) == 8 and mix.loaded["hf:acme/prompts?config=easy&split=test&column=question"] == 3


def test_a_revision_pin_reads_that_snapshot(offline):
    """Catches: revision= ignored offline (refs/main read instead of the tag's commit)."""
    hub_cache(offline)
    for rev in ("v1", commit("acme/prompts", "v1")):
        records = load_source(f"hf:acme/prompts?config=easy&split=train&column=question&revision={rev}")
        assert [r.text for r in records] == ["Old question?"]


def test_streaming_reads_only_the_limit_and_prepares_nothing(offline, tmp_path):
    """Catches: limit= not applied (streamed or not), streaming that still prepares the whole split in the datasets
    cache, and a streamed set without a limit accepted."""
    hub_cache(offline, easy_train=_train_rows(50))
    spec = "hf:acme/prompts?config=easy&split=train&column=question&streaming=true&limit=3"
    assert [r.text for r in load_source(spec)] == ["Train question 0?", "Train question 1?", "Train question 2?"]
    assert not list((tmp_path / "datasets").rglob("*.arrow")), "a streamed read prepared arrow files"
    assert len(load_source("hf:acme/prompts?config=easy&split=train&column=question&limit=4")) == 4
    with pytest.raises(DataError, match=r"^hf:acme/prompts\?config=easy&split=train&streaming=true: streaming=true "
                                        r"needs limit=N"):
        load_source("hf:acme/prompts?config=easy&split=train&streaming=true")


def test_a_dataset_an_earlier_load_prepared_is_read_from_the_datasets_cache(offline, tmp_path):
    """Catches: offline, only the Hub cache consulted, so a dataset that an earlier `load_dataset` prepared in
    HF_DATASETS_CACHE (datasets' own offline fallback) is reported as missing; or that fallback asking the Hub first
    because `datasets` was imported before HF_HUB_OFFLINE was set."""
    shutil.copytree(_dataset(tmp_path / "src", _train_rows()), tmp_path / "solo")  # what the Hub id `solo` holds
    datasets.load_dataset_builder(str(tmp_path / "solo"), "easy", cache_dir=str(tmp_path / "datasets")) \
        .download_and_prepare()
    assert [r.text for r in load_source("hf:solo?config=easy&split=test&column=question")] == \
        [f"Test question {i}?" for i in range(3)]


def test_a_bad_row_names_the_spec_and_the_row(offline):
    """Catches: a row error without the spec or its row number, and a blank prompt cell taken as a prompt."""
    rows = _train_rows()
    rows[2]["question"] = "   "
    hub_cache(offline, easy_train=rows)
    spec = "hf:acme/prompts?config=easy&split=train&column=question"
    with pytest.raises(DataError, match=r"^hf:acme/prompts\?config=easy&split=train&column=question: row 3: the "
                                        r"column 'question' is empty$"):
        load_source(spec)
    rows[2]["question"], rows[3]["kind"] = "Fine?", "harmful"
    hub_cache(offline, repo="acme/kinds", easy_train=rows)
    with pytest.raises(DataError, match=r"^hf:acme/kinds\?config=easy&split=train&column=question: row 4: "
                                        r"\"kind\" is 'harmful'"):
        load_source("hf:acme/kinds?config=easy&split=train&column=question")


def test_missing_columns_configs_and_splits_are_named(offline):
    """Catches: a missing column without the columns there are, no prompt column read as empty prompts, a config or
    split left to chance when the dataset has several (or a wrong one not named)."""
    hub_cache(offline)
    with pytest.raises(DataError, match=r"^hf:acme/prompts\?config=easy&split=test&column=text: no column 'text'; "
                                        r"the columns are question, n, kind$"):
        load_source("hf:acme/prompts?config=easy&split=test&column=text")
    with pytest.raises(DataError, match=r"no \"prompt\" or \"messages\" column; name the column that holds the "
                                        r"prompt with column= \(the columns are question, n, kind\)"):
        load_source("hf:acme/prompts?config=easy&split=test")
    with pytest.raises(DataError, match=r"^hf:acme/prompts\?split=train: the dataset has several configs "
                                        r"\(easy, chat\); pick one with config=$"):
        load_source("hf:acme/prompts?split=train")
    with pytest.raises(DataError, match=r"^hf:acme/prompts\?config=hard: no such config; the configs are .*easy"):
        load_source("hf:acme/prompts?config=hard")
    with pytest.raises(DataError, match=r"^hf:acme/prompts\?config=easy&column=question: the dataset has several "
                                        r"splits \(train, test\); pick one with split=$"):
        load_source("hf:acme/prompts?config=easy&column=question")
    with pytest.raises(DataError, match=r"^hf:acme/prompts\?config=easy&split=dev: no such split; the splits are "
                                        r"train, test$"):
        load_source("hf:acme/prompts?config=easy&split=dev")


def test_bad_specs_name_the_key():
    """Catches: an unknown or repeated query key, or a bad value, silently ignored (or failing later, unnamed)."""
    cases = {
        "hf:acme/prompts?splt=train": r"unknown key 'splt' \(did you mean 'split'\?\); allowed: config, split",
        "hf:acme/prompts?split=train&split=test": r"'split' is given twice",
        "hf:acme/prompts?limit=0": r"limit='0': expected a positive number",
        "hf:acme/prompts?kind=evil": r"kind='evil'; allowed: red-team, benign",
        "hf:acme/prompts?streaming=maybe&limit=2": r"streaming='maybe': expected true or false",
        "hf:acme/prompts?split": r"malformed query",
        "hf:acme/prompts?split=": r"'split' is empty",
        "hf:": r"'' is not a Hub dataset id",
        "hf:a/b/c": r"'a/b/c' is not a Hub dataset id",
    }
    for spec, message in cases.items():
        with pytest.raises(DataError, match=message) as info:
            load_source(spec)
        assert str(info.value).startswith(spec + ": "), str(info.value)


@pytest.mark.parametrize("switch", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_an_uncached_id_offline_says_which_switch_and_where_it_looked(tmp_path, monkeypatch, no_network, switch):
    """Catches: an uncached dataset offline attempting the network, or failing with datasets' bare ConnectionError
    instead of naming the offline switch and the caches; HF_DATASETS_OFFLINE alone not honoured."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(switch, "1")
    with pytest.raises(DataError, match=rf"^hf:acme/nothing\?split=train: 'acme/nothing' at revision 'main' is not in "
                                        rf"the Hugging Face Hub cache {tmp_path}/hub \(no datasets--acme--nothing\), "
                                        rf"and {switch} is set, so the Hub is not asked; nor is it in the datasets "
                                        rf"cache {tmp_path}/datasets"):
        load_source("hf:acme/nothing?split=train")
    hub_cache(tmp_path / "hub")
    with pytest.raises(DataError, match=r"'acme/prompts' at revision 'v9' is not in the Hugging Face Hub cache .*"
                                        r"\(cached: .*main.*v1\)"):
        load_source("hf:acme/prompts?config=easy&split=train&column=question&revision=v9")


def test_messages_in_a_parquet_column_named_by_column(offline):
    """Catches: `column=` naming a conversation (a parquet list of structs) read as text, or refused."""
    snap = offline / "datasets--acme--chats" / "snapshots" / commit("acme/chats", "main")
    snap.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([
        {"conversation": [{"role": "user", "content": "Hi?"}], "prompt": "ignored"},
        {"conversation": [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": "Hi!"},
                          {"role": "user", "content": "Tell me a joke."}], "prompt": "ignored"},
    ]), snap / "train.parquet")
    (offline / "datasets--acme--chats" / "refs").mkdir()
    (offline / "datasets--acme--chats" / "refs" / "main").write_text(commit("acme/chats", "main"))
    records = load_source("hf:acme/chats?column=conversation")
    assert [(r.id, r.text, len(r.chat())) for r in records] == [("chats:0001", "Hi?", 1),
                                                                ("chats:0002", "Tell me a joke.", 3)]


def test_datasets_is_not_imported_for_other_sources():
    """Catches: rlaif.data.sources importing datasets (or the Hub reader) at import time."""
    import subprocess
    import sys

    code = ("import sys; from rlaif.data.sources import load_source; load_source('builtin:debug')\n"
            "assert 'datasets' not in sys.modules and 'rlaif.data.hub_sources' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_online_the_spec_goes_to_load_dataset_as_given(tmp_path, monkeypatch):
    """Catches: online, the id, config, split, revision or streaming not passed to `datasets.load_dataset`, the id
    passed bare (a local folder of that name would be read instead), or HF_DATASETS_CACHE not read at call time."""
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.Dataset.from_list([{"question": "Online?"}])

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    records = load_source("hf:acme/prompts?config=easy&split=train&column=question&revision=v1&streaming=true&limit=5")
    assert [(r.id, r.text) for r in records] == [("prompts/easy/train:0001", "Online?")]
    assert calls == [("hf://datasets/acme/prompts", {"name": "easy", "split": "train", "streaming": True,
                                                      "revision": "v1", "cache_dir": str(tmp_path / "datasets")})]


def test_an_unreachable_hub_falls_back_to_the_cached_snapshot(tmp_path, monkeypatch):
    """Catches: online with the Hub unreachable and HF_HUB_OFFLINE unset, a dataset in the Hub cache reported as
    unreachable (models fall back to the cache there); and, with nothing cached, an error that does not say how to
    read only the caches."""
    real = datasets.load_dataset

    def unreachable(path, **kwargs):
        if path.startswith("hf://"):
            raise ConnectionError(f"Couldn't reach '{path.removeprefix('hf://datasets/')}' on the Hub (ConnectError)")
        return real(path, **kwargs)

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    hub_cache(tmp_path / "hub")
    assert len(load_source("hf:acme/prompts?config=easy&split=test&column=question")) == 3
    with pytest.raises(DataError, match=r"^hf:acme/nothing\?split=train: cannot read the dataset: ConnectionError: "
                                        r"Couldn't reach 'acme/nothing' on the Hub .*; HF_HUB_OFFLINE=1 reads only"):
        load_source("hf:acme/nothing?split=train")
