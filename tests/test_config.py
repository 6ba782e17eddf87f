import pytest
import yaml

from rlaif.config import Config, ConfigError, load_config, native_bf16, resolve_dtypes, save_config, to_dict

from .conftest import REPO


def test_debug_config_loads_and_overrides_apply():
    cfg = load_config(REPO / "configs/debug.yaml", ["trainer.steps=7", "output_dir=/tmp/x", "rl.kl_coef=0.1"])
    assert cfg.trainer.steps == 7 and cfg.output_dir == "/tmp/x" and cfg.rl.kl_coef == 0.1
    assert cfg.policy.model.path == "builtin:tiny-llama"


def test_every_shipped_config_is_valid():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_config(path)


def test_unknown_key_names_the_key_and_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"unknown config key 'trainer.stpes'.*allowed keys here: steps"):
        load_config(None, ["trainer.stpes=3"])


def test_unknown_top_level_key_in_file(tmp_path):
    (tmp_path / "c.yaml").write_text("polcy: {}\n")
    with pytest.raises(ConfigError, match="unknown config key 'polcy'"):
        load_config(tmp_path / "c.yaml")


def test_wrong_types_name_the_key():
    with pytest.raises(ConfigError, match="trainer.steps: expected an integer, got 'three'"):
        load_config(None, ["trainer.steps=three"])
    with pytest.raises(ConfigError, match="wandb.enabled: expected true or false"):
        load_config(None, ["wandb.enabled=3"])
    with pytest.raises(ConfigError, match="rl.kl_coef: expected a number"):
        load_config(None, ["rl.kl_coef=[1]"])
    with pytest.raises(ConfigError, match="policy: expected a mapping"):
        load_config(None, ["policy=5"])


def test_float_in_e_notation_without_a_dot():
    assert load_config(None, ["policy.lr=1e-3"]).policy.lr == 1e-3
    with pytest.raises(ConfigError, match="policy.lr: expected a number, got 'fast'"):
        load_config(None, ["policy.lr=fast"])


def test_list_keys():
    cfg = load_config(None, ["rl.reward_functions=[rlaif.rewards:brevity]"])
    assert cfg.rl.reward_functions == ["rlaif.rewards:brevity"]
    with pytest.raises(ConfigError, match=r"rl.reward_functions: expected a list"):
        load_config(None, ["rl.reward_functions=rlaif.rewards:brevity"])
    with pytest.raises(ConfigError, match=r"must look like 'package.module:function'"):
        load_config(None, ["rl.reward_functions=[nocolon]"])


def test_literal_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"policy.zero_stage: got 4; allowed values: 0, 1, 2, 3"):
        load_config(None, ["policy.zero_stage=4"])
    with pytest.raises(ConfigError, match=r"device: got 'tpu'; allowed values: 'cpu', 'cuda'"):
        load_config(None, ["device=tpu"])


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="must split evenly over policy.num_ranks"):
        load_config(None, ["policy.num_ranks=3"])
    with pytest.raises(ConfigError, match="rollout.n_samples: must be even"):
        load_config(None, ["rollout.n_samples=3"])
    with pytest.raises(ConfigError, match="ray.gpus_per_rollout: must be 0 when device is 'cpu'"):
        load_config(None, ["ray.gpus_per_rollout=1"])


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {steps: [\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_config(None, ["trainer.steps"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(REPO / "configs/debug.yaml", ["seed=3"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == to_dict(cfg)
    assert not list(tmp_path.glob("*.tmp"))


def test_defaults_are_valid():
    cfg = Config()
    resolve_dtypes(cfg)
    assert load_config(None) == cfg


AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\nbogomips\t: 4000\n"
AMX = "flags\t\t: fpu avx512f amx_bf16 amx_tile\n"
PLAIN = "flags\t\t: fpu sse2 avx2 avx512f\n"


@pytest.mark.parametrize("cpuinfo,native", [(AVX512_BF16, True), (AMX, True), (PLAIN, False), (None, False)])
def test_native_bf16_reads_the_cpu_flags(tmp_path, cpuinfo, native):
    """Bugs caught: bf16 picked on a CPU that only emulates it (avx512f alone: slower than fp32), AMX or avx512_bf16
    missed, an unreadable /proc/cpuinfo crashing instead of falling back to fp32 with the reason."""
    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    ok, why = native_bf16("cpu", str(path))
    assert ok is native
    assert ("avx512_bf16" in why or "amx_bf16" in why) if native else ("neither" in why or "could not" in why)


def test_dtype_auto_resolves_for_every_model_and_an_explicit_dtype_stays(monkeypatch):
    """Bugs caught: auto left in a model config the actors read (KeyError 'auto' in DTYPES), one role (the eval
    judge, the critic) skipped, an explicit float32 overridden by the hardware's choice."""
    import rlaif.config.load as load_module  # resolve_dtypes reads native_bf16 there

    for native, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(load_module, "native_bf16", lambda device, native=native: (native, "test"))
        cfg = load_config(REPO / "configs/debug.yaml", ["labeler.model.dtype=float32"])
        assert cfg.policy.model.dtype == cfg.critic.model.dtype == cfg.eval.judge.dtype == expected
        assert cfg.preference_model.model.dtype == expected and cfg.labeler.model.dtype == "float32"


def test_combinations_that_compute_the_wrong_thing_are_refused():
    """Bugs caught: k1 as a KL loss (zero expected gradient, regularises nothing) or fp16 training without loss
    scaling accepted by the config; the refusal spreading to the labeler, whose fp16 only scores."""
    with pytest.raises(ConfigError, match=r"rl.kl_loss_estimator: 'k1' is not allowed.*'k2', 'k3'"):
        load_config(REPO / "configs/debug.yaml", ["rl.kl_in=loss", "rl.kl_loss_estimator=k1"])
    for est in ("k2", "k3"):
        assert load_config(REPO / "configs/debug.yaml", ["rl.kl_in=loss", f"rl.kl_loss_estimator={est}"])
    for key in ("policy", "critic", "preference_model"):
        with pytest.raises(ConfigError, match=rf"^{key}.model.dtype: float16 training needs loss scaling"):
            load_config(REPO / "configs/debug.yaml", [f"{key}.model.dtype=float16"])
    assert load_config(REPO / "configs/debug.yaml", ["labeler.model.dtype=float16"]).labeler.model.dtype == "float16"


def test_online_dpo_ordered_by_the_labeler_needs_no_reward():
    """Bug caught: validation demanding a reward that online DPO ordered by AI labels never computes (and, the
    other way, accepting a reward-ordered DPO run that has no reward to order by)."""
    off = ["rl.use_preference_model=false", "rl.use_labeler_rating=false", "rl.reward_functions=[]",
           "rl.algorithm=online-dpo"]
    cfg = load_config(REPO / "configs/debug.yaml", [*off, "rl.dpo_preference=labeler"])
    assert cfg.rl.dpo_preference == "labeler" and not cfg.rl.reward_functions
    with pytest.raises(ConfigError, match="^no reward"):
        load_config(REPO / "configs/debug.yaml", [*off, "rl.dpo_preference=reward"])


def test_colocation_on_gpu_needs_the_cuda_ipc_handoff():
    """Bug caught: a colocated GPU run accepted with a sync that cannot reach its engines, failing only at its first
    weight sync (NCCL refuses two ranks of one communicator on one GPU), after the stages before RL have run."""
    gpu = load_config(REPO / "configs/gpu.yaml")
    assert not gpu.ray.colocate and gpu.rollout.sync_transport == "auto"
    # gpu.yaml's whole-GPU shares do not fit one colocated GPU (tests/test_gpu_placement.py): fractions that do
    coloc = ["ray.colocate=true", "ray.gpus_per_policy_rank=0.5", "ray.gpus_per_rollout=0.3", "ray.gpus_per_aux=0.1"]
    assert load_config(REPO / "configs/gpu.yaml", coloc).ray.colocate  # auto: CUDA IPC
    with pytest.raises(ConfigError, match="^rollout.sync_transport: 'broadcast' cannot reach engines colocated"):
        load_config(REPO / "configs/gpu.yaml", [*coloc, "rollout.sync_transport=broadcast"])
    with pytest.raises(ConfigError, match="^rollout.tensor_parallel_size: must be 1 with ray.colocate=true on GPU"):
        load_config(REPO / "configs/gpu.yaml", [*coloc, "rollout.tensor_parallel_size=2"])
    with pytest.raises(ConfigError, match="^rollout.sync_transport: 'shared' on GPU is CUDA IPC"):
        load_config(REPO / "configs/gpu.yaml", ["rollout.sync_transport=shared"])
    with pytest.raises(ConfigError, match="rollout.sync_transport.*auto.*shared.*broadcast"):
        load_config(REPO / "configs/debug.yaml", ["rollout.sync_transport=ipc"])
    assert load_config(REPO / "configs/debug.yaml", ["ray.colocate=true"]).ray.colocate  # CPU: gloo, no such limit


def test_labels_that_train_cannot_be_thinned():
    """Bug caught: rl.label_pairs or rl.label_every accepted for online DPO ordered by the labeler, whose update
    trains on every pair's label (the unlabelled pairs would train with no order)."""
    dpo = ["rl.algorithm=online-dpo", "rl.dpo_preference=labeler"]
    with pytest.raises(ConfigError, match=r"^rl.label_pairs: online-dpo .* must be 0 \(all pairs\), got 2"):
        load_config(REPO / "configs/debug.yaml", [*dpo, "rl.label_pairs=2"])
    with pytest.raises(ConfigError, match=r"^rl.label_every: online-dpo .* must be 1, got 2"):
        load_config(REPO / "configs/debug.yaml", [*dpo, "rl.label_every=2"])
    assert load_config(REPO / "configs/debug.yaml", ["rl.label_pairs=2"]).rl.label_pairs == 2  # monitoring: fine


def test_rlaif_config_prints_every_key_with_its_type_range_and_comment(capsys):
    """`rlaif config`: the resolved value of every key, its type, its range and the comment that documents it in
    rlaif/config/schema.py. Bugs caught: a key missing from the printout or printed with a Python name (async_),
    overrides not applied, a comment taken from the wrong field, and any key added to the schema without a comment."""
    import re

    from rlaif.cli import main

    assert main(["config", "--config", str(REPO / "configs/debug.yaml"), "rl.kl_coef=0.1"]) == 0
    out = capsys.readouterr().out
    assert "rl.kl_coef = 0.1\n    float; range [0, inf)\n    beta of the KL(policy || reference) penalty\n" in out
    assert "\ntrainer.async = False\n    bool\n    One step off-policy" in out
    assert "\nrollout.sync_transport = 'auto'\n    one of 'auto', 'shared', 'broadcast'\n    How the buckets" in out
    entries = re.split(r"\n(?=\S)", out.strip())

    def keys(tree, prefix=""):
        return [k for name, v in tree.items() for k in (keys(v, f"{prefix}{name}.") if isinstance(v, dict)
                                                        else [f"{prefix}{name}"])]

    assert [e.split(" = ")[0] for e in entries] == keys(to_dict(load_config(REPO / "configs/debug.yaml")))
    undocumented = [e.split(" = ")[0] for e in entries if len(e.splitlines()) < 3]
    assert not undocumented, f"config keys without a comment in rlaif/config/schema.py: {undocumented}"
