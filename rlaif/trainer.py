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
from actors.group import ActorGroup, get, split_batch
from actors.labeler import LabelerWorker
from actors.policy import PolicyWorker
from actors.preference import PreferenceModelWorker
from actors.reference import ReferenceWorker
from actors.rollout import RolloutWorker
from rlaif.algorithms import ALGORITHMS, load_reward_functions, make_experience, shape_scores
from rlaif.config import Config, save_config
from rlaif.data import PromptLoader
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

        self.rollout = actor(RolloutWorker, r.gpus_per_rollout, stage)  # its context is sized for the stage
        self.labeler = actor(LabelerWorker, r.gpus_per_aux) if stage != "sl-cai" else None
        self.reference = actor(ReferenceWorker, r.gpus_per_aux) if rl else None
        use_pm = rl and cfg.rl.use_preference_model
        self.pm = group(PreferenceModelWorker, cfg.preference_model.num_ranks, r.gpus_per_aux, "pm") if use_pm else None
        self.policy = group(PolicyWorker, cfg.policy.num_ranks, r.gpus_per_policy_rank, "policy") \
            if stage != "label" else None
        needs_critic = rl and ALGORITHMS[cfg.rl.algorithm].needs_critic
        self.critic = group(CriticWorker, cfg.critic.num_ranks, r.gpus_per_policy_rank, "critic") if needs_critic \
            else None
        # Surface constructor failures (bad model, vLLM start-up) now rather than at the first step.
        singles = [a for a in (self.rollout, self.labeler, self.reference) if a is not None]
        get([a.__ray_ready__.remote() for a in singles], t, "starting the rollout, labeler and reference actors")

    def get(self, refs, what: str):
        return get(refs, self.timeout, what)

    def shutdown(self) -> None:
        for handle in (self.rollout, self.labeler, self.reference):
            if handle is not None:
                ray.kill(handle)
        for grp in (self.pm, self.policy, self.critic):
            if grp is not None:
                grp.shutdown()


def sharded(group: ActorGroup, method: str, batch: dict[str, list], *args) -> list:
    """Start `method` on every rank with its contiguous slice of the batch; returns the object refs."""
    return [getattr(a, method).remote(s, *args) for a, s in zip(group.actors, split_batch(batch, len(group.actors)))]


@dataclass
class RLState:
    """What the loop carries from step to step besides the models."""

    kl: FixedKLController | AdaptiveKLController
    moments: RunningMoments = field(default_factory=RunningMoments)
    reward_fns: list = field(default_factory=list)


def total_reward(state: RLState, pm_scores: list[float] | None, prompts: list[str], texts: list[str]):
    """Preference-model score plus every rule-based reward function; also each part's mean, for logging."""
    total, parts = torch.zeros(len(texts)), {}
    if pm_scores is not None:
        total += torch.tensor(pm_scores)
        parts["pm"] = sum(pm_scores) / len(pm_scores)
    for fn in state.reward_fns:
        values = torch.tensor(fn(prompts, texts), dtype=torch.float32)
        if values.shape != total.shape:
            raise ValueError(f"reward function {fn.__module__}.{fn.__name__} returned {values.numel()} values "
                             f"for {len(texts)} responses")
        total += values
        parts[fn.__name__] = values.mean().item()
    return total, parts


def evaluate(cfg: Config, roles: Roles, state: RLState, prompts: list[str]) -> dict[str, float]:
    """Reward on held-out prompts the optimizer never trains on, with a fixed sampling seed."""
    s = roles.get(roles.rollout.generate.remote(prompts, 2, cfg.seed + 4242), "rollout.generate (eval)")
    per_sample = [p for p in prompts for _ in range(2)]
    pm = score_pm(roles, per_sample, s["response_text"]) if roles.pm else None
    total, parts = total_reward(state, pm, per_sample, s["response_text"])
    return {"eval/reward": total.mean().item(), **{f"eval/{k}": v for k, v in parts.items()},
            "eval/length": sum(map(len, s["response_ids"])) / len(s["response_ids"])}


def rl_step(cfg: Config, roles: Roles, loader: PromptLoader, state: RLState, step: int) -> tuple[dict, list[dict]]:
    """One RL-CAI step: sample -> score -> AI-label -> experience -> ZeRO update -> weight sync into vLLM."""
    n, timings = cfg.rollout.n_samples, {}
    t = time.perf_counter()
    prompts = [p.text for p in loader.next(cfg.rl.prompts_per_step)]
    samples = roles.get(roles.rollout.generate.remote(prompts, n, cfg.seed + step * 7919), "rollout.generate")
    P, R, texts = samples["prompt_ids"], samples["response_ids"], samples["response_text"]
    timings["time/generate"] = time.perf_counter() - t

    # Score, label and compute log-probs (and values) concurrently: each is a different actor.
    t = time.perf_counter()
    seqs = {"prompt_ids": P, "response_ids": R}
    per_sample = [p for p in prompts for _ in range(n)]
    rating_ref = roles.labeler.rate.remote(per_sample, texts) \
        if cfg.rl.use_labeler_rating else None
    label_ref = roles.labeler.compare.remote([p for p in prompts for _ in range(n // 2)], texts[0::2], texts[1::2])
    ref_ref = roles.reference.logprobs.remote(P, R)
    old_refs = sharded(roles.policy, "logprobs", seqs)
    value_refs = sharded(roles.critic, "values", seqs) if roles.critic else []
    pm_scores = score_pm(roles, per_sample, texts) if roles.pm else None  # blocks; the others already run
    scores, _ = total_reward(state, pm_scores, per_sample, texts)
    if rating_ref is not None:
        scores += torch.tensor(roles.get(rating_ref, "labeler.rate"))
    labels, ref_lp = roles.get([label_ref, ref_ref], "labeler/reference")
    old_lp = [x for part in roles.get(old_refs, "policy.logprobs") for x in part]
    values = [x for part in roles.get(value_refs, "critic.values") for x in part] if value_refs else None
    timings["time/score"] = time.perf_counter() - t

    raw = scores.clone()
    scores = shape_scores(cfg.rl, scores, torch.tensor([len(r) for r in R], dtype=torch.float32),
                          torch.tensor(samples["finished"]), state.moments)
    exp, exp_stats = make_experience(cfg.rl, n, state.kl.value, scores, old_lp, ref_lp, values,
                                     [lab["p_first"] for lab in labels])
    batch = {**seqs, "old_logprobs": old_lp, "sampler_logprobs": samples["logprobs"], "ref_logprobs": ref_lp, **exp}
    if values is not None:
        batch["values"] = values

    t = time.perf_counter()
    policy_refs = sharded(roles.policy, "train", batch, state.kl.value)
    critic_refs = sharded(roles.critic, "train", batch) if roles.critic else []
    train_metrics = roles.get(policy_refs, "policy.train")
    critic_metrics = roles.get(critic_refs, "critic.train")
    timings["time/train"] = time.perf_counter() - t

    t = time.perf_counter()
    weight_refs = [a.state_dict.remote() for a in roles.policy.actors]  # all ranks: ZeRO-3 gathers collectively
    roles.get(roles.rollout.load_weights.remote(weight_refs[0], step + 1), "weight sync policy -> rollout")
    roles.get(weight_refs, "policy.state_dict")
    timings["time/weight_sync"] = time.perf_counter() - t

    kl_coef = state.kl.value
    state.kl.update(exp_stats["kl/policy_ref"], len(R))
    mismatch = [abs(a - b) for v, o in zip(samples["logprobs"], old_lp) for a, b in zip(v, o)]
    metrics = {
        "reward/score": raw.mean().item(), "reward/shaped": scores.mean().item(), **exp_stats, "kl/coef": kl_coef,
        "response/length": sum(map(len, R)) / len(R), "response/finished": sum(samples["finished"]) / len(R),
        "logprob/vllm_vs_trainer_abs_diff": sum(mismatch) / max(len(mismatch), 1),
        **{f"policy/{k}": sum(m[k] for m in train_metrics) / len(train_metrics) for k in train_metrics[0]},
        **{k: sum(m[k] for m in critic_metrics) / len(critic_metrics) for k in (critic_metrics or [{}])[0]},
        **label_stats(labels, prefix="labels/"), **timings,
        "rollout/tokens_per_second": samples["stats"]["gen_tokens"] / samples["stats"]["gen_seconds"],
    }
    # Does the reward rank each pair the way the AI labeler does? Falling agreement is a reward-hacking alarm.
    agree = [(raw[2 * i] > raw[2 * i + 1]).item() == (lab["p_first"] > 0.5) for i, lab in enumerate(labels)]
    metrics["labels/reward_agreement"] = sum(agree) / len(agree)
    rows = [
        {"step": step + 1, "prompt": prompts[i // (n // 2)], "response_1": texts[2 * i], "response_2": texts[2 * i + 1],
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
        if every and eval_texts:
            tracker.log(evaluate(cfg, roles, state, eval_texts), step=0)
        bar = tqdm(range(cfg.trainer.steps), desc="RL", disable=not cfg.trainer.progress, dynamic_ncols=True)
        for step in bar:
            t = time.perf_counter()
            metrics, rows = rl_step(cfg, roles, loader, state, step)
            metrics["time/step"] = time.perf_counter() - t
            tracker.log(metrics, step=step + 1)
            tracker.log_table("samples", rows, step=step + 1)
            if every and eval_texts and ((step + 1) % every == 0 or step + 1 == cfg.trainer.steps):
                tracker.log(evaluate(cfg, roles, state, eval_texts), step=step + 1)
            bar.set_postfix(reward=f"{metrics['reward/score']:.3f}", kl=f"{metrics['kl/policy_ref']:.4f}",
                            s=f"{metrics['time/step']:.1f}")
        saved = roles.policy.call("save", str(out / "checkpoint"))[0]
        log.info("saved the policy to %s", saved)
        return Path(saved)
    finally:
        tracker.finish()
        ray.shutdown()
