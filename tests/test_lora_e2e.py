"""LoRA on real Ray, vLLM and DeepSpeed (policy.lora, critic.lora): a PPO run with adapters on the policy and the
critic, the KL penalty to the reference (the policy with its adapters off) in the reward, killed with SIGKILL after a
checkpoint, resumes and ends bit for bit where an uninterrupted run ends; its checkpoints hold the adapters and their
optimizer states, not the frozen weights; its export holds the merged model and the adapter alone."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO
from .test_long_runs import ENV, comparable, finish, steps, tables, tree, wait_for_step

pytestmark = pytest.mark.e2e
STEPS = 4
ARGS = ["train", "--config", "configs/debug.yaml", f"trainer.steps={STEPS}", "trainer.save_every=1",
        "trainer.keep_last=2", "trainer.progress=false", "rl.algorithm=ppo", "rl.kl_coef=0.05",
        "rl.use_preference_model=false", "rl.reward_functions=[rlaif.rewards:vowel_fraction]",
        "labeler.function=rlaif.judges:prefer_vowels", "labeler.human_eval=", "labeler.audit_samples=0",
        "policy.lora.rank=8", "policy.lora.alpha=16", "policy.lr=5e-3", "critic.lora.rank=4", "critic.lr=1e-3",
        "policy.lr_scheduler=cosine"]


def start(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rlaif.cli", *ARGS, f"output_dir={out}", *extra], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    code, err = finish(start(out))
    assert code == 0, err[-4000:]
    return out


def test_a_lora_run_starts_no_reference_and_its_checkpoints_hold_the_adapters(uninterrupted):
    """Bugs caught: a reference actor started anyway (a second copy of the weights: the memory LoRA is for), the
    KL penalty reading nothing (kl/policy_ref 0 every step: adapters never switched off), checkpoints that hold the
    frozen base (the size of full fine-tuning's)."""
    out = uninterrupted
    placement = json.loads((out / "logs" / "placement.json").read_text())
    assert "reference" not in placement and "policy" in placement
    rows = steps(out)
    kl = [rows[s]["kl/policy_ref"] for s in range(1, STEPS + 1)]
    assert abs(kl[0]) < 2e-3 < max(abs(k) for k in kl[1:]), kl  # step 1: the policy is its reference (B = 0)
    from safetensors.torch import load_file

    model = load_file(out / "checkpoint" / "model.safetensors")
    model_bytes = sum(t.numel() * t.element_size() for t in model.values())
    saved = sum(p.stat().st_size for p in (out / "checkpoints").rglob("*model_states.pt"))
    adapter = load_file(out / "checkpoint" / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert not any("lora_" in k or "base_layer" in k for k in model)  # the export is the merged, plain model
    # two checkpoints kept (keep_last), each with its policy and critic module states: adapters (and the critic's
    # head), a few percent of one model's weights, not the model twice per checkpoint
    assert 0 < saved < 0.3 * model_bytes, (saved, model_bytes)


def test_a_killed_lora_run_resumes_exactly(uninterrupted, tmp_path):
    """Bugs caught: adapters or their Adam moments not restored (the steps after the resume differ), a resume that
    loads the frozen base from the checkpoint and fails on the missing keys (load_module_strict), the critic's
    adapters or head lost, the final export's adapter or merged model different from the uninterrupted run's."""
    out = tmp_path / "run"
    proc = start(out)
    wait_for_step(out, proc, 2)
    for p in tree(proc.pid):
        p.kill()
    proc.wait()
    assert len(steps(out)) < STEPS, "the run finished before it could be killed"
    code, err = finish(start(out, "trainer.resume=auto"))
    assert code == 0, err[-4000:]
    resumed, ref = steps(out), steps(uninterrupted)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in ref:
        assert comparable(resumed[step]) == comparable(ref[step]), f"step {step} differs after the resume"
    assert tables(out) == tables(uninterrupted)
    from safetensors.torch import load_file

    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):
        a, b = (load_file(p / "checkpoint" / name) for p in (out, uninterrupted))
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), name
