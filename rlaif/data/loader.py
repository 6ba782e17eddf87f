"""Prompts in memory, the resumable loader, chat-template encoding within a token budget, and the padding that turns
(prompt, response) token lists into training tensors. Prompt files are read by rlaif.data.sources."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch


class DataError(ValueError):
    """A data problem; the message names the file and line."""


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str


def chat_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of `messages` in the tokenizer's chat template, opening the assistant's turn."""
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def fit_chat(tokenizer, messages: list[dict[str, str]], max_tokens: int, key: str) -> tuple[list[int], bool]:
    """`chat_ids` within `max_tokens`, and whether anything was cut.

    The template's own tokens (the turn headers, BOS) are never cut: a prompt cut from the left of its token ids
    would lose its chat header. What goes, in order: the oldest (user, assistant) exchanges after any system
    message, then the start of the last user turn's text (its end, the request itself, is kept). `key` names the
    budget in the error raised when even the template leaves no room for text.
    """
    ids = chat_ids(tokenizer, messages)
    if len(ids) <= max_tokens:
        return ids, False
    head = 1 if messages and messages[0]["role"] == "system" else 0
    msgs = list(messages)
    while len(msgs) - head > 1:  # user, assistant, ..., user: dropping a pair keeps the turns alternating
        msgs = msgs[:head] + msgs[head + 2 :]
        ids = chat_ids(tokenizer, msgs)
        if len(ids) <= max_tokens:
            return ids, True
    last = msgs[-1]
    overhead = len(chat_ids(tokenizer, msgs[:-1] + [{**last, "content": ""}]))
    text_ids = tokenizer.encode(last["content"], add_special_tokens=False)
    keep = max_tokens - overhead
    while keep > 0:
        text = tokenizer.decode(text_ids[-keep:]).lstrip("\ufffd")  # a cut through a UTF-8 character
        ids = chat_ids(tokenizer, msgs[:-1] + [{**last, "content": text}])
        if len(ids) <= max_tokens:
            return ids, True
        keep -= len(ids) - max_tokens  # re-tokenising the cut text can merge or split a token at the seam
    raise ValueError(f"{key} = {max_tokens} leaves no room for the prompt: the chat template alone takes "
                     f"{overhead} tokens")


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
