"""A tiny pretrained reward model whose preference is known, for the rl.reward_model tests: a one-layer
LlamaForSequenceClassification (num_labels=1) built from a config with hand-set weights, saved with its own copy of the
tiny tokenizer and a chat template of its own (not the policy's ChatML).

Its score is an increasing function of the share of "good" tokens (even ids, specials excepted) in the whole scored
sequence: every token embeds as one vector plus, for a good token, a flag; attention is uniform over the prefix (zero
queries and keys), so at the last token it carries the good share into a dimension the scalar head reads, and the MLP
adds nothing. GOOD_WORDS / BAD_WORDS are single-token words of either kind.
"""

from pathlib import Path

import torch

TEMPLATE = ("{% for message in messages %}{{ '### ' + message['role'] + ': ' + message['content'] + '\n' }}"
            "{% endfor %}{% if add_generation_prompt %}{{ '### assistant: ' }}{% endif %}")


def words(tok, good: bool) -> list[str]:
    """Words the tokenizer encodes (after a space) as one token of id parity `good` (even: good)."""
    out = []
    for token, i in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
        word = token[1:]
        if token.startswith("Ġ") and word.isalpha() and len(word) > 3 and (i % 2 == 0) == good \
                and tok.encode(" " + word, add_special_tokens=False) == [i]:
            out.append(word)
    return out


def build_reward_model(tiny_path: str, out: Path, num_labels: int = 1) -> str:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tiny_path)
    tok.chat_template = TEMPLATE
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                         num_labels=num_labels, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
    model = LlamaForSequenceClassification(config)
    good = torch.tensor([i % 2 == 0 and i not in tok.all_special_ids for i in range(len(tok))], dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for norm in (model.model.norm, model.model.layers[0].input_layernorm,
                     model.model.layers[0].post_attention_layernorm):
            norm.weight.fill_(1.0)
        emb = model.model.embed_tokens.weight
        emb[:, 2:] = 1.0
        emb[:, 0] = good
        attn = model.model.layers[0].self_attn
        attn.v_proj.weight[0, 0] = 1.0  # head 0 carries the good flag ...
        attn.o_proj.weight[1, 0] = 1.0  # ... averaged over the prefix, into dimension 1
        model.score.weight[:, 1] = 10.0
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return str(out)
