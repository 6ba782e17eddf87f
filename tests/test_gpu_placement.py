"""GPU placement, colocation, sleep mode and ZeRO-Offload, tested on CPU (issue 17, defects 1, 2 and 6).

The pure decisions (bundles, VLLM_RAY_BUNDLE_INDICES, vLLM's arguments, the DeepSpeed config, config checks) are
unit tests. Placement runs on a local Ray whose node *declares* 4 GPUs (Ray schedules GPU resources without CUDA):
the rollout engines are real RolloutWorker actors whose vLLM start (RolloutWorker.start_engine) is replaced by a
probe that does what vLLM 0.32's Ray executor does with the environment it finds (it reads VLLM_RAY_BUNDLE_INDICES and
VLLM_RAY_PER_WORKER_GPUS, resolves the bundles with vLLM's own get_bundles_for_indices and starts one worker actor
per TP rank in them). Sleep/wake order goes through the real RolloutEngines and Roles.sync with engine actors that
record the calls vLLM's LLM.sleep / wake_up would get (vLLM on CPU cannot sleep)."""

from __future__ import annotations

import dataclasses
import os
import time

import pytest
import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.group import deepspeed_config, policy_deepspeed_config
from actors.rollout import (
    RolloutEngines,
    RolloutWorker,
    SleepCycle,
    engine_dtype,
    engine_kwargs,
    engine_sleep_level,
    rollout_placement,
)
from rlaif.config import ConfigError, load_config
from rlaif.config.placement import (
    colocated_bundles,
    colocated_gpu_share,
    colocated_roles,
    engine_actor_gpus,
    engine_bundle_indices,
    engine_bundles,
    engine_env,
    local_cuda_device,
    role_plan,
)

from .conftest import REPO

GPU = REPO / "configs/gpu.yaml"
TP2 = ["rollout.num_engines=2", "rollout.tensor_parallel_size=2", "ray.gpus_per_rollout=2"]
# Shares of one GPU that add up to 1 in bundle 0: policy 0.5 + engine 0.3 + reference 0.1 + labeler 0.1
COLOC = ["ray.colocate=true", "ray.gpus_per_policy_rank=0.5", "ray.gpus_per_rollout=0.3", "ray.gpus_per_aux=0.1"]


# -- tensor parallelism: bundles, environment, vLLM arguments --

def test_tp_engines_get_single_gpu_bundles_and_their_own_bundle_indices():
    """Bug caught: one bundle of tp GPUs per engine (vLLM: "Placement group bundle cannot have more than 1 GPU"), an
    engine actor holding the GPUs its TP workers need, or engines naming each other's bundles (without
    VLLM_RAY_BUNDLE_INDICES vLLM takes the group's first GPU bundles, the same ones for every engine)."""
    assert engine_bundles(2, 2, 2) == [{"CPU": 1, "GPU": 1}, {"GPU": 1}, {"CPU": 1, "GPU": 1}, {"GPU": 1}]
    assert [engine_bundle_indices(i, 2) for i in range(2)] == [[0, 1], [2, 3]]
    assert engine_actor_gpus(2, 2) == 0.0
    assert engine_env(2, 1, in_placement_group=True) == {"VLLM_RAY_BUNDLE_INDICES": "2,3",
                                                         "VLLM_RAY_PER_WORKER_GPUS": "1"}
    # outside a group (an evaluation engine) vLLM makes its own group of tp bundles: naming ours would be wrong
    assert engine_env(2, 0, in_placement_group=False) == {}


def test_tp1_placement_is_unchanged():
    """Bug caught: the TP > 1 path leaking into TP 1 (the engine actor losing its GPU share, or a Ray backend)."""
    assert engine_bundles(3, 1, 0.5) == [{"CPU": 1, "GPU": 0.5}] * 3
    assert engine_bundles(2, 1, 0) == [{"CPU": 1}] * 2  # CPU runs
    assert engine_actor_gpus(1, 0.5) == 0.5 and engine_env(1, 0, True) == {}
    kw = engine_kwargs(load_config(GPU), "rl")
    assert "distributed_executor_backend" not in kw and kw["tensor_parallel_size"] == 1
    assert kw["gpu_memory_utilization"] == 0.5 and "enable_sleep_mode" not in kw


def test_vllm_arguments_per_device_tp_and_sleep_mode():
    """Bug caught: TP > 1 without distributed_executor_backend="ray" (vLLM then looks for tp GPUs visible to the
    engine actor: "World size ... larger than the number of available GPUs"), sleep mode asked of vLLM on CPU, or a
    sleep level that never turns on vLLM's sleep-mode allocator."""
    kw = engine_kwargs(load_config(GPU, TP2), "rl")
    assert kw["distributed_executor_backend"] == "ray" and kw["tensor_parallel_size"] == 2
    sleepy = load_config(GPU, [*COLOC, "rollout.sleep_level=2"])
    assert engine_kwargs(sleepy, "rl")["enable_sleep_mode"] is True and engine_sleep_level(sleepy) == 2
    cpu = engine_kwargs(load_config(REPO / "configs/debug.yaml"), "sl-cai")
    assert cpu["enable_chunked_prefill"] is False and "gpu_memory_utilization" not in cpu
    assert "enable_sleep_mode" not in cpu and "distributed_executor_backend" not in cpu
    assert cpu["max_model_len"] == load_config(REPO / "configs/debug.yaml").sl_cai.max_context_tokens


def test_vllm_serves_the_policy_in_the_precision_deepspeed_trains_it(monkeypatch):
    """Bug caught: the engine's dtype read from policy.model.dtype alone, so a policy DeepSpeed trains in bf16 is
    served in fp32 (synced bf16 weights upcast, the sampler's log-probs at another precision than the trainer's)."""
    bf16 = load_config(GPU)
    assert policy_deepspeed_config(bf16)["bf16"]["enabled"] and engine_dtype(bf16) == "bfloat16"
    fp32 = load_config(REPO / "configs/debug.yaml", ["policy.model.dtype=float32"])
    assert not policy_deepspeed_config(fp32)["bf16"]["enabled"] and engine_dtype(fp32) == "float32"
    # bf16 training turned on by the DeepSpeed config while policy.model.dtype says float32
    import actors.rollout

    monkeypatch.setattr(actors.rollout, "policy_deepspeed_config",
                        lambda cfg: deepspeed_config(2, 4, 1, 1.0, "bfloat16"))
    assert fp32.policy.model.dtype == "float32" and engine_dtype(fp32) == "bfloat16"
    assert engine_kwargs(fp32, "rl")["dtype"] == "bfloat16"


# -- config checks --

@pytest.mark.parametrize("overrides, error", [
    (["rollout.tensor_parallel_size=2"], r"^ray\.gpus_per_rollout: an engine with rollout\.tensor_parallel_size = 2 "
                                         r"uses 2 GPUs .*set ray\.gpus_per_rollout = 2, got 1$"),
    (["ray.gpus_per_rollout=2"], r"^ray\.gpus_per_rollout: .*tensor_parallel_size = 1 .*must be in \(0, 1\], got 2$"),
    (["ray.gpus_per_rollout=0"], r"^ray\.gpus_per_rollout: .*must be in \(0, 1\], got 0$"),
    ([*TP2, "ray.placement_rollout=STRICT_SPREAD"], r"^ray\.placement_rollout: STRICT_SPREAD would spread .*PACK"),
    (["ray.gpus_per_policy_rank=0.5"], r"^ray\.gpus_per_policy_rank: 0\.5 would let two of the 2 DeepSpeed ranks "
                                       r"share one GPU, which NCCL refuses"),
    (["ray.gpus_per_policy_rank=0"], r"^ray\.gpus_per_policy_rank: .*must be > 0, got 0$"),
    (["preference_model.num_ranks=2"], r"^ray\.gpus_per_aux: 0\.33 would let two of the preference model's 2 "),
    (["ray.colocate=true"], r"^ray\.colocate: the GPU of bundle 0 is asked for policy 1 \(ray\.gpus_per_policy_rank\) "
                            r"\+ rollout 1 \(ray\.gpus_per_rollout\) \+ reference 0\.33 \(ray\.gpus_per_aux\) \+ "
                            r"labeler 0\.33 \(ray\.gpus_per_aux\) = 2\.66 GPUs, more than the one GPU"),
    (["rollout.sleep_level=1"], r"^rollout\.sleep_level: .*needs ray\.colocate=true"),
    ([*COLOC, "rollout.sleep_level=1", "trainer.async=true"], r"^rollout\.sleep_level: .*trainer\.async"),
    ([*COLOC, "rollout.sleep_level=3"], r"^rollout\.sleep_level: must be in \[0, 2\], got 3$"),
    (["policy.offload_param=true"], r"^policy\.offload_param: .*needs policy\.zero_stage 3, got 2$"),
    (["policy.zero_stage=0", "policy.offload_optimizer=true"], r"^policy\.offload_optimizer: needs ZeRO"),
])
def test_gpu_configs_that_cannot_start_or_fit_are_refused(overrides, error):
    """Bug caught (each row): a run accepted that fails only on the cluster: TP not tied to the engine's GPUs, TP
    workers spread over nodes, two NCCL ranks on one GPU, configs/gpu.yaml + ray.colocate=true asking 2.66 GPUs of
    bundle 0 (accepted before, and called valid by a test), a sleep level that does nothing or cannot work, offload
    of parameters ZeRO-3 does not partition."""
    with pytest.raises(ConfigError, match=error):
        load_config(GPU, overrides)


def test_cpu_refuses_sleep_mode_and_offload_and_fitting_gpu_configs_load():
    """Bug caught: vLLM's sleep mode or ZeRO-Offload accepted on CPU, where vLLM cannot sleep and there is nothing to
    offload; or the checks refusing configs that do fit."""
    with pytest.raises(ConfigError, match=r"^rollout\.sleep_level: vLLM's sleep mode needs device cuda .*allowed on "
                                          r"cpu: 0, got 1$"):
        load_config(REPO / "configs/debug.yaml", ["ray.colocate=true", "rollout.sleep_level=1"])
    with pytest.raises(ConfigError, match=r"^policy\.offload_optimizer: ZeRO-Offload moves"):
        load_config(REPO / "configs/debug.yaml", ["policy.offload_optimizer=true"])
    cfg = load_config(GPU, [*COLOC, "rollout.sleep_level=2", "policy.zero_stage=3", "policy.offload_optimizer=true",
                            "policy.offload_param=true"])
    assert colocated_gpu_share(role_plan(cfg, "rl")) == (pytest.approx(1.0),
                                                         ["policy", "rollout", "reference", "labeler"])
    assert load_config(GPU, TP2).rollout.tensor_parallel_size == 2
    assert load_config(GPU, ["ray.gpus_per_policy_rank=0.5", "policy.num_ranks=1", "rl.prompts_per_step=16"])


def test_deepspeed_config_carries_the_offload_keys_deepspeed_reads():
    """Bug caught: policy.offload_* accepted but never reaching DeepSpeed's zero_optimization section (or in a form
    DeepSpeed's own config parser does not read as CPU offload)."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    cfg = load_config(GPU, ["policy.zero_stage=3", "policy.offload_optimizer=true", "policy.offload_param=true"])
    zero = policy_deepspeed_config(cfg)["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    parsed = DeepSpeedZeroConfig(**zero)
    assert parsed.offload_optimizer.device == "cpu" and parsed.offload_param.device == "cpu" and parsed.stage == 3
    plain = policy_deepspeed_config(load_config(GPU))["zero_optimization"]
    assert "offload_optimizer" not in plain and "offload_param" not in plain


# -- colocation and DeepSpeed ranks' devices --

def test_colocated_bundles_hold_one_whole_gpu_each_on_cuda():
    """Bug caught: a colocated bundle asking only its summed fractions (0.4 here), so Ray may put two bundles, and
    with them two policy ranks of one NCCL group, on one GPU."""
    cfg = load_config(GPU, ["ray.colocate=true", "ray.gpus_per_policy_rank=0.2", "ray.gpus_per_rollout=0.2",
                            "ray.gpus_per_aux=0.1", "rollout.num_engines=2"])
    plan = role_plan(cfg, "rl")
    assert colocated_bundles(plan, "cuda") == [{"CPU": 4, "GPU": 1.0}, {"CPU": 2, "GPU": 1.0}]
    cpu = load_config(REPO / "configs/debug.yaml", ["ray.colocate=true", "policy.num_ranks=2"])
    assert colocated_bundles(role_plan(cpu, "rl"), "cpu") == [{"CPU": 4}, {"CPU": 1}]  # one engine: bundle 0


def test_local_cuda_device_comes_from_the_gpu_ray_gave():
    """Bug caught: `rank % device_count()`: where Ray does not set CUDA_VISIBLE_DEVICES (RAY_EXPERIMENTAL_NOSET_...)
    rank 0 of every group (policy, critic, preference model) lands on GPU 0 whatever GPU Ray reserved for it."""
    assert local_cuda_device(["3"], "3") == 0  # Ray's usual: the actor sees only its GPU
    assert local_cuda_device([3], "2,3") == 1
    assert local_cuda_device(["5"], None) == 5  # NOSET: all GPUs visible, use the physical id
    with pytest.raises(RuntimeError, match="no GPU"):
        local_cuda_device([], "0")
    with pytest.raises(RuntimeError, match="does not show"):
        local_cuda_device(["1"], "2,3")


# -- sleep/wake order --

class Recorder:
    """What SleepCycle calls on every engine."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, method: str, kwargs: dict) -> None:
        self.calls.append((method, *kwargs.values()))


def test_sleep_cycle_orders_sleep_weights_sync_and_kv_cache():
    """Bug caught: engines generating while asleep, the KV cache woken before the new weights are in (its memory is
    what the weight sync needs free), sleeping twice, or a level-2 engine (weights discarded) generating before a
    sync refilled its weights."""
    rec = Recorder()
    cycle = SleepCycle(1, rec)
    cycle.wake()  # awake already: nothing
    cycle.sleep()
    cycle.sleep()
    cycle.wake_weights()
    cycle.wake()
    cycle.wake()
    assert rec.calls == [("sleep", 1), ("wake_up", ["weights"]), ("wake_up", None)]
    level1 = SleepCycle(1, Recorder())
    level1.sleep()
    level1.wake()  # level 1 kept the weights in CPU memory: generating again without a sync is correct
    assert level1.call.calls == [("sleep", 1), ("wake_up", None)]
    level2 = SleepCycle(2, Recorder())
    level2.sleep()
    with pytest.raises(RuntimeError, match="sleep_level=2 discarded the engines' weights"):
        level2.wake()
    off = SleepCycle(0, Recorder())
    off.sleep(), off.wake_weights(), off.wake()
    assert off.call.calls == []


def test_an_engine_recovered_inside_a_sleep_call_finds_the_state_already_recorded():
    """Bug caught: the state recorded after the call: an engine restarted during `sleep` is synced (recover wakes
    the weights through the cycle) while the cycle still says "awake", so the sync would write into sleeping
    engines' unmapped weights."""
    calls = []
    cycle = SleepCycle(1, lambda method, kwargs: (calls.append(method),
                                                  method == "sleep" and cycle.wake_weights()))
    cycle.sleep()  # an engine died in it: recovery syncs the weights, waking them on every engine
    assert calls == ["sleep", "wake_up"] and cycle.state == "weights"
    cycle.wake()
    assert calls == ["sleep", "wake_up", "wake_up"] and cycle.state == "awake"


# -- on a local Ray whose node declares 4 GPUs --

@pytest.fixture(scope="module")
def gpu_ray(tiny_path):
    ray.init(address="local", num_cpus=8, num_gpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="ERROR")
    yield
    ray.shutdown()


class ProbeEngine(RolloutWorker):
    """A rollout engine up to vLLM's start: records vLLM's arguments instead, and then does with its environment
    what vLLM 0.32's Ray executor does (ray_executor_v2.py: VLLM_RAY_BUNDLE_INDICES resolved by
    get_bundles_for_indices, one worker per TP rank asking VLLM_RAY_PER_WORKER_GPUS GPUs of its bundle)."""

    def start_engine(self, kwargs: dict) -> None:
        self.kwargs = kwargs

    def report(self) -> dict:
        import vllm.envs as envs
        from vllm.v1.executor.ray_utils import get_bundles_for_indices

        pg = ray.util.get_current_placement_group()
        world = self.kwargs["tensor_parallel_size"]
        # vLLM's initialize_ray_cluster refuses these before starting a worker
        assert all(b.get("GPU", 0) <= 1 for b in pg.bundle_specs), "a bundle holds more than one GPU"
        bundles = get_bundles_for_indices(pg, [int(i) for i in envs.VLLM_RAY_BUNDLE_INDICES.split(",")], world)

        @ray.remote
        def worker() -> list:
            return ray.get_gpu_ids()

        strategies = [PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=b) for b, _, _ in bundles]
        workers = [worker.options(num_cpus=0, num_gpus=envs.VLLM_RAY_PER_WORKER_GPUS, scheduling_strategy=s).remote()
                   for s in strategies]
        return {"kwargs": self.kwargs, "indices": envs.VLLM_RAY_BUNDLE_INDICES, "own_gpus": ray.get_gpu_ids(),
                "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "pg": pg.id.hex(),
                "worker_gpus": ray.get(workers, timeout=30)}


@pytest.mark.e2e
def test_two_tp2_engines_place_their_workers_on_four_distinct_gpus(gpu_ray):
    """2 engines x TP 2 on 4 declared GPUs. Bug caught: engines sharing bundles (both would get GPUs of bundles 0, 1,
    and engine 1's workers could not be placed), the engine actor holding a GPU its worker then waits for for ever,
    a bundle vLLM refuses, or the engine not finding its group (vLLM would create another, asking for 4 more GPUs)."""
    cfg = load_config(GPU, TP2)
    pg, strategies = rollout_placement(cfg)
    engines = None
    try:
        ray.get(pg.ready(), timeout=30)
        assert pg.bundle_specs == [{"CPU": 1, "GPU": 1}, {"GPU": 1}, {"CPU": 1, "GPU": 1}, {"GPU": 1}]
        engines = RolloutEngines(cfg, cfg.ray.gpus_per_rollout, 60, "rl", 0, strategies, worker_cls=ProbeEngine)
        reports = ray.get([e.report.remote() for e in engines.actors], timeout=60)
    finally:
        for e in engines.actors if engines else []:
            ray.kill(e)
        ray.util.remove_placement_group(pg)
    assert [r["indices"] for r in reports] == ["0,1", "2,3"]
    assert all(r["own_gpus"] == [] and r["pg"] == pg.id.hex() for r in reports)  # the engine actor holds no GPU
    assert all(r["visible"] is None for r in reports)  # vLLM picks the workers' GPUs itself
    assert all(r["kwargs"]["distributed_executor_backend"] == "ray" for r in reports)
    gpus = [g for r in reports for w in r["worker_gpus"] for g in w]
    assert len(gpus) == 4 and len(set(gpus)) == 4, reports


@pytest.mark.e2e
def test_colocated_ranks_get_distinct_gpus_and_share_theirs_with_their_engine(gpu_ray):
    """Bug caught: colocated bundles of summed fractions (0.4 and 0.6 here), which Ray may put on one GPU: two policy
    ranks of one NCCL group then share it. Each bundle must be one GPU, its roles' fractions all on it."""
    cfg = load_config(GPU, ["ray.colocate=true", "ray.gpus_per_policy_rank=0.2", "ray.gpus_per_rollout=0.2",
                            "ray.gpus_per_aux=0.1", "rollout.num_engines=2"])
    plan = role_plan(cfg, "rl")
    pg = ray.util.placement_group(colocated_bundles(plan, cfg.device), strategy="PACK")

    @ray.remote
    def gpu_of() -> list:
        return ray.get_gpu_ids()

    def into(i: int) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)

    try:
        ray.get(pg.ready(), timeout=30)
        where = [[gpu_of.options(num_cpus=0, num_gpus=plan[role][1], scheduling_strategy=into(i)).remote()
                  for role in roles] for i, roles in enumerate(colocated_roles(plan))]
        gpus = [[g for ids in ray.get(refs, timeout=30) for g in ids] for refs in where]
    finally:
        ray.util.remove_placement_group(pg)
    assert [len(set(g)) for g in gpus] == [1, 1], gpus  # every role of a bundle on the bundle's one GPU
    assert gpus[0][0] != gpus[1][0], gpus  # policy ranks 0 and 1 on different GPUs


@pytest.mark.e2e
def test_ranks_find_their_own_gpu_where_ray_leaves_the_devices_visible(gpu_ray):
    """Two 1-GPU ranks under RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES. Bug caught: `rank % device_count()` (0 for
    both here: no CUDA device on this machine, and on a GPU node it ignores which GPU Ray reserved)."""
    @ray.remote(num_gpus=1, runtime_env={"env_vars": {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}})
    def device() -> tuple:
        return ray.get_gpu_ids(), local_cuda_device(ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"))

    @ray.remote(num_gpus=1)
    def device_default() -> int:
        return local_cuda_device(ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"))

    (ids0, d0), (ids1, d1) = ray.get([device.remote(), device.remote()], timeout=60)
    assert {d0, d1} == {int(ids0[0]), int(ids1[0])} and d0 != d1
    assert ray.get(device_default.remote(), timeout=60) == 0  # Ray's usual: only the actor's GPU is visible


class SleepyEngine:
    """A rollout engine that records the calls vLLM's LLM.sleep / wake_up and the weight sync would get."""

    def __init__(self, cfg, stage: str, index: int) -> None:
        self.log: list = []

    def sleep(self, level: int) -> None:
        self.log.append(("sleep", level))

    def wake_up(self, tags=None) -> None:
        self.log.append(("wake_up", tags))

    def receive(self) -> None:
        self.log.append("receive_weights")

    def chat(self, conversations, seeds, temperature, max_new_tokens) -> dict:
        self.log.append("generate")
        return {"replies": ["ok"] * len(conversations), "truncated": 0, "max_tokens": 1}

    def calls(self) -> list:
        return self.log


@pytest.mark.e2e
def test_rl_loop_order_sleep_update_wake_weights_sync_wake_generate(gpu_ray):
    """Through RolloutEngines and Roles.sync as the RL loop calls them (rl_step: sleep; Roles.sync; the next
    generation). Bug caught: a sync into sleeping engines, generation on engines still asleep, or no sleep at all."""
    from actors.roles import Roles

    cfg = load_config(GPU, [*COLOC, "rollout.sleep_level=1", "rollout.num_engines=1"])
    engines = RolloutEngines(cfg, cfg.ray.gpus_per_rollout, 60, "rl", 0, None, worker_cls=SleepyEngine)
    roles = object.__new__(Roles)  # the sync alone: no policy ranks; the weights go by a recording stand-in
    roles.rollout, roles.weight_version = engines, 0
    roles.sync_weights = lambda version: ray.get([e.receive.remote() for e in engines.actors]) and {}
    try:
        engines.sleep()  # rl_step, before scoring and the update
        roles.sync(1)
        engines.chat([[{"role": "user", "content": "hi"}]], 0, 1.0, 4)
        engines.chat([[{"role": "user", "content": "hi"}]], 1, 1.0, 4)
        log = ray.get(engines.actors[0].calls.remote(), timeout=30)
    finally:
        for e in engines.actors:
            ray.kill(e)
    assert log == [("sleep", 1), ("wake_up", ["weights"]), "receive_weights", ("wake_up", None), "generate",
                   "generate"]
    plain = dataclasses.replace(cfg, ray=dataclasses.replace(cfg.ray, colocate=False))
    assert engine_sleep_level(plain) == 0  # not colocated: nothing to free the GPU for


class Timed:
    """A stand-in for a role's actor: when its constructor ran and which GPU Ray gave it."""

    def __init__(self, *args) -> None:
        self.start = time.time()
        time.sleep(0.3)  # a model load
        self.ready = time.time()

    def setup_distributed(self, *args) -> None:  # a DeepSpeed rank loads its model here (ActorGroup waits for it)
        self.start = time.time()
        time.sleep(0.3)
        self.ready = time.time()

    def info(self) -> tuple:
        return self.start, self.ready, ray.get_gpu_ids()


class TimedLabeler(Timed):
    """The labeler starts its vLLM in load(), which Roles calls as soon as the actor exists (a model judge)."""

    def __init__(self, *args) -> None:
        self.start = self.ready = 0.0

    def load(self) -> None:
        Timed.__init__(self)


@pytest.mark.e2e
def test_colocated_engines_start_after_the_ranks_on_their_gpu_one_vllm_at_a_time(gpu_ray, monkeypatch):
    """Roles with ray.colocate=true on cuda, its actors replaced by stand-ins. Bug caught: the engines (and the
    labeler's vLLM) starting before the policy ranks that share their GPU have loaded, or at the same time as each
    other: vLLM sizes its KV cache from the memory free when it starts; or colocated roles not on their rank's GPU."""
    import actors.roles
    import actors.rollout

    for name in ("PolicyWorker", "CriticWorker", "ReferenceWorker"):
        monkeypatch.setattr(actors.roles, name, Timed)
    monkeypatch.setattr(actors.roles, "LabelerWorker", TimedLabeler)
    monkeypatch.setattr(actors.rollout, "RolloutWorker", Timed)
    monkeypatch.setattr(actors.roles, "WeightSync", lambda *args: None)
    cfg = load_config(GPU, [*COLOC, "trainer.timeout_s=60"])
    roles = actors.roles.Roles(cfg, "rl")
    try:
        def info(actor) -> tuple:
            return ray.get((actor.actor if hasattr(actor, "roles") else actor).info.remote(), timeout=30)

        ranks = [info(a) for a in roles.policy.actors]
        engine, reference, labeler = info(roles.rollout.actors[0]), info(roles.reference), info(roles.labeler)
    finally:
        roles.shutdown()
    assert engine[0] >= max(r[1] for r in ranks)  # after every rank loaded
    assert reference[0] >= engine[1] and labeler[0] >= reference[1]  # one at a time, the labeler's vLLM last
    assert engine[2] == reference[2] == labeler[2] == ranks[0][2] != ranks[1][2]
