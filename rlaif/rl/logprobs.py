"""Log-probabilities and values of sampled responses, computed the way the tokens were sampled, without padding.

* Sampling distribution: vLLM samples from softmax(logits / T) restricted to the top-p nucleus, and is asked for
  those same "processed" log-probs. The trainer, the reference and the critic must describe the same distribution,
  or PPO ratios, KL and the importance weights are computed for the wrong policy at T != 1.
* Packing: the sequences of a micro-batch are laid end to end in one row with position ids restarting at 0 for each
  (transformers then builds a block-diagonal causal mask, or flash-attention runs varlen), so no FLOP is spent on
  padding. Not every model class honours restarted position ids (OPT and BLOOM attend across sequences):
  check_packing, run when a packing model loads, refuses those; packed=False is one forward per sequence.
* Only the positions that predict response tokens go through the LM head, and the log-softmax runs over the
  vocabulary in row chunks (recomputed in backward), so [batch, length, vocab] is never materialised in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from rlaif.rl.batch import Batch

CHUNK_ELEMENTS = 1 << 24  # rows x vocab per log-softmax chunk: 64 MiB in fp32


@dataclass
class Packed:
    input_ids: torch.Tensor  # [1, L]: every sequence of the micro-batch end to end
    position_ids: torch.Tensor  # [1, L]: restarting at 0 for each sequence
    keep: torch.Tensor  # [N]: positions whose next token is a response token
    targets: torch.Tensor  # [N]: those response tokens
    rows: torch.Tensor  # [N]: batch row of each target
    cols: torch.Tensor  # [N]: response position of each target


def pack(mb: Batch) -> Packed:
    ids, pos, keep, targets, rows, cols = [], [], [], [], [], []
    offset = 0
    for i, (p, pl, r, rl) in enumerate(zip(mb["prompt_ids"], mb["prompt_len"].tolist(), mb["response_ids"],
                                           mb["response_len"].tolist())):
        seq = torch.cat([p[:pl], r[:rl]])
        ids.append(seq)
        pos.append(torch.arange(len(seq)))
        keep.append(torch.arange(rl) + offset + pl - 1)
        targets.append(r[:rl])
        rows.append(torch.full((rl,), i))
        cols.append(torch.arange(rl))
        offset += len(seq)
    cat = torch.cat
    return Packed(cat(ids)[None], cat(pos)[None], cat(keep), cat(targets), cat(rows), cat(cols))


def nucleus_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """True where a token falls outside the top-p nucleus, exactly as vLLM 0.32's sampler decides it: sort ascending,
    drop the tokens whose cumulative probability stays <= 1 - top_p, always keep the most likely one."""
    sorted_logits, order = logits.sort(dim=-1, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cum <= 1 - top_p
    drop[:, -1] = False
    return torch.zeros_like(drop).scatter(-1, order, drop)


def _chunk_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    scaled = logits.float() / temperature
    if top_p < 1.0:
        with torch.no_grad():
            outside = nucleus_mask(scaled, top_p)
            # A sampled token always counts as inside: fp rounding at the nucleus edge must not make it impossible.
            outside.scatter_(-1, targets[:, None], False)
        scaled = scaled.masked_fill(outside, float("-inf"))
    return scaled.gather(-1, targets[:, None]).squeeze(-1) - scaled.logsumexp(dim=-1)


def logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                         top_p: float = 1.0) -> torch.Tensor:
    """log p(target) under softmax(logits / T) restricted to the top-p nucleus; logits [N, V], targets [N].

    Computed in row chunks; with autograd on, each chunk is recomputed in backward instead of being kept."""
    rows = max(1, CHUNK_ELEMENTS // logits.shape[-1])
    out = []
    for s in range(0, logits.shape[0], rows):
        args = (logits[s : s + rows], targets[s : s + rows], temperature, top_p)
        if torch.is_grad_enabled() and logits.requires_grad:
            out.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False))
        else:
            out.append(_chunk_logprobs(*args))
    return torch.cat(out) if out else logits.new_zeros(0, dtype=torch.float32)


def response_logprobs(model, mb: Batch, temperature: float = 1.0, top_p: float = 1.0, packed: bool = True
                      ) -> torch.Tensor:
    """[B, R] log-probs of each response token given its prompt, from one packed forward of the micro-batch (or,
    packed=False, one forward per sequence)."""
    if not packed:
        return torch.cat([response_logprobs(model, row, temperature, top_p) for row in mb.chunks(1)])
    device = next(model.parameters()).device
    packed = pack(mb)
    out = model(input_ids=packed.input_ids.to(device), position_ids=packed.position_ids.to(device),
                logits_to_keep=packed.keep.to(device), use_cache=False)
    lp = logprobs_from_logits(out.logits[0], packed.targets.to(device), temperature, top_p)
    return _to_layout(lp, packed, mb)


def _to_layout(values: torch.Tensor, packed: Packed, mb: Batch) -> torch.Tensor:
    """Per-target values [N] back into the batch layout [B, R], 0 on padding (differentiable)."""
    rows, cols = packed.rows.to(values.device), packed.cols.to(values.device)
    out = values.new_zeros(len(mb), mb["response_ids"].shape[1])
    return out.index_put((rows, cols), values)


def response_values(model, mb: Batch, packed: bool = True) -> torch.Tensor:
    """[B, R] critic values V(s_t) before each response token (a scalar head on the LM's hidden states)."""
    if not packed:
        return torch.cat([response_values(model, row) for row in mb.chunks(1)])
    device = next(model.parameters()).device
    packed = pack(mb)
    hidden = model.base_model(input_ids=packed.input_ids.to(device), position_ids=packed.position_ids.to(device),
                              use_cache=False).last_hidden_state[0]
    values = model.score(hidden[packed.keep.to(device)]).squeeze(-1).float()
    return _to_layout(values, packed, mb)


@torch.no_grad()
def batch_logprobs(model, batch: Batch, micro_batch: int, temperature: float = 1.0, top_p: float = 1.0,
                   packed: bool = True) -> torch.Tensor:
    """[B, R] log-probs for a whole batch, micro-batch by micro-batch (no grad): reference and 'old' passes."""
    parts = [response_logprobs(model, mb, temperature, top_p, packed).cpu() for mb in batch.chunks(micro_batch)]
    width = batch["response_ids"].shape[1]
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])


# check_packing's tolerances. drift: packed against the same rows one by one, which run other kernel shapes (fp32:
# 1e-3 nats as issue 17 asks; 16-bit rounding differs by shape). leak: the later rows' outputs when only the first
# row's tokens change, with the same shapes and kernels: exactly 0 in any precision where attention stays within
# each sequence (masked scores are exp(-inf) = 0, varlen kernels never read them), so it can be tight: a tiny random
# BLOOM leaks 8e-4 nats in fp32 (within the drift tolerance), real ones up to 0.17.
# Packed against unpacked: in fp32 both kernels agree to rounding, so a drift beyond this is a packing error. In 16-bit
# the two kernels' different shapes round differently through every layer (SmolLM2-135M in bf16: up to 0.17 nats a
# token, 0.08 on average, with exactly zero leak), so there the leak alone decides; the drift is only reported.
DRIFT_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-3}
LEAK_TOLERANCE = 1e-4
CHECK_LENGTHS = [(24, 4), (3, 5), (2, 3)]  # (prompt, response): later sequences see more foreign tokens than own


@torch.no_grad()
def check_packing(model, key: str, values: bool = False) -> dict[str, float]:
    """Start-up self-check that packing is exact for this model as loaded (its class, attention kernel, dtype and
    device): one packed forward of three random sequences against the same rows unpacked, and against the same
    packed row with only the first sequence's tokens changed. Raises ConfigError naming `key` (the packing key to
    turn off) when either differs. Every ZeRO-3 rank must call it (the forwards gather parameters); the inputs are
    the same on every rank. values: the critic's scalar head (response_values) instead of log-probs."""
    from rlaif.config import ConfigError

    module = getattr(model, "module", model)  # a DeepSpeed engine's model
    vocab = module.config.vocab_size
    gen = torch.Generator().manual_seed(0)

    def rand(n: int) -> list[int]:
        return torch.randint(0, vocab, (n,), generator=gen).tolist()

    prompts, responses = [rand(p) for p, _ in CHECK_LENGTHS], [rand(r) for _, r in CHECK_LENGTHS]
    first = Batch.from_token_lists(prompts, responses, 0)
    other = Batch.from_token_lists([rand(len(prompts[0])), *prompts[1:]], [rand(len(responses[0])), *responses[1:]], 0)
    forward = (lambda b, packed=True: response_values(model, b, packed)) if values else \
        (lambda b, packed=True: response_logprobs(model, b, packed=packed))
    packed, unpacked, changed = forward(first).float(), forward(first, False).float(), forward(other).float()
    mask = first.response_mask.to(packed.device)
    drift = ((packed - unpacked).abs() * mask).max().item()
    leak = ((packed[1:] - changed[1:]).abs() * mask[1:]).max().item()
    dtype = next(model.parameters()).dtype
    tolerance = DRIFT_TOLERANCE.get(dtype, float("inf"))
    if not (drift <= tolerance and leak <= LEAK_TOLERANCE):  # also NaN
        attn = getattr(module.config, "_attn_implementation", None)
        unit = "" if values else " nats/token"
        what = "values" if values else "log-probs"
        unpacked_by = (f"differ from the same rows unpacked by up to {drift:.3g}{unit} (tolerance {tolerance:g}) and "
                       if tolerance < float("inf") else "")
        raise ConfigError(
            f"{key}: {type(module).__name__} (attention {attn}, {str(dtype).removeprefix('torch.')}) does not keep "
            f"packed sequences apart: its packed {what} {unpacked_by}move by {leak:.3g}{unit} when only another "
            f"sequence of the row changes (tolerance {LEAK_TOLERANCE:g}); set {key}=false (one forward per sequence) "
            "or another *.model.attn_implementation")
    return {"drift": drift, "leak": leak}
