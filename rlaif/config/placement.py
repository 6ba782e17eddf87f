"""Where the actors of a stage go: the pure decisions behind actors/roles.py and actors/rollout.py.

Ray-free (config validation reads it too): which roles a stage starts and with how many GPUs each (role_plan), the
colocated bundle layout, the rollout engines' placement-group bundles for vLLM tensor parallelism, the environment
an engine hands vLLM's Ray executor, and the local CUDA device of a DeepSpeed rank.

vLLM 0.32's Ray executor (v1/executor/ray_utils.py, ray_executor*.py) refuses a bundle holding more than one GPU and
starts one worker per TP rank, each taking VLLM_RAY_PER_WORKER_GPUS of the bundle VLLM_RAY_BUNDLE_INDICES names; without
the indices it takes the first GPU bundles of the group, so every engine of a shared group would pick the same ones.
Hence TP > 1: tensor_parallel_size single-GPU bundles per engine, the engine actor (which only schedules) holding no
GPU in the first of them, and VLLM_RAY_BUNDLE_INDICES naming its own bundles (as OpenRLHF's create_vllm_engines does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlaif.config.algorithms import ALGORITHMS, needs_reference

if TYPE_CHECKING:
    from rlaif.config.schema import Config


def role_plan(cfg: Config, stage: str) -> dict[str, tuple[int, float]]:
    """The actors a stage starts: role -> (how many, GPUs each); every actor takes one CPU. A rollout engine's GPUs
    are those of its tensor-parallel workers (ray.gpus_per_rollout; the engine actor itself holds none when TP > 1)."""
    r, rl = cfg.ray, stage == "rl"
    plan = {"rollout": (cfg.rollout.num_engines, r.gpus_per_rollout)}
    if stage != "sl-cai":
        plan["labeler"] = (1, r.gpus_per_aux)
    if rl and needs_reference(cfg.rl) and not cfg.policy.lora.rank:  # LoRA: the policy with its adapters off
        plan["reference"] = (1, r.gpus_per_aux)
    if rl and cfg.rl.use_preference_model:
        plan["preference_model"] = (cfg.preference_model.num_ranks, r.gpus_per_aux)
    if stage != "label":
        plan["policy"] = (cfg.policy.num_ranks, r.gpus_per_policy_rank)
    if rl and ALGORITHMS[cfg.rl.algorithm].needs_critic:
        plan["critic"] = (cfg.critic.num_ranks, r.gpus_per_policy_rank)
    return plan


# -- ray.colocate=true: one bundle per policy rank --

def colocated_roles(plan: dict[str, tuple[int, float]]) -> list[list[str]]:
    """The roles in each colocated bundle: bundle i holds policy rank i, critic rank i and rollout engine i (those
    that exist); bundle 0 also the reference and the labeler. The preference model is never colocated."""
    engines, critics = plan["rollout"][0], plan.get("critic", (0, 0.0))[0]
    return [["policy"] + [k for k, n in (("critic", critics), ("rollout", engines)) if i < n]
            + [k for k in ("reference", "labeler") if i == 0 and k in plan] for i in range(plan["policy"][0])]


def colocated_bundles(plan: dict[str, tuple[int, float]], device: str) -> list[dict[str, float]]:
    """The colocated placement group's bundles: one CPU per actor; on cuda one whole GPU, shared by the fractions of
    the roles inside (a bundle of their summed fraction could share its GPU with another bundle, putting two policy
    ranks of one NCCL group on one GPU, which NCCL refuses)."""
    out = []
    for roles in colocated_roles(plan):
        gpu = sum(plan[k][1] for k in roles)
        out.append({"CPU": len(roles), **({"GPU": 1.0 if device == "cuda" else gpu} if gpu else {})})
    return out


def colocated_gpu_share(plan: dict[str, tuple[int, float]]) -> tuple[float, list[str]]:
    """The GPU fractions asked of bundle 0's one GPU (the fullest bundle: every other holds a subset of its roles),
    and the roles asking them."""
    roles = colocated_roles(plan)[0]
    return sum(plan[k][1] for k in roles), roles


# -- the rollout engines' own placement group (not colocated) --

def engine_bundles(num_engines: int, tp: int, gpus_per_engine: float) -> list[dict[str, float]]:
    """Bundles for `num_engines` engines: TP 1, one bundle per engine with its CPU and its GPU share (unchanged from
    before TP); TP > 1, `tp` single-GPU bundles per engine, the first also holding the engine actor's CPU."""
    if tp == 1:
        return [{"CPU": 1, **({"GPU": gpus_per_engine} if gpus_per_engine else {})}] * num_engines
    return [{"CPU": 1, "GPU": 1} if j == 0 else {"GPU": 1} for _ in range(num_engines) for j in range(tp)]


def engine_bundle_indices(index: int, tp: int) -> list[int]:
    """The bundles of engine `index` in engine_bundles' group: one per TP rank, the first also the engine actor's."""
    return [index * tp + j for j in range(tp)]


def engine_actor_gpus(tp: int, gpus_per_engine: float) -> float:
    """The GPUs the engine actor itself asks Ray for: all of its share at TP 1 (vLLM runs in the actor); none at TP >
    1, where vLLM's Ray executor starts one worker actor per TP rank, each taking one GPU of its own bundle."""
    return gpus_per_engine if tp == 1 else 0.0


def engine_env(tp: int, index: int, in_placement_group: bool) -> dict[str, str]:
    """What engine `index` puts in its environment before starting vLLM. TP > 1 inside engine_bundles' group: its
    own bundles for vLLM's Ray executor, one GPU per worker. Outside a group (an evaluation engine) vLLM creates a
    group of tp single-GPU bundles itself, which the indices must not name."""
    if tp == 1 or not in_placement_group:
        return {}
    return {"VLLM_RAY_BUNDLE_INDICES": ",".join(map(str, engine_bundle_indices(index, tp))),
            "VLLM_RAY_PER_WORKER_GPUS": "1"}


# -- the DeepSpeed ranks --

def local_cuda_device(gpu_ids: list, visible: str | None) -> int:
    """The CUDA device index, in this process's numbering, of the GPU Ray gave this actor (ray.get_gpu_ids()):
    its position in CUDA_VISIBLE_DEVICES, which Ray sets to the actor's GPUs; the physical id where Ray was told not
    to set it (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES). `rank % device_count()` is neither: under NOSET it
    sends every group's rank 0 to GPU 0."""
    if not gpu_ids:
        raise RuntimeError("this rank was given no GPU by Ray (ray.gpus_per_policy_rank / ray.gpus_per_aux = 0 on "
                           "device cuda?)")
    gpu = str(gpu_ids[0])
    if not visible:
        return int(gpu)
    ids = [x.strip() for x in visible.split(",")]
    if gpu not in ids:
        raise RuntimeError(f"Ray gave this rank GPU {gpu}, which CUDA_VISIBLE_DEVICES={visible} does not show")
    return ids.index(gpu)
