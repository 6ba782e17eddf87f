"""Model shapes for `rlaif plan`: what a model's memory depends on, read from its config.json alone (no weights are
read, nothing is downloaded); Hub ids not in the local cache use the public architecture numbers in
rlaif/assets/model_shapes.json. Ray-free."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from rlaif.config import ConfigError

GATED_MLP = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text", "phi3",
             "olmo", "olmo2", "granite"}


@dataclass(frozen=True)
class ModelShape:
    """What the memory of a decoder-only transformer depends on, from its config.json."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    gated: bool
    max_positions: int = 0

    @classmethod
    def from_config(cls, name: str, c: dict[str, Any]) -> ModelShape:
        c = {**c, **c.get("text_config", {})}  # multimodal configs nest the LM's numbers

        def first(*keys: str, default: Any = None) -> Any:
            for k in keys:
                if c.get(k) is not None:
                    return c[k]
            if default is None:
                raise ConfigError(f"{name}: config.json has none of {', '.join(keys)}; cannot size the model")
            return default

        hidden = int(first("hidden_size", "n_embd", "d_model"))
        heads = int(first("num_attention_heads", "n_head", "num_heads"))
        return cls(name, hidden, int(first("num_hidden_layers", "n_layer", "num_layers")), heads,
                   int(first("num_key_value_heads", default=heads)),
                   int(first("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden)),
                   int(first("vocab_size")), bool(c.get("tie_word_embeddings", True)),
                   c.get("model_type") in GATED_MLP, int(c.get("max_position_embeddings") or 0))

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def layer_params(self) -> int:
        kv = self.kv_heads * self.head_dim
        attn = 2 * self.hidden * self.hidden + 2 * self.hidden * kv
        mlp = (3 if self.gated else 2) * self.hidden * self.intermediate
        return attn + mlp + 2 * self.hidden  # + two norms

    def params(self, lm_head: bool = True) -> int:
        """lm_head=False: a scalar-head model (critic, preference model) built on this LM."""
        head = self.vocab * self.hidden if lm_head and not self.tied else (self.hidden if not lm_head else 0)
        return self.vocab * self.hidden + head + self.layers * self.layer_params + self.hidden

    def linear_layers(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of a block, by the last part of its name (Hugging Face Llama's)."""
        kv, h, i = self.kv_heads * self.head_dim, self.hidden, self.intermediate
        out = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "up_proj": (h, i),
               "down_proj": (i, h)}
        return {**out, "gate_proj": (h, i)} if self.gated else out

    def lora_params(self, rank: int, targets: list[str]) -> int:
        """Parameters of rank-`rank` LoRA adapters (A: rank x in, B: out x rank) on the named linear layers of every
        block ("all-linear": all of them; rlaif.rl.lora's names), plus lm_head's where it is named. A name this shape
        does not know (another architecture's) counts as all-linear: an upper bound."""
        body, named = self.linear_layers(), set(targets) - {"lm_head"}
        kinds = body.values() if "all-linear" in named or named - set(body) else [body[k] for k in named]
        head = rank * (self.hidden + self.vocab) if "lm_head" in targets else 0
        return self.layers * sum(rank * (a + b) for a, b in kinds) + head

    @property
    def largest_layer(self) -> int:
        """Parameters of the largest module ZeRO-3 gathers whole (DeepSpeed's largest_layer_params)."""
        return max(self.vocab * self.hidden, self.layer_params)

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    def activation_bytes(self, tokens: int, logit_rows: int, dtype_bytes: int, checkpointing: bool,
                         lm_head: bool = True, embedding_trains: bool = True) -> int:
        """Tensors saved for backward by one packed micro-batch of `tokens` tokens, `logit_rows` of them through
        the LM head. Per layer and token (HF Llama, SDPA/flash attention: no L x L score matrix is saved): the two
        RMSNorm inputs upcast to fp32 (2 x 4h), the normed inputs, q, k, v (repeated to h for GQA), the attention
        output and o_proj's input (7h in the model dtype), and gate, up, act(gate), act*up of the MLP (4I; 2I
        without a gate). Gradient checkpointing keeps each layer's input only, and recomputes one layer at a time
        in backward. Plus the embedding's gradient, which backward allocates whole before adding it in (not with
        LoRA, whose embedding is frozen)."""
        mlp = (4 if self.gated else 2) * self.intermediate
        per_layer = tokens * (dtype_bytes * (7 * self.hidden + mlp) + 4 * 2 * self.hidden)
        if checkpointing:
            kept = self.layers * tokens * self.hidden * dtype_bytes + per_layer
        else:
            kept = self.layers * per_layer
        head = logit_rows * self.vocab * dtype_bytes if lm_head else 0  # logits of response positions only
        # backward's dense embedding gradient, before it is added
        embed_grad = self.vocab * self.hidden * dtype_bytes if embedding_trains else 0
        return kept + head + embed_grad + 2 * tokens * self.hidden * 4  # + the final norm


def _builtin_shapes() -> dict[str, dict[str, Any]]:
    shapes = json.loads(resources.files("rlaif").joinpath("assets", "model_shapes.json").read_text())
    return {k: v for k, v in shapes.items() if not k.startswith("_")}


def model_shape(key: str, path: str, cache_dir: str = "", revision: str = "") -> ModelShape:
    """The shape of the model the config key `key` (e.g. policy.model.path) names: a folder's config.json, a
    builtin's (its cached folder, else the numbers it is built with), a Hub id's cached config.json, else the public
    numbers shipped in rlaif/assets/model_shapes.json. Never downloads, never reads weights."""
    from rlaif.models import SMOLLM2, TINY, cache_root

    known = _builtin_shapes()
    candidates = [Path(path) / "config.json"]
    if path in (TINY, SMOLLM2):
        candidates = [cache_root(cache_dir) / {TINY: "tiny-llama-v2", SMOLLM2: "smollm2-135m-instruct"}[path]
                      / "config.json"]
    elif "/" in path and not Path(path).is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(path, "config.json", revision=revision or None)
            if isinstance(found, str):
                candidates.append(Path(found))
        except ImportError:
            pass
    for file in candidates:
        if file.is_file():
            try:
                return ModelShape.from_config(path, json.loads(file.read_text(encoding="utf-8")))
            except ValueError as exc:
                raise ConfigError(f"{key}: {file} is not valid JSON: {exc}") from exc
    if path in known:
        return ModelShape.from_config(path, known[path])
    raise ConfigError(f"{key}: cannot size '{path}' without its config.json (not a local folder, not in the "
                      f"Hugging Face cache, not one of the shapes rlaif ships: {', '.join(sorted(known))}); download "
                      "it first (huggingface-cli download <id> config.json)")
