"""Models by Hugging Face Hub id, offline: the tiny model laid out as a Hub cache (models--ORG--NAME/snapshots/<rev>
with refs/main), HF_HUB_CACHE + HF_HUB_OFFLINE=1; and the folder checks every role's model goes through."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from rlaif.config import load_config
from rlaif.models import ModelError, resolve_models

MAIN, OLD = "a1" * 20, "b2" * 20  # commit hashes


def hub_cache(root: Path, tiny_path: str, repo: str = "acme/tiny") -> Path:
    """A Hub cache holding `repo` at two commits: main (the tiny model) and tag v1 (the same files)."""
    folder = root / ("models--" + repo.replace("/", "--"))
    for rev in (MAIN, OLD):
        shutil.copytree(tiny_path, folder / "snapshots" / rev)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(MAIN)
    (folder / "refs" / "v1").write_text(OLD)
    return folder


@pytest.fixture
def offline_hub(tmp_path, tiny_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_cache(tmp_path / "hub", tiny_path)


def resolve(*overrides: str):
    return resolve_models(load_config(None, list(overrides)))


def test_every_role_resolves_a_hub_id_to_its_cached_snapshot(offline_hub):
    cfg = resolve(*(f"{s}.model.path=acme/tiny" for s in ("policy", "labeler", "preference_model", "critic")))
    for section in ("policy", "labeler", "preference_model", "critic"):
        mc = getattr(cfg, section).model
        assert mc.path == str(offline_hub / "snapshots" / MAIN) and mc.revision == ""
    assert cfg.policy.model.dtype == load_config(None).policy.model.dtype and not cfg.policy.model.trust_remote_code


def test_a_revision_pin_picks_that_snapshot(offline_hub):
    assert resolve("policy.model.path=acme/tiny", "policy.model.revision=v1").policy.model.path == \
        str(offline_hub / "snapshots" / OLD)
    assert resolve("policy.model.path=acme/tiny", f"policy.model.revision={OLD}").policy.model.path == \
        str(offline_hub / "snapshots" / OLD)


def test_wrong_revision_and_unknown_id_name_the_key(offline_hub):
    with pytest.raises(ModelError, match=r"^labeler\.model\.revision: 'acme/tiny' at revision 'v9' is not in the "
                                         r"Hugging Face cache .*cached: .*v1.*HF_HUB_OFFLINE is set"):
        resolve("labeler.model.path=acme/tiny", "labeler.model.revision=v9")
    with pytest.raises(ModelError, match=r"^preference_model\.model\.path: 'acme/nope' at revision 'main' is not in "
                                         r"the Hugging Face cache"):
        resolve("preference_model.model.path=acme/nope")


def test_a_revision_on_a_builtin_or_a_folder_is_refused(tiny_path):
    with pytest.raises(ModelError, match=r"^policy\.model\.revision: 'v1' pins a Hub revision, but policy.model.path"):
        resolve("policy.model.revision=v1")
    with pytest.raises(ModelError, match=r"^critic\.model\.revision"):
        resolve(f"critic.model.path={tiny_path}", "critic.model.revision=v1")


def test_misspelt_builtin_and_missing_folder(tmp_path):
    with pytest.raises(ModelError, match=r"^labeler\.model\.path: unknown builtin model 'builtin:tiny-lama' \(did you "
                                         r"mean builtin:tiny-llama\?\)"):
        resolve("labeler.model.path=builtin:tiny-lama")
    with pytest.raises(ModelError, match=r"^policy\.model\.path: model path not found: /no/such/model"):
        resolve("policy.model.path=/no/such/model")


def copy_without_weights(tiny_path: str, dest: Path) -> Path:
    shutil.copytree(tiny_path, dest, ignore=shutil.ignore_patterns("*.safetensors"))
    return dest


def test_a_folder_without_weights_is_refused(tmp_path, tiny_path):
    folder = copy_without_weights(tiny_path, tmp_path / "m")
    with pytest.raises(ModelError, match=rf"^policy\.model\.path: {folder} holds no weights"):
        resolve(f"policy.model.path={folder}")


def test_pickle_weights_only_with_allow_pickle(tmp_path, tiny_path):
    from safetensors.torch import load_file

    from rlaif.models import load_causal_lm

    folder = copy_without_weights(tiny_path, tmp_path / "m")
    torch.save(load_file(Path(tiny_path) / "model.safetensors"), folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"^labeler\.model\.path: .* holds only pickle weights .*set "
                                         r"labeler\.model\.allow_pickle=true"):
        resolve(f"labeler.model.path={folder}")
    cfg = resolve(f"labeler.model.path={folder}", "labeler.model.allow_pickle=true")
    assert cfg.labeler.model.path == str(folder)
    assert load_causal_lm(cfg.labeler.model.path) is not None  # what the opt-in allows: the pickle loads


def test_pickle_only_snapshot_in_the_hub_cache_is_refused_too(offline_hub, tiny_path):
    snap = offline_hub / "snapshots" / MAIN
    (snap / "model.safetensors").rename(snap / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"^policy\.model\.path: .* holds only pickle weights"):
        resolve("policy.model.path=acme/tiny")


def test_a_model_that_needs_its_own_code_names_trust_remote_code(tmp_path, tiny_path):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_path, folder)
    config = json.loads((folder / "config.json").read_text())
    config |= {"model_type": "acme_llama", "auto_map": {"AutoModelForCausalLM": "modeling_acme.AcmeForCausalLM"}}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"^preference_model\.model\.path: .* needs its own Python code .*set "
                                         r"preference_model\.model\.trust_remote_code=true"):
        resolve(f"preference_model.model.path={folder}")
    # With the opt-in the folder passes the checks (loading then runs the model's code; none is shipped here).
    assert resolve(f"preference_model.model.path={folder}",
                   "preference_model.model.trust_remote_code=true").preference_model.model.path == str(folder)


def test_hf_hub_offline_is_read_when_resolving_not_at_import(tmp_path, tiny_path, monkeypatch):
    """huggingface_hub reads HF_HUB_OFFLINE once, at import; the driver honours the value it runs with."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE is set"):
        resolve("policy.model.path=acme/absent")
