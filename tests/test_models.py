import json
from pathlib import Path

import pytest
import torch

from rlaif.models import (
    last_token_scores,
    load_causal_lm,
    load_scalar_model,
    load_tokenizer,
    resolve_model_path,
    response_logprobs,
    save_pretrained_atomic,
    token_logprobs,
)


def test_tiny_model_is_built_locally_as_safetensors(tiny_path):
    files = {p.name for p in Path(tiny_path).iterdir()}
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    tok = load_tokenizer(tiny_path)
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(tok.encode("How do I bake bread?")) == "How do I bake bread?"
    assert json.loads((Path(tiny_path) / "config.json").read_text())["head_dim"] == 32


def test_missing_and_bad_model_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="model path not found: /no/such/model"):
        resolve_model_path("/no/such/model")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        resolve_model_path(str(tmp_path))
    with pytest.raises(ValueError, match="unknown builtin model 'builtin:gpt5'"):
        resolve_model_path("builtin:gpt5")


def test_token_logprobs_match_a_manual_log_softmax(tiny_path):
    model = load_causal_lm(tiny_path).eval()
    ids = torch.tensor([[5, 9, 14, 3, 8]])
    with torch.no_grad():
        got = token_logprobs(model, ids, torch.ones_like(ids))
        logits = model(ids).logits[0]
    manual = [torch.log_softmax(logits[t], -1)[ids[0, t + 1]].item() for t in range(4)]
    assert got[0].tolist() == pytest.approx(manual, abs=1e-5)
    # padding on the right changes nothing for the real tokens
    per_seq = response_logprobs(model, [[5, 9], [5]], [[14, 3, 8], [9]], pad_id=0)
    assert per_seq[0] == pytest.approx(manual[1:], abs=1e-5)
    assert per_seq[1] == pytest.approx(manual[:1], abs=1e-5)


def test_scalar_head_scores_the_last_real_token(tiny_path):
    model = load_scalar_model(tiny_path).eval()
    ids = torch.tensor([[5, 9, 14, 0, 0], [5, 9, 14, 3, 8]])
    attn = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        padded = last_token_scores(model, ids, attn)
        alone = last_token_scores(model, ids[:1, :3], attn[:1, :3])
    assert padded[0].item() == pytest.approx(alone[0].item(), abs=1e-5)


def test_atomic_save_loads_and_replaces(tiny_path, tmp_path):
    model, tok = load_causal_lm(tiny_path), load_tokenizer(tiny_path)
    out = save_pretrained_atomic(model, tok, tmp_path / "ckpt", {"README.md": "card one", "trust.json": "{}"})
    assert (out / "README.md").read_text() == "card one" and (out / "trust.json").is_file()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_pretrained_atomic(model, tok, tmp_path / "ckpt", {"README.md": "card two"})  # replacing a checkpoint
    assert (out / "README.md").read_text() == "card two" and not (out / "trust.json").exists()
    again = load_causal_lm(str(out))
    assert torch.equal(next(again.parameters()), next(model.parameters()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp or .old folders left behind
