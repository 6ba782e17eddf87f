import pytest
import yaml

from rlaif.config import Config, ConfigError, load_config, save_config, to_dict

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
    with pytest.raises(ConfigError, match=r"policy.zero_stage: got 4; allowed values: 1, 2, 3"):
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
    assert load_config(None) == Config()
