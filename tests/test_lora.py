"""LoRA's building blocks (rlaif/rl/lora.py) on the tiny model, against peft's own merge and loading: no Ray."""

import pytest
import torch

from rlaif.config import LoRAConfig
from rlaif.models import load_causal_lm, load_scalar_model
from rlaif.rl.lora import (
    LoRAError,
    adapter_state_dict,
    adapters_off,
    apply_lora,
    merged_state_dict,
    save_adapter,
    sync_items,
    target_modules,
)


def adapted(tiny_path: str, rank: int = 4, targets=("all-linear",), seed: int = 0):
    """The tiny LM with adapters whose B is random (peft starts B at 0: nothing to merge then)."""
    model = load_causal_lm(tiny_path)
    apply_lora(model, LoRAConfig(rank=rank, alpha=8.0, target_modules=list(targets)), "policy.lora")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def ids() -> torch.Tensor:
    return torch.tensor([[1, 5, 9, 20, 33, 7, 2, 11]])


def test_fresh_adapters_change_nothing_and_only_they_train(tiny_path):
    """Bugs caught: adapters that start non-zero (the policy would not start as the model it was given, KL to the
    reference > 0 at step 0), base weights left trainable (full fine-tuning's memory, and the reference drifts),
    the LM head adapted."""
    base = load_causal_lm(tiny_path)
    model = load_causal_lm(tiny_path)
    apply_lora(model, LoRAConfig(rank=4), "policy.lora")
    with torch.no_grad():
        assert torch.equal(model(ids()).logits, base(ids()).logits)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    assert not any("lm_head" in n for n in trained)
    n_linear = sum(1 for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n)
    assert len(trained) == 2 * n_linear  # every linear layer but the head: one A and one B each


def test_a_scalar_models_head_trains_whole(tiny_path):
    """Bug caught: the critic's or PM's randomly initialised score head frozen (it could never learn a value)."""
    model = load_scalar_model(tiny_path)
    apply_lora(model, LoRAConfig(rank=2), "critic.lora")
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "score.weight" in trained and not any(n.startswith("score.lora") for n in trained)


def test_unknown_target_modules_name_the_key_and_the_layers(tiny_path):
    model = load_causal_lm(tiny_path)
    with pytest.raises(LoRAError, match=r"policy\.lora\.target_modules: no linear layer named qkv .*q_proj"):
        target_modules(model, ["q_proj", "qkv"], "policy.lora.target_modules")
    assert target_modules(model, ["q_proj", "v_proj"], "k") == ["q_proj", "v_proj"]
    assert "lm_head" not in target_modules(model, ["all-linear"], "k")
    assert "lm_head" in target_modules(model, ["all-linear", "lm_head"], "k")  # untied here: allowed by name
    model.config.tie_word_embeddings = True
    with pytest.raises(LoRAError, match="lm_head is tied to the input embeddings"):
        target_modules(model, ["lm_head"], "policy.lora.target_modules")


def test_adapters_off_is_the_base_model_and_they_come_back_on(tiny_path):
    """The reference with LoRA. Bugs caught: adapters left off after the reference pass (the policy would train
    as the base model), or never switched off (KL to the reference always 0, DPO's log-ratios 0)."""
    base = load_causal_lm(tiny_path)
    model = adapted(tiny_path)
    with torch.no_grad():
        on = model(ids()).logits
        with adapters_off(model):
            off = model(ids()).logits
        again = model(ids()).logits
        assert torch.equal(off, base(ids()).logits)
        assert not torch.allclose(on, off, atol=1e-3)
        assert torch.equal(again, on)
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)


def test_sync_items_are_pefts_merged_weights(tiny_path):
    """What vLLM receives. Checked against peft's own merge_and_unload of the same adapters (an independent
    implementation). Bugs caught: scaling alpha/r dropped or inverted, B @ A transposed, adapters sent as weights,
    names with base_layer that vLLM cannot load, a weight missing."""
    from peft import LoraConfig, get_peft_model

    ours = adapted(tiny_path, targets=("q_proj", "v_proj", "down_proj"))
    items = {name: make([p.detach() for p in params]) for name, params, make in sync_items(ours)}
    ref = get_peft_model(load_causal_lm(tiny_path), LoraConfig(r=4, lora_alpha=8.0,
                                                                target_modules=["q_proj", "v_proj", "down_proj"]))
    lora_state = {k: v for k, v in ours.state_dict().items() if "lora_" in k}
    ref_state = ref.state_dict()
    for k, v in lora_state.items():
        ref_state["base_model.model." + k].copy_(v)
    expected = dict(ref.merge_and_unload().named_parameters())
    assert set(items) == set(expected)
    for name, want in expected.items():
        assert torch.allclose(items[name], want, atol=1e-6), name
    changed = [n for n in expected if not torch.equal(items[n], dict(load_causal_lm(tiny_path).named_parameters())[n])]
    assert changed and all(n.split(".")[-2] in ("q_proj", "v_proj", "down_proj") for n in changed)


def test_exports_load_without_peft_and_as_a_peft_adapter(tiny_path, tmp_path):
    """The final export: the merged model (transformers alone) and adapter/ (PeftModel.from_pretrained on the base)
    both compute what the adapted policy computes. Bugs caught: adapter keys peft cannot map (the `default` part
    kept), a merged export that is still the base model, a config that does not name the targets."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = adapted(tiny_path)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    merged = merged_state_dict(state, model)
    assert not any("lora_" in k or "base_layer" in k for k in merged)
    plain = AutoModelForCausalLM.from_pretrained(tiny_path)
    plain.load_state_dict(merged, strict=False)
    save_adapter(model, state, tmp_path / "adapter", tiny_path)
    assert set(adapter_state_dict(state)) and all(".default." not in k for k in adapter_state_dict(state))
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_path), tmp_path / "adapter")
    with torch.no_grad():
        want = model(ids()).logits
        assert torch.allclose(plain(ids()).logits, want, atol=1e-4)
        assert torch.allclose(peft_model(ids()).logits, want, atol=1e-4)
