"""The constitution: principles read from YAML, sampled uniformly at random, one fresh draw per use."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml


@dataclass(frozen=True)
class CritiqueRevision:
    critique: str
    revision: str


@dataclass(frozen=True)
class FewShot:
    """A worked SL-CAI example: prompt, a harmful response, the critique, the revision."""

    prompt: str
    response: str
    critique_request: str
    critique: str
    revision_request: str
    revision: str


@dataclass(frozen=True)
class Comparison:
    """A labelled feedback example (CAI's few-shot feedback prompt): a conversation, a principle, the two responses
    shown as (A) and (B), and the correct choice, "A" or "B"."""

    conversation: str
    principle: str
    response_a: str
    response_b: str
    choice: str


@dataclass(frozen=True)
class Constitution:
    feedback: tuple[str, ...]
    critique_revision: tuple[CritiqueRevision, ...]
    few_shot: tuple[FewShot, ...] = ()
    comparisons: tuple[Comparison, ...] = ()

    def sample_feedback(self, rng: random.Random) -> str:
        return rng.choice(self.feedback)

    def sample_critique_revision(self, rng: random.Random) -> CritiqueRevision:
        return rng.choice(self.critique_revision)


class ConstitutionError(ValueError):
    """A constitution file that is missing, empty or malformed; the message names constitution.path and the file."""


def load_constitution(path: str = "builtin:default") -> Constitution:
    if path == "builtin:default":
        text = resources.files("rlaif").joinpath("assets/constitution.yaml").read_text()
        source = "builtin:default"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConstitutionError(f"constitution.path: file not found: {path}")
        source = f"constitution.path: {p}"
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConstitutionError(f"{source}: not a text (UTF-8) YAML file: byte {exc.object[exc.start]:#04x} at "
                                    f"offset {exc.start} cannot be decoded") from exc
        if not text.strip():
            raise ConstitutionError(f"{source}: the file is empty; it needs a 'feedback' list of principles")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConstitutionError(f"{where}: malformed YAML: {problem}") from exc
    if not isinstance(data, dict):
        raise ConstitutionError(f"{source}: expected a mapping with keys 'feedback' and 'critique_revision'")
    unknown = set(data) - {"feedback", "critique_revision", "few_shot", "comparisons"}
    if unknown:
        raise ConstitutionError(f"{source}: unknown keys {', '.join(sorted(unknown))}; allowed: feedback, "
                                "critique_revision, few_shot, comparisons")
    feedback = data.get("feedback") or []
    if not feedback:
        raise ConstitutionError(f"{source}: 'feedback' must list at least one principle")
    for i, item in enumerate(feedback):
        if not isinstance(item, str) or not item.strip():
            raise ConstitutionError(f"{source}: feedback[{i}] must be a non-empty string, got {item!r}")
    pairs = []
    for i, item in enumerate(data.get("critique_revision") or []):
        if not isinstance(item, dict) or set(item) != {"critique", "revision"}:
            raise ConstitutionError(f"{source}: critique_revision[{i}] must have exactly the keys critique and "
                                    "revision")
        if not all(isinstance(v, str) and v.strip() for v in item.values()):
            raise ConstitutionError(f"{source}: critique_revision[{i}] critique and revision must be non-empty strings")
        pairs.append(CritiqueRevision(item["critique"].strip(), item["revision"].strip()))
    fields = [f.name for f in dataclasses.fields(FewShot)]
    shots = []
    for i, item in enumerate(data.get("few_shot") or []):
        if not isinstance(item, dict) or set(item) != set(fields):
            raise ConstitutionError(f"{source}: few_shot[{i}] must have exactly the keys {', '.join(fields)}")
        if not all(isinstance(v, str) and v.strip() for v in item.values()):
            raise ConstitutionError(f"{source}: few_shot[{i}] values must be non-empty strings")
        shots.append(FewShot(**{k: str(item[k]).strip() for k in fields}))
    return Constitution(tuple(s.strip() for s in feedback), tuple(pairs), tuple(shots),
                        _comparisons(data.get("comparisons") or [], source))


def _comparisons(items: list, source: str) -> tuple[Comparison, ...]:
    fields = [f.name for f in dataclasses.fields(Comparison)]
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != set(fields):
            raise ConstitutionError(f"{source}: comparisons[{i}] must have exactly the keys {', '.join(fields)}")
        if not all(isinstance(v, str) and v.strip() for v in item.values()):
            raise ConstitutionError(f"{source}: comparisons[{i}] values must be non-empty strings")
        if item["choice"].strip().upper() not in ("A", "B"):
            raise ConstitutionError(f"{source}: comparisons[{i}].choice must be A or B, got {item['choice']!r}")
        out.append(Comparison(**{k: item[k].strip() for k in fields} | {"choice": item["choice"].strip().upper()}))
    return tuple(out)
