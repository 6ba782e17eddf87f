"""Scripted models for end-to-end tests: the tiny builtin Llama rewired so that its next-token distribution is one
fixed distribution at every position, whatever the context (what the test needs it to say, served by real vLLM)."""

from collections.abc import Callable

import torch


def fixed_distribution_checkpoint(tiny_path: str, out, logits: Callable[[object, list[str]], torch.Tensor]) -> str:
    """The tiny Llama with no attention or MLP output and one embedding for every token, so the final hidden state
    is one vector h everywhere; its LM head scores `logits(tokenizer, vocab)` (one per token) against h. Saved with
    its tokenizer to `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_path), AutoTokenizer.from_pretrained(tiny_path)
    logit = logits(tok, tok.convert_ids_to_tokens(list(range(len(tok)))))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
        model.model.embed_tokens.weight[:] = v
        h = model.model.norm(v[None, None])[0, 0]
        model.lm_head.weight[:] = logit[:, None] * (h / h.dot(h))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
