"""Test doubles for the labeler: a causal LM whose next-token distribution the test sets, behind the Hugging Face
call interface the labeler's transformers backend uses (`model(input_ids=..., attention_mask=...).logits`,
`model.generate(...)`), and a copy of the tiny model whose tokenizer adds BOS, as Llama-style tokenizers do."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch

OPTION_LINES = re.compile(r"\(A\) (.*)\n\(B\) (.*)\n")


class FakeLM(torch.nn.Module):
    """Every position of a sequence gets the same next-token logits: `rule(text)` -> {token id: logit} (0 elsewhere),
    computed from the sequence's decoded text. Scored continuations that differ in one token then differ only in that
    token's logit, so a soft label is exactly sigmoid(logit difference). Records every input it sees."""

    def __init__(self, tokenizer, rule: Callable[[str], dict[int, float]], rationale: str = " because it is short"):
        super().__init__()
        self.tok, self.rule = tokenizer, rule
        self.rationale = tokenizer.encode(rationale, add_special_tokens=False)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device
        self.forward_batches: list[list[list[int]]] = []  # unpadded rows of every forward call
        self.generate_batches: list[list[list[int]]] = []  # unpadded prompts of every generate call

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    @staticmethod
    def _rows(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
        return [[t for t, m in zip(ids.tolist(), mask.tolist()) if m] for ids, mask in zip(input_ids, attention_mask)]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        rows = self._rows(input_ids, attention_mask)
        self.forward_batches.append(rows)
        logits = torch.zeros(*input_ids.shape, len(self.tok))
        for b, row in enumerate(rows):
            for tid, value in self.rule(self.tok.decode(row)).items():
                logits[b, :, tid] = value
        return SimpleNamespace(logits=logits)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, do_sample: bool,
                 pad_token_id: int) -> torch.Tensor:
        """Greedy 'generation': the fixed rationale, then EOS, padded (the caller must cut at EOS)."""
        assert not do_sample
        self.generate_batches.append(self._rows(input_ids, attention_mask))
        new = (self.rationale + [self.tok.eos_token_id])[:max_new_tokens]
        new += [pad_token_id] * (max_new_tokens - len(new))
        return torch.cat([input_ids, torch.tensor([new] * input_ids.shape[0])], dim=1)


def letter_ids(tok) -> tuple[int, int]:
    """The ids of the option letters "A" and "B" as they tokenize inside " (A)" / " (B)" after the answer cue
    (spelt out here, not read from rlaif.feedback.labeling, so that a swapped option table there is caught)."""
    cue = tok.encode("The answer is:", add_special_tokens=False)
    a = tok.encode("The answer is: (A)", add_special_tokens=False)[len(cue) :]
    b = tok.encode("The answer is: (B)", add_special_tokens=False)[len(cue) :]
    differ = [(x, y) for x, y in zip(a, b) if x != y]
    assert len(a) == len(b) and len(differ) == 1, "the two options must differ in exactly one token"
    return differ[0]


def prefer_shorter_rule(tok, strength: float = 3.0, slot_bias: float = 0.0) -> Callable[[str], dict[int, float]]:
    """A labeler that prefers the option whose response is shorter, by `strength` logits, plus `slot_bias` logits
    toward (A) whatever the content (a position-biased labeler)."""
    a_id, b_id = letter_ids(tok)

    def rule(text: str) -> dict[int, float]:
        m = OPTION_LINES.search(text)
        if m is None:
            return {}
        first, second = m.groups()
        margin = strength * (1 if len(first) < len(second) else -1 if len(first) > len(second) else 0) + slot_bias
        return {a_id: margin / 2, b_id: -margin / 2}

    return rule


def make_bos_model(src: str, dst: Path) -> str:
    """A copy of a model folder whose tokenizer prepends its BOS to plain text (the tiny tokenizer adds nothing)."""
    shutil.copytree(src, dst)
    path = dst / "tokenizer.json"
    spec = json.loads(path.read_text())
    bos = json.loads((dst / "tokenizer_config.json").read_text())["bos_token"]
    bos_id = next(t["id"] for t in spec["added_tokens"] if t["content"] == bos)
    special = {"SpecialToken": {"id": bos, "type_id": 0}}
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [special, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [special, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }
    path.write_text(json.dumps(spec))
    return str(dst)
