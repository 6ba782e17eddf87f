"""Every check of a config beyond its types: the range of each numeric key (RANGES) and the cross-field checks a type
alone cannot express, run by load_config before anything starts; and import_callable, which checks (and imports) a
"package.module:function" spec named by a key.

Nothing here imports rlaif outside rlaif/config/: the facts the checks need about algorithms, alarms and placement
live in rlaif/config/ too (algorithms.py, alarm_names.py, placement.py).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from rlaif.config.alarm_names import ALARMS, enabled_alarms
from rlaif.config.placement import colocated_gpu_share, role_plan
from rlaif.config.schema import ConfigError

if TYPE_CHECKING:
    from rlaif.config.schema import Config, LabelerConfig, SLCAIConfig


def import_callable(spec: str, key: str) -> Any:
    """Import "package.module:function" named by config key `key` (reward functions, judges); a bad spec fails at
    start-up with an error naming the key."""
    import importlib

    module, _, name = spec.partition(":")
    if spec.count(":") != 1 or not module or not name:
        raise ConfigError(f"{key}: '{spec}' must look like 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{key}: cannot import '{spec}': {exc}") from exc
    if not callable(fn):
        raise ConfigError(f"{key}: '{spec}' is not callable")
    return fn


SELF_IMPROVE_FORMATS = ("cot", "cot-cue", "direct")  # self_improve.formats (rlaif/run/self_improve.py)

# The allowed range of every numeric key: "[a, b]" closed, "(a, b)" open, "inf" unbounded. validate() checks them
# all before anything starts; a value outside (or NaN) fails with the key and this range.
RANGES: dict[str, str] = {
    "seed": "[0, inf)",
    "data.max_prompt_tokens": "[1, inf)",
    "data.seed": "[0, inf)",
    "data.eval_fraction": "[0, 1)",
    "rollout.num_engines": "[1, inf)",
    "rollout.tensor_parallel_size": "[1, inf)",
    "rollout.sync_bucket_mb": "[1, inf)",
    "rollout.n_samples": "[2, inf)",
    "rollout.max_new_tokens": "[1, inf)",
    "rollout.temperature": "(0, inf)",
    "rollout.top_p": "(0, 1]",
    "rollout.kv_cache_gib": "[1, inf)",
    "rollout.gpu_memory_utilization": "(0, 1]",
    "rollout.sleep_level": "[0, 2]",
    "labeler.principles_per_pair": "[1, inf)",
    "labeler.few_shot_examples": "[0, inf)",
    "labeler.cot_max_tokens": "[1, inf)",
    "labeler.max_response_tokens": "[1, inf)",
    "labeler.max_model_len": "[1, inf)",
    "labeler.kv_cache_gib": "[1, inf)",
    "labeler.batch_size": "[1, inf)",
    "labeler.human_eval_pairs": "[1, inf)",
    "trust.min_agreement": "[0, 1]",
    "trust.min_position_consistency": "[0, 1]",
    "trust.min_pm_human_accuracy": "[0, 1]",
    "labeler.audit_samples": "[0, inf)",
    "preference_model.num_ranks": "[1, inf)",
    "preference_model.label_prompts": "[1, inf)",
    "preference_model.eval_fraction": "[0, 1)",
    "preference_model.epochs": "[1, inf)",
    "preference_model.lr": "(0, inf)",
    "preference_model.batch_size": "[1, inf)",
    "preference_model.max_tokens": "[2, inf)",
    "policy.num_ranks": "[1, inf)",
    "policy.lr": "(0, inf)",
    "policy.weight_decay": "[0, inf)",
    "policy.micro_batch_size": "[1, inf)",
    "policy.grad_clip": "[0, inf)",
    "critic.num_ranks": "[1, inf)",
    "critic.lr": "(0, inf)",
    "rl.prompts_per_step": "[1, inf)",
    "rl.epochs": "[1, inf)",
    "rl.clip_eps": "(0, inf)",
    "rl.kl_coef": "[0, inf)",
    "rl.kl_target": "[0, inf)",
    "rl.kl_horizon": "[1, inf)",
    "rl.gamma": "[0, 1]",
    "rl.lam": "[0, 1]",
    "rl.value_clip": "(0, inf)",
    "rl.reward_clip": "[0, inf)",
    "rl.length_penalty": "[0, inf)",
    "rl.length_target": "[0, inf)",
    "rl.missing_eos_penalty": "[0, inf)",
    "rl.tis_cap": "[0, inf)",
    "rl.dpo_beta": "(0, inf)",
    "rl.label_every": "[1, inf)",
    "rl.label_pairs": "[0, inf)",
    "sl_cai.num_prompts": "[1, inf)",
    "sl_cai.rounds": "[1, inf)",
    "sl_cai.few_shot": "[0, inf)",
    "sl_cai.self_consistency_min_agreement": "[0, 1]",
    "sl_cai.max_new_tokens": "[1, inf)",
    "sl_cai.temperature": "(0, inf)",
    "sl_cai.max_context_tokens": "[1, inf)",
    "sl_cai.helpful_ratio": "[0, 1)",
    "sl_cai.epochs": "[1, inf)",
    "policy.warmup_steps": "[0, inf)",
    "policy.warmup_ratio": "[0, 1)",
    "critic.warmup_steps": "[0, inf)",
    "critic.warmup_ratio": "[0, 1)",
    "preference_model.warmup_steps": "[0, inf)",
    "preference_model.warmup_ratio": "[0, 1)",
    "sl_cai.warmup_steps": "[0, inf)",
    "sl_cai.warmup_ratio": "[0, 1)",
    "self_improve.num_prompts": "[1, inf)",
    "self_improve.samples": "[2, inf)",
    "self_improve.min_agreement": "[0, 1]",
    "self_improve.temperature": "(0, inf)",
    "self_improve.max_new_tokens": "[1, inf)",
    "self_improve.epochs": "[1, inf)",
    "self_improve.warmup_steps": "[0, inf)",
    "self_improve.warmup_ratio": "[0, 1)",
    "self_improve.lr": "(0, inf)",
    "sl_cai.lr": "(0, inf)",
    "sl_cai.max_tokens": "[2, inf)",
    "trainer.steps": "[0, inf)",
    "trainer.log_samples": "[0, inf)",
    "trainer.eval_every": "[0, inf)",
    "trainer.timeout_s": "(0, inf)",
    "trainer.save_every": "[0, inf)",
    "trainer.save_every_minutes": "[0, inf)",
    "trainer.keep_last": "[0, inf)",
    "ray.max_restarts": "[0, inf)",
    "ray.cpu_threads_policy": "[0, inf)",
    "ray.cpu_threads_rollout": "[0, inf)",
    "ray.cpu_threads_aux": "[0, inf)",
    "ray.num_cpus": "[1, inf)",
    "ray.num_gpus": "[0, inf)",
    "ray.gpus_per_policy_rank": "[0, inf)",
    "ray.gpus_per_rollout": "[0, inf)",
    "ray.gpus_per_aux": "[0, inf)",
    "ray.gpu_memory_gib": "(0, inf)",
    "ray.plan_nodes": "[0, inf)",
    "ray.plan_gpus_per_node": "[1, inf)",
    **{f"{m}.lora.{k}": v for m in ("policy", "critic", "preference_model")
       for k, v in (("rank", "[0, inf)"), ("alpha", "(0, inf)"), ("dropout", "[0, 1)"))},
}


def validate(cfg: Config) -> None:
    """Every range (RANGES) and the cross-field checks that a type alone cannot express."""
    for key, interval in RANGES.items():
        if key == "labeler.human_eval_pairs" and not cfg.labeler.human_eval:
            interval = "[0, inf)"  # no human set: the count is unused
        value = functools.reduce(getattr, key.split("."), cfg)
        lo_s, hi_s = (x.strip() for x in interval[1:-1].split(","))
        lo, hi = float(lo_s), float(hi_s)
        above = value > lo if interval[0] == "(" else value >= lo
        below = value < hi if interval[-1] == ")" else value <= hi
        if not (above and below):  # also catches NaN, for which every comparison is false
            allowed = f"{'>' if interval[0] == '(' else '>='} {lo_s}" if hi == float("inf") else f"in {interval}"
            raise ConfigError(f"{key}: must be {allowed}, got {value}")
    if not cfg.output_dir.strip():
        raise ConfigError("output_dir: must not be empty")
    if cfg.rl.tis_cap and cfg.rl.tis_cap < 1:
        raise ConfigError(f"rl.tis_cap: must be 0 (off) or >= 1 (a cap below 1 shrinks every weight), "
                          f"got {cfg.rl.tis_cap}")
    if cfg.sl_cai.max_context_tokens <= cfg.sl_cai.max_new_tokens:
        raise ConfigError(f"sl_cai.max_context_tokens = {cfg.sl_cai.max_context_tokens} must exceed "
                          f"sl_cai.max_new_tokens = {cfg.sl_cai.max_new_tokens}")
    if cfg.wandb.enabled and cfg.wandb.mode != "disabled" and not cfg.wandb.project.strip():
        raise ConfigError("wandb.project: must not be empty while wandb.enabled is true")
    if cfg.rollout.n_samples % 2:
        raise ConfigError(
            f"rollout.n_samples: must be even and >= 2 (responses are compared in pairs), got {cfg.rollout.n_samples}"
        )
    batch = cfg.rl.prompts_per_step * cfg.rollout.n_samples
    per_rank, rest = divmod(batch, cfg.policy.num_ranks)
    if rest or per_rank % cfg.policy.micro_batch_size:
        raise ConfigError(
            f"rl.prompts_per_step * rollout.n_samples = {batch} must split evenly over policy.num_ranks "
            f"= {cfg.policy.num_ranks} ranks into micro-batches of policy.micro_batch_size = "
            f"{cfg.policy.micro_batch_size}"
        )
    if cfg.rl.algorithm == "ppo" and batch % (cfg.critic.num_ranks * cfg.policy.micro_batch_size):
        raise ConfigError(
            f"rl.prompts_per_step * rollout.n_samples = {batch} must split evenly over critic.num_ranks "
            f"= {cfg.critic.num_ranks} ranks into micro-batches of policy.micro_batch_size"
        )
    validate_reward_model(cfg)
    labeler_dpo = cfg.rl.labels_order_dpo
    if not (cfg.rl.use_preference_model or cfg.rl.reward_functions or cfg.rl.use_labeler_rating or labeler_dpo):
        raise ConfigError(
            "no reward: rl.use_preference_model and rl.use_labeler_rating are false and rl.reward_functions is empty"
        )
    for spec in cfg.rl.reward_functions:
        if spec.count(":") != 1 or not all(spec.split(":")):
            raise ConfigError(f"rl.reward_functions: '{spec}' must look like 'package.module:function'")
    _validate_labeler(cfg.labeler)
    _validate_self_consistency(cfg.sl_cai)
    if cfg.rl.algorithm == "online-dpo" and (cfg.policy.micro_batch_size % 2 or per_rank % 2):
        raise ConfigError("rl.algorithm online-dpo: policy.micro_batch_size and the per-rank batch must be even "
                          "(pairs are never split)")
    if cfg.rl.kl_loss_estimator == "k1":
        raise ConfigError("rl.kl_loss_estimator: 'k1' is not allowed: log(pi/ref) has zero expected gradient under "
                          "samples from the policy, so as a loss it regularises nothing; allowed values: 'k2', 'k3'")
    if cfg.rl.labels_order_dpo and cfg.rl.label_every != 1:
        raise ConfigError("rl.label_every: online-dpo with rl.dpo_preference=labeler trains on every step's AI labels, "
                          f"so it must be 1, got {cfg.rl.label_every}")
    for sec in ("policy", "critic", "preference_model", "sl_cai", "self_improve"):
        if getattr(cfg, sec).warmup_steps and getattr(cfg, sec).warmup_ratio:
            raise ConfigError(f"{sec}.warmup_steps and {sec}.warmup_ratio are both set; give one of them")
    bad = [f for f in cfg.self_improve.formats if f not in SELF_IMPROVE_FORMATS]
    if bad or not cfg.self_improve.formats:
        raise ConfigError(f"self_improve.formats: got {cfg.self_improve.formats}; allowed: a non-empty list of "
                          f"{', '.join(SELF_IMPROVE_FORMATS)}")
    if cfg.rl.labels_order_dpo and cfg.rl.label_pairs:
        raise ConfigError("rl.label_pairs: online-dpo with rl.dpo_preference=labeler trains on every pair's AI label, "
                          f"so it must be 0 (all pairs), got {cfg.rl.label_pairs}")
    for key in ("policy", "critic", "preference_model"):
        if getattr(cfg, key).model.dtype == "float16":
            raise ConfigError(f"{key}.model.dtype: float16 training needs loss scaling, which rlaif does not set up; "
                              "use bfloat16 or float32 (float16 is fine for the labeler, which only scores)")
    _validate_attn_implementations(cfg)
    validate_eval(cfg)
    validate_alarms(cfg)
    if cfg.ray.colocate and max(cfg.rollout.num_engines, cfg.critic.num_ranks) > cfg.policy.num_ranks:
        raise ConfigError(f"ray.colocate: rollout.num_engines = {cfg.rollout.num_engines} and critic.num_ranks = "
                          f"{cfg.critic.num_ranks} must not exceed policy.num_ranks = {cfg.policy.num_ranks} (one "
                          "bundle per policy rank)")
    if cfg.ray.colocate and cfg.device == "cuda" and cfg.rollout.sync_transport == "broadcast":
        # policy rank i and engine i share one GPU, where NCCL refuses two ranks of one communicator
        raise ConfigError("rollout.sync_transport: 'broadcast' cannot reach engines colocated with the policy on GPU "
                          "(NCCL joins no two processes of one GPU); allowed with ray.colocate=true: auto, shared "
                          "(CUDA IPC)")
    if cfg.ray.colocate and cfg.device == "cuda" and cfg.rollout.tensor_parallel_size != 1:
        raise ConfigError("rollout.tensor_parallel_size: must be 1 with ray.colocate=true on GPU (engine i lives on "
                          f"policy rank i's GPU), got {cfg.rollout.tensor_parallel_size}")
    if cfg.rollout.sync_transport == "shared" and cfg.device == "cuda" and not cfg.ray.colocate:
        raise ConfigError("rollout.sync_transport: 'shared' on GPU is CUDA IPC, which needs each engine on its policy "
                          "rank's GPU: set ray.colocate=true, or use auto or broadcast")
    if cfg.device == "cpu":
        for key in ("num_gpus", "gpus_per_policy_rank", "gpus_per_rollout", "gpus_per_aux"):
            if getattr(cfg.ray, key):
                raise ConfigError(f"ray.{key}: must be 0 when device is 'cpu'")
    _validate_gpu_placement(cfg)


# *.model.attn_implementation -> (the package it needs, the device it needs)
ATTN_NEEDS = {"flash_attention_2": ("flash_attn", "cuda"), "flash_attention_3": ("flash_attn_interface", "cuda"),
              "flex_attention": ("torch.nn.attention.flex_attention", "")}


def _validate_attn_implementations(cfg: Config) -> None:
    """An attention kernel asked of a model must be importable here (the image every actor runs) and on its device."""
    import importlib.util

    models = {f"{k}.model": getattr(cfg, k).model for k in ("policy", "critic", "preference_model", "labeler")}
    models["eval.judge"] = cfg.eval.judge
    for key, mc in models.items():
        package, device = ATTN_NEEDS.get(mc.attn_implementation or "", ("", ""))
        if device and cfg.device != device:
            raise ConfigError(f"{key}.attn_implementation: {mc.attn_implementation} needs device {device}, got "
                              f"{cfg.device}; allowed there: null (transformers' default), eager, sdpa, flex_attention")
        try:
            found = not package or importlib.util.find_spec(package) is not None
        except ModuleNotFoundError:  # a parent package missing
            found = False
        if not found:
            raise ConfigError(f"{key}.attn_implementation: {mc.attn_implementation} needs the '{package}' package, "
                              "which is not installed; install it or choose null (transformers' default), eager "
                              "or sdpa")


def _validate_gpu_placement(cfg: Config) -> None:
    """Tensor parallelism, colocation, sleep mode and ZeRO-Offload against the GPUs the roles are given (the layout
    is rlaif.config.placement's, which actors/roles.py places)."""
    r, ro, pc = cfg.ray, cfg.rollout, cfg.policy
    tp, cuda = ro.tensor_parallel_size, cfg.device == "cuda"
    if ro.sleep_level:
        if not cuda:
            raise ConfigError(f"rollout.sleep_level: vLLM's sleep mode needs device cuda (vLLM on CPU cannot sleep); "
                              f"allowed on cpu: 0, got {ro.sleep_level}")
        if not r.colocate:
            raise ConfigError("rollout.sleep_level: frees the engines' GPU memory for the policy ranks that share "
                              "their GPUs, which needs ray.colocate=true; set rollout.sleep_level=0 otherwise")
        if cfg.trainer.async_:
            raise ConfigError("rollout.sleep_level: engines cannot sleep while trainer.async=true generates the next "
                              "step during the update; set one of them off (sleep_level 0 or async false)")
    if pc.lora.rank and pc.lora.dropout:
        raise ConfigError(f"policy.lora.dropout: the policy trains without dropout (it would make the first PPO ratio "
                          f"differ from 1 and add noise the algorithms do not account for): must be 0, got "
                          f"{pc.lora.dropout:g}")
    for sect in ("policy", "critic", "preference_model"):
        if not getattr(cfg, sect).lora.target_modules:
            raise ConfigError(f"{sect}.lora.target_modules: name at least one linear layer (q_proj, v_proj, ...) or "
                              "'all-linear'")
    for key in ("offload_optimizer", "offload_param"):
        if getattr(pc, key) and not cuda:
            raise ConfigError(f"policy.{key}: ZeRO-Offload moves training state from the GPU to CPU memory; on device "
                              "cpu it is already there: set it false")
    if pc.offload_optimizer and pc.zero_stage == 0:
        raise ConfigError("policy.offload_optimizer: needs ZeRO (policy.zero_stage 1, 2 or 3), got 0")
    if pc.offload_param and pc.zero_stage != 3:
        raise ConfigError(f"policy.offload_param: offloads ZeRO-3's partitioned parameters: needs policy.zero_stage "
                          f"3, got {pc.zero_stage}")
    if not cuda:
        return
    # vLLM's Ray executor gives each TP worker one GPU bundle; a TP 1 engine runs on (a share of) one GPU.
    if tp > 1 and r.gpus_per_rollout != tp:
        raise ConfigError(f"ray.gpus_per_rollout: an engine with rollout.tensor_parallel_size = {tp} uses {tp} GPUs "
                          f"(one per tensor-parallel worker): set ray.gpus_per_rollout = {tp}, got "
                          f"{r.gpus_per_rollout:g}")
    if tp == 1 and not 0 < r.gpus_per_rollout <= 1:
        raise ConfigError(f"ray.gpus_per_rollout: an engine with rollout.tensor_parallel_size = 1 runs on one GPU or a "
                          f"share of one: must be in (0, 1], got {r.gpus_per_rollout:g}")
    if tp > 1 and r.placement_rollout in ("SPREAD", "STRICT_SPREAD"):
        raise ConfigError(f"ray.placement_rollout: {r.placement_rollout} would spread one engine's "
                          f"{tp} tensor-parallel workers over nodes; with rollout.tensor_parallel_size > 1 use PACK "
                          "or STRICT_PACK")
    if r.gpus_per_policy_rank <= 0:
        raise ConfigError(f"ray.gpus_per_policy_rank: the policy (and critic) ranks train on GPUs on device cuda: "
                          f"must be > 0, got {r.gpus_per_policy_rank:g}")
    ranks = max(pc.num_ranks, cfg.critic.num_ranks if cfg.rl.algorithm == "ppo" else 1)
    if not r.colocate and r.gpus_per_policy_rank < 1 and ranks > 1:
        # Ray may give two fractional ranks the same GPU; NCCL refuses two ranks of one group on one GPU.
        raise ConfigError(f"ray.gpus_per_policy_rank: {r.gpus_per_policy_rank:g} would let two of the {ranks} "
                          "DeepSpeed ranks share one GPU, which NCCL refuses: set it to 1, or ray.colocate=true "
                          "(one GPU per rank, shared with that rank's engine)")
    if cfg.preference_model.num_ranks > 1 and r.gpus_per_aux < 1:
        raise ConfigError(f"ray.gpus_per_aux: {r.gpus_per_aux:g} would let two of the preference model's "
                          f"{cfg.preference_model.num_ranks} DeepSpeed ranks (preference_model.num_ranks) share one "
                          "GPU, which NCCL refuses: set it to 1 or preference_model.num_ranks=1")
    if r.colocate:
        plan = role_plan(cfg, "rl")  # RL's bundle 0 holds every role any stage colocates there
        asked, roles = colocated_gpu_share(plan)
        if asked > 1 + 1e-9:
            keys = {"policy": "ray.gpus_per_policy_rank", "critic": "ray.gpus_per_policy_rank",
                    "rollout": "ray.gpus_per_rollout", "reference": "ray.gpus_per_aux", "labeler": "ray.gpus_per_aux"}
            parts = " + ".join(f"{role} {plan[role][1]:g} ({keys[role]})" for role in roles)
            raise ConfigError(f"ray.colocate: the GPU of bundle 0 is asked for {parts} = {asked:g} GPUs, more than "
                              "the one GPU the bundle holds; lower those ray.gpus_per_* so they add up to at most 1")


def validate_reward_model(cfg: Config) -> None:
    """rl.reward_model's cross-field checks: it replaces the trained PM (rlaif/run/reward_model.py), so it needs the
    PM's slot and refuses what only trains a PM."""
    rl = cfg.rl
    if rl.reward_model_revision and not rl.reward_model:
        raise ConfigError(f"rl.reward_model_revision: '{rl.reward_model_revision}' pins a revision of rl.reward_model, "
                          "which is empty")
    if not rl.reward_model:
        return
    if not rl.use_preference_model:
        raise ConfigError(f"rl.reward_model: '{rl.reward_model}' is served in the preference model's place, but "
                          "rl.use_preference_model is false; allowed: rl.use_preference_model=true (the default) with "
                          "rl.reward_model, or rl.reward_model empty")
    if cfg.preference_model.human_pairs:
        raise ConfigError(f"preference_model.human_pairs: '{cfg.preference_model.human_pairs}' trains the preference "
                          "model, and with rl.reward_model set none trains; allowed: empty, or rl.reward_model empty")
    lora = getattr(cfg.preference_model, "lora", None)
    if lora is not None and getattr(lora, "rank", 0):
        raise ConfigError(f"preference_model.lora.rank: {lora.rank} puts adapters on the preference model to train, "
                          "and with rl.reward_model set none trains; allowed: 0, or rl.reward_model empty")


def validate_eval(cfg: Config) -> None:
    ec, rc = cfg.eval, cfg.red_team
    for key in ("judge_function", "harm_function"):
        spec = getattr(ec, key)
        if spec and (spec.count(":") != 1 or not all(spec.split(":"))):
            raise ConfigError(f"eval.{key}: '{spec}' must look like 'package.module:function'")
    if ec.judge.path and (ec.judge_function or ec.harm_function):
        raise ConfigError("eval.judge and eval.judge_function / eval.harm_function are alternatives: set one")
    if bool(ec.judge_function) != bool(ec.harm_function):
        raise ConfigError("eval.judge_function and eval.harm_function go together (pairwise and harm verdicts)")
    for key in ("prompts_per_set", "max_new_tokens", "bootstrap_samples"):
        if getattr(ec, key) < 1:
            raise ConfigError(f"eval.{key}: must be >= 1, got {getattr(ec, key)}")
    if ec.judge_validation_samples < 0:
        raise ConfigError(f"eval.judge_validation_samples: must be >= 0 (0: no validation), got "
                          f"{ec.judge_validation_samples}")
    if ec.temperature < 0:
        raise ConfigError(f"eval.temperature: must be >= 0, got {ec.temperature}")
    for key in ("zero_shot", "few_shot_examples", "max_question_tokens", "max_answer_tokens", "self_bleu_sample"):
        if getattr(rc, key) < 1:
            raise ConfigError(f"red_team.{key}: must be >= 1, got {getattr(rc, key)}")
    if ec.every < 0:
        raise ConfigError(f"eval.every: must be >= 0, got {ec.every}")
    if ec.every and not ec.enabled:
        raise ConfigError("eval.every: saves checkpoints for the evaluation at the end of `rlaif train`, which "
                          "eval.enabled turns on; set eval.enabled=true or eval.every=0")
    if ec.enabled and not (ec.judge.path or ec.judge_function):
        raise ConfigError("eval.enabled: the evaluation needs a judge the optimizer never saw: set eval.judge (a "
                          "model) or eval.judge_function and eval.harm_function")
    if rc.few_shot_rounds < 0 or rc.few_shot_per_round < 0:
        raise ConfigError("red_team.few_shot_rounds and red_team.few_shot_per_round: must be >= 0")
    if rc.few_shot_temperature <= 0 or rc.temperature <= 0:
        raise ConfigError("red_team.few_shot_temperature and red_team.temperature: must be > 0")
    if not 0.0 <= rc.harm_threshold < 1.0:
        raise ConfigError(f"red_team.harm_threshold: must be in [0, 1), got {rc.harm_threshold}")
    if rc.target_function and (rc.target_function.count(":") != 1 or not all(rc.target_function.split(":"))):
        raise ConfigError(f"red_team.target_function: '{rc.target_function}' must look like 'package.module:function'")
    if rc.method == "rl" and rc.red_prompt != "chat":
        raise ConfigError("red_team.method=rl: `rlaif train` gives the red LM its instruction as a chat user turn, so "
                          "red_team.red_prompt must be chat (continuation is not supported for the RL red LM)")


def validate_alarms(cfg: Config) -> None:
    ac = cfg.alarms
    if ac.window < 1:
        raise ConfigError(f"alarms.window: must be >= 1, got {ac.window}")
    for key in ("kl_band", "length_band"):
        band = getattr(ac, key)
        if band and (len(band) != 2 or band[0] > band[1]):
            raise ConfigError(f"alarms.{key}: must be [low, high] with low <= high (or [] for off), got {band}")
    if not 0.0 <= ac.boilerplate_max <= 1.0:
        raise ConfigError(f"alarms.boilerplate_max: must be in [0, 1] (1: off), got {ac.boilerplate_max}")
    if not 0.0 <= ac.reward_agreement_min <= 1.0:
        raise ConfigError(f"alarms.reward_agreement_min: must be in [0, 1] (0: off), got {ac.reward_agreement_min}")
    if ac.baseline_steps < 1:
        raise ConfigError(f"alarms.baseline_steps: must be >= 1, got {ac.baseline_steps}")
    for key, top in (("length_corr_rise", 2.0), ("truncation_rise", 1.0), ("refusal_rise", 1.0)):
        if not 0.0 <= getattr(ac, key) <= top:
            raise ConfigError(f"alarms.{key}: must be in [0, {top:g}] ({top:g}: off), got {getattr(ac, key)}")
    if ac.divergence_window < 0:
        raise ConfigError(f"alarms.divergence_window: must be >= 0 eval points (0: off), got {ac.divergence_window}")
    if ac.divergence_window:
        if not cfg.trainer.eval_every:
            raise ConfigError("alarms.divergence_window: compares eval points, which trainer.eval_every > 0 turns on")
        if not (cfg.eval.judge.path or cfg.eval.judge_function):
            raise ConfigError("alarms.divergence_window: needs a held-out judge: set eval.judge (a model) or "
                              "eval.judge_function and eval.harm_function")
    off = {name: not on for name, on in enabled_alarms(ac).items()}
    for name in cfg.trainer.stop_on_alarm:
        if name not in (*ALARMS, "all"):
            raise ConfigError(f"trainer.stop_on_alarm: unknown alarm {name!r}; allowed: {', '.join(ALARMS)}, all")
        if name != "all" and off[name]:
            raise ConfigError(f"trainer.stop_on_alarm: the {name} alarm is off; configure it in alarms.*")


def _validate_self_consistency(sc: SLCAIConfig) -> None:
    if sc.self_consistency == 1 or sc.self_consistency < 0:
        raise ConfigError(f"sl_cai.self_consistency: a majority needs >= 2 samples per revision (0: off), got "
                          f"{sc.self_consistency}")
    if sc.self_consistency and sc.self_consistency_key not in ("refusal", "answer"):
        import_callable(sc.self_consistency_key, "sl_cai.self_consistency_key")  # a bad spec fails here


def _validate_labeler(lc: LabelerConfig) -> None:
    if not 0.0 < lc.gpu_memory_utilization <= 1.0:
        raise ConfigError(f"labeler.gpu_memory_utilization: must be in (0, 1], got {lc.gpu_memory_utilization}")
    if lc.function:
        import_callable(lc.function, "labeler.function")  # imported now: a bad spec fails at config load, naming it
        if lc.mode == "cot" or lc.principles_per_pair != 1 or lc.few_shot_examples:
            raise ConfigError("labeler.function: a function judge takes no principle, rationale or example; leave "
                              "labeler.mode = 'logprob', labeler.principles_per_pair = 1, "
                              "labeler.few_shot_examples = 0")

