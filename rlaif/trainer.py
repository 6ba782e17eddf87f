"""The central trainer: RL-CAI written once, step by step; the roles run as Ray actors behind it."""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import ray
import torch
from tqdm import tqdm

from actors.group import ActorGroup, get
from actors.labeler import LabelerWorker
from actors.policy import PolicyWorker
from actors.preference import PreferenceModelWorker
from actors.reference import ReferenceWorker
from actors.rollout import RolloutWorker
from rlaif.config import Config, save_config
from rlaif.data import PromptLoader, load_prompts
from rlaif.losses import kl_estimate, rloo_advantages
from rlaif.models import resolve_model_path
from rlaif.tracking import Tracker

log = logging.getLogger("rlaif")


class Roles:
    """One handle per role. Every call is bounded by trainer.timeout_s."""

    def __init__(self, cfg: Config) -> None:
        r, t = cfg.ray, cfg.trainer.timeout_s
        self.timeout = t

        def actor(cls, gpus: float):
            return ray.remote(cls).options(num_cpus=1, num_gpus=gpus).remote(cfg)

        self.rollout = actor(RolloutWorker, r.gpus_per_rollout)
        self.labeler = actor(LabelerWorker, r.gpus_per_aux)
        self.pm = actor(PreferenceModelWorker, r.gpus_per_aux)
        self.reference = actor(ReferenceWorker, r.gpus_per_aux)
        self.policy = ActorGroup(PolicyWorker, cfg.policy.num_ranks, cfg, num_gpus=r.gpus_per_policy_rank,
                                 timeout=t, name="policy")
        # Surface constructor failures (bad model, vLLM start-up) now rather than at the first step.
        get([a.__ray_ready__.remote() for a in (self.rollout, self.labeler, self.pm, self.reference)], t,
            "starting the rollout, labeler, preference-model and reference actors")

    def get(self, refs, what: str):
        return get(refs, self.timeout, what)


def shard(batch: dict[str, list], n: int) -> list[dict[str, list]]:
    size = len(next(iter(batch.values()))) // n
    return [{k: v[i * size : (i + 1) * size] for k, v in batch.items()} for i in range(n)]


def train_preference_model(cfg: Config, roles: Roles, loader: PromptLoader, tracker: Tracker) -> dict[str, float]:
    """RL-CAI stage 1: sample pairs from the policy, label them with AI feedback, fit the preference model."""
    prompts = [p.text for p in loader.next(cfg.preference_model.label_prompts)]
    s = roles.get(roles.rollout.generate.remote(prompts, 2, cfg.seed + 10**6), "rollout.generate (PM pairs)")
    firsts, seconds = s["response_text"][0::2], s["response_text"][1::2]
    labels = roles.get(roles.labeler.compare.remote(prompts, firsts, seconds), "labeler.compare (PM pairs)")
    pairs = {"prompt_ids": s["prompt_ids"][0::2], "first_ids": s["response_ids"][0::2],
             "second_ids": s["response_ids"][1::2], "p_first": [lab["p_first"] for lab in labels]}
    metrics = roles.get(roles.pm.train.remote(pairs), "preference_model.train")
    metrics.update(label_stats(labels, prefix="pm_labels/"))
    tracker.log(metrics, step=0)
    return metrics


def label_stats(labels: list[dict], prefix: str) -> dict[str, float]:
    p = [lab["p_first"] for lab in labels]
    entropy = [-(x * math.log(x + 1e-12) + (1 - x) * math.log(1 - x + 1e-12)) for x in p]
    out = {prefix + "p_first_mean": sum(p) / len(p), prefix + "entropy": sum(entropy) / len(p)}
    consistent = [lab["consistent"] for lab in labels if lab["consistent"] is not None]
    if consistent:
        out[prefix + "position_consistency"] = sum(consistent) / len(consistent)
        out[prefix + "raw_p_in_slot_a"] = sum(lab["p_first_in_a"] for lab in labels) / len(labels)
    return out


def rl_step(cfg: Config, roles: Roles, loader: PromptLoader, step: int) -> tuple[dict[str, float], list[dict]]:
    """One RL-CAI step: sample -> score -> AI-label -> experience -> ZeRO update -> weight sync into vLLM."""
    n, timings = cfg.rollout.n_samples, {}
    t = time.perf_counter()
    prompts = [p.text for p in loader.next(cfg.rl.prompts_per_step)]
    samples = roles.get(roles.rollout.generate.remote(prompts, n, cfg.seed + step * 7919), "rollout.generate")
    timings["time/generate"] = time.perf_counter() - t

    # Score, label and compute log-probs concurrently: four different actors.
    t = time.perf_counter()
    P, R = samples["prompt_ids"], samples["response_ids"]
    reward_ref = roles.pm.score.remote(P, R)
    label_ref = roles.labeler.compare.remote(
        [p for p in prompts for _ in range(n // 2)], samples["response_text"][0::2], samples["response_text"][1::2]
    )
    ref_ref = roles.reference.logprobs.remote(P, R)
    old_refs = [a.logprobs.remote(s) for a, s in zip(roles.policy.actors, shard(
        {"prompt_ids": P, "response_ids": R}, cfg.policy.num_ranks))]
    scores, labels, ref_lp = roles.get([reward_ref, label_ref, ref_ref], "score/label/reference")
    old_lp = [x for part in roles.get(old_refs, "policy.logprobs") for x in part]
    timings["time/score"] = time.perf_counter() - t

    # Experience: reward = PM score - beta * KL(policy || reference), RLOO advantage within each prompt's group.
    kl = [kl_estimate(torch.tensor(o), torch.tensor(r)).sum().item() for o, r in zip(old_lp, ref_lp)]
    rewards = torch.tensor(scores) - cfg.rl.kl_coef * torch.tensor(kl)
    advantages = rloo_advantages(rewards, n)
    batch = {"prompt_ids": P, "response_ids": R, "old_logprobs": old_lp, "advantages": advantages.tolist()}

    t = time.perf_counter()
    train_metrics = roles.policy.call_sharded("train", shard(batch, cfg.policy.num_ranks))
    timings["time/train"] = time.perf_counter() - t

    t = time.perf_counter()
    weight_refs = [a.state_dict.remote() for a in roles.policy.actors]  # all ranks: ZeRO-3 gathers collectively
    roles.get(roles.rollout.load_weights.remote(weight_refs[0], step + 1), "weight sync policy -> rollout")
    roles.get(weight_refs, "policy.state_dict")
    timings["time/weight_sync"] = time.perf_counter() - t

    mismatch = [abs(a - b) for v, o in zip(samples["logprobs"], old_lp) for a, b in zip(v, o)]
    metrics = {
        "reward/pm_score": sum(scores) / len(scores), "reward/total": rewards.mean().item(),
        "kl/policy_ref": sum(kl) / len(kl), "kl/coef": cfg.rl.kl_coef,
        "response/length": sum(map(len, R)) / len(R),
        "response/finished": sum(samples["finished"]) / len(R),
        "logprob/vllm_vs_trainer_abs_diff": sum(mismatch) / max(len(mismatch), 1),
        **{f"policy/{k}": sum(m[k] for m in train_metrics) / len(train_metrics) for k in train_metrics[0]},
        **label_stats(labels, prefix="labels/"),
        **timings,
        "rollout/tokens_per_second": samples["stats"]["gen_tokens"] / samples["stats"]["gen_seconds"],
    }
    # Does the PM rank each pair the way the AI labeler does? Falling agreement is a reward-hacking alarm.
    agree = [(scores[2 * i] > scores[2 * i + 1]) == (lab["p_first"] > 0.5) for i, lab in enumerate(labels)]
    metrics["labels/pm_agreement"] = sum(agree) / len(agree)
    rows = [
        {"step": step + 1, "prompt": prompts[i // (n // 2)], "response_1": samples["response_text"][2 * i],
         "response_2": samples["response_text"][2 * i + 1], "principle": lab["principle"],
         "ai_label_p1": round(lab["p_first"], 4), "reward_1": round(rewards[2 * i].item(), 4),
         "reward_2": round(rewards[2 * i + 1].item(), 4)}
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


def train(cfg: Config) -> Path:
    """Check inputs, start the roles, fit the PM on AI labels, run RL, save a Hugging Face checkpoint."""
    # Fail on bad input before anything is started or written.
    prompts = load_prompts(cfg.data.prompts)
    for mc in (cfg.policy.model, cfg.labeler.model, cfg.preference_model.model):
        resolve_model_path(mc.path, cfg.cache_dir)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    init_ray(cfg)
    tracker = Tracker(cfg, out)
    try:
        t0 = time.perf_counter()
        roles = Roles(cfg)
        tracker.log({"time/startup": time.perf_counter() - t0}, step=0)
        loader = PromptLoader(prompts, cfg.seed)
        log.info("AI feedback -> preference model on %d pairs", cfg.preference_model.label_prompts)
        pm = train_preference_model(cfg, roles, loader, tracker)
        log.info("preference model: %s", {k: round(v, 4) for k, v in pm.items()})
        bar = tqdm(range(cfg.trainer.steps), desc="RL", disable=not cfg.trainer.progress, dynamic_ncols=True)
        for step in bar:
            t = time.perf_counter()
            metrics, rows = rl_step(cfg, roles, loader, step)
            metrics["time/step"] = time.perf_counter() - t
            tracker.log(metrics, step=step + 1)
            tracker.log_table("samples", rows, step=step + 1)
            bar.set_postfix(reward=f"{metrics['reward/pm_score']:.3f}", kl=f"{metrics['kl/policy_ref']:.4f}",
                            s=f"{metrics['time/step']:.1f}")
        saved = roles.policy.call("save", str(out / "checkpoint"))[0]
        log.info("saved the policy to %s", saved)
        return Path(saved)
    finally:
        tracker.finish()
        ray.shutdown()
