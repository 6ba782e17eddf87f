"""Prompt sources and the padding that turns (prompt, response) token lists into training tensors."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch


class DataError(ValueError):
    """A data problem; the message names the file and line."""


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str


def load_prompts(source: str) -> list[Prompt]:
    """JSONL (one {"prompt": str, "id"?: str} per line) or .txt (one prompt per line); blank lines skipped."""
    if source == "builtin:debug":
        path = "builtin:debug"
        lines = resources.files("rlaif").joinpath("assets/debug_prompts.jsonl").read_text().splitlines()
        jsonl = True
    else:
        p = Path(source)
        if not p.is_file():
            raise DataError(f"prompt file not found: {source}")
        path, lines, jsonl = str(p), p.read_text(encoding="utf-8").splitlines(), p.suffix == ".jsonl"
    prompts = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if jsonl:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: malformed JSON: {exc.msg}") from exc
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise DataError(f'{path}:{lineno}: expected an object with a string "prompt" field')
            text, pid = record["prompt"], str(record.get("id", f"{path}:{lineno}"))
        else:
            text, pid = line, f"{path}:{lineno}"
        if not text.strip():
            raise DataError(f"{path}:{lineno}: empty prompt")
        prompts.append(Prompt(pid, text.strip()))
    if not prompts:
        raise DataError(f"{path}: no prompts found (the file is empty)")
    return prompts


def split_prompts(prompts: list[Prompt], fraction: float, seed: int) -> tuple[list[Prompt], list[Prompt]]:
    """(train, held-out): a seeded split by prompt id, so the same id always lands on the same side."""
    if fraction <= 0:
        return prompts, []
    order = sorted(prompts, key=lambda p: hashlib.sha256(f"{seed}:{p.id}".encode()).hexdigest())
    k = max(1, round(len(prompts) * fraction))
    held = {p.id for p in order[:k]}
    return [p for p in prompts if p.id not in held], [p for p in prompts if p.id in held]


class PromptLoader:
    """Endless shuffled batches; `state()` / `load_state()` keep the position so a resume does not repeat data."""

    def __init__(self, prompts: list[Prompt], seed: int) -> None:
        self.prompts, self.seed = prompts, seed
        self.epoch, self.pos = 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(len(self.prompts)))
        random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        return order

    def next(self, count: int) -> list[Prompt]:
        batch: list[Prompt] = []
        while len(batch) < count:
            if self.pos == len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
            batch.append(self.prompts[self._order[self.pos]])
            self.pos += 1
        return batch

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._shuffle()


def pad_sequences(
    prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompt+response ids, their attention mask, and the action mask over *shifted* targets.

    action_mask[b, t] is 1 where token t+1 of sequence b is a response token, so it lines up with
    log-probs computed from logits[:, :-1] against ids[:, 1:].
    """
    seqs = [p + r for p, r in zip(prompt_ids, response_ids)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    action = torch.zeros((len(seqs), width - 1), dtype=torch.float32)
    for b, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        ids[b, : len(p) + len(r)] = torch.tensor(p + r)
        attn[b, : len(p) + len(r)] = 1
        action[b, len(p) - 1 : len(p) + len(r) - 1] = 1.0
    return ids, attn, action
