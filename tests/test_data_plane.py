"""The throughput building blocks alone (no Ray, no vLLM): the tensor batch, weight-sync buckets and broadcasts over a
real gloo group between two threads, its timeout, and the CPU thread budget."""

import math
import os
import socket
import threading
import time

import pytest
import torch

from actors.group import use_cpu_threads
from actors.weight_sync import (
    BroadcastGroup,
    Param,
    map_buffer,
    plan_buckets,
    receive_buckets,
    receive_shared,
    send_buckets,
    share_buffer,
)
from rlaif.batch import Batch
from rlaif.config import Config


def sample_batch() -> Batch:
    prompts = [[1, 2], [3], [4, 5, 6], [7]]
    responses = [[10, 11, 12], [13], [14, 15], [16, 17, 18, 19]]
    b = Batch.from_token_lists(prompts, responses, pad_id=0, prompt=list("abcd"), response=list("wxyz"))
    b["old_logprobs"] = -torch.arange(16, dtype=torch.float32).reshape(4, 4) * b.response_mask
    b["scores"] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    b.meta["temperature"] = 0.7
    return b


def test_batch_splits_into_rank_shards_and_concatenates_back():
    """Bugs caught: shards that reorder or drop rows, texts that stop matching their tensors, a concat that pads
    per-token fields to the wrong width or loses meta, a shard count that silently drops the remainder."""
    b = sample_batch()
    shards = b.split(2)
    assert [s.texts["prompt"] for s in shards] == [["a", "b"], ["c", "d"]]
    assert shards[0].response_lists() == [[10, 11, 12], [13]] and shards[1].prompt_lists() == [[4, 5, 6], [7]]
    assert shards[1]["scores"].tolist() == pytest.approx([0.3, 0.4]) and shards[1].meta == {"temperature": 0.7}
    # a role answers with narrower per-token tensors for its shard: concat pads back to the widest
    shards[0].tensors = {k: v[:, :3] if v.dim() == 2 and k != "prompt_ids" else v for k, v in shards[0].tensors.items()}
    back = Batch.concat(shards)
    assert back.response_lists() == b.response_lists() and back.prompt_lists() == b.prompt_lists()
    assert torch.equal(back["old_logprobs"], b["old_logprobs"]) and back.texts == b.texts
    assert back.token_count() == 10 and back.meta == b.meta
    assert [len(c) for c in b.chunks(3)] == [3, 1]
    picked = b.select([3, 0])
    assert picked.texts["response"] == ["z", "w"] and picked.response_lists() == [[16, 17, 18, 19], [10, 11, 12]]
    with pytest.raises(ValueError, match="does not split into 3 equal shards"):
        b.split(3)
    with pytest.raises(ValueError, match="'values' has 3 rows, the batch has 4"):
        b["values"] = torch.zeros(3, 4)


def test_buckets_hold_contiguous_same_dtype_params_within_the_byte_bound():
    """Hand-planned: 16-byte buckets over fp32 params of 8, 8, 4, 24 bytes and a bf16 one. Bugs caught: a bucket over
    the bound, dtypes mixed in one flat buffer, an oversized tensor dropped instead of sent alone, params reordered."""
    params = [Param("a", (2,), torch.float32), Param("b", (2,), torch.float32), Param("c", (1,), torch.float32),
              Param("d", (2, 3), torch.float32), Param("e", (2,), torch.bfloat16)]
    assert [[p.name for p in b] for b in plan_buckets(params, 16)] == [["a", "b"], ["c"], ["d"], ["e"]]
    assert [[p.name for p in b] for b in plan_buckets(params, 1 << 20)] == [["a", "b", "c", "d"], ["e"]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_threads(sender, receiver, timeout_s: float):
    """Run rank 0 (sender) and rank 1 (receiver) of a fresh gloo BroadcastGroup in two threads."""
    port, results, t0 = free_port(), {}, time.monotonic()

    def run(rank, fn):
        try:
            group = BroadcastGroup("gloo", "127.0.0.1", port, rank, 2, timeout_s)
            results[rank] = fn(group)
        except Exception as exc:  # noqa: BLE001 - handed to the test
            results[rank] = exc
        results[f"seconds_{rank}"] = time.monotonic() - t0

    threads = [threading.Thread(target=run, args=(r, f)) for r, f in ((0, sender), (1, receiver))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s * 10)
    return results


def test_weights_stream_in_buckets_over_gloo_and_arrive_exact():
    """Bugs caught: a bucket's flat buffer cut at the wrong offsets (names get their neighbours' values), a dtype
    changed on the way, bytes miscounted."""
    torch.manual_seed(0)
    named = [("w1", torch.nn.Parameter(torch.randn(3, 4))), ("b1", torch.nn.Parameter(torch.randn(4))),
             ("w2", torch.nn.Parameter(torch.randn(5, 2))), ("h", torch.nn.Parameter(torch.randn(2).bfloat16()))]
    params = [Param(n, tuple(t.shape), t.dtype) for n, t in named]
    buckets = plan_buckets(params, 64)
    assert len(buckets) == 3
    cpu = torch.device("cpu")
    got = in_threads(lambda g: send_buckets(g, named, buckets, zero3=False, device=cpu),
                     lambda g: [(n, t.clone()) for n, t in receive_buckets(g, buckets, cpu)], timeout_s=30)
    assert got[0] == sum(t.numel() * t.element_size() for _, t in named)
    assert [n for n, _ in got[1]] == [n for n, _ in named]
    for (_, sent), (_, came) in zip(named, got[1]):
        assert came.dtype == sent.dtype and torch.equal(came, sent.detach())


def test_weights_handed_over_through_one_shared_buffer_arrive_exact():
    """rollout.sync_transport=shared on CPU: the sender writes every bucket into one /dev/shm buffer, which the
    receiver maps by its handle. Bugs caught: the receiver yielding views of the buffer that the next bucket
    overwrites (vLLM's layerwise reload holds a layer's tensors across buckets, as this test holds all of them), the
    sender writing before the receiver has copied out, offsets or dtypes wrong, the file left behind."""
    torch.manual_seed(1)
    named = [("w1", torch.nn.Parameter(torch.randn(3, 4))), ("b1", torch.nn.Parameter(torch.randn(4))),
             ("w2", torch.nn.Parameter(torch.randn(5, 2))), ("h", torch.nn.Parameter(torch.randn(6).bfloat16()))]
    buckets = plan_buckets([Param(n, tuple(t.shape), t.dtype) for n, t in named], 64)
    assert len(buckets) == 3
    nbytes = max(sum(math.prod(p.shape) for p in b) * b[0].dtype.itemsize for b in buckets)
    buf, handle = share_buffer(nbytes, torch.device("cpu"))
    mapped, device = map_buffer(handle)
    os.unlink(handle["path"])  # as the policy does once its receivers joined: the mappings keep the memory
    assert device.type == "cpu" and mapped.numel() == nbytes == 64  # w1 and b1: 16 float32
    got = in_threads(lambda g: send_buckets(g, named, buckets, zero3=False, device=torch.device("cpu"), shared=buf),
                     lambda g: list(receive_shared(g, mapped, buckets)), timeout_s=30)
    assert got[0] == sum(t.numel() * t.element_size() for _, t in named), got
    assert [n for n, _ in got[1]] == [n for n, _ in named]
    for (_, sent), (_, came) in zip(named, got[1]):
        assert came.dtype == sent.dtype and torch.equal(came, sent.detach())
    with pytest.raises(RuntimeError, match="not found: is this vLLM engine on policy rank 0's node"):
        map_buffer(handle)  # another node: no such file, and the error says what to do


def test_a_receiver_whose_sender_never_sends_times_out_naming_what_it_waited_for():
    """Bug caught: a weight sync that hangs forever (or raises a bare gloo error) when the policy side stalls."""
    buckets = [[Param("w", (4,), torch.float32)]]

    def stall(group):  # alive (its connection open) but never sending
        time.sleep(8)
        return "stalled"

    got = in_threads(stall, lambda g: list(receive_buckets(g, buckets, torch.device("cpu"))), timeout_s=3)
    assert got[0] == "stalled" and isinstance(got[1], TimeoutError), got
    assert 2.5 < got["seconds_1"] < 7, got  # raised by its own timeout, not when the sender went away
    assert "vLLM worker (sync rank 1) waiting for bucket 1/1" in str(got[1]) and "trainer.timeout_s" in str(got[1])


def test_cpu_thread_budget_splits_the_cores_between_peers():
    """Bugs caught: every actor running torch on every core (oversubscription, also when trainer.async overlaps
    generation and training), an explicit ray.cpu_threads_* ignored,
    OMP_NUM_THREADS (read by vLLM's and DeepSpeed's native code) left at another value."""
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    cores = len(os.sched_getaffinity(0))
    try:
        cfg = Config()
        cfg.policy.num_ranks = 2
        assert use_cpu_threads(cfg, "policy") == max(1, cores // 2) == torch.get_num_threads()
        cfg.rl.algorithm, cfg.critic.num_ranks = "ppo", 2  # policy and critic ranks share the cores
        assert use_cpu_threads(cfg, "policy") == max(1, cores // 4)
        assert use_cpu_threads(cfg, "aux") == max(1, cores // 3)
        cfg.rl.algorithm, cfg.critic.num_ranks = "grpo", 1
        cfg.trainer.async_ = True  # generation overlaps training: one policy rank and one engine share the cores
        assert use_cpu_threads(cfg, "policy") == max(1, cores // 3) and use_cpu_threads(cfg, "rollout") == max(
            1, cores // 3) and use_cpu_threads(cfg, "rollout", stage="sl-cai") == cores
        cfg.policy.num_ranks = 1
        assert use_cpu_threads(cfg, "rollout") == max(1, cores // 2) == use_cpu_threads(cfg, "policy")
        cfg.ray.cpu_threads_rollout = 3
        assert use_cpu_threads(cfg, "rollout") == 3 == torch.get_num_threads()
        assert os.environ["OMP_NUM_THREADS"] == "3"
    finally:
        torch.set_num_threads(before)
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env
