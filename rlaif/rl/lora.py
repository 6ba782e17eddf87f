"""LoRA through peft, for the policy, the critic and the preference model. No Ray here.

Adapters are injected into the model in place (`peft.inject_adapter_in_model`), not wrapped in a PeftModel, so the
model keeps its class, its `base_model` and `score` attributes and its parameter order, and every path that trains or
scores a full model (DeepSpeed, packing, the scalar heads) runs unchanged. What LoRA changes:

* only the adapters train (and a scalar model's head, which starts random): everything else is frozen;
* the reference is the same model with its adapters switched off (`adapters_off`): its log-probs do not depend on
  what the adapters have learnt, so no reference copy of the weights exists;
* the weights vLLM receives are the merged W + (alpha / r) B @ A, computed in fp32 out of place (`sync_items`): the
  base weights are never merged into and unmerged from (in bf16 that round trip drifts them a little every sync);
* exports hold the merged model (`merged_state_dict`, loadable without peft) and the adapter alone (`save_adapter`,
  peft's format: `PeftModel.from_pretrained(base, path)`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from rlaif.config import LoRAConfig

ADAPTER = "default"  # peft's name for the one adapter
HEADS = ("lm_head", "score", "classifier")  # output heads: never adapted; a scalar head trains whole


class LoRAError(ValueError):
    """A LoRA setting that does not fit the model; the message names the key."""


def target_modules(model: torch.nn.Module, wanted: list[str], key: str) -> list[str]:
    """The linear layers' names (their last part) that get adapters: "all-linear" is every linear layer but the
    heads; other names must each match a linear layer. The LM head only when named (and not tied to the input
    embeddings: vLLM holds one matrix for both, so a tied head's update could not reach it); a scalar head never (it
    trains whole)."""
    linear = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    body = linear - set(HEADS)
    missing = [w for w in wanted if w not in linear and w != "all-linear"]
    if missing:
        raise LoRAError(f"{key}: no linear layer named {', '.join(missing)} in this model; its linear layers: "
                        f"{', '.join(sorted(body))} (or 'all-linear')")
    if "lm_head" in wanted and getattr(model.config, "tie_word_embeddings", False):
        raise LoRAError(f"{key}: lm_head is tied to the input embeddings in this model (tie_word_embeddings), and "
                        "vLLM keeps one matrix for both: an adapter on it could never reach the engines; leave it out")
    heads = [w for w in wanted if w in HEADS[1:]]
    if heads:
        raise LoRAError(f"{key}: {', '.join(heads)} is the scalar head, which trains whole: leave it out")
    return sorted(body | set(wanted) - {"all-linear"}) if "all-linear" in wanted else list(wanted)


def apply_lora(model: torch.nn.Module, lc: LoRAConfig, key: str) -> torch.nn.Module:
    """Inject adapters (rank lc.rank, alpha, dropout, target modules) into `model` in place and freeze everything
    else but a scalar head. B starts at 0 (peft's default), so the model computes exactly what it did before."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = target_modules(model, lc.target_modules, f"{key}.target_modules")
    config = LoraConfig(r=lc.rank, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=targets, bias="none")
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    model._rlaif_lora = config  # save_adapter writes it as adapter_config.json
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name or name.split(".")[0] in HEADS[1:])  # a scalar head, not the LM's
    if getattr(model, "is_gradient_checkpointing", False):
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad-carrying input
    return model


def is_lora(model: torch.nn.Module) -> bool:
    return hasattr(model, "_rlaif_lora")


def _tuner_layers(model: torch.nn.Module) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@contextmanager
def adapters_off(model: torch.nn.Module) -> Iterator[None]:
    """The base model, for the reference's log-probs: every adapter off inside the block, on again after it."""
    layers = _tuner_layers(model)
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)


def base_name(name: str) -> str:
    """A parameter's name in the model without adapters (what vLLM and transformers load)."""
    return name.replace(".base_layer.", ".")


def sync_items(model: torch.nn.Module) -> list[tuple[str, list[torch.nn.Parameter], Callable]]:
    """What the weight sync sends, in parameter order: (name, the parameters it is made of, how to make it from
    them). A plain parameter is itself; an adapted layer's weight is W + scaling * B @ A (in fp32, rounded once to
    W's dtype); the adapters themselves are not sent."""
    merged = {}
    for name, m in model.named_modules():
        if hasattr(m, "lora_A") and ADAPTER in m.lora_A:
            merged[name + ".base_layer.weight"] = (m.lora_A[ADAPTER].weight, m.lora_B[ADAPTER].weight,
                                                   m.scaling[ADAPTER], getattr(m, "fan_in_fan_out", False))
    items = []
    for name, p in model.named_parameters():
        if ".lora_" in name:
            continue
        if name in merged:
            a, b, scale, transposed = merged[name]

            def make(ts: list[torch.Tensor], scale: float = scale, transposed: bool = transposed) -> torch.Tensor:
                w, a, b = ts
                delta = b.float() @ a.float()
                return (w.float() + scale * (delta.T if transposed else delta)).to(w.dtype)

            items.append((base_name(name), [p, a, b], make))
        else:
            items.append((base_name(name), [p], lambda ts: ts[0]))
    return items


def merged_state_dict(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A full state dict of an adapted model (names with base_layer and lora_ parts) as the plain model's: adapted
    weights merged, adapters dropped. Loadable by transformers and vLLM without peft."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {name: make([state[names[id(p)]] for p in params]) for name, params, make in sync_items(model)}
    for key, value in state.items():  # buffers, tied copies
        if ".lora_" not in key:
            out.setdefault(base_name(key), value)
    return out


def adapter_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapters of a full state dict, named as peft saves them (PeftModel.from_pretrained loads these)."""
    return {"base_model.model." + k.replace(f".{ADAPTER}.", "."): v.contiguous() for k, v in state.items()
            if ".lora_" in k}


def save_adapter(model: torch.nn.Module, state: dict[str, torch.Tensor], out_dir: Path, base: str) -> Path:
    """The adapter alone in peft's format (adapter_model.safetensors + adapter_config.json naming `base`), written
    into `out_dir` (a folder being assembled: the caller renames it into place)."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state_dict(state), str(out_dir / "adapter_model.safetensors"))
    config = model._rlaif_lora.to_dict()
    config.update(base_model_name_or_path=base, task_type="CAUSAL_LM" if hasattr(model, "lm_head") else "SEQ_CLS",
                  target_modules=sorted(config["target_modules"]))
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2, default=str))
    return out_dir
