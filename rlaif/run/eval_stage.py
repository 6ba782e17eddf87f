"""`rlaif eval` and `rlaif red-team`: each model served in turn on a vLLM rollout actor, judged, reported.

The figures and the report are computed by rlaif.audit.evaluate and rlaif.audit.redteam (no Ray there); this module
starts the actors, feeds them, and writes `output_dir/eval/` and `output_dir/red_team/`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Callable
from pathlib import Path

import ray

from actors.group import get
from actors.labeler import LabelerWorker
from actors.rollout import RolloutWorker
from rlaif.audit.alarms import JudgeVerdict
from rlaif.audit.eval_report import eval_sentence, render_report, validation_sentence
from rlaif.audit.evaluate import (
    SETS,
    EvalPrompt,
    FunctionJudge,
    Judge,
    ModelJudge,
    build_results,
    evaluate_responses,
    flat_metrics,
    prompt_set,
)
from rlaif.audit.judge_check import (
    SharedRole,
    dependent_roles,
    harm_items,
    independence_error,
    ranked_pairs,
    validate_judge,
    validation_verdict,
)
from rlaif.audit.panels import eval_panels, log_panels
from rlaif.audit.trust import DISTRUSTED, read_mark
from rlaif.config import Config, ConfigError, LabelerConfig, ModelConfig, save_config
from rlaif.config.placement import engine_actor_gpus
from rlaif.data.human_labels import atomic_write_text
from rlaif.data.loader import DataError
from rlaif.data.sources import load_prompt_mix, prompt_key
from rlaif.data.splits import SETS as SPLIT_SETS
from rlaif.data.splits import plan_prompts
from rlaif.models import checked_folder, resolve_model_path, resolve_models
from rlaif.run.session import check_output_dir, init_ray, own_output_dir, release_output_dir, shutdown_ray
from rlaif.run.tracking import Tracker

log = logging.getLogger("rlaif")


# ---------------------------------------------------------------------------------------------------------------------
# prompts, models, judge


def training_keys(cfg: Config) -> set[str]:
    """Normalised texts of every prompt a training stage of this config may train on: the train sides of
    data.prompts and SL-CAI's red-team and helpful sources, split by rlaif.data.splits (one rule for every boundary)."""
    plan = plan_prompts(cfg, SPLIT_SETS)
    return {prompt_key(p) for part in (plan.rl, plan.red_team, plan.helpful) for p in part.train}


def eval_prompts(cfg: Config) -> tuple[list[EvalPrompt], list[list[dict]], list[str]]:
    """The held-out prompts of each set (at most eval.prompts_per_set, seeded), their chats, and warnings."""
    ec = cfg.eval
    used = training_keys(cfg)
    by_set: dict[str, list] = {s: [] for s in SETS}
    dropped = 0
    for specs, default in ((ec.red_team, "red-team"), (ec.benign, "benign")):
        for r in load_prompt_mix(specs).prompts if specs else []:
            if prompt_key(r) in used:
                dropped += 1
            else:
                by_set[prompt_set(r.kind, r.category, default)].append(r)
    rng = random.Random(cfg.seed)
    prompts, chats, warnings = [], [], []
    for s in SETS:
        recs = by_set[s]
        if len(recs) > ec.prompts_per_set:
            recs = [recs[i] for i in sorted(rng.sample(range(len(recs)), ec.prompts_per_set))]
        if not recs:
            warnings.append(f"no held-out {s} prompts in eval.red_team / eval.benign: its figures are n/a")
        prompts += [EvalPrompt(r.id, r.text, s, r.category) for r in recs]
        chats += [r.chat() for r in recs]
    log.info("eval prompts: %s; %d dropped because training uses them",
             ", ".join(f"{sum(p.set == s for p in prompts)} {s}" for s in SETS), dropped)
    return prompts, chats, warnings


def labels_for(specs: list[str]) -> list[str]:
    """Short unique names: a builtin as is, a folder by its last two path parts."""
    out: list[str] = []
    for spec in specs:
        name = spec if spec.startswith("builtin:") else "/".join(Path(spec).resolve().parts[-2:])
        out.append(name if name not in out else f"{name}#{len(out)}")
    return out


def serve(cfg: Config, model: str, max_new_tokens: int):
    """A rollout actor serving `model` on vLLM (one engine per process); ready when returned. The policy's model and
    this run's checkpoints load as the policy does; any other model with eval.trust_remote_code."""
    own = model == cfg.policy.model.path or Path(model).resolve().is_relative_to(Path(cfg.output_dir).resolve())
    mc = cfg.policy.model if own else dataclasses.replace(
        cfg.policy.model, trust_remote_code=cfg.eval.trust_remote_code, allow_pickle=cfg.eval.allow_pickle)
    c = dataclasses.replace(
        cfg, policy=dataclasses.replace(cfg.policy, model=dataclasses.replace(mc, path=model)),
        rollout=dataclasses.replace(cfg.rollout, max_new_tokens=max_new_tokens),
        sl_cai=dataclasses.replace(cfg.sl_cai, enabled=False))
    # TP > 1: the actor holds no GPU and vLLM's Ray executor makes its own group of TP single-GPU bundles
    gpus = engine_actor_gpus(cfg.rollout.tensor_parallel_size, cfg.ray.gpus_per_rollout)
    actor = ray.remote(RolloutWorker).options(num_cpus=1, num_gpus=gpus).remote(c)
    get(actor.__ray_ready__.remote(), cfg.trainer.timeout_s, f"starting vLLM on {model}")
    return actor


def chat(cfg: Config, actor, chats: list[list[dict]], seed: int, temperature: float, max_new_tokens: int) -> list[str]:
    """One reply per conversation (RolloutWorker.chat returns the replies with its truncation counts; it warns of a
    cut itself)."""
    return get(actor.chat.remote(chats, seed, temperature, max_new_tokens), cfg.trainer.timeout_s,
               "rollout.chat")["replies"]


@dataclasses.dataclass
class JudgePlan:
    """What judges this run, checked before anything starts; `start()` gives the judge (and its actor, if any)."""

    kind: str  # "model" or "function"
    name: str
    warnings: list[str]
    start: Callable[[], tuple[Judge, object | None]]
    shares: list[str] = dataclasses.field(default_factory=list)  # roles shared with the optimizer (override set)


def _resolved(spec: str, cfg: Config) -> str:
    """A model spec's folder, or "" when it does not resolve (its own check reports that, naming its key)."""
    try:
        return resolve_model_path(spec, cfg.cache_dir) if spec else ""
    except (ValueError, FileNotFoundError):
        return ""


def shared_roles(cfg: Config, command: str, judge_path: str) -> list[SharedRole]:
    """The roles the judge shares with the optimizer (or with the model it judges): rlaif.audit.judge_check."""
    out, models = Path(cfg.output_dir), {}
    if judge_path:  # a model judge: compare folders (a function judge cannot be a model: nothing to resolve)
        models = {"labeler.model.path": (_resolved(cfg.labeler.model.path, cfg), "the training labeler"),
                  "preference_model.model.path": (_resolved(cfg.preference_model.model.path, cfg),
                                                  "the preference model's base"),
                  f"{out / 'preference_model'}": (str(out / "preference_model"),
                                                  "the preference model this run trains"),
                  "policy.model.path": (_resolved(cfg.policy.model.path, cfg), "the policy's starting point"),
                  f"{out / 'sl_cai' / 'checkpoint'}": (str(out / "sl_cai" / "checkpoint"), "the SL-CAI policy"),
                  f"{out / 'checkpoint'}": (str(out / "checkpoint"), "the RL policy this run trains")}
        if command == "red-team":
            models["red_team.target"] = (_resolved(cfg.red_team.target, cfg), "the model attacked")
        else:
            models["eval.baseline"] = (_resolved(cfg.eval.baseline, cfg), "the baseline evaluated")
            for k, spec in enumerate(cfg.eval.checkpoints):
                models[f"eval.checkpoints[{k}]"] = (_resolved(spec, cfg), "a checkpoint evaluated")
    key = cfg.sl_cai.self_consistency_key
    functions = {"labeler.function": ([cfg.labeler.function], "the training labeler's function"),
                 "rl.reward_functions": (list(cfg.rl.reward_functions), "a reward the policy was trained on"),
                 "sl_cai.self_consistency_key": ([key] if ":" in key else [], "the SL-CAI target filter")}
    specs = {"eval.judge.path": cfg.eval.judge.path, "eval.judge_function": cfg.eval.judge_function,
             "eval.harm_function": cfg.eval.harm_function}
    return dependent_roles(judge_path, specs, models, functions, cfg.output_dir)


def _independence(cfg: Config, command: str, judge_path: str) -> tuple[list[str], list[str]]:
    """(warnings, shared roles) for a judge the optimizer saw with eval.allow_dependent_judge; refused without."""
    found = shared_roles(cfg, command, judge_path)
    if found and not cfg.eval.allow_dependent_judge:
        raise ConfigError(independence_error(found))
    return ([f"the evaluation judge is not independent: {f.describe()}; the optimizer was trained on its verdicts "
             "(or is it), so they overstate the gains (eval.allow_dependent_judge=true)" for f in found],
            [f.describe() for f in found])


def plan_judge(cfg: Config, command: str) -> JudgePlan:
    """The judge, checked: a model or functions the optimizer never saw (eval.allow_dependent_judge overrides)."""
    ec = cfg.eval
    if ec.judge.path:
        mc = resolve_models(cfg).eval.judge  # checked like every role's model: Hub id, revision, pickle, remote code
        path = mc.path
        warnings, shares = _independence(cfg, command, path)
        # The labeler's option log-prob scoring on the judge model; a fresh labeler section so no training-labeler
        # setting (mode, cache, ensembles) leaks into the judge.
        model = ModelConfig(path=path, dtype=ec.judge.dtype, trust_remote_code=ec.judge.trust_remote_code,
                            attn_implementation=ec.judge.attn_implementation)
        lc = LabelerConfig(model=model, chat_template=ec.judge_chat_template, cache=False, human_eval="",
                           kv_cache_gib=cfg.labeler.kv_cache_gib, max_model_len=cfg.labeler.max_model_len)

        def start() -> tuple[Judge, object]:
            actor = ray.remote(LabelerWorker).options(num_cpus=1, num_gpus=cfg.ray.gpus_per_aux).remote(
                dataclasses.replace(cfg, labeler=lc))
            return ModelJudge(lambda qs: get(actor.p_a.remote(qs), cfg.trainer.timeout_s, "judge.p_a"),
                              ec.judge.path), actor

        return JudgePlan("model", ec.judge.path, warnings, start, shares)
    if ec.judge_function:
        judge = FunctionJudge(ec.judge_function, ec.harm_function)  # imports now: a bad path fails before any work
        warnings, shares = _independence(cfg, command, "")
        return JudgePlan("function", judge.name, warnings, lambda: (judge, None), shares)
    raise ConfigError(f"rlaif {command} needs a judge the optimizer never saw: set eval.judge (a model) or "
                      "eval.judge_function and eval.harm_function")


# ---------------------------------------------------------------------------------------------------------------------
# rlaif eval


def run_eval(cfg: Config, tracker: Tracker, step: int = 0, trained: dict[str, str] | None = None) -> Path:
    """Generate with every checkpoint (baseline first, then eval.checkpoints, then `trained`: label -> model folder),
    judge, write eval/report.html and eval/results.json, log the figures at `step`. Ray must be running. Returns the
    report's path."""
    ec, out = cfg.eval, Path(cfg.output_dir) / "eval"
    plan = plan_judge(cfg, "eval")
    prompts, chats, warnings = eval_prompts(cfg)
    if not prompts:
        raise DataError("no held-out evaluation prompts: eval.red_team and eval.benign are empty or all used in "
                        "training")
    baseline = ec.baseline or cfg.policy.model.path
    base_path = resolve_model_path(baseline, cfg.cache_dir)
    specs = [baseline] + [c for c in ec.checkpoints if resolve_model_path(c, cfg.cache_dir) != base_path]
    labels = labels_for(specs) + list(trained or {})
    specs += list((trained or {}).values())
    warnings = plan.warnings + warnings
    for w in warnings:
        log.warning("eval: %s", w)

    responses: dict[str, list[str]] = {}
    for label, spec in zip(labels, specs):  # one engine at a time: each is shut down before the next starts
        log.info("eval: generating with %s on %d prompts", spec, len(prompts))
        actor = serve(cfg, spec, ec.max_new_tokens)
        try:
            responses[label] = chat(cfg, actor, chats, cfg.seed + 31_337, ec.temperature, ec.max_new_tokens)
        finally:
            ray.kill(actor)
    judge, judge_actor = plan.start()
    try:
        validation = judge_validation(cfg, judge)
        res = evaluate_responses(prompts, responses, labels[0], judge, ec.bootstrap_samples, cfg.seed)
    finally:
        if judge_actor is not None:
            ray.kill(judge_actor)

    trust = {lab: read_mark(spec) if Path(spec).is_dir() else None for lab, spec in zip(labels, specs)}
    for lab, mark in trust.items():
        if mark and mark["status"] in DISTRUSTED:
            log.warning("eval: checkpoint %s is marked untrusted: %s", lab, mark["summary"])
    results = build_results(prompts, res, dict(zip(labels, specs)), labels[0],
                            {"kind": plan.kind, "name": plan.name, "shares": plan.shares}, warnings,
                            {"temperature": ec.temperature, "max_new_tokens": ec.max_new_tokens,
                             "seed": cfg.seed + 31_337}, validation, trust)
    atomic_write_text(out / "results.json", json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    report = atomic_write_text(out / "report.html", render_report(results))
    tracker.log(flat_metrics(res["figures"]), step=step)
    tracker.log_table("eval", [{"checkpoint": lab, **{k: f.value for k, f in res["figures"][lab].items()}}
                               for lab in labels], step=step)
    log_panels(tracker, lambda: eval_panels(results), step=step)
    for lab in labels:
        log.info("%s", eval_sentence(lab, res["figures"][lab]))
    return report


def judge_validation(cfg: Config, judge: Judge) -> dict | None:
    """The judge scored on pyrit's human labels (rlaif.audit.judge_check), eval.judge_validation_samples of each kind;
    None when that is 0. A judge no better than chance is logged as a warning too."""
    n = cfg.eval.judge_validation_samples
    if not n:
        return None
    v = validate_judge(judge, harm_items(n, cfg.seed), ranked_pairs(n, cfg.seed), cfg.seed)
    verdict = validation_verdict(v)
    if verdict:
        log.warning("judge validation: %s", verdict)
    log.info("%s", validation_sentence(v))
    return v


def eval_models(cfg: Config) -> dict[str, str]:
    return {"eval.baseline": cfg.eval.baseline or cfg.policy.model.path,
            **{f"eval.checkpoints[{i}]": c for i, c in enumerate(cfg.eval.checkpoints)}}


def _check_models(cfg: Config, specs: dict[str, str]) -> None:
    """The models eval and red-team serve (key -> spec), checked as the roles' models are: present, weights not
    pickle-only, no code of their own (eval.allow_pickle, eval.trust_remote_code); the policy's own model as the
    policy is."""
    for key, spec in specs.items():
        mc = cfg.policy.model if spec == cfg.policy.model.path else ModelConfig(
            path=spec, trust_remote_code=cfg.eval.trust_remote_code, allow_pickle=cfg.eval.allow_pickle)
        checked_folder(key, mc, cfg.cache_dir, path_key=key, flags="policy.model" if mc is cfg.policy.model else "eval")


def eval_command(cfg: Config, overwrite: bool = False, verbose: bool = False) -> Path:
    """`rlaif eval`: check every input, then run_eval on a local (or the job's) Ray."""
    plan_judge(cfg, "eval")
    _check_models(cfg, eval_models(cfg))
    eval_prompts(cfg)
    out = Path(cfg.output_dir)
    replace = check_output_dir(out, overwrite)  # the same rules as `rlaif train`: its own folder, --overwrite
    init_ray(cfg, (), verbose)
    own_output_dir(out, replace, "eval")
    (out / "eval").mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "eval" / "config.yaml")
    tracker = Tracker(cfg, out, job_type="eval")
    try:
        return run_eval(cfg, tracker)
    finally:
        tracker.finish()
        shutdown_ray()
        release_output_dir(out)


def in_loop_judge(cfg: Config) -> bool:
    """Does the held-out judge run at every eval point of `rlaif train`? For the divergence alarm, and wherever a
    judge is configured and there are eval points: the reward_agreement alarm then measures the reward against a
    judge the optimizer never saw, not against the labeler whose biases the PM learned."""
    judged = bool(cfg.eval.judge.path or cfg.eval.judge_function)
    return cfg.alarms.divergence_window > 0 or (judged and cfg.trainer.eval_every > 0)


class TrainingEval:
    """The judge the optimizer never saw, during and after `rlaif train`: the held-out judge's verdict at every eval
    point (alarms.divergence_window) and, with eval.enabled, the evaluation of every checkpoint once RL is done.

    Intermediate checkpoints: the policy is saved every eval.every RL steps and evaluated at the end with the others,
    each served on its own vLLM engine after the RL roles are shut down. Every point then goes through the same
    engine, prompts, seeds and judge as `rlaif eval`, and RL never shares the CPUs or memory with an evaluation; the
    in-loop signal is the divergence alarm's judge verdict, on the held-out RL prompts.
    """

    def __init__(self, cfg: Config) -> None:
        """Checks the judge, the eval prompts and the models before anything is written or started. `cfg` is the
        run's config before SL-CAI: its policy is the baseline."""
        self.cfg, self.saved, self.judge_actor = cfg, {}, None
        needs_judge = cfg.eval.enabled or in_loop_judge(cfg)
        self.plan = plan_judge(cfg, "train") if needs_judge else None
        if cfg.eval.enabled:
            _check_models(cfg, eval_models(cfg))
            eval_prompts(cfg)

    def verdict(self, held_out: list) -> JudgeVerdict | None:
        """The held-out judge for trainer.evaluate (None where in_loop_judge says none runs); starts a model
        judge."""
        if not in_loop_judge(self.cfg):
            return None
        if not held_out and not self.cfg.alarms.divergence_window:
            log.warning("held-out judge: no held-out RL prompts to judge at the eval points; the reward_agreement "
                        "alarm measures the reward against the labeler (raise data.eval_fraction)")
            return None
        if not held_out:
            raise DataError("alarms.divergence_window: no held-out RL prompts to judge; raise data.eval_fraction or "
                            "give data.eval_prompts")
        for w in self.plan.warnings:
            log.warning("held-out judge: %s", w)
        judge, self.judge_actor = self.plan.start()
        return JudgeVerdict(judge, {p.text: prompt_set(p.kind, p.category, "benign") for p in held_out})

    def resume(self, step: int) -> None:
        """A resumed run: the policies saved for evaluation before the interruption are still to be evaluated."""
        folder = Path(self.cfg.output_dir) / "eval" / "checkpoints"
        for path in sorted(folder.glob("step_*")) if folder.is_dir() else []:
            k = int(path.name.split("_")[1])
            if k <= step and (path / "config.json").is_file():
                self.saved[f"rl-step-{k}"] = str(path)

    def snapshot(self, roles, step: int, card: dict[str, str]) -> None:
        """Save the policy after RL step `step` (with its model card) when eval.every says so (the final policy is
        saved anyway)."""
        every = self.cfg.eval.every
        if self.cfg.eval.enabled and every and step % every == 0 and step < self.cfg.trainer.steps:
            path = Path(self.cfg.output_dir) / "eval" / "checkpoints" / f"step_{step}"
            self.saved[f"rl-step-{step}"] = roles.policy.call("save", str(path), card)[0]

    def finish(self, roles, tracker: Tracker, final: str, step: int) -> Path | None:
        """After RL: stop the held-out judge; with eval.enabled shut the RL roles down and evaluate the baseline,
        eval.checkpoints, the SL-CAI model, the saved policies and `final`. Returns the report's path."""
        if self.judge_actor is not None:
            ray.kill(self.judge_actor)
        if not self.cfg.eval.enabled:
            return None
        roles.shutdown()
        trained = {"sl-cai": str(Path(self.cfg.output_dir) / "sl_cai" / "checkpoint")} if self.cfg.sl_cai.enabled \
            else {}
        return run_eval(self.cfg, tracker, step, trained | self.saved | {"rl-final": final})
