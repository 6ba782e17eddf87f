"""`rlaif plan` (rlaif/run/plan.py): model states against DeepSpeed's own estimators, activations against the measured
CPU peak of a forward + backward, placements of the 7B and 70B configs on 1, 2 and 4 nodes of 8 GPUs (the planner's
node model, and Ray's own scheduler on a cluster whose nodes declare GPUs), refusals that name the keys."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rlaif.cli import main
from rlaif.config import ConfigError, load_config
from rlaif.run import plan, shapes
from tests.conftest import REPO

C7, C70 = str(REPO / "configs/llama-7b-1node.yaml"), str(REPO / "configs/llama-70b-4nodes.yaml")
GIB = 1 << 30


def tiny_llama(**over) -> dict:
    return {"model_type": "llama", "vocab_size": 2048, "hidden_size": 256, "intermediate_size": 768,
            "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4, "tie_word_embeddings": False,
            **over}


# -- model shapes and model states ----------------------------------------------------------------------------

@pytest.mark.parametrize("config", [tiny_llama(), tiny_llama(tie_word_embeddings=True),
                                    shapes._builtin_shapes()["builtin:smollm2-135m"]])
def test_parameter_count_matches_the_built_model(config):
    """Catches a wrong per-layer count (GQA's k/v width, the gated MLP's third matrix, a tied head counted twice):
    the count from config.json alone must equal the numel of the model transformers builds from it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf)
    shape = shapes.ModelShape.from_config("t", config)
    assert shape.params() == sum(p.numel() for p in model.parameters())


def test_public_llama_sizes():
    """The shipped shapes are the public architectures: Llama-2-7B has 6,738,415,616 parameters and Llama-2-70B
    68,976,648,192 (their safetensors index totals); a typo in model_shapes.json changes these."""
    assert shapes.model_shape("policy.model.path", "meta-llama/Llama-2-7b-hf").params() == 6_738_415_616
    assert shapes.model_shape("policy.model.path", "meta-llama/Llama-2-70b-hf").params() == 68_976_648_192
    with pytest.raises(ConfigError, match="policy.model.path: cannot size 'nobody/nothing'"):
        shapes.model_shape("policy.model.path", "nobody/nothing")


@pytest.mark.parametrize("nodes,gpus", [(1, 1), (1, 8), (2, 8), (4, 8)])
def test_model_states_match_deepspeed_estimators(nodes, gpus):
    """bf16 ZeRO-2 and ZeRO-3 (with and without offload) GPU bytes per rank equal DeepSpeed's own estimators
    (deepspeed.runtime.zero.*.estimate_zero{2,3}_model_states_mem_needs): a wrong partition divisor or byte count
    per parameter (e.g. splitting the 16-bit weights at stage 2) fails here."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    shape = shapes.model_shape("policy.model.path", "meta-llama/Llama-2-7b-hf")
    p, big, ranks = shape.params(), shape.largest_layer, nodes * gpus
    for offload in (False, True):
        mine = sum(plan.zero_states(p, 2, ranks, True, offload_optimizer=offload).values())
        _, theirs = estimate_zero2_model_states_mem_needs(p, gpus, nodes, cpu_offload=offload)
        assert abs(mine - theirs) <= 64, (offload, mine, theirs)
    for opt, par in ((False, False), (True, False), (True, True)):
        mine = sum(plan.zero_states(p, 3, ranks, True, opt, par, largest_layer=big).values())
        _, theirs, _ = estimate_zero3_model_states_mem_needs(p, big, gpus, nodes, cpu_offload=opt,
                                                             cpu_offload_params=par)
        assert abs(mine - theirs) <= 64, (opt, par, mine, theirs)


def test_model_states_shrink_with_stage_and_ranks():
    """Each ZeRO stage partitions more: 0 >= 1 >= 2 >= 3 per rank on 8 ranks, and one rank partitions nothing."""
    p = 10**9
    per_stage = [sum(plan.zero_states(p, s, 8, True).values()) for s in range(4)]
    assert per_stage == sorted(per_stage, reverse=True) and len(set(per_stage)) == 4
    assert sum(plan.zero_states(p, 0, 1, True).values()) == 20 * p  # 2 + 6 + 12 bytes per parameter


@pytest.mark.parametrize("targets", [["all-linear"], ["q_proj", "v_proj"], ["all-linear", "lm_head"], ["down_proj"]])
def test_lora_parameter_count_matches_peft(targets):
    """The adapters' count from config.json alone equals the trainable parameters peft injects through rlaif's own
    apply_lora (the same names): a wrong in/out width (GQA's k/v, the MLP's down_proj transposed), a missed gate_proj
    or lm_head's adapter not counted fails here."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlaif.config.schema import LoRAConfig
    from rlaif.rl.lora import apply_lora

    config = tiny_llama()
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    apply_lora(model, LoRAConfig(rank=8, alpha=16, target_modules=targets), "policy.lora")
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert shapes.ModelShape.from_config("t", config).lora_params(8, targets) == trained


def test_lora_plan_holds_adapter_states_and_a_frozen_base():
    """Llama-2-7B, rank 16 on all linear layers: 39,976,960 adapter parameters (the count peft prints for this
    model and setting). Per rank, ZeRO-2 x4 bf16: the adapters' 2 + 16 bytes split as DeepSpeed splits them, plus
    the frozen base's 2 bytes a parameter whole (split 4 ways at ZeRO-3); no reference actor (the policy with its
    adapters off). Bugs caught: full-model optimizer states kept under LoRA (7B: 20 bytes x 6.7e9 = 126 GiB a
    rank), the frozen base left out, a reference still planned."""
    shape = shapes.model_shape("policy.model.path", "meta-llama/Llama-2-7b-hf")
    assert shape.lora_params(16, ["all-linear"]) == 39_976_960
    lora = ["policy.lora.rank=16", "policy.num_ranks=4", "rl.kl_coef=0.05"]
    for stage, split in ((2, 1), (3, 4)):
        cfg = load_config(C7, [*lora, f"policy.zero_stage={stage}", "policy.offload_optimizer=false"])
        (p,) = plan.make_plans(cfg, 1, 8)
        rank = next(a for a in p.actors if a.name == "policy.0")
        expected = {k: v for k, v in plan.zero_states(39_976_960, stage, 4, True,
                                                      largest_layer=shape.largest_layer).items() if v}
        assert {k: v for k, v in rank.train.items() if k not in ("CUDA context", "activations")} == \
            {**expected, "frozen weights": 2 * shape.params() // split}
        assert not [a for a in p.actors if a.role == "reference"] and not plan.problems(p)
    full = load_config(C7, ["policy.num_ranks=1", "policy.zero_stage=0", "policy.offload_optimizer=false"])
    with pytest.raises(ConfigError, match="policy"):  # one 80 GiB GPU: a full 7B fine-tune does not fit; LoRA does
        plan.check(full, 1, 8)
    plan.check(load_config(C7, ["policy.num_ranks=1", "policy.zero_stage=0", "policy.offload_optimizer=false",
                                "policy.lora.rank=16", "policy.gradient_checkpointing=true"]), 1, 8)


def test_a_reward_model_is_planned_as_a_scorer_of_its_own_size():
    """With rl.reward_model the preference-model role serves that model forward only (no DeepSpeed states), sized
    from its own config.json: a 70B reward model beside a 7B policy needs 70B's weights, not the 7B's."""
    cfg = load_config(C7, ["rl.reward_model=meta-llama/Llama-2-70b-hf"])
    (p,) = plan.make_plans(cfg, 1, 8)
    scorer = next(a for a in p.actors if a.role == "preference_model")
    rm = shapes.model_shape("rl.reward_model", "meta-llama/Llama-2-70b-hf")
    assert scorer.train["weights"] == rm.params(lm_head=False) * 2 and "optimizer" not in scorer.train
    assert any("preference_model" in msg for msg in plan.problems(p))  # 128 GiB of weights on one GPU


# -- activations against a measured CPU peak --------------------------------------------------------------------

def measured_peak(fn) -> int:
    """Peak bytes the CPU allocator held during fn(), from torch's profiler memory events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    now = peak = 0
    for e in events:
        now += e.nbytes()
        peak = max(peak, now)
    return peak


@pytest.mark.parametrize("name,config,dtype,ckpt,b,length", [
    ("tiny", tiny_llama(), torch.float32, False, 4, 256),
    ("tiny", tiny_llama(), torch.float32, True, 4, 256),
    ("tiny", tiny_llama(), torch.bfloat16, False, 4, 256),
    ("tiny", tiny_llama(), torch.bfloat16, True, 4, 256),
    ("smollm2", shapes._builtin_shapes()["builtin:smollm2-135m"], torch.float32, False, 2, 64),
])
def test_activation_estimate_against_measured_peak(name, config, dtype, ckpt, b, length):
    """The planner's activations (+ the gradients backward allocates) against the peak the CPU allocator held during
    one packed forward + backward as the policy runs it (response positions only through the LM head): within a
    factor of 1.3 either way (measured 0.89-0.99). Ignoring gradient checkpointing (2-8x too much), dropping the
    MLP's four intermediate tensors or the logits fails this."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device("meta"):  # no initialisers: SmolLM2's take most of this test's time on 2 cores
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=dtype)
    model = model.to_empty(device="cpu").train()
    model.tie_weights()  # to_empty gives the tied head a storage of its own
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    if ckpt:
        model.gradient_checkpointing_enable()
    resp = length // 4
    ids = torch.randint(0, config["vocab_size"], (1, b * length))
    pos = torch.arange(length).repeat(b)[None]
    keep = torch.cat([torch.arange(i * length + length - resp - 1, i * length + length - 1) for i in range(b)])

    def step() -> None:
        hidden = model.model(input_ids=ids, position_ids=pos).last_hidden_state[0, keep]
        logp = torch.log_softmax(model.lm_head(hidden).float(), -1).gather(-1, ids[0, keep + 1, None])
        logp.mean().backward()

    measured = measured_peak(step)
    shape = shapes.ModelShape.from_config(name, config)
    d = plan.BYTES[str(dtype).removeprefix("torch.")]
    estimate = shape.activation_bytes(b * length, b * resp, d, ckpt) + shape.params() * d  # + the gradients
    print(f"{name} {dtype} checkpointing={ckpt}: measured/estimated peak {measured / estimate:.2f}")
    assert 1 / 1.3 <= measured / estimate <= 1.3, (measured, estimate)


# -- placements and verdicts, planner only ----------------------------------------------------------------------

def summary(p: plan.Plan) -> dict[str, int]:
    return {"placed": sum(a.node >= 0 for a in p.actors), "actors": len(p.actors), "unplaced": len(p.unplaced)}


@pytest.mark.parametrize("config,nodes,fits", [(C7, 1, True), (C7, 2, True), (C7, 4, True),
                                               (C70, 1, False), (C70, 2, False), (C70, 4, True)])
def test_placements_of_7b_and_70b(config, nodes, fits):
    """The shipped configs on 1, 2 and 4 nodes of 8 GPUs of 80 GiB: the 7B fits one node (and more), the 70B needs
    all four (32 GPUs); no GPU is given more than 1.0 and every GPU's memory is within 80 GiB when it fits."""
    cfg = load_config(config)
    (p,) = plan.make_plans(cfg, nodes, 8)
    per_gpu: dict[tuple[int, int], float] = {}
    for a in p.actors:
        for g in a.gpus:
            per_gpu[(a.node, g)] = per_gpu.get((a.node, g), 0.0) + min(a.gpu, 1.0)
    assert all(v <= 1 + 1e-9 for v in per_gpu.values())
    assert (plan.problems(p) == []) is fits, plan.problems(p)
    if fits:
        assert summary(p) == {"placed": len(p.actors), "actors": len(p.actors), "unplaced": 0}
        assert max([*p.usage("train").values(), *p.usage("generate").values()]) <= 80 * GIB
        plan.check(cfg, nodes, 8)
    else:
        assert any("policy" in u for u in p.unplaced)
        with pytest.raises(ConfigError, match="Ray cannot place policy .*ray.plan_nodes"):
            plan.check(cfg, nodes, 8)


@pytest.mark.parametrize("over,keys", [
    (["policy.zero_stage=0"], "change policy.zero_stage, policy.num_ranks, policy.offload_optimizer"),
    (["rollout.gpu_memory_utilization=0.1"], "raise rollout.gpu_memory_utilization or rollout.tensor_parallel_size"),
    (["ray.gpus_per_aux=0.33"], "ray.gpus_per_aux"),
    (["policy.gradient_checkpointing=false", "policy.micro_batch_size=16", "rl.prompts_per_step=128"],
     "policy.micro_batch_size"),
])
def test_refusals_name_the_keys(over, keys):
    """A plan that cannot fit is refused in one line naming the keys to change: ZeRO-0 on 4 ranks of a 7B (128
    GiB a GPU), a vLLM share too small for its weights, three fractional actors that can meet on one GPU, and
    activations of 16 x 1024 tokens without checkpointing."""
    with pytest.raises(ConfigError) as err:
        plan.check(load_config(C7, over))
    assert keys in str(err.value) and "\n" not in str(err.value)


def test_colocated_bundles_share_one_gpu():
    """ray.colocate=true: policy rank i, engine i and (bundle 0) the reference and the labeler share bundle i's
    GPU, as rlaif.config.placement lays them out; the preference model gets its own group. A bundle over one GPU that is
    not a whole number (configs/gpu.yaml colocated asked 2.66) is one Ray refuses: so does the planner's model."""
    fractions = ["ray.gpus_per_policy_rank=0.4", "ray.gpus_per_rollout=0.4", "ray.gpus_per_aux=0.1"]
    (p,) = plan.check(load_config(REPO / "configs/gpu.yaml", ["ray.colocate=true", *fractions]))
    on = {a.name: (a.node, a.gpus) for a in p.actors}
    assert {k for k, v in on.items() if v == on["policy.0"]} == {"policy.0", "rollout.0", "reference", "labeler"}
    assert on["policy.1"] != on["policy.0"] and on["preference_model.0"] not in (on["policy.0"], on["policy.1"])
    slept = plan.check(load_config(REPO / "configs/gpu.yaml", ["ray.colocate=true", "rollout.sleep_level=1",
                                                                *fractions]))[0].usage("train")
    engine = next(a for a in p.actors if a.name == "rollout.0")
    # a sleeping engine keeps only its CUDA context while the ranks train (ignoring rollout.sleep_level fails this)
    assert p.usage("train")[(0, 0)] - slept[(0, 0)] == sum(engine.train.values()) - plan.CONTEXT_BYTES
    assert plan.Cluster(1, 8).place_group([2.66, 1.0], "PACK") is None
    assert plan.Cluster(1, 8).place_group([2.0, 1.0], "PACK") == [(0, (0, 1)), (0, (2,))]


def test_tensor_parallel_engines_take_single_gpu_bundles():
    """Each TP engine plans rollout.tensor_parallel_size one-GPU workers, each holding weights / TP."""
    (p,) = plan.make_plans(load_config(C70), 4, 8)
    workers = [a for a in p.actors if a.role == "rollout"]
    assert [a.name for a in workers] == [f"rollout.0.tp{i}" for i in range(4)]
    assert all(a.gpu == 1.0 for a in workers) and len({(a.node, a.gpus) for a in workers}) == 4
    full = shapes.model_shape("policy.model.path", "meta-llama/Llama-3.1-70B-Instruct").params() * 2
    assert workers[0].generate["vLLM weights"] == full // 4


def test_cli_plan(capsys):
    """`rlaif plan` prints every actor and GPU and exits 0 for the shipped configs; a plan that does not fit ends
    with one error line and exit 2; a CPU config is refused, naming `device`."""
    assert main(["plan", "--config", C7]) == 0
    out = capsys.readouterr().out
    assert "policy.0..3" in out and "node 0 GPU 3-6" in out and "the plan fits" in out
    assert main(["plan", "--config", C70]) == 0
    assert main(["plan", "--config", C70, "--nodes", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlaif: error: the plan does not fit")
    assert main(["plan", "--config", C7, "--gpu-memory-gib", "40"]) == 2
    assert main(["plan", "--config", str(REPO / "configs/debug.yaml")]) == 2
    assert "device" in capsys.readouterr().err


def test_train_on_cuda_refuses_before_ray_starts(tmp_path):
    """The same check runs where `rlaif train` validates (rlaif.run.session.prepare), before Ray starts: a local cuda
    config whose GPU is too small is refused, naming the key; removing the call from prepare fails this."""
    from rlaif.run.session import prepare

    cfg = load_config(REPO / "configs/debug.yaml", [
        "device=cuda", "ray.num_gpus=4", "ray.gpus_per_policy_rank=1", "ray.gpus_per_rollout=0.5",
        "ray.gpus_per_aux=0.25", "ray.gpu_memory_gib=0.5", f"output_dir={tmp_path / 'run'}", "wandb.mode=disabled"])
    with pytest.raises(ConfigError, match="the plan does not fit"):
        prepare(cfg, ("rl",))
    prepare(dataclasses.replace(cfg, ray=dataclasses.replace(cfg.ray, gpu_memory_gib=80.0)), ("rl",))


# -- the same placements on Ray's scheduler, nodes declaring GPUs -----------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 16, "num_gpus": 8})
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def ray_places(p: plan.Plan, probe: bool) -> tuple[set[str], dict[str, tuple[str, tuple[int, ...]]]]:
    """Create the plan's placement groups in its order on the live cluster: the groups Ray leaves pending, and (probe)
    the node and GPU ids Ray gives an actor of each planned actor's size in its bundle."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    @ray.remote(num_cpus=0)
    class Probe:
        def where(self) -> tuple[str, tuple[int, ...]]:
            return ray.get_runtime_context().get_node_id(), tuple(int(i) for i in ray.get_gpu_ids())

    by_role: dict[str, list[plan.Actor]] = {}
    for a in p.actors:
        by_role.setdefault(a.role, []).append(a)
    pgs, pending, probes = [], set(), {}
    for what, sizes, strategy in p.groups:
        pg = placement_group([{"CPU": 0.01, "GPU": g} for g in sizes], strategy=strategy)
        pgs.append(pg)
        if not pg.wait(timeout_seconds=3):
            pending.add(what)
        elif probe:
            for i, a in enumerate(by_role[what][: len(sizes)]):
                at = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)
                probes[a.name] = Probe.options(num_gpus=a.gpu, scheduling_strategy=at).remote()
    where = {name: ray.get(h.where.remote(), timeout=60) for name, h in probes.items()}
    for pg in pgs:
        remove_placement_group(pg)
    return pending, where


@pytest.mark.e2e
def test_ray_places_what_the_plan_places(ray_cluster):
    """On Ray's own scheduler (one module cluster, grown from 1 to 2 to 4 nodes of 8 declared GPUs): the groups the
    plan cannot place are exactly those Ray leaves pending; on one node Ray gives every actor the GPU the plan names
    (labeler and reference sharing GPU 2); on two nodes, whatever Ray shares, no GPU holds more memory than the
    plan's bound (80 GiB, fractional actors' worst case included). A planner that packs fractions differently from
    Ray, or places a group Ray cannot, fails here."""
    cases = {1: [(C7, True), (C70, False)], 2: [(C7, True), (C70, False)], 4: [(C70, False)]}
    for nodes, runs in cases.items():
        while len([n for n in ray_cluster.list_all_nodes()]) < nodes:
            ray_cluster.add_node(num_cpus=16, num_gpus=8)
        ray_cluster.wait_for_nodes()
        for config, probe in runs:
            (p,) = plan.make_plans(load_config(config), nodes, 8)
            pending, where = ray_places(p, probe)
            assert pending == {u.split(" (")[0] for u in p.unplaced}, (nodes, config, pending, p.unplaced)
            if not probe:
                continue
            if nodes == 1:
                assert {a.name: a.gpus for a in p.actors} == {n: g for n, (_, g) in where.items()}
            held: dict[tuple[str, int], int] = {}
            for a in p.actors:
                node, gpus = where[a.name]
                held[(node, gpus[0])] = held.get((node, gpus[0]), 0) + max(sum(a.train.values()),
                                                                             sum(a.generate.values()))
            assert max(held.values()) <= p.gpu_bytes


def test_readme_shows_the_current_plans():
    """The README's "Planning GPU memory" section shows what the planner prints today for both shipped configs:
    a change to the planner's arithmetic or to the configs without updating the README fails here."""
    readme = (REPO / "README.md").read_text()
    for config in (C7, C70):
        assert plan.report(plan.make_plans(load_config(config))) in readme, config
