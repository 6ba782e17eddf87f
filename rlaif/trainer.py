"""The central trainer: RL-CAI written once, step by step; the roles run as Ray actors behind it."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
import torch
from tqdm import tqdm

from actors.critic import CriticWorker
from actors.group import ActorGroup, get
from actors.labeler import LabelerWorker
from actors.policy import PolicyWorker, reduce_stats
from actors.preference import PreferenceModelWorker
from actors.reference import ReferenceWorker
from actors.rollout import Pending, RolloutEngines
from actors.weight_sync import WeightSync
from rlaif.alarms import AlarmMonitor
from rlaif.algorithms import (
    ALGORITHMS,
    batch_denominator,
    load_reward_functions,
    make_experience,
    needs_old_logprobs,
    needs_reference,
    reward_function_scores,
    shape_scores,
)
from rlaif.batch import Batch
from rlaif.config import Config, save_config
from rlaif.data import PromptLoader
from rlaif.evaluate import boilerplate_flags
from rlaif.human_labels import load_human_labels, write_human_labels, write_jsonl
from rlaif.losses import AdaptiveKLController, FixedKLController, RunningMoments
from rlaif.models import resolve_model_path
from rlaif.splits import plan_prompts
from rlaif.stages import (
    feedback_integrity,
    label_stats,
    sample_and_label,
    score_pm,
    sl_cai,
    train_preference_model,
)
from rlaif.tracking import Tracker

log = logging.getLogger("rlaif")


class Roles:
    """One handle per role. Every call is bounded by trainer.timeout_s. A stage starts only the roles it needs."""

    def __init__(self, cfg: Config, stage: str = "rl") -> None:
        rl = stage == "rl"
        r, t = cfg.ray, cfg.trainer.timeout_s
        self.timeout = t

        def actor(cls, gpus: float, *args):
            return ray.remote(cls).options(num_cpus=1, num_gpus=gpus).remote(cfg, *args)

        def group(cls, ranks: int, gpus: float, name: str) -> ActorGroup:
            return ActorGroup(cls, ranks, cfg, num_gpus=gpus, timeout=t, name=name)

        self.rollout = RolloutEngines(cfg, r.gpus_per_rollout, t, stage)  # its context is sized for the stage
        self.labeler = actor(LabelerWorker, r.gpus_per_aux) if stage != "sl-cai" else None
        self.reference = actor(ReferenceWorker, r.gpus_per_aux) if rl and needs_reference(cfg.rl) else None
        use_pm = rl and cfg.rl.use_preference_model
        self.pm = group(PreferenceModelWorker, cfg.preference_model.num_ranks, r.gpus_per_aux, "pm") if use_pm else None
        self.policy = group(PolicyWorker, cfg.policy.num_ranks, r.gpus_per_policy_rank, "policy") \
            if stage != "label" else None
        needs_critic = rl and ALGORITHMS[cfg.rl.algorithm].needs_critic
        self.critic = group(CriticWorker, cfg.critic.num_ranks, r.gpus_per_policy_rank, "critic") if needs_critic \
            else None
        # Surface constructor failures (bad model, vLLM start-up) now rather than at the first step.
        singles = [a for a in (*self.rollout.actors, self.labeler, self.reference) if a is not None]
        get([a.__ray_ready__.remote() for a in singles], t, "starting the rollout, labeler and reference actors")
        self.sync_weights = WeightSync(cfg, self.policy, self.rollout.actors) if rl else None

    def get(self, refs, what: str):
        return get(refs, self.timeout, what)

    def shutdown(self) -> None:
        for handle in (*self.rollout.actors, self.labeler, self.reference):
            if handle is not None:
                ray.kill(handle)
        for grp in (self.pm, self.policy, self.critic):
            if grp is not None:
                grp.shutdown()


def sharded(group: ActorGroup, method: str, batch: Batch, *args) -> list:
    """Start `method` on every rank with its contiguous shard of the batch; returns the object refs."""
    return [getattr(a, method).remote(s, *args) for a, s in zip(group.actors, batch.split(len(group.actors)))]


@dataclass
class RLState:
    """What the loop carries from step to step besides the models."""

    kl: FixedKLController | AdaptiveKLController
    moments: RunningMoments = field(default_factory=RunningMoments)
    reward_fns: list = field(default_factory=list)


def reward(cfg: Config, roles: Roles, state: RLState, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """The training reward of each response: preference-model score + rule-based reward functions + the labeler's
    direct rating (rl.use_labeler_rating); also each part's mean, for logging."""
    prompts, texts = batch.texts["prompt"], batch.texts["response"]
    rating_ref = roles.labeler.rate.remote(prompts, texts) if cfg.rl.use_labeler_rating else None
    total, parts = torch.zeros(len(texts)), {}
    if roles.pm is not None:
        pm = torch.tensor(score_pm(roles, prompts, texts))
        total, parts["pm"] = total + pm, pm.mean().item()
    for fn in state.reward_fns:
        values = reward_function_scores(fn, prompts, texts)
        total, parts[fn.__name__] = total + values, values.mean().item()
    if rating_ref is not None:
        rating = torch.tensor(roles.get(rating_ref, "labeler.rate"))
        total, parts["labeler_rating"] = total + rating, rating.mean().item()
    return total, parts


def evaluate(cfg: Config, roles: Roles, state: RLState, prompts: list[str], judge=None) -> dict[str, float]:
    """The training reward on held-out prompts the optimizer never trains on, with a fixed sampling seed; and the
    held-out judge's verdict on the same responses (rlaif.alarms.JudgeVerdict), when given."""
    batch = roles.rollout.generate(prompts, 2, cfg.seed + 4242)
    total, parts = reward(cfg, roles, state, batch)
    out = {"eval/reward": total.mean().item(), **{f"eval/{k}": v for k, v in parts.items()},
           "eval/length": batch["response_len"].float().mean().item()}
    return out | (judge(batch.texts["prompt"], batch.texts["response"]) if judge is not None else {})


def generate(cfg: Config, roles: Roles, loader: PromptLoader, step: int) -> Pending:
    """Start sampling the step's prompts on the vLLM engines (n per prompt, a fixed seed per step)."""
    prompts = [p.text for p in loader.next(cfg.rl.prompts_per_step)]
    return roles.rollout.submit(prompts, cfg.rollout.n_samples, cfg.seed + step * 7919)


def rl_step(cfg: Config, roles: Roles, state: RLState, step: int, batch: Batch) -> tuple[dict, list[dict]]:
    """One RL-CAI step on sampled responses: score -> AI-label -> experience -> ZeRO update -> weight sync."""
    rl, n, timings = cfg.rl, cfg.rollout.n_samples, {}

    # Score, label and compute log-probs (and values) concurrently: each is a different actor.
    t = time.perf_counter()
    shared = ray.put(batch)
    texts, pair_prompts = batch.texts["response"], batch.texts["prompt"][0::2]
    label_ref = roles.labeler.compare.remote(pair_prompts, texts[0::2], texts[1::2]) \
        if step % rl.label_every == 0 else None
    ref_ref = roles.reference.logprobs.remote(shared) if roles.reference else None
    old_refs = sharded(roles.policy, "logprobs", batch) if needs_old_logprobs(rl) else []
    value_refs = sharded(roles.critic, "values", batch) if roles.critic else []
    raw, reward_parts = reward(cfg, roles, state, batch)  # blocks on the PM; the others already run
    labels = roles.get(label_ref, "labeler.compare") if label_ref else []
    if ref_ref:
        batch["ref_logprobs"] = roles.get(ref_ref, "reference.logprobs")
    if old_refs:
        batch["old_logprobs"] = torch.cat(roles.get(old_refs, "policy.logprobs"))
    if value_refs:
        batch["values"] = torch.cat(roles.get(value_refs, "critic.values"))
    if labels:
        batch["p_first"] = torch.tensor([lab["p_first"] for lab in labels]).repeat_interleave(2)
    timings["time/score"] = time.perf_counter() - t

    batch["scores"] = shape_scores(rl, raw, batch["response_len"].float(), batch["finished"], state.moments)
    exp_stats = make_experience(rl, n, state.kl.value, batch)
    batch.meta["denom"] = batch_denominator(rl, batch)

    t = time.perf_counter()
    policy_refs = sharded(roles.policy, "train", batch, state.kl.value)
    critic_refs = sharded(roles.critic, "train", batch) if roles.critic else []
    train_metrics = reduce_stats(roles.get(policy_refs, "policy.train"))
    critic_metrics = reduce_stats(roles.get(critic_refs, "critic.train")) if critic_refs else {}
    timings["time/train"] = time.perf_counter() - t

    t = time.perf_counter()
    sync = roles.sync_weights(version=step + 1)  # waits for a generation still in flight (async mode)
    timings["time/weight_sync"] = time.perf_counter() - t

    kl_coef = state.kl.value
    state.kl.update(exp_stats["kl/policy_ref"], len(batch))
    lengths = batch["response_len"].float()
    metrics = {
        "reward/score": raw.mean().item(), "reward/shaped": batch["scores"].mean().item(),
        **{f"reward/{k}": v for k, v in reward_parts.items()}, **exp_stats, "kl/coef": kl_coef,
        "response/length": lengths.mean().item(), "response/finished": batch["finished"].float().mean().item(),
        "response/boilerplate": sum(boilerplate_flags(batch.texts["prompt"], texts)) / len(texts),  # collapse
        **{f"policy/{k}": v for k, v in train_metrics.items()}, **critic_metrics, **timings, **sync,
        "time/generate": batch.meta["gen_seconds"],
        "rollout/tokens_per_second": batch.meta["gen_tokens"] / batch.meta["gen_seconds"],
        "rollout/staleness": float(step - batch.meta["weight_version"]),  # updates behind the policy it trains
        "data/prompts_truncated": float(batch.meta["prompts_truncated"]),
    }
    if "tis_mean_abs_log_ratio" in train_metrics:
        metrics["logprob/vllm_vs_trainer_abs_diff"] = train_metrics["tis_mean_abs_log_ratio"]
    rows = []
    if labels:
        metrics.update(label_stats(labels, prefix="labels/"))
        if reward_parts:  # does the reward rank each pair as the AI labeler does? Falling agreement: reward hacking
            agree = [(raw[2 * i] > raw[2 * i + 1]).item() == (lab["p_first"] > 0.5) for i, lab in enumerate(labels)]
            metrics["labels/reward_agreement"] = sum(agree) / len(agree)
        rows = [
            {"step": step + 1, "prompt": pair_prompts[i], "response_1": texts[2 * i], "response_2": texts[2 * i + 1],
             "principle": lab["principle"], "ai_label_p1": round(lab["p_first"], 4),
             "reward_1": round(raw[2 * i].item(), 4), "reward_2": round(raw[2 * i + 1].item(), 4)}
            for i, lab in enumerate(labels[: cfg.trainer.log_samples])
        ]
    return metrics, rows


def init_ray(cfg: Config) -> None:
    if os.environ.get("RAY_ADDRESS") or cfg.ray.address != "local":
        # Inside `ray job submit` RAY_ADDRESS points at the cluster: join it, never start a second Ray. The job's
        # runtime_env (cluster/runtime_env.yaml) carries code and environment to the actors.
        ray.init(address=os.environ.get("RAY_ADDRESS") or cfg.ray.address)
    else:
        env = {k: v for k, v in os.environ.items() if k.startswith(("RLAIF_", "VLLM_", "WANDB_"))}
        ray.init(address="local", num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus,
                 include_dashboard=False, runtime_env={"env_vars": env})


def prepare(cfg: Config, stage: str = "rl") -> tuple[list, list, list]:
    """Fail on bad input before anything is started or written; then create the run folder.

    Returns the RL prompts, the held-out eval prompts (rlaif.splits: one split for every prompt source; both
    written to data/) and the reward functions."""
    sl_cai_runs = stage == "sl-cai" or (stage == "rl" and cfg.sl_cai.enabled)
    plan = plan_prompts(cfg, ("rl", "red_team", "helpful") if sl_cai_runs else ("rl",))
    if cfg.preference_model.human_pairs and stage == "rl":
        load_human_labels(cfg.preference_model.human_pairs)
    reward_fns = load_reward_functions(cfg.rl.reward_functions)
    for mc in (cfg.policy.model, cfg.labeler.model, cfg.preference_model.model, cfg.critic.model):
        if mc.path:
            resolve_model_path(mc.path, cfg.cache_dir)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    save_config(cfg, Path(cfg.output_dir) / "config.yaml")
    for name, records in (("train_prompts", plan.rl.train), ("eval_prompts", plan.rl.heldout)):
        write_jsonl(Path(cfg.output_dir) / "data" / f"{name}.jsonl", [r.to_dict() for r in records])
    return plan.rl.train, plan.rl.heldout, reward_fns


def label(cfg: Config) -> Path:
    """`rlaif label`: AI-label pairs sampled from the policy and write them with the feedback-integrity report."""
    prompts, _, _ = prepare(cfg, stage="label")
    init_ray(cfg)
    tracker = Tracker(cfg, Path(cfg.output_dir))
    try:
        roles = Roles(cfg, stage="label")
        pairs = sample_and_label(cfg, roles, PromptLoader(prompts, cfg.seed))
        path = write_human_labels(Path(cfg.output_dir) / "feedback" / "ai_labels.jsonl", [
            {"id": f"ai:{i:05d}", "prompt": p, "response_a": a, "response_b": b, "p_a": lab["p_first"],
             "source": "ai", "principle": lab["principle"]}
            for i, (p, a, b, lab) in enumerate(zip(pairs["prompt"], pairs["first"], pairs["second"], pairs["labels"]))
        ])
        feedback_integrity(cfg, roles, pairs, tracker)
        return path
    finally:
        tracker.finish()
        ray.shutdown()


def sl_cai_only(cfg: Config) -> Path:
    """`rlaif sl-cai`: critique -> revision data and the SFT checkpoint, nothing else."""
    prepare(cfg, stage="sl-cai")
    init_ray(cfg)
    tracker = Tracker(cfg, Path(cfg.output_dir))
    try:
        return sl_cai(cfg, Roles(cfg, stage="sl-cai"), tracker)
    finally:
        tracker.finish()
        ray.shutdown()


def train(cfg: Config) -> Path:
    """Check inputs, (SL-CAI,) start the roles, fit the PM on AI labels, run RL, save a Hugging Face checkpoint."""
    from rlaif.eval_stage import TrainingEval  # imports this module: not at the top

    evals = TrainingEval(cfg)  # the eval judge, prompts and models are checked now; the baseline is this policy
    prompts, held_out, reward_fns = prepare(cfg)
    out = Path(cfg.output_dir)
    init_ray(cfg)
    tracker = Tracker(cfg, out)
    try:
        if cfg.sl_cai.enabled:  # CAI phase 1; RL then starts from (and keeps its KL to) the SL-CAI model
            sl_roles = Roles(cfg, stage="sl-cai")
            checkpoint = sl_cai(cfg, sl_roles, tracker)
            sl_roles.shutdown()
            cfg = dataclasses.replace(cfg, policy=dataclasses.replace(
                cfg.policy, model=dataclasses.replace(cfg.policy.model, path=str(checkpoint))))
        t0 = time.perf_counter()
        roles = Roles(cfg)
        tracker.log({"time/startup": time.perf_counter() - t0}, step=0)
        loader = PromptLoader(prompts, cfg.seed)
        log.info("AI feedback -> preference model on %d pairs", cfg.preference_model.label_prompts)
        pairs = sample_and_label(cfg, roles, loader)  # RL-CAI: AI feedback on the policy's own samples
        feedback_integrity(cfg, roles, pairs, tracker)  # measured every run; stops here below the gate
        if roles.pm is not None:
            pm = train_preference_model(cfg, roles, pairs, tracker)
            log.info("preference model: %s", {k: round(v, 4) for k, v in pm.items()})
        rl = cfg.rl
        kl = AdaptiveKLController(rl.kl_coef, rl.kl_target, rl.kl_horizon) if rl.kl_target > 0 else \
            FixedKLController(rl.kl_coef)
        state = RLState(kl=kl, reward_fns=reward_fns)
        eval_texts = [p.text for p in held_out]
        every = cfg.trainer.eval_every
        alarms, judge = AlarmMonitor(cfg.alarms, cfg.trainer.stop_on_alarm, tracker), evals.verdict(held_out)
        if every and eval_texts:
            ev = evaluate(cfg, roles, state, eval_texts, judge)
            tracker.log(ev, step=0)
            alarms.update(0, ev)
        bar = tqdm(range(cfg.trainer.steps), desc="RL", disable=not cfg.trainer.progress, dynamic_ncols=True)
        # Synchronous: generate step t's samples, then train on them. Async (one step off-policy): step t + 1's
        # samples are generated, with the weights of t - 1, while step t trains; the weight sync after step t waits
        # for that generation; truncated importance sampling corrects for the one-update lag.
        pending = generate(cfg, roles, loader, 0) if cfg.trainer.steps else None
        for step in bar:
            t = time.perf_counter()
            samples = pending.result()
            gen_wait = time.perf_counter() - t
            last = step + 1 == cfg.trainer.steps
            if cfg.trainer.async_ and not last:
                pending = generate(cfg, roles, loader, step + 1)
            metrics, rows = rl_step(cfg, roles, state, step, samples)
            if not cfg.trainer.async_ and not last:
                pending = generate(cfg, roles, loader, step + 1)
            metrics["time/generate_wait"] = gen_wait
            metrics["time/step"] = time.perf_counter() - t
            tracker.log(metrics, step=step + 1)
            tracker.log_table("samples", rows, step=step + 1)
            alarms.update(step + 1, metrics)  # raises AlarmStop for an alarm in trainer.stop_on_alarm
            if every and eval_texts and ((step + 1) % every == 0 or step + 1 == cfg.trainer.steps):
                ev = evaluate(cfg, roles, state, eval_texts, judge)
                tracker.log(ev, step=step + 1)
                alarms.update(step + 1, ev)
            evals.snapshot(roles, step + 1)  # eval.every
            bar.set_postfix(reward=f"{metrics['reward/score']:.3f}", kl=f"{metrics['kl/policy_ref']:.4f}",
                            s=f"{metrics['time/step']:.1f}")
        saved = roles.policy.call("save", str(out / "checkpoint"))[0]
        log.info("saved the policy to %s", saved)
        evals.finish(roles, tracker, saved, cfg.trainer.steps)  # eval.enabled: RL roles shut down, then `rlaif eval`
        return Path(saved)
    finally:
        tracker.finish()
        ray.shutdown()
