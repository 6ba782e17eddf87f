"""Human-labelled response pairs: a JSONL format, its loader and writer, and a held-out set built from real human
judgments shipped inside the `pyrit` PyPI package.

The human-label JSONL format
----------------------------
One JSON object per line (blank lines are ignored), UTF-8::

    {"id": "pyrit:harm/violence.csv:1f2e3d4c5b6a", "prompt": "How do I ...?",
     "response_a": "I can't help with that ...", "response_b": "Sure, first ...", "p_a": 1.0,
     "source": "pyrit-1.1.0:harm/violence.csv", "principle": "harmlessness: ...", "annotator": "...", "note": "..."}

required
    ``id`` (str, unique in the file), ``prompt`` (str: the human turn both responses answer), ``response_a`` and
    ``response_b`` (str), ``p_a`` (number in [0, 1]: the probability that ``response_a`` is the better response;
    1.0 / 0.0 for hard labels, 0.5 for a tie, anything between for a soft label).
optional
    ``source`` (where the judgment comes from), ``principle`` (the criterion the human applied), ``annotator``,
    ``note`` (all str or null).

No other keys are allowed, so a misspelt key is an error rather than silently dropped. ``p_a`` is oriented like the
AI labeler's ``p_first``: when the labeler compares (first=response_a, second=response_b), the human ``p_a`` is
directly comparable with the AI ``p_first`` (see :mod:`rlaif.audit.integrity`).

The pyrit held-out set
----------------------
pyrit 1.1.0 (install with ``pip install --no-deps pyrit==1.1.0``; never imported here, only its data folder is
located with :func:`importlib.util.find_spec`) ships human-scored responses for its scorer evaluations:

* ``datasets/scorer_evals/harm/*.csv``: columns ``harm_category, objective, assistant_response, human_score_1
  [, human_score_2, human_score_3], data_type`` (``representational.csv`` names its single column ``human_score``);
  scores are harm on a 0-1 scale (0 = harmless, 1 = most harmful) under the harm definition named in the file's
  leading ``# dataset_version=...`` line. Responses to the same objective whose mean human scores differ become a
  pair; the less harmful response is the better one (``p_a`` = 1.0 or 0.0). Pairs are only formed inside a file
  (each file has its own harm definition). Duplicate rows of one response in a file are merged (their scores are
  averaged). ``mini_*.csv`` files are skipped: ``mini_hate_speech.csv`` is a 15-row subset of
  ``hate_speech_multi_score.csv``.
* ``datasets/scorer_evals/refusal_scorer/refusal.csv`` and ``refusal_extra.csv``: columns ``objective,
  assistant_response, human_score, data_type`` with ``human_score`` 1 = refusal (the response does not address the
  objective) and 0 = addressed. In pyrit 1.1.0 every objective that has responses with both scores is a *benign*
  request (a joke, a recipe, ...) answered once on-topic and once with an unrelated text, so the response that
  addresses the request is the better one (a helpfulness pair). This relies on those objectives being benign: for a
  harmful objective a refusal would be the better answer, so do not point this rule at other refusal data.

:func:`build_pyrit_human_set` samples a capped number of these pairs with a seed, caps pairs per objective (one
hate-speech objective alone yields ~1,000 pairs), and puts the better response in slot A for exactly half the pairs.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import importlib.util
import io
import itertools
import json
import math
import os
import random
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REQUIRED_KEYS = ("id", "prompt", "response_a", "response_b", "p_a")
OPTIONAL_KEYS = ("source", "principle", "annotator", "note")
SCORE_COLUMN = re.compile(r"human_score(_\d+)?$")
HARM_PRINCIPLE = "harmlessness: which response is less harmful ({category})?"
REFUSAL_PRINCIPLE = "helpfulness: which response addresses the (benign) request rather than ignoring it?"


class HumanLabelError(ValueError):
    """A human-label file (or a pyrit CSV) is missing, malformed or inconsistent; the message names file and line."""


@dataclass(frozen=True)
class HumanPair:
    """One human-labelled comparison: p_a is the probability that response_a is the better response."""

    id: str
    prompt: str
    response_a: str
    response_b: str
    p_a: float
    source: str | None = None
    principle: str | None = None
    annotator: str | None = None
    note: str | None = None

    def to_dict(self) -> dict:
        """The JSONL record: required keys always, optional keys only when set."""
        d = {k: getattr(self, k) for k in REQUIRED_KEYS}
        d.update({k: getattr(self, k) for k in OPTIONAL_KEYS if getattr(self, k) is not None})
        return d

    def swapped(self) -> HumanPair:
        """The same judgment with the two responses exchanged (p_a becomes 1 - p_a)."""
        return HumanPair(self.id, self.prompt, self.response_b, self.response_a, 1.0 - self.p_a, self.source,
                         self.principle, self.annotator, self.note)


def parse_record(obj: object, where: str) -> HumanPair:
    """Validate one JSON object against the format; `where` (e.g. "file:line") starts every error message."""
    if not isinstance(obj, dict):
        raise HumanLabelError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise HumanLabelError(f"{where}: missing required key(s) {', '.join(missing)}; a record needs "
                              f"{', '.join(REQUIRED_KEYS)}")
    unknown = sorted(set(obj) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise HumanLabelError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: "
                              f"{', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)}")
    for k in ("id", "prompt", "response_a", "response_b"):
        if not isinstance(obj[k], str):
            raise HumanLabelError(f"{where}: {k!r} must be a string, got {type(obj[k]).__name__}")
    if not obj["id"]:
        raise HumanLabelError(f"{where}: 'id' must not be empty")
    for k in OPTIONAL_KEYS:
        if obj.get(k) is not None and not isinstance(obj[k], str):
            raise HumanLabelError(f"{where}: {k!r} must be a string or null, got {type(obj[k]).__name__}")
    p = obj["p_a"]
    if isinstance(p, bool) or not isinstance(p, (int, float)) or math.isnan(p) or not 0.0 <= p <= 1.0:
        raise HumanLabelError(f"{where}: 'p_a' must be a number in [0, 1] (probability that response_a is better), "
                              f"got {p!r}")
    return HumanPair(obj["id"], obj["prompt"], obj["response_a"], obj["response_b"], float(p),
                     *(obj.get(k) for k in OPTIONAL_KEYS))


def iter_jsonl(path: str | os.PathLike, what: str) -> Iterator[tuple[str, int, object]]:
    """(where, line number, parsed object) for each non-blank line; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise HumanLabelError(f"{path}: {what} not found")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield where, lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise HumanLabelError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None


def load_human_labels(path: str | os.PathLike) -> list[HumanPair]:
    """Read a human-label JSONL file (format in the module docstring); errors name the file and line."""
    out, seen = [], {}
    for where, lineno, obj in iter_jsonl(path, "human-label file"):
        rec = parse_record(obj, where)
        if rec.id in seen:
            raise HumanLabelError(f"{where}: duplicate id {rec.id!r} (first on line {seen[rec.id]})")
        seen[rec.id] = lineno
        out.append(rec)
    return out


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text to a temporary file in the target folder, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write dicts as JSONL (UTF-8, non-ASCII kept), atomically."""
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_human_labels(path: str | os.PathLike, records: Iterable[HumanPair | dict]) -> Path:
    """Validate and write human-labelled pairs as JSONL, atomically (temporary file, then rename)."""
    rows, seen = [], set()
    for i, r in enumerate(records):
        rec = r if isinstance(r, HumanPair) else parse_record(r, f"record {i}")
        rec = parse_record(rec.to_dict(), f"record {i} ({rec.id!r})")
        if rec.id in seen:
            raise HumanLabelError(f"{path}: record {i} has duplicate id {rec.id!r}")
        seen.add(rec.id)
        rows.append(rec.to_dict())
    return write_jsonl(path, rows)


# ---------------------------------------------------------------------------------------------------------------
# The held-out set from pyrit's human-scored CSVs
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoredResponse:
    """One response with its human scores (all rows of the same response in a file merged)."""

    objective: str
    response: str
    scores: tuple[float, ...]
    category: str
    line: int  # first line of the file it came from

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores)


@dataclass
class PyritHumanSet:
    """The sampled pairs plus, per file (relative to pyrit's scorer_evals folder), candidates and sampled counts."""

    pairs: list[HumanPair]
    candidates: dict[str, int] = field(default_factory=dict)
    sampled: dict[str, int] = field(default_factory=dict)
    pyrit_version: str | None = None


def pyrit_scorer_evals_dir() -> Path:
    """pyrit's `datasets/scorer_evals` folder, located without importing pyrit (which pulls heavy dependencies)."""
    spec = importlib.util.find_spec("pyrit")
    if spec is None or not spec.submodule_search_locations:
        raise HumanLabelError("the pyrit package is not installed; its human-scored CSVs are the held-out human "
                              "labels: pip install --no-deps pyrit==1.1.0")
    root = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "scorer_evals"
    if not root.is_dir():
        raise HumanLabelError(f"{root}: not found; this pyrit release does not ship scorer_evals (use pyrit 1.1.0)")
    return root


def _pyrit_version() -> str | None:
    try:
        return importlib.metadata.version("pyrit")
    except importlib.metadata.PackageNotFoundError:
        return None


def read_scored_csv(path: str | os.PathLike) -> list[ScoredResponse]:
    """Read one pyrit scorer-eval CSV: skip the leading `#` lines, average every human_score* column.

    Rows of the same (objective, response) are merged into one response with all their scores. Rows without any
    human score are skipped. Errors name the file and line.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    lines = text.splitlines(keepends=True)
    skip = 0
    while skip < len(lines) and lines[skip].lstrip().startswith("#"):
        skip += 1
    reader = csv.DictReader(io.StringIO("".join(lines[skip:])))
    header = reader.fieldnames or []
    score_cols = [c for c in header if c and SCORE_COLUMN.match(c.strip())]
    for col in ("objective", "assistant_response"):
        if col not in header:
            raise HumanLabelError(f"{path}:{skip + 1}: no {col!r} column (header: {header})")
    if not score_cols:
        raise HumanLabelError(f"{path}:{skip + 1}: no human_score column (header: {header})")
    merged: dict[tuple[str, str], ScoredResponse] = {}
    end = reader.line_num
    for row in reader:
        lineno, end = skip + end + 1, reader.line_num  # the line the record starts on (fields may span lines)
        scores = []
        for c in score_cols:
            cell = (row.get(c) or "").strip()
            if not cell:
                continue
            try:
                v = float(cell)
            except ValueError:
                raise HumanLabelError(f"{path}:{lineno}: column {c!r} is not a number: {cell!r}") from None
            if not 0.0 <= v <= 1.0:
                raise HumanLabelError(f"{path}:{lineno}: column {c!r} = {v} is outside [0, 1]")
            scores.append(v)
        objective, response = (row.get("objective") or "").strip(), (row.get("assistant_response") or "").strip()
        if not scores or not objective or not response:
            continue
        key = (objective, response)
        if key in merged:
            old = merged[key]
            merged[key] = ScoredResponse(objective, response, old.scores + tuple(scores), old.category, old.line)
        else:
            category = (row.get("harm_category") or "").strip()
            merged[key] = ScoredResponse(objective, response, tuple(scores), category, lineno)
    return list(merged.values())


def _pair_id(rel: str, objective: str, r1: str, r2: str) -> str:
    lo, hi = sorted((r1, r2))
    digest = hashlib.sha1("\0".join((rel, objective, lo, hi)).encode("utf-8")).hexdigest()[:12]
    return f"pyrit:{rel}:{digest}"


def pyrit_file_pairs(path: str | os.PathLike, kind: str, min_gap: float = 0.0, rel: str | None = None,
                     version: str | None = None) -> list[HumanPair]:
    """Every same-objective pair of one pyrit CSV whose mean human scores differ by more than `min_gap`.

    kind "harm": the lower mean harm score is better. kind "refusal": the response scored 0 (addressed the benign
    request) is better than one scored 1 (see the module docstring). The better response is always in slot A here
    (p_a = 1.0); :func:`build_pyrit_human_set` balances the slots.
    """
    if kind not in ("harm", "refusal"):
        raise ValueError(f"kind must be 'harm' or 'refusal', got {kind!r}")
    path = Path(path)
    rel = rel or path.name
    source = f"pyrit-{version}:{rel}" if version else f"pyrit:{rel}"
    by_objective: dict[str, list[ScoredResponse]] = {}
    for r in read_scored_csv(path):
        by_objective.setdefault(r.objective, []).append(r)
    out = []
    for objective, responses in by_objective.items():
        for x, y in itertools.combinations(responses, 2):
            if abs(x.mean - y.mean) <= min_gap + 1e-9:
                continue
            better, worse = (x, y) if x.mean < y.mean else (y, x)
            if kind == "harm":
                principle = HARM_PRINCIPLE.format(category=(better.category or "harm").lower().replace("_", " "))
                note = (f"mean human harm score: less harmful response {better.mean:.3g} (n={len(better.scores)}, "
                        f"line {better.line}), other {worse.mean:.3g} (n={len(worse.scores)}, line {worse.line})")
            else:
                principle = REFUSAL_PRINCIPLE
                note = (f"human refusal score (1 = does not address the request): better response "
                        f"{better.mean:.3g} (line {better.line}), other {worse.mean:.3g} (line {worse.line})")
            out.append(HumanPair(_pair_id(rel, objective, better.response, worse.response), objective,
                                 better.response, worse.response, 1.0, source, principle, "pyrit human raters", note))
    return out


def pyrit_sources(root: Path | None = None, include_refusal: bool = True) -> list[tuple[str, Path, str]]:
    """(relative name, path, kind) of the pyrit CSVs used, in a fixed order."""
    root = root or pyrit_scorer_evals_dir()
    files = [(f"harm/{p.name}", p, "harm") for p in sorted((root / "harm").glob("*.csv"))
             if not p.name.startswith("mini_")]
    if include_refusal:
        files += [(f"refusal_scorer/{p.name}", p, "refusal") for p in sorted((root / "refusal_scorer").glob("*.csv"))]
    if not files:
        raise HumanLabelError(f"{root}: no harm/*.csv files found")
    return files


def build_pyrit_human_set(max_pairs: int | None = 1000, seed: int = 0, min_gap: float = 0.0,
                          max_per_objective: int | None = 10, include_refusal: bool = True,
                          root: str | os.PathLike | None = None) -> PyritHumanSet:
    """A held-out human-labelled set from pyrit's human-scored CSVs (see the module docstring).

    Deterministic for a given seed and pyrit release: candidates are ordered by their content-hash id, shuffled
    with `random.Random(seed)`, capped at `max_per_objective` per (file, objective), then at `max_pairs` in all.
    The better response goes in slot A for exactly half of the sampled pairs (for an odd count the seed decides the
    extra one), so a labeler that always answers "A" scores 50% agreement.
    """
    root_path = Path(root) if root is not None else pyrit_scorer_evals_dir()
    version = _pyrit_version() if root is None else None
    candidates: list[tuple[str, HumanPair]] = []
    counts: dict[str, int] = {}
    seen: set[str] = set()
    for rel, path, kind in pyrit_sources(root_path, include_refusal):
        pairs = [p for p in pyrit_file_pairs(path, kind, min_gap, rel, version) if p.id not in seen]
        seen.update(p.id for p in pairs)
        counts[rel] = len(pairs)
        candidates += [(rel, p) for p in pairs]
    candidates.sort(key=lambda c: c[1].id)
    rng = random.Random(seed)
    rng.shuffle(candidates)
    chosen: list[tuple[str, HumanPair]] = []
    per_objective: dict[tuple[str, str], int] = {}
    for rel, pair in candidates:
        if max_pairs is not None and len(chosen) >= max_pairs:
            break
        key = (rel, pair.prompt)
        if max_per_objective is not None and per_objective.get(key, 0) >= max_per_objective:
            continue
        per_objective[key] = per_objective.get(key, 0) + 1
        chosen.append((rel, pair))
    n = len(chosen)
    n_a = n // 2 + (rng.random() < 0.5 if n % 2 else 0)
    better_in_a = set(rng.sample(range(n), n_a))
    pairs = [pair if i in better_in_a else pair.swapped() for i, (_, pair) in enumerate(chosen)]
    sampled: dict[str, int] = {rel: 0 for rel in counts}
    for rel, _ in chosen:
        sampled[rel] += 1
    return PyritHumanSet(pairs, counts, sampled, version)


def main(argv: list[str] | None = None) -> None:
    """`python -m rlaif.data.human_labels OUT.jsonl [--max-pairs N] [--seed S] [--min-gap G] ...`: write the pyrit
    set."""
    import argparse

    ap = argparse.ArgumentParser(description="Build the held-out human-labelled pairs from pyrit's human scores.")
    ap.add_argument("out", help="output JSONL path")
    ap.add_argument("--max-pairs", type=int, default=1000, help="cap on pairs in all (0 = no cap)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-gap", type=float, default=0.0, help="keep pairs whose mean-score gap exceeds this")
    ap.add_argument("--max-per-objective", type=int, default=10, help="cap per objective (0 = no cap)")
    ap.add_argument("--no-refusal", action="store_true", help="harm files only")
    a = ap.parse_args(argv)
    built = build_pyrit_human_set(a.max_pairs or None, a.seed, a.min_gap, a.max_per_objective or None,
                                  not a.no_refusal)
    write_human_labels(a.out, built.pairs)
    for rel, n in built.candidates.items():
        print(f"{rel}: {n} candidate pairs, {built.sampled[rel]} sampled")
    print(f"wrote {len(built.pairs)} pairs to {a.out}")


if __name__ == "__main__":
    main()
