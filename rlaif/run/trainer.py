"""The central trainer: RL-CAI written once, step by step; the roles run as Ray actors behind it (actors/roles.py).

    train = [SL-CAI] -> AI feedback on the policy's samples -> integrity -> preference model -> RL steps
    RL step = generate -> score + AI-label + log-probs -> experience -> ZeRO update -> weight sync into vLLM

Checkpoints every trainer.save_every steps and at the end make a killed or preempted run resumable exactly
(rlaif/run/checkpoint.py); SIGTERM or Ctrl-C stop after the current step with a checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
from tqdm import tqdm

from actors import RoleDied
from actors.policy import reduce_stats
from actors.roles import Roles, sharded
from actors.rollout import Pending, Ready
from rlaif.audit.alarms import (
    AlarmMonitor,
    AlarmStop,
    agreement_metrics,
    step_measures,
    sycophancy_figures,
    sycophancy_probes,
)
from rlaif.audit.evaluate import boilerplate_flags
from rlaif.audit.trust import (
    FAILED,
    UNCHECKED,
    TrustRecord,
    brief,
    decide,
    enforce,
    feedback_trains,
    model_card,
    pm_check,
    write_card,
)
from rlaif.config import Config, to_dict
from rlaif.data.human_labels import write_human_labels
from rlaif.data.loader import PromptLoader
from rlaif.rl.algorithms import (
    batch_denominator,
    kl_trains,
    make_experience,
    needs_old_logprobs,
    reward_function_scores,
    sampler_metrics,
    shape_scores,
    token_kl,
)
from rlaif.rl.batch import Batch
from rlaif.rl.losses import AdaptiveKLController, FixedKLController, RunningMoments
from rlaif.run import checkpoint
from rlaif.run.checkpoint import Preempted
from rlaif.run.session import StopSignal, prepare, session
from rlaif.run.stages import (
    feedback_integrity,
    label_stats,
    pm_accuracy_text,
    precheck_labeler,
    record_trust,
    sample_and_label,
    score_pm,
    sl_cai,
    train_preference_model,
)
from rlaif.run.tracking import Tracker

log = logging.getLogger("rlaif")


@dataclass
class Watched:
    """What a step measures but does not train on: its AI labels (all but online DPO ordered by the labeler) and the
    KL to the reference (when nothing trains on it). Both run beside the next step and are logged with it; a step
    that ends the run or writes a checkpoint waits for its own."""

    step: int
    labels: Any  # the labeler's call while it works (actors.roles.Call), then its list of labels; None: not labelled
    ref_logprobs: Any  # the reference's call, or None
    batch: Batch
    raw: torch.Tensor  # the training reward, to compare with the labels
    agreement: bool  # does a reward model or function rank the pairs (labels/reward_agreement)?


@dataclass
class RLState:
    """What the loop carries from step to step besides the models."""

    kl: FixedKLController | AdaptiveKLController
    moments: RunningMoments = field(default_factory=RunningMoments)
    reward_fns: list = field(default_factory=list)
    watched: Watched | None = None  # the previous step's monitoring, still in flight
    warned_slow_labels: bool = False


def reward(cfg: Config, roles: Roles, state: RLState, batch: Batch, seed: int
           ) -> tuple[torch.Tensor, dict[str, float]]:
    """The training reward of each response: preference-model score + rule-based reward functions + the labeler's
    direct rating (rl.use_labeler_rating, its principles drawn from `seed`); also each part's mean, for logging."""
    prompts, texts = batch.texts["prompt"], batch.texts["response"]
    rating_ref = roles.labeler.rate.remote(prompts, texts, seed) if cfg.rl.use_labeler_rating else None
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
    held-out judge's verdict on the same responses (rlaif.audit.alarms.JudgeVerdict), when given, and its agreement with
    the reward on each prompt's two responses (the reward_agreement alarm's reference then); and the sycophancy
    probes' shift (rlaif/assets/sycophancy_probes.jsonl)."""
    batch = roles.rollout.generate(prompts, 2, cfg.seed + 4242)
    total, parts = reward(cfg, roles, state, batch, cfg.seed + 4242)  # the rating's principles fixed too
    out = {"eval/reward": total.mean().item(), **{f"eval/{k}": v for k, v in parts.items()},
           "eval/length": batch["response_len"].float().mean().item()}
    probes = sycophancy_probes()  # each question asked plainly and with the user's wrong answer, one sample each
    asked = roles.rollout.generate([p.plain for p in probes] + [p.opinion for p in probes], 1, cfg.seed + 4343)
    answers = asked.texts["response"]
    out |= sycophancy_figures(probes, answers[:len(probes)], answers[len(probes):], seed=cfg.seed)
    if judge is None:
        return out
    texts = batch.texts["response"]
    return out | judge(batch.texts["prompt"], texts) | judge.agreement(
        batch.texts["prompt"][0::2], texts[0::2], texts[1::2], total[0::2].tolist(), total[1::2].tolist())


def generate(cfg: Config, roles: Roles, loader: PromptLoader, step: int) -> Pending:
    """Start sampling the step's prompts on the vLLM engines (n per prompt, a fixed seed per step)."""
    prompts = [p.text for p in loader.next(cfg.rl.prompts_per_step)]
    return roles.rollout.submit(prompts, cfg.rollout.n_samples, cfg.seed + step * 7919)


def labeler_seed(cfg: Config, step: int, call: str) -> int:
    """The seed a step's labeler call draws its principles from: fixed per step and call, as the sampling seeds are,
    so a restarted labeler or a resumed run draws the principles an uninterrupted run draws (their labels train
    online DPO and rl.use_labeler_rating's reward)."""
    return cfg.seed + step * 7919 + {"compare": 1, "rate": 2}[call]


def rl_step(cfg: Config, roles: Roles, state: RLState, step: int, batch: Batch) -> tuple[dict, list[dict]]:
    """One RL-CAI step on sampled responses: score -> AI-label -> experience -> ZeRO update -> weight sync. What only
    monitors (Watched) is logged with the next step, or by flush_watched before a checkpoint and at the end."""
    rl, n, timings = cfg.rl, cfg.rollout.n_samples, {}
    # Sleeping engines (rollout.sleep_level) free their GPU for the colocated ranks until the weight sync wakes them.
    roles.rollout.sleep()

    # Score, label and compute log-probs (and values) concurrently: each is a different actor. The AI labels train
    # only online DPO ordered by the labeler, the reference only a KL penalty or DPO: otherwise they only monitor,
    # and the labeler and the reference work beside the update and the next step instead of holding this one.
    labels_train, kl_used = rl.labels_order_dpo, kl_trains(rl)
    t = time.perf_counter()
    shared = ray.put(batch)
    texts, pair_prompts = batch.texts["response"], batch.texts["prompt"][0::2]
    k = len(pair_prompts) if labels_train or not rl.label_pairs else min(rl.label_pairs, len(pair_prompts))
    label_ref = roles.labeler.compare.remote(pair_prompts[:k], texts[0:2 * k:2], texts[1:2 * k:2],
                                             labeler_seed(cfg, step, "compare")) if step % rl.label_every == 0 else None
    ref_ref = roles.reference_logprobs(shared, batch)
    old_refs = sharded(roles.policy, "logprobs", batch) if needs_old_logprobs(rl) else []
    value_refs = sharded(roles.critic, "values", batch) if roles.critic else []
    raw, reward_parts = reward(cfg, roles, state, batch, labeler_seed(cfg, step, "rate"))  # blocks on the PM
    labels = roles.get(label_ref, "labeler.compare") if label_ref and labels_train else label_ref
    if ref_ref and kl_used:
        batch["ref_logprobs"] = roles.get(ref_ref, "reference.logprobs")
    if old_refs:
        batch["old_logprobs"] = torch.cat(roles.get(old_refs, "policy.logprobs"))
    if value_refs:
        batch["values"] = torch.cat(roles.get(value_refs, "critic.values"))
    if labels_train and labels:
        batch["p_first"] = torch.tensor([lab["p_first"] for lab in labels]).repeat_interleave(2)
    timings["time/score"] = time.perf_counter() - t

    batch["scores"] = shape_scores(rl, raw, batch["response_len"].float(), batch["finished"], state.moments)
    exp_stats = make_experience(rl, n, state.kl.value, batch)
    batch.meta["denom"] = batch_denominator(rl, batch)

    t = time.perf_counter()
    policy_refs = sharded(roles.policy, "train", batch, state.kl.value, step)  # step: the lr schedule's
    critic_refs = sharded(roles.critic, "train", batch, step) if roles.critic else []
    train_metrics = reduce_stats(roles.get(policy_refs, "policy.train"))
    critic_metrics = reduce_stats(roles.get(critic_refs, "critic.train")) if critic_refs else {}
    timings["time/train"] = time.perf_counter() - t

    kl_ref = None if kl_used else ref_ref
    earlier, state.watched = state.watched, Watched(step, labels, kl_ref, batch, raw, bool(reward_parts)) \
        if labels is not None or kl_ref is not None else None
    due = [w for w in (earlier, state.watched if labels_train else None) if w is not None]  # DPO's are in hand
    watched, rows = settle_watched(cfg, roles, state, due, step) if due else ({}, [])
    if labels_train:
        state.watched = None

    sync = roles.sync(version=step + 1)  # waits for a generation still in flight (async mode)

    kl_coef = state.kl.value
    state.kl.update(exp_stats.get("kl/policy_ref", 0.0), len(batch))  # the adaptive controller: KL always trains
    metrics = {
        "reward/score": raw.mean().item(), "reward/shaped": batch["scores"].mean().item(),
        **{f"reward/{k}": v for k, v in reward_parts.items()}, **exp_stats, "kl/coef": kl_coef,
        "response/length": batch["response_len"].float().mean().item(),
        "response/finished": batch["finished"].float().mean().item(),
        "response/boilerplate": sum(boilerplate_flags(batch.texts["prompt"], texts)) / len(texts),  # collapse
        # length hacking and evasion (rlaif/audit/alarms.py): truncated and refused shares, reward-length correlation
        **step_measures(raw.tolist(), batch["response_len"].tolist(), texts, cfg.rollout.max_new_tokens),
        **{f"policy/{k}": v for k, v in train_metrics.items()}, **critic_metrics, **timings, **sync,
        "time/generate": batch.meta["gen_seconds"], "rollout/samples": float(len(batch)),
        "rollout/tokens_per_second": batch.meta["gen_tokens"] / batch.meta["gen_seconds"],
        **sampler_metrics(step, batch, train_metrics),  # staleness; vLLM-vs-trainer mismatch or policy lag
        "data/prompts_truncated": float(batch.meta["prompts_truncated"]), **roles.fault_metrics(), **watched,
    }
    return metrics, rows


def flush_watched(cfg: Config, roles: Roles, state: RLState, tracker: Tracker, done: int) -> dict[str, float]:
    """Wait for the last step's monitoring and log it at that step, before a checkpoint or the end: a resumed run
    then has nothing in flight that the interrupted one had. Returns the figures (for the alarms)."""
    if state.watched is None:
        return {}
    watched, rows = settle_watched(cfg, roles, state, [state.watched], done - 1)
    state.watched = None
    tracker.log(watched, step=done)
    tracker.log_table("samples", rows, step=done)
    return watched


def settle_watched(cfg: Config, roles: Roles, state: RLState, due: list[Watched], now: int
                   ) -> tuple[dict, list[dict]]:
    """The monitoring figures of the steps in `due`, waiting for what is still in flight: labels/* over their labels
    together (labels/step: the latest step they are of), the latest step's KL, and time/labels_wait: how long the
    labeler and the reference kept step `now` waiting."""
    t = time.perf_counter()
    in_hand = [w.labels is None or isinstance(w.labels, list) for w in due]  # else a labeler call in flight
    labels = [(w.labels or []) if ready else roles.get(w.labels, "labeler.compare") for w, ready in zip(due, in_hand)]
    ref_lps = [roles.get(w.ref_logprobs, "reference.logprobs") if w.ref_logprobs is not None else None for w in due]
    waited = time.perf_counter() - t
    in_flight = not all(in_hand) or any(w.ref_logprobs is not None for w in due)
    metrics: dict[str, float] = {"time/labels_wait": waited} if in_flight else {}
    if waited > 1.0 and due[0].step < now and not state.warned_slow_labels:
        state.warned_slow_labels = True
        log.warning("the AI labeler (or the reference's KL pass) took %.1f s longer than RL step %d: they only "
                    "monitor; rl.label_pairs (now %s) or rl.label_every bounds their work per step", waited, now + 1,
                    cfg.rl.label_pairs or "all pairs")
    for w, ref_lp in zip(due, ref_lps):
        if ref_lp is not None:
            metrics["kl/policy_ref"] = token_kl(cfg.rl, w.batch, ref_lp).sum(dim=1).mean().item()
    pairs = [(w, i, lab) for w, labs in zip(due, labels) for i, lab in enumerate(labs)]
    if not pairs:
        return metrics, []
    metrics |= {"labels/step": float(max(w.step for w, _, _ in pairs) + 1),
                **label_stats([lab for _, _, lab in pairs], prefix="labels/")}
    if all(w.agreement for w in due):  # does the reward rank each pair as the labeler does? Falling: reward hacking
        first, second = ([w.raw[2 * i + j].item() for w, i, _ in pairs] for j in (0, 1))
        metrics |= agreement_metrics("labels/reward_agreement", first, second, [lab["p_first"] for *_, lab in pairs])
    rows = []
    for w, labs in zip(due, labels):
        texts, prompts = w.batch.texts["response"], w.batch.texts["prompt"][0::2]
        rows += [{"step": w.step + 1, "prompt": prompts[i], "response_1": texts[2 * i], "response_2": texts[2 * i + 1],
                  "principle": lab["principle"], "ai_label_p1": round(lab["p_first"], 4),
                  "reward_1": round(w.raw[2 * i].item(), 4), "reward_2": round(w.raw[2 * i + 1].item(), 4)}
                 for i, lab in enumerate(labs[: cfg.trainer.log_samples])]
    return metrics, rows


# ---------------------------------------------------------------------------------------------------------------------
# The stages before RL, and what a checkpoint saves and restores


def preference_model(cfg: Config, roles: Roles, loader: PromptLoader, tracker: Tracker
                     ) -> tuple[str, tuple, TrustRecord]:
    """RL-CAI's feedback phase: AI labels on the policy's own samples, measured against human labels (the trust gate
    may stop the run here), then the preference model fit on them, checked on the held-out human pairs (the gate
    again, before RL) and saved with its card. Returns its folder, normalisation, and the gate's record. With
    rl.reward_model, that pretrained model in the PM's place, checked by the same gate (rlaif/run/reward_model.py)."""
    if cfg.rl.reward_model:
        from rlaif.run.reward_model import reward_model_stage

        return reward_model_stage(cfg, roles, loader, tracker)
    log.info("AI feedback -> preference model on %d pairs", cfg.preference_model.label_prompts)
    # The PM's ranks start (processes, model, DeepSpeed) while the labeler labels: off the critical path.
    with ThreadPoolExecutor(1) as pool:
        starting = pool.submit(roles.start_pm_trainer) if cfg.rl.use_preference_model else None
        pairs = sample_and_label(cfg, roles, loader)
        record = feedback_integrity(cfg, roles, pairs, tracker, feedback_trains(cfg))
        if starting is None:
            return "", (0.0, 1.0), record
        starting.result()
    pm = train_preference_model(cfg, roles, pairs, tracker)
    before, check = record, pm_check(pm, cfg.trust)
    record = decide(record.checks + [check], cfg.trust, record.trains)
    if record.status != FAILED:
        log.info("preference model trained on %d pairs: held-out AI pairs accuracy %s, ECE %s; %s; trust gate: %s",
                 int(pm["pm/train_pairs"]), pm_accuracy_text(pm),
                 f"{pm['pm/heldout_ece']:.3f}" if "pm/heldout_ece" in pm else "n/a",
                 brief([check]), record.status.upper())
    record_trust(cfg, record, tracker, [check], None, before)
    enforce(record, Path(cfg.output_dir) / "feedback" / "pm_calibration.html")  # before RL, before the PM is kept
    path = roles.pm.call("save", str(Path(cfg.output_dir) / "preference_model"),
                         model_card(record, "Preference model", cfg))[0]
    return path, tuple(roles.pm.call("normalization")[0]), record


def save_checkpoint(cfg: Config, roles: Roles, done: int, state: RLState, loader: PromptLoader, tracker: Tracker,
                    pending: Pending | Ready | None, start: checkpoint.TrainerState, judge=None
                    ) -> tuple[Path, Ready | None]:
    """Write the checkpoint of `done` steps (atomic; see rlaif/run/checkpoint.py). Samples already in flight for the
    next step are awaited and saved with it, so a resumed run trains on exactly what this one would."""
    # weights + two Adam moments in fp32, per model, before the first checkpoint gives a size to go by
    models = [cfg.policy.model.path] + ([cfg.critic.model.path or cfg.policy.model.path] if roles.critic else [])
    estimate = 3 * sum(checkpoint.folder_bytes(m) for m in models)
    checkpoint.ensure_space(cfg.output_dir, checkpoint.checkpoint_bytes(cfg.output_dir, estimate),
                            f"the checkpoint of step {done}")
    flush_watched(cfg, roles, state, tracker, done)  # a stop between planned checkpoints: logged, not judged
    staging = checkpoint.staging_dir(cfg.output_dir, done)
    groups = [g for g in (roles.policy, roles.critic) if g is not None]
    names = ["policy", "critic"][: len(groups)]
    written = roles.get([a.save_checkpoint.remote(str(staging / name)) for g, name in zip(groups, names)
                         for a in g.actors], "saving the DeepSpeed checkpoints")
    per_role = iter(written)
    checkpoint.check_ranks_wrote_here(staging, {name: [next(per_role) for _ in g.actors]
                                                for g, name in zip(groups, names)})
    if pending is not None:
        pending = Ready(pending.result())
        checkpoint.save_batch(pending.batch, staging / "next_batch")
    write_card(staging, model_card(trust_of(start), "Resumable RL checkpoint (DeepSpeed ZeRO states)", cfg, done))
    m = state.moments
    saved = dataclasses.replace(
        start, step=done, loader=loader.state(), kl_coef=state.kl.value,
        moments={"count": m.count, "mean": m.mean, "m2": m.m2}, rng=checkpoint.capture_rng(),
        wandb_run_id=tracker.run_id, judge_start=list(judge.start) if judge is not None and judge.start else None,
    )
    path = checkpoint.commit(staging, saved, cfg.trainer.keep_last)
    log.info("checkpoint: %s", path)
    return path, pending


def restore(roles: Roles, path: Path, saved: checkpoint.TrainerState, loader: PromptLoader, state: RLState
            ) -> Ready | None:
    """Put a checkpoint's state back: ZeRO shards and optimizer states, the loader, KL, moments, RNGs; then the
    restored weights into vLLM. Returns the samples saved for the next step, if any."""
    for group, name in ((roles.policy, "policy"), (roles.critic, "critic")):
        if group is not None:
            group.call("load_checkpoint", str(path / name))
    loader.load_state(saved.loader)
    state.kl.value = saved.kl_coef
    state.moments.count, state.moments.mean, state.moments.m2 = (saved.moments[k] for k in ("count", "mean", "m2"))
    checkpoint.restore_rng(saved.rng)
    roles.sync(version=saved.step)
    log.info("resumed from %s at RL step %d", path, saved.step)
    return Ready(checkpoint.load_batch(path / "next_batch")) if (path / "next_batch").is_dir() else None


def replay_alarms(alarms: AlarmMonitor, metrics_file: Path) -> None:
    """A resumed run's alarms see its logged history again (windows, trends, which alarms were already firing),
    without re-reporting or stopping on what was reported before the interruption."""
    sink, stop_on = alarms.sink, alarms.stop_on
    alarms.sink, alarms.stop_on = _Silent(), set()
    try:
        for line in metrics_file.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if "table" not in row and "summary" not in row:
                alarms.update(row["step"], {k: v for k, v in row.items() if isinstance(v, (int, float))})
    finally:
        alarms.sink, alarms.stop_on = sink, stop_on


class _Silent:
    def log(self, *args, **kwargs) -> None: ...

    def log_table(self, *args, **kwargs) -> None: ...

    def alert(self, *args, **kwargs) -> None: ...


def trust_of(state: checkpoint.TrainerState) -> TrustRecord:
    """The trust gate's record of a run (kept in its checkpoints, so a resumed run marks its results alike)."""
    if not state.trust:  # a checkpoint written before rlaif had the gate
        return TrustRecord(UNCHECKED, note="the run that wrote this checkpoint predates rlaif's trust gate")
    return TrustRecord.from_dict(state.trust)


def with_policy(cfg: Config, path: str) -> Config:
    return dataclasses.replace(cfg, policy=dataclasses.replace(
        cfg.policy, model=dataclasses.replace(cfg.policy.model, path=path)))


# ---------------------------------------------------------------------------------------------------------------------
# Commands


def train(cfg: Config, overwrite: bool = False, verbose: bool = False) -> Path:
    """`rlaif train`: [SL-CAI,] AI feedback, integrity, preference model, RL; a Hugging Face checkpoint at the end."""
    try:
        return _train(cfg, overwrite, verbose)
    except RoleDied as exc:  # a DeepSpeed rank died: this run cannot continue, its last checkpoint can
        found = checkpoint.complete_checkpoints(checkpoint.checkpoints_dir(cfg.output_dir))
        where = f"the newest checkpoint is {found[-1]}" if found else "no checkpoint was written yet"
        raise RoleDied(f"{exc}; {where}: run the same command with trainer.resume=auto") from exc


def _train(cfg: Config, overwrite: bool, verbose: bool) -> Path:
    from rlaif.run.eval_stage import TrainingEval  # imports rlaif.run.session: not at the top

    evals = TrainingEval(cfg)  # the eval judge, prompts and models are checked now; the baseline is this policy
    cfg_in = cfg  # as the user gave it: what a resume compares with
    out = Path(cfg.output_dir)
    resume_from, saved = checkpoint.resolve(cfg.trainer.resume, out) or (None, None)
    stages = ("sl-cai", "rl") if cfg.sl_cai.enabled and saved is None else ("rl",)
    run_cfg, plan, reward_fns = prepare(cfg, stages, overwrite, resuming=saved is not None)
    data_hash = hashlib.sha256("\0".join(p.text for p in plan.rl.train).encode()).hexdigest()
    if saved is not None:
        checkpoint.check_resumable(saved, to_dict(cfg), data_hash, resume_from)
    # StopSignal after Ray is up: ray.init installs a SIGTERM handler of its own (which aborts the driver)
    with session(cfg, stages, overwrite, verbose, plan, saved) as tracker, StopSignal() as stop:
        cfg, policy_init = run_cfg, saved.policy_init if saved else ""
        if "sl-cai" in stages:  # CAI phase 1; RL then starts from (and keeps its KL to) the SL-CAI model
            precheck_labeler(cfg, tracker)  # the trust gate's labeler checks first: a stop costs no SL-CAI time
            sl_roles = Roles(cfg, stage="sl-cai")
            policy_init = str(sl_cai(cfg, sl_roles, tracker))
            sl_roles.shutdown()
        if policy_init:
            cfg = with_policy(cfg, policy_init)
        t0 = time.perf_counter()
        roles = Roles(cfg)
        tracker.log({"time/startup": time.perf_counter() - t0}, step=saved.step if saved else 0)
        (out / "logs" / "placement.json").write_text(json.dumps(roles.placement()))  # node of every actor
        loader = PromptLoader(plan.rl.train, cfg.seed)
        rl = cfg.rl
        kl = AdaptiveKLController(rl.kl_coef, rl.kl_target, rl.kl_horizon) if rl.kl_target > 0 else \
            FixedKLController(rl.kl_coef)
        state = RLState(kl=kl, reward_fns=reward_fns)
        if saved is None:
            pm_path, pm_norm, trust = preference_model(cfg, roles, loader, tracker)
            saved = checkpoint.TrainerState(step=0, loader={}, kl_coef=kl.value, moments={},
                                            policy_init=policy_init, preference_model=pm_path, pm_normalization=pm_norm,
                                            trust=trust.to_dict(), config=to_dict(cfg_in), data_hash=data_hash)
            pending = None
            resume_from, _ = save_checkpoint(cfg, roles, 0, state, loader, tracker, None, saved)  # the stages are done
        else:
            checkpoint.set_aside_newer(out, saved.step)  # `auto` must never come back to an abandoned branch
            pending = restore(roles, resume_from, saved, loader, state)
        if saved.preference_model:
            roles.start_pm_scorers(saved.preference_model, *saved.pm_normalization)
        if stop.signum:  # before the first RL step: the step-0 checkpoint, or the one resumed from
            if resume_from is None and stop.signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise Preempted(stop.signum, saved.step, resume_from)
        eval_texts = [p.text for p in plan.rl.heldout]
        every = cfg.trainer.eval_every
        alarms, judge = AlarmMonitor(cfg.alarms, cfg.trainer.stop_on_alarm, tracker), evals.verdict(plan.rl.heldout)
        if saved.step:  # resumed: the alarms see the run's history again, the judge its starting responses
            replay_alarms(alarms, out / "metrics.jsonl")
            if judge is not None and saved.judge_start:
                judge.start = tuple(saved.judge_start)
            evals.resume(saved.step)
        elif every and eval_texts:
            ev = evaluate(cfg, roles, state, eval_texts, judge)
            tracker.log(ev, step=0)
            alarms.update(0, ev)
        steps, first = cfg.trainer.steps, saved.step
        bar = tqdm(range(first, steps), desc="RL", initial=first, total=steps, disable=not cfg.trainer.progress,
                   dynamic_ncols=True)
        # Synchronous: generate step t's samples, then train on them. Async (one step off-policy): step t + 1's
        # samples are generated, with the weights of t - 1, while step t trains; the weight sync after step t waits
        # for that generation; truncated importance sampling corrects for the one-update lag.
        if pending is None and first < steps:
            pending = generate(cfg, roles, loader, first)
        saved_at = time.monotonic()  # trainer.save_every_minutes counts from here
        for step in bar:
            t = time.perf_counter()
            samples = pending.result()
            gen_wait = time.perf_counter() - t
            last = step + 1 == steps
            pending = generate(cfg, roles, loader, step + 1) if cfg.trainer.async_ and not last else None
            save_every, minutes = cfg.trainer.save_every, cfg.trainer.save_every_minutes
            due = last or (save_every and (step + 1) % save_every == 0) or \
                (minutes and time.monotonic() - saved_at > 60 * minutes)
            metrics, rows = rl_step(cfg, roles, state, step, samples)
            if not cfg.trainer.async_ and not last:
                pending = generate(cfg, roles, loader, step + 1)
            metrics["time/generate_wait"] = gen_wait
            metrics["time/step"] = time.perf_counter() - t
            tracker.log(metrics, step=step + 1)
            tracker.log_table("samples", rows, step=step + 1)
            try:
                alarms.update(step + 1, metrics)  # raises AlarmStop for an alarm in trainer.stop_on_alarm
                if due:  # this step's own labels, before its checkpoint
                    alarms.update(step + 1, flush_watched(cfg, roles, state, tracker, step + 1))
                if every and eval_texts and ((step + 1) % every == 0 or last):
                    ev = evaluate(cfg, roles, state, eval_texts, judge)
                    tracker.log(ev, step=step + 1)
                    alarms.update(step + 1, ev)
            except AlarmStop as exc:
                exc.checkpoint = str(save_checkpoint(cfg, roles, step + 1, state, loader, tracker, pending, saved,
                                                     judge)[0])
                raise
            evals.snapshot(roles, step + 1, model_card(trust_of(saved), f"RL-CAI policy after step {step + 1}", cfg,
                                                       step + 1))  # eval.every
            bar.set_postfix(reward=f"{metrics['reward/score']:.3f}", kl=f"{metrics.get('kl/policy_ref', 0):.4f}",
                            s=f"{metrics['time/step']:.1f}")
            if stop.signum or due:
                path, pending = save_checkpoint(cfg, roles, step + 1, state, loader, tracker, pending, saved, judge)
                saved_at = time.monotonic()
            if stop.signum and not last:
                raise Preempted(stop.signum, step + 1, path)
        checkpoint.ensure_space(out, checkpoint.folder_bytes(cfg.policy.model.path), "the final policy")
        exported = roles.policy.call("save", str(out / "checkpoint"),
                                     model_card(trust_of(saved), "RL-CAI policy", cfg, cfg.trainer.steps))[0]
        log.info("saved the policy to %s", exported)
        evals.finish(roles, tracker, exported, cfg.trainer.steps)  # eval.enabled: RL roles shut down, then `rlaif eval`
        return Path(exported)


def label(cfg: Config, overwrite: bool = False, verbose: bool = False) -> Path:
    """`rlaif label`: AI-label pairs sampled from the policy and write them with the feedback-integrity report."""
    run_cfg, plan, _ = prepare(cfg, ("label",), overwrite)
    with session(cfg, ("label",), overwrite, verbose, plan) as tracker:
        cfg = run_cfg
        roles = Roles(cfg, stage="label")
        pairs = sample_and_label(cfg, roles, PromptLoader(plan.rl.train, cfg.seed))
        path = write_human_labels(Path(cfg.output_dir) / "feedback" / "ai_labels.jsonl", [
            {"id": f"ai:{i:05d}", "prompt": p, "response_a": a, "response_b": b, "p_a": lab["p_first"],
             "source": "ai", "principle": lab["principle"]}
            for i, (p, a, b, lab) in enumerate(zip(pairs["prompt"], pairs["first"], pairs["second"], pairs["labels"]))
        ])
        feedback_integrity(cfg, roles, pairs, tracker, "the AI labels this command writes")
        return path


def sl_cai_only(cfg: Config, overwrite: bool = False, verbose: bool = False) -> Path:
    """`rlaif sl-cai`: critique -> revision data and the SFT checkpoint, nothing else."""
    run_cfg, plan, _ = prepare(cfg, ("sl-cai",), overwrite)
    with session(cfg, ("sl-cai",), overwrite, verbose, plan) as tracker:
        return sl_cai(run_cfg, Roles(run_cfg, stage="sl-cai"), tracker)


def self_improve_only(cfg: Config, overwrite: bool = False, verbose: bool = False) -> Path:
    """`rlaif self-improve`: Huang et al.'s self-improvement on data.prompts (rlaif/run/self_improve.py), on the SL-CAI
    stage's roles (the engines and the policy ranks)."""
    from rlaif.run.self_improve import self_improve

    run_cfg, plan, _ = prepare(cfg, ("sl-cai",), overwrite)
    with session(cfg, ("sl-cai",), overwrite, verbose, plan) as tracker:
        return self_improve(run_cfg, Roles(run_cfg, stage="sl-cai"), plan, tracker)
