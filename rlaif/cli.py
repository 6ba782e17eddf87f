"""`rlaif` command line.

    rlaif train --config configs/debug.yaml key.path=value ...   the whole RL-CAI run
    rlaif label --config configs/debug.yaml ...                  AI labels + the feedback-integrity report only
    rlaif sl-cai --config configs/debug.yaml ...                 critique -> revision data + SFT checkpoint only
    rlaif self-improve --config X data.prompts=questions.jsonl   majority-consistent reasoning paths -> SFT
    rlaif eval --config configs/debug.yaml eval.checkpoints=[a,b] harmlessness / helpfulness / evasiveness report
    rlaif red-team --config configs/debug.yaml ...               red-LM test questions -> a red-team prompt source
    rlaif red-team --method rl --config configs/debug.yaml ...   ... plus the RL red LM, compared (Perez et al. 2022)
    rlaif import-audit feedback/audit.jsonl human.jsonl          reviewed audit sheet -> human-labelled pairs
    rlaif plan --config configs/llama-7b-1node.yaml ...         each actor's node and GPU, each GPU's memory

The console shows rlaif's own lines, the progress bar and the warnings that matter; every other library's output
and the Ray workers' logs go to <output_dir>/logs/ (--verbose: everything on the console). An output_dir that holds
an earlier run is refused unless --overwrite is given. Exit status: 0 done, 2 bad input (the first line names the
key, file:line or value at fault; nothing is written), 3 stopped by the trust gate (the AI feedback did not pass its
checks against held-out human labels; --accept-untrusted-feedback trains anyway and marks every result), 130
interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlaif.audit.trust import UNTRUSTED, read_mark
from rlaif.config import ConfigError, load_config
from rlaif.data.loader import DataError
from rlaif.feedback.constitution import ConstitutionError
from rlaif.runtime import setup_console


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlaif", description="RL from AI feedback (Constitutional AI) on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("train", "AI-label pairs, check them against human labels, train the PM, then RL the policy"),
                       ("label", "AI-label pairs sampled from the policy and write the feedback-integrity report"),
                       ("sl-cai", "critique -> revision on red-team prompts, then SFT on the revisions"),
                       ("self-improve", "sample reasoning paths, keep the majority-consistent ones, fine-tune on them"),
                       ("eval", "judge checkpoints' harmlessness, helpfulness and evasiveness against the baseline"),
                       ("red-team", "a red LM writes test questions; the successful ones become a prompt source")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", required=True, help="YAML config (see configs/)")
        p.add_argument("--overwrite", action="store_true",
                       help="replace the earlier run in output_dir (refused without this flag)")
        p.add_argument("--accept-untrusted-feedback", action="store_true",
                       help="train on AI feedback that did not pass the trust gate (trust.accept_untrusted_feedback); "
                            "every result is then marked untrusted")
        p.add_argument("--verbose", action="store_true",
                       help="show every library's output and the Ray workers' logs on the console")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.steps=3 output_dir=runs/x; "
                       "every key, its type, range and meaning: `rlaif config --config X`")
        if name == "red-team":
            p.add_argument("--method", choices=("zero-shot", "few-shot", "rl"),
                           help="red_team.method: rl also trains the red LM with `rlaif train` and compares them")
    pl = sub.add_parser("plan", help="print where every actor goes and each GPU's memory; refuse a plan that "
                                     "cannot fit (exit 2), as every run on cuda does before it starts")
    pl.add_argument("--config", required=True, help="YAML config (see configs/)")
    pl.add_argument("--nodes", type=int, help="nodes to plan for (default: 1 for a local Ray, else ray.plan_nodes)")
    pl.add_argument("--gpus-per-node", type=int,
                    help="GPUs per node (default: ray.num_gpus for a local Ray, else ray.plan_gpus_per_node)")
    pl.add_argument("--gpu-memory-gib", type=float, help="memory of one GPU (default: ray.gpu_memory_gib)")
    pl.add_argument("overrides", nargs="*", help="dotted overrides, e.g. policy.zero_stage=3")
    doc = sub.add_parser("config", help="print the resolved configuration: every key's value, type, range and comment")
    doc.add_argument("--config", help="YAML config (default: the built-in defaults)")
    doc.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rl.kl_coef=0.1")
    imp = sub.add_parser("import-audit", help="turn a reviewed audit sheet into human-labelled pairs (JSONL)")
    imp.add_argument("audit", help="the reviewed audit.jsonl (human_choice a/b/tie or human_p_a filled in)")
    imp.add_argument("out", help="where to write the human labels (rlaif.data.human_labels JSONL format)")
    args = parser.parse_args(argv)
    setup_console(getattr(args, "verbose", False))

    from actors import RoleDied, StartupFailed
    from rlaif.audit.alarms import AlarmStop
    from rlaif.audit.integrity import FeedbackIntegrityError
    from rlaif.data.human_labels import HumanLabelError
    from rlaif.run.checkpoint import CheckpointError, DiskSpaceError, Preempted

    output_dir = None
    try:
        if args.command == "import-audit":
            return import_audit(args.audit, args.out)
        if args.command == "plan":
            return plan_command(args)
        if args.command == "config":
            from rlaif.config.doc import describe

            print(describe(load_config(args.config, args.overrides)))
            return 0
        overrides = args.overrides + ["trust.accept_untrusted_feedback=true"] * args.accept_untrusted_feedback
        overrides += [f"red_team.method={args.method}"] if getattr(args, "method", None) else []
        cfg = load_config(args.config, overrides)
        output_dir = cfg.output_dir
        from rlaif.run import eval_stage, red_team_stage, trainer  # Ray and the actors: once the config is good

        run = {"train": trainer.train, "label": trainer.label, "sl-cai": trainer.sl_cai_only,
               "self-improve": trainer.self_improve_only,
               "eval": eval_stage.eval_command, "red-team": red_team_stage.red_team_command}[args.command]
        path = run(cfg, overwrite=args.overwrite, verbose=args.verbose)
    except (ConfigError, ConstitutionError, DataError, HumanLabelError, FileNotFoundError, CheckpointError) as exc:
        # raised in an actor (a labeler prompt longer than its context), Ray's error is also the original's type:
        # print the original's message, not Ray's page of remote traceback
        print(f"rlaif: error: {getattr(exc, 'cause', None) or exc}", file=sys.stderr)
        return 2
    except FeedbackIntegrityError as exc:
        print(f"rlaif: stopped by the trust gate: {exc}", file=sys.stderr)
        return 3
    except AlarmStop as exc:  # trainer.stop_on_alarm
        where = f"checkpoint at {exc.checkpoint}" if exc.checkpoint else "no checkpoint saved"
        print(f"rlaif: stopped by alarm {exc.alarm.name} at step {exc.alarm.step}; {where}. {exc.alarm.detail}",
              file=sys.stderr)
        return 4
    except DiskSpaceError as exc:  # checked before every save: nothing torn was written
        print(f"rlaif: stopped: {exc}", file=sys.stderr)
        return 1
    except StartupFailed as exc:  # a role's model failed to load: one line, the traceback in logs/driver.log
        print(f"rlaif: error: {exc}", file=sys.stderr)
        return 1
    except RoleDied as exc:  # a DeepSpeed rank died: the run cannot go on; the last checkpoint can
        print(f"rlaif: {exc}", file=sys.stderr)
        return 1
    except Preempted as exc:  # SIGTERM (preemption, `ray job stop`) or Ctrl-C: stopped after a step, checkpointed
        print(f"rlaif: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        where = f"; the incomplete run is in {output_dir} (start again with --overwrite, or trainer.resume=auto)" \
            if output_dir and Path(output_dir).is_dir() else "; nothing was written"
        print(f"rlaif: interrupted{where}", file=sys.stderr)
        return 130
    what = {"train": "policy checkpoint", "label": "AI labels", "sl-cai": "SL-CAI checkpoint",
            "self-improve": "self-improved checkpoint",
            "eval": "evaluation report", "red-team": "red-team prompt source"}[args.command]
    print(f"rlaif: done; {what} at {path}")
    mark = read_mark(Path(output_dir) / "feedback") if args.command in ("train", "label") else None
    if mark is not None and mark["status"] == UNTRUSTED:
        print(f"rlaif: UNTRUSTED: {mark['summary']}. Every checkpoint of this run carries this mark in its "
              f"README.md and trust.json.")
    return 0


def plan_command(args: argparse.Namespace) -> int:
    """`rlaif plan`: the placement and memory report; a plan that cannot fit ends with one error line (exit 2)."""
    from rlaif.run import plan

    cfg = load_config(args.config, args.overrides)
    if cfg.device != "cuda":
        raise ConfigError(f"device: rlaif plan plans GPU memory, and {args.config} runs on '{cfg.device}'; set "
                          "device=cuda")
    for flag in ("nodes", "gpus_per_node", "gpu_memory_gib"):
        if getattr(args, flag) is not None and getattr(args, flag) <= 0:
            raise ConfigError(f"--{flag.replace('_', '-')}: must be > 0, got {getattr(args, flag)}")
    plans = plan.make_plans(cfg, args.nodes, args.gpus_per_node, args.gpu_memory_gib)
    print(plan.report(plans))
    found = [msg for p in plans for msg in plan.problems(p)]
    if found:
        print(f"rlaif: error: the plan does not fit: {found[0]}"
              + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""), file=sys.stderr)
        return 2
    print(f"rlaif: the plan fits ({args.config})")
    return 0


def import_audit(audit: str, out: str) -> int:
    from rlaif.audit.integrity import import_audit as read_audit
    from rlaif.data.human_labels import write_human_labels

    target = Path(out)
    if target.is_dir():
        raise ConfigError(f"import-audit: the output {out} is a folder; give a file name such as "
                          f"{target / 'human.jsonl'}")
    pairs = read_audit(audit)
    try:
        write_human_labels(target, pairs)
    except OSError as exc:
        raise ConfigError(f"import-audit: cannot write {out}: {exc.strerror or exc}") from exc
    print(f"rlaif: {len(pairs)} reviewed pairs written to {out} "
          "(use them as preference_model.human_pairs or labeler.human_eval)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
