"""`rlaif plan`: where every actor goes and how much GPU memory each GPU needs, before anything starts.

Ray-free. The placement mirrors actors/roles.py (Roles.__init__ and role_plan): the rollout engines' placement group
(rollout.tensor_parallel_size single-GPU bundles per engine), the labeler and the reference as plain fractional-GPU
actors, the policy and critic groups, and the preference model's training group, which is started while the RL roles
are up; or, with ray.colocate=true, one bundle per policy rank holding the fractions of what shares its GPU. Ray's
scheduler is modelled on a node list (n nodes of g GPUs): a bundle goes to a node by its group's strategy, then to
the GPU(s) of that node with room (whole GPUs for whole requests, the fullest GPU that fits for a fraction).

Memory per GPU, in two phases (generation, when the vLLM engines run; training, when the DeepSpeed ranks hold
activations): model states per ZeRO stage and offload as DeepSpeed's own estimators count them (2 bytes of 16-bit
weights, 18 bytes of gradients and fp32 optimizer states per parameter, partitioned by stage), activations of one
micro-batch (per layer and token, with or without gradient checkpointing), vLLM at its gpu_memory_utilization share
(weights / TP, the rest its KV cache; sleeping engines keep only their CUDA context), the labeler, the reference and
the preference model. Model shapes come from config.json alone (no weights are read); Hub ids not in the local cache
use the public architecture numbers in rlaif/assets/model_shapes.json.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from rlaif.config import Config, ConfigError
from rlaif.run.shapes import ModelShape, model_shape

GIB = 1 << 30
CONTEXT_BYTES = int(0.75 * GIB)  # CUDA context + NCCL buffers of each process using a GPU (measured ~0.5-1 GiB)
VLLM_PROFILE_TOKENS = 8192  # vLLM's profiling forward (max_num_batched_tokens) whose activations it reserves
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# -- memory of each role -------------------------------------------------------------------------------------------

def zero_states(params: int, stage: int, ranks: int, bf16: bool, offload_optimizer: bool = False,
                offload_param: bool = False, largest_layer: int = 0) -> dict[str, int]:
    """GPU bytes of weights, gradients and optimizer states of one rank. bf16 follows DeepSpeed's estimators
    (estimate_zero2/3_model_states_mem_needs): per parameter 2 bytes of 16-bit weights (whole up to stage 2), 12 of
    fp32 master weights and Adam moments (split from stage 1), gradients 2 (16-bit) + 4 (fp32) bytes, whole at
    stage 0, the 16-bit ones whole at stage 1, all split at stage 2, 4 split bytes at stage 3 (DeepSpeed's 18 bytes
    per parameter over the ranks); stage 3 adds 4 bytes per parameter of the largest layer (gather buffer).
    fp32 training: 4 bytes of weights, 4 of gradients, 8 of moments, and at stages 1-2 DeepSpeed's flat fp32 copy
    of the rank's partition. offload_optimizer moves gradients' fp32 copy and optimizer states to the CPU;
    offload_param (stage 3) the weights too."""
    n = max(ranks, 1)
    split = {0: (1, 1, 1), 1: (1, 1, n), 2: (1, n, n), 3: (n, n, n)}[stage]  # weights, gradients, optimizer divisors
    if bf16:
        weights = 2 * params // split[0]
        grads = {0: 6 * params, 1: 2 * params + 4 * params // n, 2: 6 * params // n, 3: 4 * params // n}[stage]
        optimizer = 12 * params // split[2]
    else:
        weights = 4 * params // split[0]
        grads = 4 * params // split[1]
        optimizer = 8 * params // split[2] + (4 * params // n if stage in (1, 2) else 0)
    extra = 4 * largest_layer if stage == 3 else 0
    if offload_optimizer:
        optimizer = 0
        grads = 0 if stage >= 2 else 2 * params  # DeepSpeed's estimator: 16-bit weights only on the GPU
    if offload_param and stage == 3:
        weights = 0
    return {"weights": weights, "gradients": grads, "optimizer": optimizer, "gather buffer": extra}


@dataclass
class Actor:
    name: str  # e.g. policy.3, rollout.0.tp1
    role: str  # the config section whose keys size it
    gpu: float  # GPUs it asks Ray for
    train: dict[str, int] = field(default_factory=dict)  # bytes on its GPU while the ranks train
    generate: dict[str, int] = field(default_factory=dict)  # bytes on its GPU while the engines generate
    node: int = -1
    gpus: tuple[int, ...] = ()
    note: str = ""
    kv_tokens: int = -1  # vLLM: tokens its KV cache holds, which must reach max_len (vLLM refuses to start else)
    max_len: int = 0


def _opt(section: Any, key: str) -> bool:
    return bool(getattr(section, key, False))  # offload keys may not exist in this config schema yet


def _trainer(name: str, role: str, gpu: float, shape: ModelShape, section: Any, dtype: str, ranks: int,
             micro: int, tokens: int, logit_rows: int, lm_head: bool) -> Actor:
    """A DeepSpeed rank. With LoRA (section.lora.rank) only the adapters, and a scalar head, have gradients and
    optimizer states; the frozen base is weights alone, in the model dtype, partitioned at ZeRO-3 like the rest."""
    d, stage, lora = BYTES[dtype], section.zero_stage, section.lora
    total = shape.params(lm_head)
    if lora.rank:
        head = 0 if lm_head else shape.hidden  # a critic's or PM's score head trains whole
        trainable, frozen = shape.lora_params(lora.rank, lora.target_modules) + head, total - head
    else:
        trainable, frozen = total, 0
    states = zero_states(trainable, stage, ranks, dtype != "float32", _opt(section, "offload_optimizer"),
                         _opt(section, "offload_param"), shape.largest_layer)
    if frozen and not (stage == 3 and _opt(section, "offload_param")):
        states["frozen weights"] = d * frozen // (max(ranks, 1) if stage == 3 else 1)
    ckpt = bool(getattr(section, "gradient_checkpointing", False))
    acts = shape.activation_bytes(micro * tokens, micro * logit_rows, d, ckpt, lm_head, embedding_trains=not frozen)
    resident = {"CUDA context": CONTEXT_BYTES, **{k: v for k, v in states.items() if v}}
    return Actor(name, role, gpu, train={**resident, "activations": acts}, generate=dict(resident),
                 note=f"ZeRO-{stage} x{ranks}, micro-batch {micro} x {tokens} tokens"
                      f"{', checkpointing' if ckpt else ''}{f', LoRA rank {lora.rank}' if frozen else ''}")


def _vllm(name: str, role: str, gpu: float, shape: ModelShape, dtype: str, util: float, gpu_bytes: int, tp: int,
          max_len: int, sleeps: bool) -> Actor:
    d = BYTES[dtype]
    share = int(util * gpu_bytes)
    weights = shape.params() * d // tp
    profile = VLLM_PROFILE_TOKENS * (4 * shape.hidden + 2 * shape.intermediate) * d // tp + GIB // 2
    kv = share - weights - profile
    tokens = kv // max(shape.kv_bytes_per_token(d) // tp, 1)
    gen = {"CUDA context": CONTEXT_BYTES, "vLLM weights": weights, "vLLM activations": profile,
           "KV cache": max(kv, 0)}
    return Actor(name, role, gpu, train={"CUDA context": CONTEXT_BYTES} if sleeps else dict(gen), generate=gen,
                 note=f"vLLM TP={tp}, gpu_memory_utilization {util:g}: KV cache {max(tokens, 0):,} tokens, "
                      f"max_model_len {max_len}" + (", sleeps while the ranks train" if sleeps else ""),
                 kv_tokens=max(tokens, 0), max_len=max_len)


def _sleeps(cfg: Config) -> bool:
    r = cfg.rollout
    return bool(getattr(r, "enable_sleep_mode", False) or getattr(r, "sleep_level", 0))


def actors_for(cfg: Config, stage: str, shapes: dict[str, ModelShape], gpu_bytes: int) -> list[Actor]:
    """The actors of one stage (rlaif.config.placement.role_plan's), each with its memory in both phases; a TP engine as
    its tensor_parallel_size one-GPU workers."""
    from rlaif.config.placement import role_plan

    roles, ro = role_plan(cfg, stage), cfg.rollout
    tp, pol, d = ro.tensor_parallel_size, shapes["policy"], BYTES[cfg.policy.model.dtype]
    max_len = cfg.sl_cai.max_context_tokens if stage == "sl-cai" else cfg.data.max_prompt_tokens + ro.max_new_tokens
    engines, gpus = roles["rollout"]
    out = [_vllm(f"rollout.{e}" + (f".tp{t}" if tp > 1 else ""), "rollout", gpus / tp, pol, cfg.policy.model.dtype,
                 ro.gpu_memory_utilization, gpu_bytes, tp, max_len, _sleeps(cfg))
           for e in range(engines) for t in range(tp)]
    if "labeler" in roles:
        lc, lab, gpu = cfg.labeler, shapes["labeler"], roles["labeler"][1]
        length = min(lc.max_model_len, lab.max_positions or lc.max_model_len)
        if lc.backend == "vllm" and not lc.function:
            out.append(_vllm("labeler", "labeler", gpu, lab, lc.model.dtype, lc.gpu_memory_utilization, gpu_bytes,
                             1, length, False))
        else:  # transformers forwards without gradients: the weights and one forward's working set
            ld = BYTES[lc.model.dtype]
            use = {"CUDA context": CONTEXT_BYTES, "weights": lab.params() * ld,
                   "forward": lc.batch_size * length * (lab.vocab + 8 * lab.hidden) * ld}
            out.append(Actor("labeler", "labeler", gpu, dict(use), dict(use), note="transformers"))
    rl_tokens = cfg.data.max_prompt_tokens + ro.max_new_tokens
    pc = cfg.policy
    if "reference" in roles:
        use = {"CUDA context": CONTEXT_BYTES, "weights": pol.params() * d,
               "forward": pc.micro_batch_size * (ro.max_new_tokens * pol.vocab + rl_tokens * 8 * pol.hidden) * d}
        out.append(Actor("reference", "reference", roles["reference"][1], dict(use), dict(use), note="forward only"))
    tokens, rows = (cfg.sl_cai.max_tokens, cfg.sl_cai.max_tokens) if stage == "sl-cai" else \
        (rl_tokens, ro.max_new_tokens)
    if "policy" in roles:
        n, gpu = roles["policy"]
        out += [_trainer(f"policy.{i}", "policy", gpu, pol, pc, pc.model.dtype, n, pc.micro_batch_size, tokens, rows,
                         True) for i in range(n)]
    if "critic" in roles:
        (n, gpu), cc = roles["critic"], cfg.critic
        out += [_trainer(f"critic.{i}", "critic", gpu, shapes["critic"], cc, cc.model.dtype, n, pc.micro_batch_size,
                         rl_tokens, 0, False) for i in range(n)]
    if "preference_model" in roles and cfg.rl.reward_model:  # a pretrained reward model: scorers, no training
        (n, gpu), pm, rm = roles["preference_model"], cfg.preference_model, shapes["reward_model"]
        pd = BYTES[pm.model.dtype]
        use = {"CUDA context": CONTEXT_BYTES, "weights": rm.params(lm_head=False) * pd,
               "forward": pm.batch_size * pm.max_tokens * 8 * rm.hidden * pd}
        out += [Actor(f"preference_model.{i}", "preference_model", gpu, dict(use), dict(use),
                      note="rl.reward_model, forward only") for i in range(n)]
    elif "preference_model" in roles:  # trained while the RL roles are up (Roles.start_pm_trainer)
        (n, gpu), pm = roles["preference_model"], cfg.preference_model
        out += [_trainer(f"preference_model.{i}", "preference_model", gpu, shapes["preference_model"], pm,
                         pm.model.dtype, n, pm.batch_size, pm.max_tokens, 0, False) for i in range(n)]
    return out


# -- placement -----------------------------------------------------------------------------------------------------

class Cluster:
    """Nodes of GPUs with free capacity (1.0 each), filled as Ray's scheduler fills them."""

    def __init__(self, nodes: int, gpus_per_node: int) -> None:
        self.free = [[1.0] * gpus_per_node for _ in range(nodes)]

    def fits(self, node: int, gpu: float) -> bool:
        return self._pick(node, gpu) is not None

    def _pick(self, node: int, gpu: float) -> tuple[int, ...] | None:
        free = self.free[node]
        if gpu <= 0:
            return ()
        if gpu >= 1:
            whole = [i for i, f in enumerate(free) if f >= 1 - 1e-9][: math.ceil(gpu - 1e-9)]
            return tuple(whole) if len(whole) == math.ceil(gpu - 1e-9) else None
        room = [(f, i) for i, f in enumerate(free) if f >= gpu - 1e-9]
        return (min(room)[1],) if room else None  # the fullest GPU that still fits

    def take(self, node: int, gpu: float) -> tuple[int, ...]:
        ids = self._pick(node, gpu)
        assert ids is not None
        for i in ids:
            self.free[node][i] -= min(gpu, 1.0)
        return ids

    def place_group(self, bundles: list[float], strategy: str) -> list[tuple[int, tuple[int, ...]]] | None:
        """(node, GPU ids) of each bundle of one placement group, or None when Ray would leave it pending."""
        if any(b > 1 and b != int(b) for b in bundles):
            return None  # Ray refuses a bundle of more than one GPU that is not a whole number
        saved = [list(n) for n in self.free]
        nodes = range(len(self.free))
        if strategy == "STRICT_PACK":  # all on one node: the first that holds them all
            for n in nodes:
                self.free = [list(x) for x in saved]
                spots = []
                for b in bundles:
                    if not self.fits(n, b):
                        break
                    spots.append((n, self.take(n, b)))
                else:
                    return spots
            self.free = saved
            return None
        placed: list[tuple[int, tuple[int, ...]]] = []
        for b in bundles:
            used = [n for n, _ in placed]
            if strategy == "PACK":  # the nodes this group already uses first, then the others in order
                order = sorted(nodes, key=lambda n: (n not in used, n))
            else:  # SPREAD / STRICT_SPREAD: nodes this group does not use yet first
                order = sorted(nodes, key=lambda n: (used.count(n), n))
                if strategy == "STRICT_SPREAD":
                    order = [n for n in order if n not in used]
            node = next((n for n in order if self.fits(n, b)), None)
            if node is None:
                self.free = saved
                return None
            placed.append((node, self.take(node, b)))
        return placed


@dataclass
class Plan:
    stage: str
    nodes: int
    gpus_per_node: int
    gpu_bytes: int
    actors: list[Actor]
    groups: list[tuple[str, list[float], str]]  # (what, GPU per bundle, strategy) in creation order
    unplaced: list[str]
    cfg: Config | None = None

    def per_gpu(self) -> dict[tuple[int, int], list[Actor]]:
        where: dict[tuple[int, int], list[Actor]] = {}
        for a in self.actors:
            if a.gpus:
                where.setdefault((a.node, a.gpus[0]), []).append(a)
        return where

    def usage(self, phase: str) -> dict[tuple[int, int], int]:
        return {k: sum(sum(getattr(a, phase).values()) for a in v) for k, v in self.per_gpu().items()}


def place(cfg: Config, stage: str, actors: list[Actor], nodes: int, gpus_per_node: int, gpu_bytes: int) -> Plan:
    """Give every actor a node and GPU(s), creating the placement groups in Roles' order with rlaif.config.placement's
    bundles: the engines' group (or the colocated one), the labeler and reference (plain actors: one-bundle groups
    here), the policy, critic and preference-model groups."""
    from rlaif.config.placement import colocated_bundles, colocated_roles, engine_bundles, role_plan

    r, roles, tp = cfg.ray, role_plan(cfg, stage), cfg.rollout.tensor_parallel_size
    cluster = Cluster(nodes, gpus_per_node)
    by_role: dict[str, list[Actor]] = {}
    for a in actors:
        by_role.setdefault(a.role, []).append(a)
    groups: list[tuple[str, list[list[Actor]], list[float], str]] = []  # what, actors per bundle, GPUs, strategy

    def own(role: str, strategy: str) -> None:
        if by_role.get(role):
            groups.append((role, [[a] for a in by_role[role]], [a.gpu for a in by_role[role]], strategy))

    if r.colocate and "policy" in roles:
        taken = {role: iter(by_role.get(role, [])) for role in roles}
        members = [[next(taken[k]) for k in b] for b in colocated_roles(roles)]
        sizes = [b.get("GPU", 0.0) for b in colocated_bundles(roles, cfg.device)]
        groups.append(("colocated bundles", members, sizes, r.placement_policy))
        own("preference_model", "PACK")
    else:
        eng = by_role.get("rollout", [])
        sizes = [b.get("GPU", 0.0) for b in engine_bundles(roles["rollout"][0], tp, roles["rollout"][1])]
        groups.append(("rollout", [[a] for a in eng], sizes, r.placement_rollout))
        for role in ("labeler", "reference"):
            own(role, "PACK")
        own("policy", r.placement_policy)
        own("critic", r.placement_policy)
        own("preference_model", "PACK")
    unplaced = []
    for what, members, sizes, strategy in groups:
        spots = cluster.place_group(sizes, strategy)
        if spots is None:
            unplaced.append(f"{what} ({len(sizes)} x {max(sizes, default=0):g} GPU, {strategy})")
            continue
        for b, (node, ids) in zip(members, spots):
            for a in b:
                a.node, a.gpus = node, ids
    return Plan(stage, nodes, gpus_per_node, gpu_bytes, actors, [(w, s, st) for w, _, s, st in groups], unplaced, cfg)


# -- the plan, its report and its verdict -------------------------------------------------------------------------

def cluster_shape(cfg: Config, nodes: int | None = None, gpus_per_node: int | None = None,
                  gpu_memory_gib: float | None = None) -> tuple[int, int, int]:
    """(nodes, GPUs per node, bytes per GPU): a local Ray is one node of ray.num_gpus; a cluster is ray.plan_nodes
    x ray.plan_gpus_per_node (plan_nodes 0: enough nodes for every GPU asked, one spare per group); flags win."""
    from rlaif.config.placement import role_plan

    local = cfg.ray.address == "local"
    g = gpus_per_node or (cfg.ray.num_gpus if local else cfg.ray.plan_gpus_per_node)
    asked = sum(n * gpu for n, gpu in role_plan(cfg, "rl").values())
    n = nodes or (1 if local else cfg.ray.plan_nodes or math.ceil(asked / max(g, 1)) + len(role_plan(cfg, "rl")))
    return n, g, int((gpu_memory_gib or cfg.ray.gpu_memory_gib) * GIB)


def shapes_of(cfg: Config) -> dict[str, ModelShape]:
    pol = model_shape("policy.model.path", cfg.policy.model.path, cfg.cache_dir, cfg.policy.model.revision)
    get = {"policy": pol}
    for key, mc in (("labeler", cfg.labeler.model), ("preference_model", cfg.preference_model.model),
                    ("critic", cfg.critic.model)):
        get[key] = model_shape(f"{key}.model.path", mc.path, cfg.cache_dir, mc.revision) if mc.path else pol
    if cfg.rl.reward_model:
        get["reward_model"] = model_shape("rl.reward_model", cfg.rl.reward_model, cfg.cache_dir,
                                          cfg.rl.reward_model_revision)
    return get


def make_plans(cfg: Config, nodes: int | None = None, gpus_per_node: int | None = None,
               gpu_memory_gib: float | None = None, stages: tuple[str, ...] = ()) -> list[Plan]:
    """One plan per stage (default: those `rlaif train` runs), each placed afresh as Roles are per stage."""
    n, g, gpu_bytes = cluster_shape(cfg, nodes, gpus_per_node, gpu_memory_gib)
    shapes = shapes_of(cfg)
    stages = stages or (("sl-cai", "rl") if cfg.sl_cai.enabled else ("rl",))
    return [place(cfg, s, actors_for(cfg, s, shapes, gpu_bytes), n, g, gpu_bytes) for s in stages]


# What to change, by what fills a GPU.
KEYS = {
    "policy": "policy.zero_stage, policy.num_ranks, policy.offload_optimizer, policy.gradient_checkpointing, "
              "policy.micro_batch_size, ray.gpus_per_policy_rank",
    "critic": "critic.zero_stage, critic.num_ranks, policy.micro_batch_size, ray.gpus_per_policy_rank",
    "preference_model": "preference_model.zero_stage, preference_model.num_ranks, preference_model.batch_size, "
                        "preference_model.max_tokens, ray.gpus_per_aux",
    "rollout": "rollout.gpu_memory_utilization, rollout.tensor_parallel_size, ray.gpus_per_rollout",
    "labeler": "labeler.gpu_memory_utilization, labeler.backend, ray.gpus_per_aux",
    "reference": "ray.gpus_per_aux, policy.micro_batch_size",
}


def keys_for(role: str, cfg: Config | None) -> list[str]:
    """The keys that size `role`, those this config schema has (offload keys may not exist yet)."""
    def exists(key: str) -> bool:
        section, _, name = key.partition(".")
        return cfg is None or hasattr(getattr(cfg, section), name)

    return [k for k in KEYS[role].split(", ") if exists(k)]


def problems(plan: Plan) -> list[str]:
    """Every reason the plan cannot run, each naming the keys to change; [] when it fits. A GPU that overflows
    is named once, in its fuller phase, and GPUs that overflow alike are counted on one line."""
    out = [f"stage {plan.stage}: Ray cannot place {u} on {plan.nodes} node(s) x {plan.gpus_per_node} GPUs; change "
           "ray.gpus_per_*, ray.placement_*, the ranks and engines, or ray.plan_nodes / ray.plan_gpus_per_node "
           "(or --nodes / --gpus-per-node)"
           for u in plan.unplaced]
    for a in plan.actors:
        if 0 <= a.kv_tokens < a.max_len:
            out.append(f"stage {plan.stage}: {a.name}'s KV cache holds {a.kv_tokens:,} tokens, fewer than its "
                       f"max_model_len {a.max_len} (vLLM refuses to start): its weights and profiling take "
                       f"{(a.generate['vLLM weights'] + a.generate['vLLM activations']) / GIB:.1f} GiB of its "
                       f"{a.role}.gpu_memory_utilization share; raise {a.role}.gpu_memory_utilization"
                       + (" or rollout.tensor_parallel_size" if a.role == "rollout" else ""))
    out += _fraction_worst_case(plan)
    usage = {phase: plan.usage(phase) for phase in ("generate", "train")}
    full: dict[str, list[str]] = {}
    for (node, gpu), on in sorted(plan.per_gpu().items()):
        phase = max(usage, key=lambda ph: usage[ph][(node, gpu)])
        used = usage[phase][(node, gpu)]
        if used <= plan.gpu_bytes:
            continue
        big = max(on, key=lambda a: sum(getattr(a, phase).values()))
        what = ", ".join(f"{a.role} {sum(getattr(a, phase).values()) / GIB:.1f}" for a in on)
        keys = ", ".join(dict.fromkeys(k for a in on for k in keys_for(a.role, plan.cfg)
                                       if a.role == big.role or k.startswith("ray.")))
        msg = (f"stage {plan.stage}, {phase} phase: {{where}} needs {used / GIB:.1f} GiB of {plan.gpu_bytes / GIB:.0f}"
               f" ({what}); change {keys}")
        full.setdefault(msg, []).append(f"node {node} GPU {gpu}")
    for msg, where in full.items():
        out.append(msg.format(where=where[0] + (f" (and {len(where) - 1} GPUs alike)" if len(where) > 1 else "")))
    return out


def _fraction_worst_case(plan: Plan) -> list[str]:
    """Fractional actors of different placement groups share a GPU wherever Ray finds room, not only as the plan
    places them: the heaviest combination whose fractions fit one GPU must fit its memory too."""
    loose = [a for a in plan.actors if 0 < a.gpu < 1 and not (plan.cfg and plan.cfg.ray.colocate
                                                               and a.role != "preference_model")]
    peak = {a.name: max(sum(a.train.values()), sum(a.generate.values())) for a in loose}
    worst: tuple[int, tuple[Actor, ...]] = (0, ())
    for k in range(2, min(len(loose), 8) + 1):
        for combo in itertools.combinations(loose, k):
            if sum(a.gpu for a in combo) <= 1 + 1e-9:
                worst = max(worst, (sum(peak[a.name] for a in combo), combo), key=lambda w: w[0])
    if worst[0] <= plan.gpu_bytes:
        return []
    names = " + ".join(f"{a.name} {peak[a.name] / GIB:.1f}" for a in worst[1])
    roles = dict.fromkeys(a.role for a in worst[1])
    keys = ", ".join(dict.fromkeys(k for r in roles for k in keys_for(r, plan.cfg)))
    return [f"stage {plan.stage}: fractional actors can share one GPU wherever Ray finds room, and {names} = "
            f"{worst[0] / GIB:.1f} GiB exceeds {plan.gpu_bytes / GIB:.0f}; change {keys}"]


def _runs(ids: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    out: list[str] = []
    for i in ids:
        if out and i == int(out[-1].split("-")[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{i}"
        else:
            out.append(str(i))
    return ",".join(out)


def _where(spots: list[tuple[int, tuple[int, ...]]]) -> str:
    nodes: dict[int, list[int]] = {}
    for node, gpus in spots:
        nodes.setdefault(node, []).extend(gpus)
    return "; ".join(f"node {n} GPU {_runs(sorted(set(g)))}" for n, g in nodes.items()) or "unplaced"


def _grouped(items: list, key) -> list[list]:
    """Consecutive items with the same key, together (24 alike policy ranks make one line)."""
    out: list[list] = []
    for item in items:
        if out and key(out[-1][0]) == key(item):
            out[-1].append(item)
        else:
            out.append([item])
    return out


def report(plans: list[Plan]) -> str:
    """The plan for a person: every actor's node, GPU and fraction, then each GPU's memory in both phases; alike
    consecutive actors (and GPUs) share one line."""
    gib = lambda b: f"{b / GIB:.1f}"  # noqa: E731
    lines = []
    for p in plans:
        lines.append(f"stage {p.stage}: {p.nodes} node(s) x {p.gpus_per_node} GPUs of {p.gpu_bytes / GIB:.0f} GiB")
        lines.append("  placement groups, in creation order: " + "; ".join(
            f"{w} {len(s)} x {max(s, default=0):g} GPU {st}" for w, s, st in p.groups))
        lines.append(f"  {'actors':<22}{'GPU each':>9}  {'GiB gen':>7} {'train':>6}  where: notes")
        for run in _grouped(p.actors, lambda a: (a.role, a.gpu, a.note, sum(a.generate.values()),
                                                  sum(a.train.values()))):
            a = run[0]
            name = a.name if len(run) == 1 else f"{a.name}..{run[-1].name.split('.', 1)[1]}"
            where = _where([(x.node, x.gpus) for x in run if x.node >= 0]) if a.gpus or a.node < 0 else \
                f"nodes {_runs(sorted({x.node for x in run}))} (no GPU)"
            lines.append(f"  {name:<22}{a.gpu:>9.2f}  {gib(sum(a.generate.values())):>7} "
                         f"{gib(sum(a.train.values())):>6}  {where}: {a.note}")
        gen, train = p.usage("generate"), p.usage("train")
        lines.append(f"  per GPU, GiB of {p.gpu_bytes / GIB:.0f} while generating / training, where: what holds it")

        def what(on: list[Actor]) -> str:
            return "; ".join(f"{a.role} " + " + ".join(
                f"{k} {gib(v)}" for k, v in max((a.train, a.generate), key=lambda m: sum(m.values())).items())
                for a in on)

        gpus = sorted(p.per_gpu().items())
        for run in _grouped(gpus, lambda kv, g=gen, t=train: (g[kv[0]], t[kv[0]], what(kv[1]))):
            (key, on), spots = run[0], [(k[0], (k[1],)) for k, _ in run]
            lines.append(f"    {gib(gen[key]):>5} / {gib(train[key]):>5}  {_where(spots)}"
                         f"{'' if len(run) == 1 else f' ({len(run)} alike)'}: {what(on)}")
        peak = max([*gen.values(), *train.values()], default=0)
        lines.append(f"  peak {gib(peak)} GiB of {p.gpu_bytes / GIB:.0f} GiB per GPU")
    return "\n".join(lines)


def check(cfg: Config, nodes: int | None = None, gpus_per_node: int | None = None,
          gpu_memory_gib: float | None = None, stages: tuple[str, ...] = ()) -> list[Plan]:
    """The plans; a ConfigError (one line, naming the keys) when one cannot be placed or does not fit."""
    plans = make_plans(cfg, nodes, gpus_per_node, gpu_memory_gib, stages)
    found = [msg for p in plans for msg in problems(p)]
    if found:
        more = f" (and {len(found) - 1} more: rlaif plan shows them all)" if len(found) > 1 else ""
        raise ConfigError(f"the plan does not fit: {found[0]}{more}")
    return plans
