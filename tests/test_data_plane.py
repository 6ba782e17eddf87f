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
from rlaif.config import Config
from rlaif.rl.batch import Batch


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


def as_items(named: list) -> list:
    """Plain parameters as the weight sync's items (each sent as it is)."""
    return [(n, [p], lambda ts: ts[0]) for n, p in named]


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
    got = in_threads(lambda g: send_buckets(g, as_items(named), buckets, zero3=False, device=cpu),
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
    got = in_threads(lambda g: send_buckets(g, as_items(named), buckets, zero3=False, device=torch.device("cpu"),
                                            shared=buf),
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


def test_a_batch_from_engines_on_different_weights_reports_its_oldest_and_the_lag_apart_from_the_mismatch(
        monkeypatch):
    """Issue 16.15. Bugs caught: a batch whose engines held different weight versions (one restarted during async
    generation and brought to the current weights) reporting the first engine's version, so its staleness looks
    smaller than it is; the trainer-vs-vLLM log-prob gap of a stale batch (mostly the policy's lag) reported as the
    numerical mismatch."""
    from types import SimpleNamespace

    import actors.group
    from actors.rollout import Pending
    from rlaif.rl.algorithms import sampler_metrics

    def engine(version: int):
        def generate(texts, n, seeds):
            b = Batch.from_token_lists([[1]] * len(texts) * n, [[2]] * len(texts) * n, pad_id=0,
                                       prompt=[t for t in texts for _ in range(n)], response=[""] * len(texts) * n)
            b.meta.update(gen_seconds=1.0, prompts_truncated=0, weight_version=version)
            return b
        return SimpleNamespace(generate=SimpleNamespace(remote=generate))

    monkeypatch.setattr(actors.group, "get", lambda ref, timeout, what: ref)  # refs are the results themselves
    engines = SimpleNamespace(actors=[engine(5), engine(4)], epochs=[0, 0], timeout=1.0)  # engine 1: older weights
    batch = Pending(engines, "generate", [(0, [0, 2]), (1, [1])], lambda g: ((["abc"[i] for i in g], 2, g), {}),
                    "rollout.generate").result()
    assert batch.texts["prompt"] == ["a", "a", "b", "b", "c", "c"]
    assert batch.meta["weight_version"] == 4

    # trained at step 5: one update behind; the gap is the lag. At step 4: on-policy, the gap is the mismatch.
    assert sampler_metrics(5, batch, {"tis_mean_abs_log_ratio": 0.3}) == {
        "rollout/staleness": 1.0, "logprob/lag_abs_diff": 0.3}
    assert sampler_metrics(4, batch, {"tis_mean_abs_log_ratio": 0.01}) == {
        "rollout/staleness": 0.0, "logprob/vllm_vs_trainer_abs_diff": 0.01}
    assert sampler_metrics(4, batch, {}) == {"rollout/staleness": 0.0}  # online DPO measures no gap


def test_the_shared_buffer_is_removed_when_the_sync_group_fails_to_form(tmp_path):
    """Issue 16.12. Bug caught: a /dev/shm buffer (the size of the largest bucket) left behind for good when the
    weight-sync group does not form, here because no vLLM worker joins before the timeout."""
    from types import SimpleNamespace

    from actors.policy import PolicyWorker

    buf, handle = share_buffer(64, torch.device("cpu"), folder=str(tmp_path))
    assert os.path.basename(handle["path"]).startswith(f"rlaif-weight-sync-{os.getpid()}-") and buf.numel() == 64
    sender = object.__new__(PolicyWorker)
    sender.sync_handle, sender.engine = handle, SimpleNamespace(device=torch.device("cpu"))
    with pytest.raises(RuntimeError):  # torch.distributed.DistStoreError: no vLLM worker joined in time
        sender.init_weight_sync("gloo", "127.0.0.1", free_port(), world_size=2, timeout_s=1.0)
    assert not os.path.exists(handle["path"])


def test_stale_shared_buffers_of_dead_processes_are_swept_at_start_up(tmp_path):
    """Issue 16.12. Bugs caught: buffers of killed ranks never removed; a live process's buffer (another run on the
    node) or an unrelated file removed."""
    import subprocess
    import sys

    from actors.weight_sync import sweep_stale_buffers

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    files = {"dead": f"rlaif-weight-sync-{dead_pid}-0a1b2c3d", "live": f"rlaif-weight-sync-{os.getppid()}-0a1b2c3d",
             "other": "rlaif-weight-sync-notapid", "unrelated": f"torch-{dead_pid}"}
    for name in files.values():
        (tmp_path / name).write_bytes(b"x")
    _, handle = share_buffer(8, torch.device("cpu"), folder=str(tmp_path))  # sweeps first
    assert sorted(os.listdir(tmp_path)) == sorted([files["live"], files["other"], files["unrelated"],
                                                    os.path.basename(handle["path"])])
    assert sweep_stale_buffers(str(tmp_path)) == []  # its own buffer: alive
