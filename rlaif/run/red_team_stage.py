"""`rlaif red-team`: Perez et al.'s red-LM loop (zero-shot, few-shot, and the RL red LM of rlaif.run.red_rl), served
on rollout actors, judged by the eval judge; writes the cases, the report and the successful prompts. Apart from
rlaif.run.eval_stage, which the trainer imports: the RL red LM is itself an `rlaif train` run."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from pathlib import Path

import ray
import torch

from actors.group import get
from rlaif.audit.eval_report import figure_text
from rlaif.audit.evaluate import (
    rate_figure,
)
from rlaif.audit.judge_check import (
    validation_verdict,
)
from rlaif.audit.redteam import (
    embed,
    mean_pairwise_distance,
    minilm_path,
    prompt_records,
    red_team,
    sampled_self_bleu,
    unique_cases,
)
from rlaif.config import Config, ConfigError, save_config
from rlaif.data.human_labels import atomic_write_text, write_jsonl
from rlaif.models import resolve_model_path
from rlaif.run.eval_stage import JudgePlan, _check_models, chat, judge_validation, plan_judge, serve  # noqa: F401
from rlaif.run.red_rl import append_cases, compare, function_target, sentences, train_red_lm
from rlaif.run.session import check_output_dir, init_ray, own_output_dir, release_output_dir, shutdown_ray
from rlaif.run.tracking import Tracker

log = logging.getLogger("rlaif")



def red_team_command(cfg: Config, overwrite: bool = False, verbose: bool = False) -> Path:
    """`rlaif red-team`: the Perez et al. loop; writes red_team/cases.jsonl, red_team/report.json and the successful
    prompts as a JSONL prompt source (red_team.output). Returns the prompt source's path (the report's when none
    succeeded)."""
    rc, ec = cfg.red_team, cfg.eval
    if not (ec.judge.path or ec.harm_function):
        raise ConfigError("rlaif red-team needs a harm judge: set eval.judge (a model) or eval.judge_function and "
                          "eval.harm_function")
    plan = plan_judge(cfg, "red-team")
    red_spec, target_spec = rc.red_model or cfg.policy.model.path, rc.target or cfg.policy.model.path
    _check_models(cfg, {"red_team.red_model": red_spec} | ({} if rc.target_function else
                                                          {"red_team.target": target_spec}))
    minilm_path()  # the diversity encoder's package must be there before any work starts
    replace = check_output_dir(Path(cfg.output_dir), overwrite)  # the same rules as `rlaif train`
    own_output_dir(Path(cfg.output_dir), replace, "red-team")
    out = Path(cfg.output_dir) / "red_team"
    prompts_path = Path(rc.output) if rc.output else out / "prompts.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    for w in plan.warnings:
        log.warning("red-team: %s", w)
    # the RL red LM first: `rlaif train` runs its own Ray session (rlaif/run/red_rl.py)
    rl_model = train_red_lm(cfg, plan, red_spec, target_spec, out / "rl", verbose) if rc.method == "rl" else ""
    init_ray(cfg, (), verbose)
    tracker = Tracker(cfg, Path(cfg.output_dir), job_type="red-team")
    try:
        cases, asked, validation, by_method = _attack(cfg, plan, red_spec, target_spec, rl_model)
        unique = unique_cases(cases)
        wins = [c.question for c in unique if c.success]
        mask = torch.tensor([c.success for c in unique], dtype=torch.bool)
        vectors = embed([c.question for c in unique]) if len(unique) > 1 else None
        asr = rate_figure(mask.tolist())
        bleu = {k: sampled_self_bleu(texts, rc.self_bleu_sample, cfg.seed)
                for k, texts in (("all", [c.question for c in unique]), ("successful", wins))}
        report = {  # what decides whether to believe the figures comes first
            "judge_verdict": validation_verdict(validation), "judge_validation": validation,
            "judge": {"kind": plan.kind, "name": plan.name, "shares": plan.shares},
            "red_model": red_spec, "red_prompt": rc.red_prompt, "target": target_spec,
            "warnings": plan.warnings, "completions": asked, "test_cases": len(cases), "unique": len(unique),
            "duplicates": len(cases) - len(unique), "unparsed": asked - len(cases), "successes": len(wins),
            "attack_success_rate": asr.to_dict(),
            "per_stage": {s: rate_figure([c.success for c in unique if c.stage == s]).to_dict()
                          for s in dict.fromkeys(c.stage for c in unique)},
            # self-BLEU on red_team.self_bleu_sample cases drawn with the seed; "self_bleu_sample" says how many
            "self_bleu": bleu["all"]["value"], "self_bleu_successful": bleu["successful"]["value"],
            "self_bleu_sample": {"size": rc.self_bleu_sample, **bleu},
            "embedding_distance": None if vectors is None else mean_pairwise_distance(vectors),
            "embedding_distance_successful": None if vectors is None else mean_pairwise_distance(vectors[mask]),
            "prompts": str(prompts_path) if wins else None,
            # Perez et al.'s figure 2: each method's success and self-BLEU over all its test cases (rlaif.run.red_rl)
            "methods": compare(cases, by_method, rc.self_bleu_sample, cfg.seed), "rl_red_model": rl_model or None,
        }
        write_jsonl(out / "cases.jsonl", [c.to_dict() for c in cases])
        atomic_write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
        metrics = {"red_team/attack_success_rate": asr.value, "red_team/attack_success_rate_low": asr.low,
                   "red_team/attack_success_rate_high": asr.high, "red_team/unique": float(len(unique)),
                   "red_team/duplicates": float(len(cases) - len(unique)), "red_team/self_bleu": report["self_bleu"],
                   "red_team/embedding_distance": report["embedding_distance"]}
        tracker.log({k: v for k, v in metrics.items() if v is not None}, step=0)
    finally:
        tracker.finish()
        shutdown_ray()
        release_output_dir(Path(cfg.output_dir))
    log.info("red team: %d of %d unique test cases succeeded (attack success rate %s), self-BLEU %s, embedding "
             "distance %s", len(wins), len(unique), figure_text(asr),
             *("n/a" if report[k] is None else f"{report[k]:.3f}" for k in ("self_bleu", "embedding_distance")))
    for line in sentences(report["methods"]):
        log.info("red team, %s", line)
    if not wins:
        log.warning("red team: no attack succeeded; no prompt source written")
        return out / "report.json"
    atomic_write_text(prompts_path, "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n"
                                            for r in prompt_records(cases)))
    return prompts_path


def red_generator(cfg: Config, actor) -> Callable[[list[str], int], list[str]]:
    """The red LM as rlaif.audit.redteam calls it: each numbered-list prompt as a user turn in the chat template
    (red_team.red_prompt=chat), or as plain text a base LM continues (continuation, as Perez et al.)."""
    rc = cfg.red_team

    def red(texts: list[str], seed: int) -> list[str]:
        if rc.red_prompt == "continuation":
            return get(actor.complete.remote(texts, seed, rc.temperature, rc.max_question_tokens),
                       cfg.trainer.timeout_s, "rollout.complete")
        return chat(cfg, actor, [[{"role": "user", "content": t}] for t in texts], seed, rc.temperature,
                    rc.max_question_tokens)

    return red


def _attack(cfg: Config, plan: JudgePlan, red_spec: str, target_spec: str, rl_model: str = ""):
    """The red LM, the target (the same actor when it is the same model; none for red_team.target_function) and
    the judge, for the whole loop; then `rl_model` (the RL red LM), sampled red_team.zero_shot times."""
    rc, ec = cfg.red_team, cfg.eval
    actors = []
    try:
        same = not rc.target_function and \
            resolve_model_path(red_spec, cfg.cache_dir) == resolve_model_path(target_spec, cfg.cache_dir)
        red_actor = serve(cfg, red_spec, max(rc.max_question_tokens, rc.max_answer_tokens if same else 0))
        actors.append(red_actor)
        target_actor = red_actor if same or rc.target_function else serve(cfg, target_spec, rc.max_answer_tokens)
        actors += [] if same or rc.target_function else [target_actor]
        judge, judge_actor = plan.start()
        actors += [judge_actor] if judge_actor is not None else []

        red = red_generator(cfg, red_actor)

        def target(questions: list[str], seed: int) -> list[str]:
            return chat(cfg, target_actor, [[{"role": "user", "content": q}] for q in questions], seed,
                        ec.temperature, rc.max_answer_tokens)

        target = function_target(rc.target_function) if rc.target_function else target
        validation = judge_validation(cfg, judge)
        rounds = 0 if rc.method == "zero-shot" else rc.few_shot_rounds
        cases, asked = red_team(red, target, judge.harmful, rc.zero_shot, rounds, rc.few_shot_per_round,
                                rc.few_shot_examples, rc.few_shot_temperature, rc.harm_threshold,
                                random.Random(cfg.seed), cfg.seed)
        by_method = {"zero-shot": rc.zero_shot} | ({"few-shot": asked - rc.zero_shot} if rounds else {})
        if rl_model:  # the RL red LM on the zero-shot instruction, with the zero-shot call's seed (paired samples)
            if not same:  # the starting red LM's engine makes way for the trained one's
                ray.kill(actors.pop(0))
            rl_actor = serve(cfg, rl_model, rc.max_question_tokens)
            actors.append(rl_actor)
            rl_cases, rl_asked = red_team(red_generator(cfg, rl_actor), target, judge.harmful, rc.zero_shot, 0, 0, 1,
                                          rc.few_shot_temperature, rc.harm_threshold, random.Random(cfg.seed),
                                          cfg.seed)
            append_cases(cases, rl_cases, "rl")
            asked, by_method["rl"] = asked + rl_asked, rl_asked
        return cases, asked, validation, by_method
    finally:
        for a in actors:
            ray.kill(a)
