"""One typed batch of samples, as tensors: what the trainer sends to every role and what the roles send back.

Layout (B samples):
    prompt_ids      [B, P] long, right-padded; prompt_len [B]
    response_ids    [B, R] long, right-padded; response_len [B]
    per-token fields [B, R] aligned with response_ids (sampler_logprobs, old_logprobs, ref_logprobs, values,
                     advantages, returns), 0 on padding
    per-sample fields [B] (scores, finished, chosen_first, pair_weight ...)
    texts           per-sample lists of str (prompt, response) for the roles that read text (PM, labeler, rewards)
    meta            batch-wide values (sampling temperature and top_p, token counts, weight version ...)

Every tensor and list has the batch dimension first, so a batch splits into contiguous rank shards and
concatenates back without knowing what it holds; Ray ships the tensors as buffers, not as one Python object per
token. The algorithm code stays the same at 8 samples and at 8,000.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch


def pad_rows(rows: list[list[int]] | list[list[float]], dtype: torch.dtype, value: float = 0) -> torch.Tensor:
    """Right-pad Python rows into one [len(rows), max_len] tensor."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), max(width, 1)), value, dtype=dtype)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.as_tensor(r, dtype=dtype)
    return out


@dataclass
class Batch:
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_token_lists(
        cls, prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int, **texts: list[str]
    ) -> Batch:
        b = cls(texts=dict(texts))
        b["prompt_ids"], b["prompt_len"] = pad_rows(prompt_ids, torch.long, pad_id), _lens(prompt_ids)
        b["response_ids"], b["response_len"] = pad_rows(response_ids, torch.long, pad_id), _lens(response_ids)
        return b

    # -- dict-like access to the tensors --
    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        if self.tensors and value.shape[0] != len(self):
            raise ValueError(f"batch field {key!r} has {value.shape[0]} rows, the batch has {len(self)}")
        self.tensors[key] = value

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def get(self, key: str) -> torch.Tensor | None:
        return self.tensors.get(key)

    def __len__(self) -> int:
        for v in self.tensors.values():
            return v.shape[0]
        for v in self.texts.values():
            return len(v)
        return 0

    # -- derived views --
    @property
    def response_mask(self) -> torch.Tensor:
        """[B, R] float: 1 on response tokens, 0 on padding."""
        width = self["response_ids"].shape[1]
        return (torch.arange(width) < self["response_len"][:, None]).float()

    def token_count(self) -> int:
        return int(self["response_len"].sum())

    def prompt_lists(self) -> list[list[int]]:
        return [r[:n].tolist() for r, n in zip(self["prompt_ids"], self["prompt_len"].tolist())]

    def response_lists(self) -> list[list[int]]:
        return [r[:n].tolist() for r, n in zip(self["response_ids"], self["response_len"].tolist())]

    # -- reshaping --
    def select(self, index: slice | torch.Tensor | list[int]) -> Batch:
        """The rows at `index` (a slice, or a list/tensor of row numbers), with the same meta."""
        if isinstance(index, slice):
            rows = list(range(len(self)))[index]
            tensors = {k: v[index] for k, v in self.tensors.items()}
        else:
            rows = [int(i) for i in index]
            idx = torch.as_tensor(rows, dtype=torch.long)
            tensors = {k: v.index_select(0, idx) for k, v in self.tensors.items()}
        texts = {k: [v[i] for i in rows] for k, v in self.texts.items()}
        return Batch(tensors, texts, dict(self.meta))

    def split(self, n: int) -> list[Batch]:
        """n contiguous shards of equal size (one per rank); the batch size must divide by n."""
        size, rest = divmod(len(self), n)
        if rest:
            raise ValueError(f"a batch of {len(self)} does not split into {n} equal shards")
        return [self.select(slice(i * size, (i + 1) * size)) for i in range(n)]

    def chunks(self, size: int) -> Iterator[Batch]:
        """Micro-batches of `size` rows (the last may be smaller)."""
        for i in range(0, len(self), size):
            yield self.select(slice(i, i + size))

    @staticmethod
    def concat(parts: list[Batch]) -> Batch:
        """Rows of every part, in order; per-token fields are re-padded to the widest part; meta from the first."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return Batch()
        tensors = {}
        for k in parts[0].tensors:
            vs = [p[k] for p in parts]
            if vs[0].dim() == 2:
                width = max(v.shape[1] for v in vs)
                vs = [torch.nn.functional.pad(v, (0, width - v.shape[1])) for v in vs]
            tensors[k] = torch.cat(vs)
        texts = {k: [x for p in parts for x in p.texts[k]] for k in parts[0].texts}
        return Batch(tensors, texts, dict(parts[0].meta))

    def update(self, other: Batch) -> Batch:
        """Add the fields of a batch of the same rows (e.g. what a role computed for these samples)."""
        if len(other) != len(self):
            raise ValueError(f"cannot merge a batch of {len(other)} rows into one of {len(self)}")
        self.tensors.update(other.tensors)
        self.texts.update(other.texts)
        self.meta.update(other.meta)
        return self


def _lens(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor([len(r) for r in rows], dtype=torch.long)
