"""Prompt sources from Hugging Face Hub datasets: ``hf:ORG/NAME?config=...&split=...&column=...``, through `datasets`.

The spec (one string, so config lists of sources can hold it)::

    hf:ORG/NAME[?key=value&...]        e.g.  hf:tatsu-lab/alpaca?split=train&column=instruction&limit=500

``config``     the dataset's configuration (subset); needed when it has several
``split``      needed when the dataset (or the config chosen) has several; without streaming a slice such as
               ``train[100:200]`` works too
``column``     the column holding the prompt text, or a conversation (a list of {role, content}), when it is not
               ``prompt``/``messages``; the other columns follow the record format (rlaif/data/sources.py): ``id``,
               ``source``, ``category``, ``kind``, ``tags`` when present, anything else ignored
``kind``       ``red-team`` or ``benign``: the kind of every row that has no ``kind`` column value
``revision``   a branch, tag or commit of the dataset repository
``limit``      read only the first N rows of the split
``streaming``  ``true``: iterate the rows without downloading or preparing the whole split; needs ``limit`` (a
               streamed set is read row by row and may be of any size, so the bound is explicit)

Values are URL-encoded (``column=first+turn`` or ``%20`` for a space). Records are numbered by their 1-based row in
the split; a record without an ``id`` gets ``"<source>:<row>"`` with source ``NAME`` (``NAME/CONFIG/SPLIT`` when the
spec names them), zero-padded to 4 digits. Errors name the spec, and the row for a bad row.

Offline (``HF_HUB_OFFLINE=1`` or ``HF_DATASETS_OFFLINE=1``, read when the source is read, as for models): nothing
touches the network. The dataset is read from the Hub cache (``HF_HUB_CACHE``): the snapshot
``datasets--ORG--NAME/snapshots/<rev>/`` that ``refs/main`` (or the ``revision`` asked for) names, with its README's
configs; failing that, without a ``revision``, from what an earlier ``load_dataset`` prepared in the datasets cache
(``HF_DATASETS_CACHE``, ``ORG___NAME/CONFIG/...``). Online, ``datasets.load_dataset`` downloads into those caches;
when the Hub cannot be reached, the Hub cache's snapshot is read, as for models.

In YAML a block list item needs no quotes; a ``[...]`` flow list (as in a command-line override) ends a plain scalar
at ``?``, so quote the spec there: ``'sl_cai.red_team=["hf:org/set?split=train", builtin:advbench]'``.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from rlaif.data.loader import DataError
from rlaif.data.records import KINDS, PromptRecord, record_from_row

log = logging.getLogger(__name__)

PREFIX = "hf:"
KEYS = ("config", "split", "column", "kind", "revision", "limit", "streaming")
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class _Unreachable(DataError):
    """The Hub could not be reached (and datasets found no prepared copy of the dataset)."""


@dataclass(frozen=True)
class HubSpec:
    """A parsed ``hf:`` prompt source."""

    spec: str  # as given: every error names it
    repo_id: str
    config: str | None = None
    split: str | None = None
    column: str | None = None
    kind: str | None = None
    revision: str | None = None
    limit: int | None = None
    streaming: bool = False

    @property
    def source(self) -> str:
        """The records' default source: the dataset's name, with the config and split the spec names."""
        return "/".join(p for p in (self.repo_id.split("/")[-1], self.config, self.split) if p)


def parse_hub_spec(spec: str) -> HubSpec:
    """``hf:ORG/NAME?key=value&...`` -> HubSpec; an unknown key, a repeated key or a bad value names the spec."""
    body = spec.removeprefix(PREFIX)
    repo_id, _, query = body.partition("?")
    if not _REPO_ID.match(repo_id):
        raise DataError(f"{spec}: {repo_id!r} is not a Hub dataset id; expected hf:ORG/NAME (e.g. "
                        "hf:tatsu-lab/alpaca?split=train&column=instruction)")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True) if query else []
    except ValueError as exc:
        raise DataError(f"{spec}: malformed query {query!r}: expected key=value pairs joined by '&'") from exc
    values: dict[str, str] = {}
    for key, value in pairs:
        if key not in KEYS:
            near = difflib.get_close_matches(key, KEYS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise DataError(f"{spec}: unknown key {key!r}{hint}; allowed: {', '.join(KEYS)}")
        if key in values:
            raise DataError(f"{spec}: {key!r} is given twice")
        if not value.strip():
            raise DataError(f"{spec}: {key!r} is empty")
        values[key] = value.strip()
    kind = values.get("kind")
    if kind is not None and kind not in KINDS:
        raise DataError(f"{spec}: kind={kind!r}; allowed: {', '.join(KINDS)}")
    limit = values.get("limit")
    if limit is not None:
        if not limit.isdigit() or int(limit) < 1:
            raise DataError(f"{spec}: limit={limit!r}: expected a positive number of rows")
    streaming = values.get("streaming", "false").lower()
    if streaming not in TRUE + FALSE:
        raise DataError(f"{spec}: streaming={values['streaming']!r}: expected true or false")
    if streaming in TRUE and limit is None:
        raise DataError(f"{spec}: streaming=true needs limit=N, the number of rows to read (a streamed set may be "
                        "of any size); or drop streaming to read the whole split")
    return HubSpec(spec, repo_id, values.get("config"), values.get("split"), values.get("column"), kind,
                   values.get("revision"), int(limit) if limit else None, streaming in TRUE)


def load_hub_source(spec: str) -> list[PromptRecord]:
    """The records of an ``hf:`` source (see the module docstring)."""
    hs = parse_hub_spec(spec)
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"{spec}: reading Hub datasets needs the `datasets` package: pip install datasets") from exc
    offline = bool(offline_vars()) or datasets.config.HF_HUB_OFFLINE
    with _quiet(datasets, offline):
        ds = _one_split(hs, _open(hs, offline))
        rows: Iterator[dict[str, Any]] = iter(ds) if hs.limit is None else itertools.islice(ds, hs.limit)
        columns = ds.column_names  # None for a streamed set whose features are not declared: the first row's keys
        if columns is None:
            first = next(rows, None)
            columns = list(first or ())
            rows = itertools.chain([first] if first is not None else [], rows)
        if columns:
            _check_columns(hs, list(columns))
        return _records(hs, rows)


# ---------------------------------------------------------------------------------------------------------------------
# rows -> records


def _records(hs: HubSpec, rows: Iterator[dict[str, Any]]) -> list[PromptRecord]:
    records = []
    for i, row in enumerate(rows, 1):
        where = f"{hs.spec}: row {i}"
        if hs.column is not None:
            row = {k: v for k, v in row.items() if k not in ("prompt", "messages")}
            value = row.pop(hs.column)
            if value is None or (isinstance(value, str) and not value.strip()) or \
                    (isinstance(value, list) and not value):
                raise DataError(f"{where}: the column {hs.column!r} is empty")
            if isinstance(value, str):
                row["prompt"] = value
            elif isinstance(value, list):
                row["messages"] = value
            else:
                raise DataError(f"{where}: the column {hs.column!r} holds {type(value).__name__}; expected text or "
                                "a conversation (a list of {role, content})")
        if hs.kind is not None and row.get("kind") in (None, ""):
            row["kind"] = hs.kind
        records.append(record_from_row(row, where, hs.source, f"{hs.source}:{i:04d}"))
    if not records:
        raise DataError(f"{hs.spec}: no prompts found (the split is empty)")
    return records


def _check_columns(hs: HubSpec, columns: list[str]) -> None:
    if hs.column is not None and hs.column not in columns:
        raise DataError(f"{hs.spec}: no column {hs.column!r}; the columns are {', '.join(columns)}")
    if hs.column is None and "prompt" not in columns and "messages" not in columns:
        raise DataError(f"{hs.spec}: no \"prompt\" or \"messages\" column; name the column that holds the prompt "
                        f"with column= (the columns are {', '.join(columns)})")


# ---------------------------------------------------------------------------------------------------------------------
# the dataset


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in TRUE


def offline_vars() -> list[str]:
    """The offline switches set now (read at call time: datasets and huggingface_hub read them once, at import)."""
    return [name for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if _truthy(name)]


def _open(hs: HubSpec, offline: bool) -> Any:
    """The dataset (a split, or all of them): from the Hub online; offline from the Hub cache's snapshot, else from
    what an earlier load prepared in the datasets cache."""
    ds_cache = os.environ.get("HF_DATASETS_CACHE") or None
    hub_path = "hf://datasets/" + hs.repo_id  # never a local folder that happens to have the id's name
    if not offline:
        try:
            return _load(hs, hub_path, ds_cache, revision=hs.revision)
        except _Unreachable as exc:  # as for models: the Hub cache's snapshot when the Hub cannot be reached
            folder, _ = _snapshot(hs)
            if folder is None:
                raise DataError(f"{exc}; HF_HUB_OFFLINE=1 reads only the caches") from exc
            log.warning("%s: the Hub cannot be reached; reading the cached snapshot %s", hs.spec, folder)
            return _load(hs, folder, ds_cache)
    folder, why_not = _snapshot(hs)
    if folder is not None:
        return _load(hs, folder, ds_cache)
    if hs.revision is None and _prepared(hs.repo_id, ds_cache):
        return _load(hs, hub_path, ds_cache)  # datasets' own offline fallback
    switches = offline_vars() or ["offline mode"]
    raise DataError(f"{hs.spec}: {why_not}, and {' and '.join(switches)} {'is' if len(switches) == 1 else 'are'} "
                    "set, so the Hub is not asked" + ("" if hs.revision else "; nor is it in the datasets cache "
                                                     f"{_datasets_cache(ds_cache)} from an earlier load"))


def _snapshot(hs: HubSpec) -> tuple[str | None, str]:
    """The Hub cache's snapshot folder of the dataset (never downloading), or None and why not."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)
    try:
        return snapshot_download(hs.repo_id, repo_type="dataset", revision=hs.revision, cache_dir=cache,
                                 local_files_only=True), ""
    except LocalEntryNotFoundError:
        repo = cache / ("datasets--" + hs.repo_id.replace("/", "--"))
        at = f"'{hs.repo_id}' at revision '{hs.revision or 'main'}'"
        if repo.is_dir():
            cached = sorted(p.name for d in ("refs", "snapshots") if (repo / d).is_dir() for p in (repo / d).iterdir())
            return None, f"{at} is not in the Hugging Face Hub cache {cache} (cached: {', '.join(cached) or 'none'})"
        return None, f"{at} is not in the Hugging Face Hub cache {cache} (no {repo.name})"


def _datasets_cache(ds_cache: str | None) -> Path:
    import datasets

    return Path(ds_cache or datasets.config.HF_DATASETS_CACHE).expanduser()


def _prepared(repo_id: str, ds_cache: str | None) -> bool:
    """Whether an earlier `load_dataset(repo_id)` left its prepared arrow files in the datasets cache."""
    from datasets.naming import camelcase_to_snakecase

    *org, name = repo_id.split("/")
    folder = _datasets_cache(ds_cache) / "___".join([*org, camelcase_to_snakecase(name)])
    return any(p.is_dir() for p in folder.glob("*/*/*"))


def _load(hs: HubSpec, path: str, ds_cache: str | None, revision: str | None = None) -> Any:
    """`datasets.load_dataset` with the spec's config, split and streaming; its errors rephrased to name the keys."""
    import datasets

    try:
        return datasets.load_dataset(path, name=hs.config, split=hs.split, streaming=hs.streaming,
                                     revision=revision, cache_dir=ds_cache)
    except DataError:
        raise
    except ConnectionError as exc:
        raise _Unreachable(f"{hs.spec}: {_explain(exc)}") from exc
    except Exception as exc:
        raise DataError(f"{hs.spec}: {_explain(exc)}") from exc


def _explain(exc: Exception) -> str:
    """A datasets error as one sentence that names the spec's key where it can."""
    msg = str(exc).strip()
    options = re.search(r"\[([^\]]*)\]", msg)
    listed = ", ".join(s.strip().strip("'\"") for s in options.group(1).split(",")) if options else ""
    if "Config name is missing" in msg:
        return f"the dataset has several configs ({listed}); pick one with config="
    if re.search(r"BuilderConfig .* not found", msg) or ("Couldn't find cache for" in msg and "for config" in msg):
        return f"no such config; the configs are {listed or msg.splitlines()[-1]}"
    if msg.startswith("Unknown split") or "Bad split" in msg:
        return f"no such split; the splits are {listed}"
    # datasets wraps a reader's error (e.g. a malformed file) in DatasetGenerationError: show the reader's own
    cause = exc.__cause__ if type(exc).__name__ == "DatasetGenerationError" and exc.__cause__ else exc
    first = (str(cause).strip().splitlines() or [""])[0]
    return f"cannot read the dataset: {type(cause).__name__}: {first}"


def _one_split(hs: HubSpec, ds: Any) -> Any:
    """The split asked for; without split=, the only one there is."""
    import datasets

    if not isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return ds
    if len(ds) != 1:
        raise DataError(f"{hs.spec}: the dataset has several splits ({', '.join(ds)}); pick one with split=")
    return next(iter(ds.values()))


@contextmanager
def _quiet(datasets: Any, offline: bool) -> Iterator[None]:
    """No progress bars; and when offline, datasets' own offline switch on for the call even if the environment
    variable was set after `datasets` was imported (it reads it once)."""
    from datasets.utils import logging as ds_logging

    bars_were_on = ds_logging.is_progress_bar_enabled()
    was_offline = datasets.config.HF_HUB_OFFLINE
    ds_logging.disable_progress_bar()
    if offline:
        datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = was_offline
        if bars_were_on:
            ds_logging.enable_progress_bar()
