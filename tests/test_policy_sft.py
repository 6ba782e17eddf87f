"""SFT's loss is the token mean over the whole batch (issue 16.14), like the RL losses: the gradient DeepSpeed
accumulates over micro-batches (each loss divided by the accumulation steps) and averages over ranks equals that of
one mean over every target token of the batch. Reference: a plain padded forward of the whole batch."""

from types import SimpleNamespace

import pytest
import torch

from actors.policy import PolicyWorker, reduce_stats
from rlaif.data.loader import pad_sequences
from rlaif.models import load_causal_lm
from rlaif.rl.batch import Batch

# micro-batches of 2: target tokens 1 + 2 = 3 and 7 + 4 = 11; a mean of the two micro-batch means would weigh each
# token of the first 11/3 times as much as one of the second (of 1: 1, 2, 7, 4 tokens over two ranks)
PROMPTS = [[1, 5, 6], [1, 7], [1, 8, 9, 10], [1, 11]]
TARGETS = [[20], [21, 22], [23, 24, 25, 26, 27, 28, 29], [30, 31, 32, 33]]


class Engine(torch.nn.Module):
    """What PolicyWorker.sft uses of a DeepSpeed engine: forward, backward scaled by 1 / accumulation steps, step."""

    def __init__(self, model: torch.nn.Module, grad_accum: int) -> None:
        super().__init__()
        self.model, self.grad_accum, self.device = model, grad_accum, torch.device("cpu")
        self.optimizer = SimpleNamespace(param_groups=[{"lr": 0.0}])

    def forward(self, **kwargs):
        return self.model(**kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum).backward()

    def step(self) -> None: ...


def worker(model, world_size: int, micro_batch: int, grad_accum: int, total_tokens: float) -> PolicyWorker:
    w = object.__new__(PolicyWorker)
    w.cfg = SimpleNamespace(policy=SimpleNamespace(micro_batch_size=micro_batch, packing=True))
    w.rank, w.world_size, w.grad_accum, w.engine = 0, world_size, grad_accum, Engine(model, grad_accum)
    if world_size > 1:  # the all-reduce of the ranks' token counts
        w._batch_tokens = lambda shard: total_tokens
    return w


@pytest.mark.parametrize("world_size", [1, 2])
def test_sft_loss_and_gradient_are_the_batch_wide_token_mean(tiny_path, world_size):
    model = load_causal_lm(tiny_path).eval()
    ids, attn, _ = pad_sequences(PROMPTS, TARGETS, 0)
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits[:, :-1].float(), -1)
    logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    target = torch.cat([logp[i, len(p) - 1 : len(p) - 1 + len(t)] for i, (p, t) in enumerate(zip(PROMPTS, TARGETS))])
    expected = -target.sum() / 14  # 14 target tokens in the batch
    expected.backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    batch = Batch.from_token_lists(PROMPTS, TARGETS, pad_id=0)
    shards = batch.split(world_size)
    # DeepSpeed's data-parallel mean: each rank's gradient weighs 1 / world_size
    grads = [torch.zeros_like(p) for p in model.parameters()]
    stats = []
    for shard in shards:
        # two micro-batches per rank: 1 rank x (3 | 11 tokens), or 2 ranks x (1 | 2) and (7 | 4)
        stats.append(worker(model, world_size, 2 // world_size, 2, 14.0).sft(shard, lr=1e-5))
        for g, p in zip(grads, model.parameters()):
            g += p.grad / world_size
        model.zero_grad()
    assert reduce_stats(stats)["sft/loss"] == pytest.approx(expected.item(), rel=1e-5)
    for g, w in zip(grads, want):
        assert torch.allclose(g, w, atol=1e-6, rtol=1e-4)
