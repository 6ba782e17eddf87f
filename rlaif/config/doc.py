"""`rlaif config`: every key of the resolved configuration with its value, type, allowed range and the comment that
documents it in rlaif/config/schema.py (read from the source, so the printout and the schema never disagree)."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import tokenize
import types
import typing
from typing import Any, Literal, get_args, get_origin

from rlaif.config import schema
from rlaif.config.validate import RANGES


@functools.cache
def field_comments() -> dict[tuple[str, str], str]:
    """(dataclass name, field) -> its documentation: the comment lines right above the field and the comment on its
    line, joined into one text."""
    source = inspect.getsource(schema)
    comments: dict[int, str] = {}  # line -> comment text
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    out = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if not isinstance(item, ast.AnnAssign) or not isinstance(item.target, ast.Name):
                continue
            above, line = [], item.lineno - 1
            while line >= 1 and lines[line - 1].strip().startswith("#"):  # the block of comment lines above
                above.insert(0, comments[line])
                line -= 1
            own = [comments[n] for n in range(item.lineno, item.end_lineno + 1) if n in comments]
            out[(node.name, item.target.id)] = " ".join(above + own)
    return out


def type_name(tp: Any) -> str:
    """A type as a person reads it: "one of 'a', 'b'", "int", "list[str]", "str or null"."""
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in get_args(tp))
    if get_origin(tp) is list:
        return f"list[{type_name(get_args(tp)[0])}]"
    return getattr(tp, "__name__", str(tp))


def describe(cfg: schema.Config) -> str:
    """One entry per key, section by section: `key = value` and, indented, its type, range and comment."""
    comments, entries = field_comments(), []

    def walk(node: Any, prefix: str) -> None:
        hints = typing.get_type_hints(type(node))
        for f in dataclasses.fields(node):
            value, key = getattr(node, f.name), prefix + f.metadata.get("key", f.name)  # async_ is "async"
            if dataclasses.is_dataclass(value):
                walk(value, key + ".")
                continue
            parts = [type_name(hints[f.name])]
            if key in RANGES:
                parts.append(f"range {RANGES[key]}")
            text = comments.get((type(node).__name__, f.name), "")
            entries.append(f"{key} = {value!r}\n    {'; '.join(parts)}" + (f"\n    {text}" if text else ""))

    walk(cfg, "")
    return "\n".join(entries)
