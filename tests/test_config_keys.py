"""Every declared config key is read somewhere outside the config's own schema, loading and validation, or it does
nothing and must go (issue 8).

A static scan of rlaif/ and actors/: reads of `cfg.<section>.<key>` (and `self.cfg...`), through local and `self.`
aliases (`rc = cfg.rollout; rc.temperature`, `self.lc = cfg.labeler`), nested sections (`cfg.policy.model.path`,
`pc.model.dtype`), parameters annotated with a config class (`def f(rl: RLConfig)`) and `getattr(x, "key")`.
rlaif/config/schema.py, load.py and validate.py are not scanned (NOT_USES): validate() checks ranges and combinations,
which is not using a key. The rest of rlaif/config/ is: role_plan (placement.py) decides which actors start,
needs_reference (algorithms.py) and enabled_alarms (alarm_names.py) what runs.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

from rlaif.config import Config, schema

from .conftest import REPO

# Declared but read nowhere today. Each entry names its owner; remove it when the key is implemented or deleted.
UNREAD_TODAY: dict[str, str] = {}


def config_tree() -> tuple[dict[str, type], set[str]]:
    """(section path -> dataclass, every leaf key) of Config, e.g. "policy.model" -> ModelConfig."""
    sections, leaves = {}, set()

    def walk(cls: type, prefix: str) -> None:
        sections[prefix] = cls
        hints = typing.get_type_hints(cls, vars(schema))
        for f in dataclasses.fields(cls):
            path = f"{prefix}.{f.name}" if prefix else f.name
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], path)
            else:
                leaves.add(path)

    walk(Config, "")
    return sections, leaves


SECTIONS, LEAVES = config_tree()
BY_CLASS: dict[str, frozenset[str]] = {}
for _path, _cls in SECTIONS.items():
    BY_CLASS[_cls.__name__] = BY_CLASS.get(_cls.__name__, frozenset()) | {_path}
ROOT = frozenset({""})


def dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def annotation_paths(ann: ast.AST | None) -> frozenset[str]:
    if ann is None:
        return frozenset()
    if isinstance(ann, ast.Constant) and isinstance(ann.value, str):  # a string annotation: its expression
        ann = ast.parse(ann.value, mode="eval").body
    if isinstance(ann, ast.BinOp) and isinstance(ann.op, ast.BitOr):  # A | B: either section
        return annotation_paths(ann.left) | annotation_paths(ann.right)
    return BY_CLASS.get((dotted(ann) or "").split(".")[-1], frozenset())


class Scanner:
    def __init__(self) -> None:
        self.reads: set[str] = set()

    def resolve(self, node: ast.AST, env: dict[str, frozenset[str]], record: bool) -> frozenset[str]:
        """The config sections `node` may evaluate to; leaf keys it reads are recorded."""
        name = dotted(node)
        if name is not None and name in env:
            return env[name]
        if isinstance(node, ast.Attribute):
            base, attr = self.resolve(node.value, env, record), node.attr
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
            base, attr = self.resolve(node.args[0], env, record), node.args[1].value
        else:
            return frozenset()
        out = set()
        for path in base:
            child = f"{path}.{attr}" if path else attr
            if child in SECTIONS:
                out.add(child)
            elif child in LEAVES and record:
                self.reads.add(child)
        return frozenset(out)

    def bind(self, target: ast.AST, value: ast.AST, env: dict[str, frozenset[str]]) -> None:
        if isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List)):
            for t, v in zip(target.elts, value.elts):
                self.bind(t, v, env)
            return
        name = dotted(target)
        paths = self.resolve(value, env, record=False)
        if name and paths:
            env[name] = paths

    def aliases(self, body: ast.AST, env: dict[str, frozenset[str]]) -> None:
        for _ in range(3):  # chains of aliases (a = cfg.x; b = a.y) settle within a few passes
            for node in ast.walk(body):
                if isinstance(node, ast.Assign):
                    for target in node.targets:
                        self.bind(target, node.value, env)
                elif isinstance(node, ast.AnnAssign) and node.value is not None:
                    self.bind(node.target, node.value, env)
                elif isinstance(node, ast.For) and isinstance(node.iter, (ast.Tuple, ast.List)):
                    # for mc in (cfg.policy.model, cfg.labeler.model): mc is any of them
                    for item in node.iter.elts:
                        merged = dict(env)
                        self.bind(node.target, item, merged)
                        for k, v in merged.items():
                            if v != env.get(k):
                                env[k] = env.get(k, frozenset()) | v

    def function(self, fn: ast.FunctionDef | ast.AsyncFunctionDef, outer: dict[str, frozenset[str]]) -> None:
        env = dict(outer)
        args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
        for arg in args:
            paths = annotation_paths(arg.annotation)
            if paths:
                env[arg.arg] = paths
            elif arg.arg == "cfg" and arg.annotation is None:
                env[arg.arg] = ROOT
        self.aliases(fn, env)
        for node in ast.walk(fn):
            if isinstance(node, (ast.Attribute, ast.Call)):
                self.resolve(node, env, record=True)
            if node is not fn and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.function(node, env)  # closures see the enclosing aliases, plus their own parameters

    def module(self, tree: ast.Module) -> None:
        env: dict[str, frozenset[str]] = {"self.cfg": ROOT}
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                cls_env = dict(env)
                for method in node.body:  # self.<name> = <config section> anywhere in the class
                    if isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        menv = dict(cls_env)
                        for arg in method.args.args:
                            menv[arg.arg] = annotation_paths(arg.annotation) or menv.get(arg.arg, frozenset())
                        menv.setdefault("cfg", ROOT)
                        self.aliases(method, menv)
                        cls_env |= {k: v for k, v in menv.items() if k.startswith("self.") and v}
                for method in node.body:
                    if isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        self.function(method, cls_env)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.function(node, env)


def scan(sources: dict[str, str]) -> set[str]:
    scanner = Scanner()
    for text in sources.values():
        scanner.module(ast.parse(text))
    return scanner.reads


# The config's own declarations, loading and checks: a key read only there is read by no one who uses it.
NOT_USES = frozenset(REPO / "rlaif" / "config" / name for name in ("schema.py", "load.py", "validate.py"))


def project_sources() -> dict[str, str]:
    files = sorted((REPO / "rlaif").rglob("*.py")) + sorted((REPO / "actors").rglob("*.py"))
    return {str(p.relative_to(REPO)): p.read_text() for p in files if p not in NOT_USES}


def test_the_scanner_follows_aliases_nested_sections_and_annotations():
    code = '''
def f(cfg: Config):
    rc = cfg.rollout
    sc, out = cfg.sl_cai, 3
    return rc.temperature + sc.rounds + cfg.policy.model.dtype + getattr(cfg.ray, "num_gpus")

def g(rl: "RLConfig", mc: ModelConfig):
    return rl.kl_coef, mc.allow_pickle

class Worker:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        lc = self.lc = cfg.labeler
        self.x = lc.cache

    def m(self):
        pc = self.cfg.preference_model
        def inner():
            return pc.model.revision
        return self.lc.model.path, inner

def h(cfg):
    for key, mc in (("a", cfg.policy.model), ("b", cfg.critic.model)):
        print(key, mc.trust_remote_code)

def unrelated(x):
    return x.rollout.top_p
'''
    reads = scan({"snippet.py": code})
    models = {f"{s}.model.allow_pickle" for s in ("policy", "labeler", "preference_model", "critic")}
    models.add("eval.judge.allow_pickle")  # the evaluation judge is a ModelConfig too
    assert reads == {"rollout.temperature", "sl_cai.rounds", "policy.model.dtype", "ray.num_gpus", "rl.kl_coef",
                     "labeler.cache", "preference_model.model.revision", "labeler.model.path",
                     "policy.model.trust_remote_code", "critic.model.trust_remote_code"} | models


def test_every_declared_config_key_is_read():
    reads = scan(project_sources())
    unread = sorted(LEAVES - reads - set(UNREAD_TODAY))
    assert not unread, f"declared in rlaif/config/schema.py but read nowhere (implement or remove them): {unread}"
    stale = sorted(k for k in UNREAD_TODAY if k in reads or k not in LEAVES)
    assert not stale, f"read now (or no longer declared): remove from UNREAD_TODAY: {stale}"


def test_the_scan_covers_the_whole_code_base():
    """A read moved into a new package would escape the scan: every .py with a `cfg` in it is under rlaif/ or
    actors/ (bench/ and tests/ are not users of the config)."""
    outside = [p for p in REPO.glob("*.py")] + [p for d in REPO.iterdir() if d.is_dir() and d.name not in
                                                 {"rlaif", "actors", "tests", "bench", ".venv", ".git"}
                                                 for p in d.rglob("*.py")]
    assert not [p for p in outside if "cfg." in p.read_text()], outside
    assert all(Path(p).is_file() for p in NOT_USES)  # a rename would silently scan validation as use
