"""Read the history rows of an offline wandb run file (.wandb, leveldb log format); wandb 0.31 ships no reader."""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    out, pos, pending = [], 7, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pending + chunk)
        elif kind == 0 and length == 0:
            break
    return out


def history(path: Path) -> list[dict]:
    from wandb.proto import wandb_internal_pb2

    rows = []
    for raw in records(path):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
    return rows


def logged_tables(path: Path) -> dict[str, dict]:
    """Every wandb.Table the run logged (a chart's under `<key>_table`), by key: {"columns": [...], "data": [[...]]},
    read from the table file the history row names (in the run folder's files/)."""
    from wandb.proto import wandb_internal_pb2

    paths: dict[str, str] = {}
    for raw in records(path):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "history":
            items = {tuple(i.nested_key) or (i.key,): json.loads(i.value_json) for i in rec.history.item}
            for key, value in items.items():
                if len(key) == 2 and key[1] == "path" and items.get((key[0], "_type")) == "table-file":
                    paths[key[0]] = value
    return {key: json.loads((path.parent / "files" / rel).read_text()) for key, rel in paths.items()}


def charts(path: Path) -> dict[str, dict]:
    """The chart panels the run declared (wandb.plot.*), by key: their panel config (the chart kind's spec id in
    panelDefId, the columns in fieldSettings, the title in stringSettings)."""
    from wandb.proto import wandb_internal_pb2

    out = {}
    for raw in records(path):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "config":
            for item in rec.config.update:
                key = list(item.nested_key)
                if key[:2] == ["_wandb", "visualize"]:
                    out[key[2]] = json.loads(item.value_json)["panel_config"]
    return out
