"""The central trainer: RL-CAI written once, step by step; the roles run as Ray actors behind it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ray
import torch
from tqdm import tqdm

from actors.critic import CriticWorker
from actors.group import ActorGroup, get, kill_and_wait, split_batch
from actors.labeler import LabelerWorker
from actors.policy import PolicyWorker
from actors.preference import PreferenceModelWorker
from actors.reference import ReferenceWorker
from actors.rollout import RolloutWorker
from rlaif.algorithms import ALGORITHMS, load_reward_functions, make_experience, shape_scores
from rlaif.config import Config, ConfigError, save_config
from rlaif.constitution import load_constitution
from rlaif.data import PromptLoader, load_prompts, split_prompts
from rlaif.human_labels import HumanLabelError, write_human_labels
from rlaif.losses import AdaptiveKLController, FixedKLController, RunningMoments
from rlaif.models import resolve_models
from rlaif.runtime import LOG_DIR_ENV, log_to_dir
from rlaif.stages import (
    feedback_integrity,
    human_eval_pairs,
    label_stats,
    sample_and_label,
    score_pm,
    sl_cai,
    train_preference_model,
)
from rlaif.tracking import Tracker

log = logging.getLogger("rlaif")


def role_plan(cfg: Config, stage: str) -> dict[str, tuple[int, float]]:
    """The actors a stage starts: role -> (how many, GPUs each); every actor takes one CPU."""
    r, rl = cfg.ray, stage == "rl"
    plan = {"rollout": (1, r.gpus_per_rollout)}
    if stage != "sl-cai":
        plan["labeler"] = (1, r.gpus_per_aux)
    if rl:
        plan["reference"] = (1, r.gpus_per_aux)
    if rl and cfg.rl.use_preference_model:
        plan["preference_model"] = (cfg.preference_model.num_ranks, r.gpus_per_aux)
    if stage != "label":
        plan["policy"] = (cfg.policy.num_ranks, r.gpus_per_policy_rank)
    if rl and ALGORITHMS[cfg.rl.algorithm].needs_critic:
        plan["critic"] = (cfg.critic.num_ranks, r.gpus_per_policy_rank)
    return plan


class ResourceError(ConfigError):
    """The Ray cluster (or the local Ray the config describes) cannot place the actors a stage needs."""


def check_resources(plan: dict[str, tuple[int, float]], cpus: float, gpus: float, node_gpus: float, where: str) -> None:
    """Fail now, saying what was asked and what there is, instead of waiting on actors Ray can never place."""
    need_cpu = sum(n for n, _ in plan.values())
    need_gpu = sum(n * g for n, g in plan.values())
    too_big = [f"{role} ({g:g} GPUs each)" for role, (_, g) in plan.items() if g > node_gpus]
    if need_cpu <= cpus and need_gpu <= gpus + 1e-9 and not too_big:
        return
    asked = ", ".join(f"{role} {n} x (1 CPU{f', {g:g} GPU' if g else ''})" for role, (n, g) in plan.items())
    per_node = f"; no node has enough GPUs for {', '.join(too_big)}" if too_big else ""
    raise ResourceError(f"{where}: the run needs {need_cpu} CPUs and {need_gpu:g} GPUs ({asked}) but has {cpus:g} "
                        f"CPUs and {gpus:g} GPUs{per_node}")


class Roles:
    """One handle per role. Every call is bounded by trainer.timeout_s. A stage starts only the roles it needs."""

    def __init__(self, cfg: Config, stage: str = "rl") -> None:
        t = cfg.trainer.timeout_s
        self.timeout = t
        plan = role_plan(cfg, stage)
        self.rollout = self.labeler = self.reference = None
        self.pm = self.policy = self.critic = None

        def actor(cls, role: str):
            return ray.remote(cls).options(num_cpus=1, num_gpus=plan[role][1]).remote(cfg) if role in plan else None

        def group(cls, role: str) -> ActorGroup | None:
            if role not in plan:
                return None
            return ActorGroup(cls, plan[role][0], cfg, num_gpus=plan[role][1], timeout=t, name=role)

        try:
            self.rollout = actor(RolloutWorker, "rollout")
            self.labeler = actor(LabelerWorker, "labeler")
            self.reference = actor(ReferenceWorker, "reference")
            self.pm = group(PreferenceModelWorker, "preference_model")
            self.policy = group(PolicyWorker, "policy")
            self.critic = group(CriticWorker, "critic")
            # Surface constructor failures (bad model, vLLM start-up) now rather than at the first step.
            singles = [a for a in (self.rollout, self.labeler, self.reference) if a is not None]
            get([a.__ray_ready__.remote() for a in singles], t, "starting the rollout, labeler and reference actors")
        except BaseException:
            self.shutdown()  # what did start must not outlive a failed start-up
            raise

    def get(self, refs, what: str):
        return get(refs, self.timeout, what)

    def shutdown(self) -> None:
        kill_and_wait([a for a in (self.rollout, self.labeler, self.reference) if a is not None])
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


def local_ray(cfg: Config) -> bool:
    """Start a private Ray on this machine, or join a cluster (`ray job submit` sets RAY_ADDRESS)?"""
    return not os.environ.get("RAY_ADDRESS") and cfg.ray.address == "local"


_RAY_PROCESSES: list = []  # the processes of the local Ray this driver started (raylet, GCS, ...)


def init_ray(cfg: Config, stages: tuple[str, ...] = (), verbose: bool = False) -> None:
    """Start (or join) Ray with worker output going to <output_dir>/logs, then check that every stage's actors fit.

    A local Ray binds to 127.0.0.1 only. Quiet (not verbose): Ray's own start-up chatter is not printed and each
    worker's stdout/stderr goes to its log file (rlaif.runtime.setup_worker); rlaif's warnings still show.
    """
    import psutil

    env = {} if verbose else {LOG_DIR_ENV: str(Path(cfg.output_dir).resolve() / "logs")}
    runtime_env = {"env_vars": env} | ({} if verbose else {"worker_process_setup_hook": "rlaif.runtime.setup_worker"})
    level = logging.INFO if verbose else logging.ERROR
    if not local_ray(cfg):
        # Inside `ray job submit` RAY_ADDRESS points at the cluster: join it, never start a second Ray. The job's
        # runtime_env (cluster/runtime_env.yaml) carries code and environment to the actors; ours adds the log folder.
        ray.init(address=os.environ.get("RAY_ADDRESS") or cfg.ray.address, logging_level=level,
                 runtime_env=runtime_env)
        log.info("Ray: joined the cluster at %s", ray.get_runtime_context().gcs_address)
    else:
        # Loopback only. Ray advertises a local cluster on the machine's routable address, with its servers on all
        # interfaces, unless it runs in its single-machine mode (the one it uses on macOS and Windows): then the
        # GCS, raylet, object manager, agents and workers all listen on 127.0.0.1. The driver reads the flag from
        # its constants (read at import), the processes it starts from the environment.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        ray._private.ray_constants.ENABLE_RAY_CLUSTER = False
        before = {p.pid for p in psutil.Process().children()}
        env |= {k: v for k, v in os.environ.items() if k.startswith(("RLAIF_", "VLLM_", "WANDB_"))}
        ray.init(address="local", num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus, include_dashboard=False,
                 _node_ip_address="127.0.0.1", logging_level=level, runtime_env=runtime_env)
        _RAY_PROCESSES[:] = [p for p in psutil.Process().children() if p.pid not in before]
        log.info("Ray: local on %s, %d CPUs, %d GPUs", ray.get_runtime_context().gcs_address.rsplit(":", 1)[0],
                 cfg.ray.num_cpus, cfg.ray.num_gpus)
    have = ray.cluster_resources()
    node_gpus = max((n["Resources"].get("GPU", 0.0) for n in ray.nodes() if n["Alive"]), default=0.0)
    for stage in stages:
        check_resources(role_plan(cfg, stage), have.get("CPU", 0.0), have.get("GPU", 0.0), node_gpus,
                        f"the Ray cluster at {ray.get_runtime_context().gcs_address}")


def shutdown_ray(timeout: float = 30.0) -> None:
    """ray.shutdown(), then wait for every process of the local Ray (and its workers, the roles) to exit; those
    still alive after `timeout` are killed. The CLI never returns while a process of its run lives on."""
    import psutil

    procs = []
    for p in _RAY_PROCESSES:
        try:
            procs += [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    if ray.is_initialized():
        ray.shutdown()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=10)
    _RAY_PROCESSES.clear()


def check_output_dir(out: Path, overwrite: bool) -> bool:
    """True if `out` holds an earlier run that --overwrite lets this one replace; errors name output_dir."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir: {out} is a file, not a folder")
    earlier = out.is_dir() and any(out.iterdir())
    if earlier and not (out / "config.yaml").is_file():
        raise ConfigError(f"output_dir: {out} is not empty and holds no earlier rlaif run; choose a new or empty "
                          "folder")
    if earlier and not overwrite:
        raise ConfigError(f"output_dir: {out} holds an earlier run; use --overwrite or trainer.resume=auto (a new run "
                          "never mixes its checkpoint and metrics with an old one)")
    probe = out if out.is_dir() else next(p for p in out.absolute().parents if p.exists())
    try:
        tempfile.TemporaryDirectory(dir=probe).cleanup()
    except OSError as exc:
        raise ConfigError(f"output_dir: cannot create {out}: {probe} is not writable ({exc.strerror})") from exc
    return earlier


def prepare(cfg: Config, stages: tuple[str, ...], overwrite: bool = False) -> tuple[Config, list, list, list]:
    """Fail on bad input before anything is started or written. Returns the config the roles run with (every
    model resolved to a checked local folder), the training and held-out prompts, and the reward functions."""
    check_output_dir(Path(cfg.output_dir), overwrite)
    prompts, held_out = split_prompts(load_prompts(cfg.data.prompts), cfg.data.eval_fraction, cfg.data.seed)
    if cfg.data.eval_prompts:
        held_out = load_prompts(cfg.data.eval_prompts)
    reward_fns = load_reward_functions(cfg.rl.reward_functions)
    constitution = load_constitution(cfg.constitution.path)
    if "sl-cai" in stages and not constitution.critique_revision:
        raise ConfigError(f"constitution.path: {cfg.constitution.path} has no critique_revision pairs, which SL-CAI "
                          "needs")
    if cfg.labeler.human_eval and stages != ("sl-cai",):
        try:
            human_eval_pairs(cfg)
        except HumanLabelError as exc:
            raise ConfigError(f"labeler.human_eval: {exc}") from exc
    if local_ray(cfg):
        for stage in stages:
            check_resources(role_plan(cfg, stage), cfg.ray.num_cpus, cfg.ray.num_gpus, cfg.ray.num_gpus,
                            f"ray.num_cpus = {cfg.ray.num_cpus}, ray.num_gpus = {cfg.ray.num_gpus}")
    run_cfg = resolve_models(cfg)
    # The rollout engine's context must hold what it is asked to: vLLM would refuse it only once started.
    config = json.loads((Path(run_cfg.policy.model.path) / "config.json").read_text(encoding="utf-8"))
    limit = config.get("max_position_embeddings")
    needs = {"data.max_prompt_tokens + rollout.max_new_tokens": cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens}
    if "sl-cai" in stages:
        needs["sl_cai.max_context_tokens"] = cfg.sl_cai.max_context_tokens
    for keys, tokens in needs.items():
        if limit and tokens > limit:
            raise ConfigError(f"{keys} = {tokens} exceeds the policy model's context of {limit} tokens "
                              f"(max_position_embeddings of {cfg.policy.model.path})")
    return run_cfg, prompts, held_out, reward_fns


@contextlib.contextmanager
def session(cfg: Config, stages: tuple[str, ...], overwrite: bool, verbose: bool) -> Iterator[Tracker]:
    """Ray, the run folder and the tracker for one command. Nothing is written before Ray is up and has room for
    every stage; on any exit (error, Ctrl-C) the tracker is closed and every process of the run has ended."""
    out, tracker = Path(cfg.output_dir), None
    try:
        init_ray(cfg, stages, verbose)
        if check_output_dir(out, overwrite):
            shutil.rmtree(out)  # --overwrite: the earlier run goes; its files never mix with this one's
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        log_to_dir(out / "logs")
        tracker = Tracker(cfg, out)
        yield tracker
    finally:
        if tracker is not None:
            tracker.finish()
        shutdown_ray()


def label(cfg: Config, overwrite: bool = False, verbose: bool = False) -> Path:
    """`rlaif label`: AI-label pairs sampled from the policy and write them with the feedback-integrity report."""
    run_cfg, prompts, _, _ = prepare(cfg, ("label",), overwrite)
    with session(cfg, ("label",), overwrite, verbose) as tracker:
        cfg = run_cfg
        roles = Roles(cfg, stage="label")
        pairs = sample_and_label(cfg, roles, PromptLoader(prompts, cfg.seed))
        path = write_human_labels(Path(cfg.output_dir) / "feedback" / "ai_labels.jsonl", [
            {"id": f"ai:{i:05d}", "prompt": p, "response_a": a, "response_b": b, "p_a": lab["p_first"],
             "source": "ai", "principle": lab["principle"]}
            for i, (p, a, b, lab) in enumerate(zip(pairs["prompt"], pairs["first"], pairs["second"], pairs["labels"]))
        ])
        feedback_integrity(cfg, roles, pairs, tracker)
        return path


def sl_cai_only(cfg: Config, overwrite: bool = False, verbose: bool = False) -> Path:
    """`rlaif sl-cai`: critique -> revision data and the SFT checkpoint, nothing else."""
    run_cfg, _, _, _ = prepare(cfg, ("sl-cai",), overwrite)
    with session(cfg, ("sl-cai",), overwrite, verbose) as tracker:
        return sl_cai(run_cfg, Roles(run_cfg, stage="sl-cai"), tracker)


def train(cfg: Config, overwrite: bool = False, verbose: bool = False) -> Path:
    """Check inputs, (SL-CAI,) start the roles, fit the PM on AI labels, run RL, save a Hugging Face checkpoint."""
    stages = ("sl-cai", "rl") if cfg.sl_cai.enabled else ("rl",)
    run_cfg, prompts, held_out, reward_fns = prepare(cfg, stages, overwrite)
    out = Path(cfg.output_dir)
    with session(cfg, stages, overwrite, verbose) as tracker:
        cfg = run_cfg
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
