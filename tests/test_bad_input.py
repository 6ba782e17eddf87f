"""Bad input through the `rlaif` command, as a new user would type it: every case exits 2, its first line names the
key, file:line or value at fault, and output_dir is left as it was (absent, or the earlier run untouched).

All of these fail before Ray starts, so they run in this process (one case also through a new interpreter).
Failures after start-up, Ctrl-C and leftover processes: tests/test_ops_e2e.py.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from rlaif.run.session import MARKER, check_output_dir

from .conftest import REPO

DEBUG = ["--config", "configs/debug.yaml"]


def binary_file(tmp: Path) -> Path:
    path = tmp / "c.yaml"
    path.write_bytes(b"trainer:\n  steps: 3\n\x89PNG\r\n\x1a\n\x00\xff\xfe")
    return path


def earlier_run(tmp: Path) -> list[str]:
    (tmp / "run").mkdir()
    (tmp / "run" / MARKER).write_text("{}\n")  # rlaif made it
    (tmp / "run" / "config.yaml").write_text("seed: 0\n")
    (tmp / "run" / "metrics.jsonl").write_text('{"step": 1, "reward/score": 0.5}\n')
    return []


def foreign_folder(tmp: Path) -> list[str]:
    (tmp / "run").mkdir()
    (tmp / "run" / "notes.txt").write_text("mine\n")
    return []


def project_folder(tmp: Path) -> list[str]:
    """Someone's project: its own config.yaml, sources and .git; `--overwrite` once deleted it whole."""
    for name, text in (("config.yaml", "seed: 0\n"), ("src/main.py", "print(1)\n"), (".git/HEAD", "ref: main\n")):
        (tmp / "run" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "run" / name).write_text(text)
    return ["--overwrite"]


# the end-of-run evaluation, with an independent function judge: its models are checked before anything starts
EVAL_ON = ["eval.enabled=true", "eval.judge_function=tests.eval_judges:shorter_is_better",
           "eval.harm_function=tests.eval_judges:any_words_harmful"]


def tiny_copy(tmp: Path, name: str, keep_weights: bool = True) -> Path:
    from rlaif.models import TINY, resolve_model_path

    dest = tmp / name
    shutil.copytree(resolve_model_path(TINY), dest, ignore=None if keep_weights else
                    shutil.ignore_patterns("*.safetensors"))
    return dest


def pickle_only(tmp: Path) -> Path:
    import torch
    from safetensors.torch import load_file

    from rlaif.models import TINY, resolve_model_path

    dest = tiny_copy(tmp, "pickled", keep_weights=False)
    torch.save(load_file(Path(resolve_model_path(TINY)) / "model.safetensors"), dest / "pytorch_model.bin")
    return dest


def remote_code(tmp: Path) -> Path:
    dest = tiny_copy(tmp, "custom")
    config = json.loads((dest / "config.json").read_text())
    config |= {"model_type": "acme_llama", "auto_map": {"AutoModelForCausalLM": "modeling_acme.AcmeForCausalLM"}}
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def write(tmp: Path, name: str, content: bytes) -> Path:
    (tmp / name).write_bytes(content)
    return tmp / name


def constitution(content: bytes) -> Callable[[Path], list[str]]:
    return lambda tmp: ["constitution.path=" + str(write(tmp, "k.yaml", content))]


# id -> (argv after `rlaif` given the test's tmp folder, the first stderr line's regex, extra environment)
Case = tuple[Callable[[Path], list[str]], str, dict[str, str]]
CASES: dict[str, Case] = {
    # every learning rate
    "policy.lr negative": (lambda t: ["policy.lr=-1e-5"], r"policy\.lr: must be > 0, got -1e-05$", {}),
    "critic.lr zero": (lambda t: ["critic.lr=0"], r"critic\.lr: must be > 0, got 0\.0$", {}),
    "preference_model.lr negative": (lambda t: ["preference_model.lr=-1"],
                                     r"preference_model\.lr: must be > 0, got -1\.0$", {}),
    "sl_cai.lr NaN": (lambda t: ["sl_cai.lr=.nan"], r"sl_cai\.lr: must be > 0, got nan$", {}),
    # sampling and other ranges
    "rollout.top_p zero": (lambda t: ["rollout.top_p=0"], r"rollout\.top_p: must be in \(0, 1\], got 0\.0$", {}),
    "rollout.top_p above 1": (lambda t: ["rollout.top_p=1.5"], r"rollout\.top_p: must be in \(0, 1\], got 1\.5$",
                              {}),
    "labeler.human_eval_pairs negative": (lambda t: ["labeler.human_eval_pairs=-4"],
                                          r"labeler\.human_eval_pairs: must be >= 1, got -4$", {}),
    "rl.gamma NaN": (lambda t: ["rl.gamma=.nan"], r"rl\.gamma: must be in \[0, 1\], got nan$", {}),
    "trainer.timeout_s zero": (lambda t: ["trainer.timeout_s=0"], r"trainer\.timeout_s: must be > 0", {}),
    # resources: fail at once, with what was asked and what there is
    "ray.num_cpus zero": (lambda t: ["ray.num_cpus=0"], r"ray\.num_cpus: must be >= 1, got 0$", {}),
    "ray.num_cpus too few for the roles": (
        lambda t: ["ray.num_cpus=3"],
        r"ray\.num_cpus = 3, ray\.num_gpus = 0: the run needs 6 CPUs and 0 GPUs \(rollout 1 x \(1 CPU\), labeler "
        r"1 x \(1 CPU\), reference 1 x \(1 CPU\), preference_model 1 x \(1 CPU\), policy 2 x \(1 CPU\)\) but has 3 "
        r"CPUs and 0 GPUs$", {}),
    # the config file
    "config file not text": (lambda t: ["--config", str(binary_file(t))],
                             r"c\.yaml: not a text \(UTF-8\) YAML file: byte 0x89 at offset 20", {}),
    "config file malformed at a line": (lambda t: ["--config", str(write(t, "c.yaml", b"seed: 1\ntrainer: [1, 2\n"))],
                                        r"c\.yaml:3:1: malformed YAML", {}),
    # output_dir
    "output_dir holds an earlier run": (earlier_run,
                                        r"output_dir: .*/run holds an earlier run \(it has no complete checkpoint to "
                                        r"resume\); trainer\.resume=auto continues it, --overwrite removes it: "
                                        r"\.rlaif-run, config\.yaml, metrics\.jsonl \(3 files, 0\.0 MB\)", {}),
    "--overwrite with a bad value keeps the earlier run": (lambda t: earlier_run(t) + ["--overwrite", "policy.lr=-1"],
                                                          r"policy\.lr: must be > 0", {}),
    "output_dir holds someone else's files": (foreign_folder,
                                              r"output_dir: .*/run is not empty and is not a folder rlaif made \(no "
                                              r"\.rlaif-run file in it\), so it is never written into or replaced: "
                                              r"it holds notes\.txt \(1 files", {}),
    "--overwrite on a project folder with its own config.yaml": (project_folder,
                                                                 r"output_dir: .*/run is not empty and is not a "
                                                                 r"folder rlaif made .* it holds \.git/, config\.yaml, "
                                                                 r"src/ \(3 files", {}),
    "data.prompts names a folder": (lambda t: [f"data.prompts={t}"],
                                    r"data\.prompts: .* is a folder, not a prompt file; give a file \(\.jsonl", {}),
    "no Ray cluster at the address": (lambda t: [], r"RAY_ADDRESS: no Ray cluster answers at 127\.0\.0\.1:9; start "
                                                    r"one", {"RAY_ADDRESS": "127.0.0.1:9"}),
    "relative output_dir on a cluster": (lambda t: ["output_dir=runs/relative-on-a-cluster"],
                                         r"output_dir: runs/relative-on-a-cluster is relative; on a cluster it would "
                                         r"land in Ray's per-node copy", {"RAY_ADDRESS": "127.0.0.1:9"}),
    "output_dir is a file": (lambda t: [f"output_dir={write(t, 'f', b'x')}"], r"output_dir: .*/f is a file", {}),
    "output_dir not writable": (lambda t: ["output_dir=/sys/rlaif-test/run"],
                                r"output_dir: cannot create /sys/rlaif-test/run: /sys is not writable", {}),
    # the constitution
    "constitution missing": (lambda t: [f"constitution.path={t / 'none.yaml'}"],
                             r"constitution\.path: file not found: .*none\.yaml$", {}),
    "constitution empty": (constitution(b"  \n"),
                           r"constitution\.path: .*k\.yaml: the file is empty", {}),
    "constitution malformed": (constitution(b"feedback:\n  - a\n - b\n"),
                               r"constitution\.path: .*k\.yaml:3:2: malformed YAML", {}),
    "constitution not text": (constitution(b"feedback: [\xff]"),
                              r"constitution\.path: .*k\.yaml: not a text \(UTF-8\) YAML file", {}),
    "constitution without principles": (constitution(b"feedback: []"),
                                        r"constitution\.path: .*k\.yaml: 'feedback' must list at least one", {}),
    # models
    "misspelt builtin model": (lambda t: ["labeler.model.path=builtin:smollm2"],
                               r"labeler\.model\.path: unknown builtin model 'builtin:smollm2' \(did you mean "
                               r"builtin:smollm2-135m\?\)", {}),
    "model folder without weights": (lambda t: [f"policy.model.path={tiny_copy(t, 'empty', keep_weights=False)}"],
                                     r"policy\.model\.path: .*/empty holds no weights", {}),
    "eval checkpoint with only pickle weights": (lambda t: [*EVAL_ON, f"eval.checkpoints=[{pickle_only(t)}]"],
                                                 r"eval\.checkpoints\[0\]: .*/pickled holds only pickle weights .* "
                                                 r"set eval\.allow_pickle=true", {}),
    "eval checkpoint with its own code": (lambda t: [*EVAL_ON, f"eval.checkpoints=[{remote_code(t)}]"],
                                          r"eval\.checkpoints\[0\]: .*/custom needs its own Python code .* set "
                                          r"eval\.trust_remote_code=true", {}),
    "model with only pickle weights": (lambda t: [f"preference_model.model.path={pickle_only(t)}"],
                                       r"preference_model\.model\.path: .*/pickled holds only pickle weights .* set "
                                       r"preference_model\.model\.allow_pickle=true", {}),
    "model that needs its own code": (lambda t: [f"critic.model.path={remote_code(t)}", "rl.algorithm=ppo"],
                                      r"critic\.model\.path: .*/custom needs its own Python code .* set "
                                      r"critic\.model\.trust_remote_code=true", {}),
    "Hub id not in the offline cache": (lambda t: ["policy.model.path=acme/absent"],
                                        r"policy\.model\.path: 'acme/absent' at revision 'main' is not in the "
                                        r"Hugging Face cache .* and HF_HUB_OFFLINE is set",
                                        {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": "{tmp}/hub"}),
    "revision pinned on a builtin": (lambda t: ["labeler.model.revision=v2"],
                                     r"labeler\.model\.revision: 'v2' pins a Hub revision, but labeler\.model\.path "
                                     r"'builtin:tiny-llama' is not a Hub id", {}),
    "prompt and response longer than the policy's context": (
        lambda t: ["rollout.max_new_tokens=4000"],
        r"data\.max_prompt_tokens \+ rollout\.max_new_tokens = 4096 exceeds the policy model's context of 2048 "
        r"tokens", {}),
    "SL-CAI context longer than the policy's": (
        lambda t: ["sl_cai.enabled=true", "sl_cai.max_context_tokens=3000"],
        r"sl_cai\.max_context_tokens = 3000 exceeds the policy model's context of 2048 tokens", {}),
    # other inputs named by a key
    "human eval file missing": (lambda t: [f"labeler.human_eval={t / 'human.jsonl'}"],
                                r"labeler\.human_eval: .*human\.jsonl", {}),
}


@pytest.fixture
def cli(monkeypatch, capsys):
    """`rlaif ARGV` in this process (the cases fail before Ray starts; a new interpreter per case costs ~10 s):
    returns (exit status, stderr). The console set-up it does to the root logger is undone afterwards."""
    from rlaif.cli import main

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("WANDB_SILENT", os.environ.get("WANDB_SILENT", "true"))

    def call(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        status = main(argv)
        return status, capsys.readouterr().err

    yield call
    root.handlers[:], root.level = handlers, level
    logging.captureWarnings(False)


def snapshot(folder: Path) -> dict[str, bytes] | None:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} \
        if folder.is_dir() else None


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_names_the_fault_and_writes_nothing(tmp_path, cli, case):
    make_args, first_line, env = CASES[case]
    args = make_args(tmp_path)
    config = [] if "--config" in args else DEBUG
    out = tmp_path / "run"
    before = snapshot(out)
    overrides = [a for a in args if a.startswith("output_dir=")] or [f"output_dir={out}"]
    argv = ["train", *config, *[a for a in args if not a.startswith("output_dir=")], *overrides]
    status, stderr = cli(argv, {k: v.format(tmp=tmp_path) for k, v in env.items()})
    lines = stderr.splitlines()
    assert status == 2, stderr[-3000:]
    assert lines and lines[0].startswith("rlaif: error: "), stderr[-3000:]
    assert re.search(first_line, lines[0].removeprefix("rlaif: error: ")), lines[0]
    assert snapshot(out) == before  # absent stays absent; an earlier run or someone's files stay untouched
    target = Path(overrides[0].split("=", 1)[1])
    if target != out and not target.is_file():
        assert not target.exists()


def test_import_audit_into_a_folder_is_refused(tmp_path, cli):
    audit = tmp_path / "audit.jsonl"
    audit.write_text(json.dumps({"id": "x", "prompt": "p", "response_a": "a", "response_b": "b",
                                 "human_choice": "a"}) + "\n")
    (tmp_path / "out").mkdir()
    status, stderr = cli(["import-audit", str(audit), str(tmp_path / "out")], {})
    assert status == 2
    assert stderr.splitlines()[0].startswith(f"rlaif: error: import-audit: the output {tmp_path / 'out'} is a folder")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_bad_input_through_a_new_interpreter_prints_one_line_and_no_traceback(tmp_path):
    """The same path as a user's shell: exit status and stderr of a real process."""
    proc = subprocess.run([sys.executable, "-m", "rlaif.cli", "train", *DEBUG, "rollout.top_p=2",
                           f"output_dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    assert proc.stderr == "rlaif: error: rollout.top_p: must be in (0, 1], got 2.0\n"
    assert proc.stdout == "" and not (tmp_path / "run").exists()


def test_an_unschedulable_request_names_what_was_asked_and_what_there_is():
    """The check a joined cluster gets after ray.init (a local Ray gets it from the config, above)."""
    from actors.roles import ResourceError, check_resources, role_plan
    from rlaif.config import load_config

    cfg = load_config(None, ["device=cuda", "ray.gpus_per_policy_rank=1", "ray.gpus_per_rollout=0.5",
                             "ray.gpus_per_aux=0.25", "policy.num_ranks=2", "rl.algorithm=ppo"])
    plan = role_plan(cfg, "rl")
    assert plan == {"rollout": (1, 0.5), "labeler": (1, 0.25), "reference": (1, 0.25), "preference_model": (1, 0.25),
                    "policy": (2, 1.0), "critic": (1, 1.0)}
    check_resources(plan, cpus=7, gpus=4.25, node_gpus=2, where="cluster")  # exactly enough
    with pytest.raises(ResourceError, match=r"^cluster: the run needs 7 CPUs and 4\.25 GPUs \(rollout 1 x \(1 CPU, "
                                            r"0\.5 GPU\), .*policy 2 x \(1 CPU, 1 GPU\).* but has 16 CPUs and 4 GPUs$"):
        check_resources(plan, cpus=16, gpus=4, node_gpus=4, where="cluster")
    with pytest.raises(ResourceError, match=r"needs 7 CPUs .* but has 6 CPUs"):
        check_resources(plan, cpus=6, gpus=8, node_gpus=8, where="cluster")
    with pytest.raises(ResourceError, match=r"no node has enough GPUs for policy \(1 GPUs each\), critic"):
        check_resources(plan, cpus=8, gpus=8, node_gpus=0.5, where="cluster")


@pytest.mark.parametrize("where", ["cwd", "home"])
def test_overwrite_never_removes_a_folder_holding_the_current_or_home_folder(tmp_path, monkeypatch, where):
    from rlaif.config import ConfigError

    run = tmp_path / "run"
    (run / "inner").mkdir(parents=True)
    (run / MARKER).write_text("{}\n")
    if where == "cwd":
        monkeypatch.chdir(run / "inner")
    else:
        monkeypatch.setenv("HOME", str(run / "inner"))
    with pytest.raises(ConfigError, match="is or contains (the current folder|your home folder)"):
        check_output_dir(run, overwrite=True)
    assert check_output_dir(run, overwrite=False, resuming=True) is False  # resuming removes nothing: allowed


def test_a_second_run_on_a_folder_in_use_is_refused(tmp_path):
    """A job resubmitted while the first still runs: the second would delete or mix the first one's checkpoints."""
    from rlaif.config import ConfigError
    from rlaif.run.session import LOCK, own_output_dir, release_output_dir

    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from rlaif.run.session import own_output_dir; own_output_dir(Path(sys.argv[1]), False, "
                               "'train'); print('held', flush=True); time.sleep(60)", str(run)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"output_dir: .*/run is in use by another rlaif run \(train, pid "
                                              rf"{holder.pid} on "):
            own_output_dir(run, True, "train")  # not even --overwrite takes it
        assert (run / MARKER).is_file() and (run / LOCK).is_file()  # the holder's files are untouched
    finally:
        holder.kill()
        holder.wait()
    own_output_dir(run, False, "train")  # the holder is gone: the folder is free again
    release_output_dir(run)


def test_a_config_error_raised_inside_an_actor_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    """Some faults of the config show only inside an actor (a labeler prompt past labeler.max_model_len). Ray
    re-raises it as a RayTaskError that is also a ConfigError, whose text is a page of remote traceback; the CLI
    prints the original message in one line, exit 2. Built with Ray's own exception class, as ray.get raises it.
    Bug caught: the page of traceback printed after "rlaif: error:"."""
    from ray.exceptions import RayTaskError

    from rlaif.cli import main
    from rlaif.config import ConfigError
    from rlaif.run import trainer

    cause = ConfigError("labeler scoring: 536 prompt tokens + 1 to generate exceed the labeler's context of 200 "
                        "tokens: raise labeler.max_model_len")
    raised = RayTaskError("LabelerWorker.compare", 'Traceback (most recent call last):\n  File "labeler.py", line 1',
                          cause).as_instanceof_cause()
    assert isinstance(raised, ConfigError) and 'File "labeler.py"' in str(raised)

    def train(*args, **kwargs):
        raise raised

    monkeypatch.setattr(trainer, "train", train)
    assert main(["train", "--config", str(REPO / "configs/debug.yaml"), f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err == f"rlaif: error: {cause}\n", err
