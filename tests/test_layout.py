"""The layout's rule (README, "Layout"): rlaif/ in wings that import only downward, the Ray-free wings free of Ray
and of the driver, no import circle, no module over 600 lines. Read from the source (every import, module-level or
inside a function), so a lazy import that breaks the rule fails here too."""

import ast
from pathlib import Path

from .conftest import REPO

# wing -> its level: a module may import its own wing and the wings below it, never one above
LEVELS = {"config": 0, "data": 1, "base": 2, "rl": 3, "feedback": 4, "audit": 5, "actors": 6, "run": 7, "cli": 8}
RAY_FREE = {w for w, level in LEVELS.items() if level <= LEVELS["audit"]}
MAX_LINES = 600


def wing(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "actors":
        return "actors"
    if len(parts) > 2 or parts[1] in ("config", "data", "rl", "feedback", "audit", "run"):
        return {"config": "config", "data": "data", "rl": "rl", "feedback": "feedback", "audit": "audit",
                "run": "run"}[parts[1]]
    # the top of rlaif/: the models and the process environment, the users' example rewards and judges, the CLI
    return {"models": "base", "runtime": "base", "rewards": "feedback", "judges": "feedback",
            "cli": "cli", "__init__": "cli"}[parts[1]]


def modules() -> dict[str, Path]:
    found = {}
    for root in ("rlaif", "actors"):
        for path in sorted((REPO / root).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name if parts[-1] != "__init__" or len(parts) > 2 else f"{name}.__init__"] = path
    return found


def imports(path: Path, name: str) -> set[str]:
    """Every module this file imports (resolved to the project's modules where it names one), anywhere in it."""
    out = set()
    package = name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}  # `from rlaif.run import trainer` imports a module
    return out


def project_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods) | {m.removesuffix(".__init__") for m in mods}
    graph = {}
    for name, path in mods.items():
        deps = {d for d in imports(path, name) if d in known and d != name}
        graph[name] = {d if d in mods else f"{d}.__init__" if f"{d}.__init__" in mods else d for d in deps}
    return graph


def test_each_wing_imports_only_downward_and_the_ray_free_ones_no_ray():
    """Bugs caught: the config reading a module above it (the circle config <-> alarms/feedback this rule ended), an
    actor importing the driver, a building block importing Ray or rlaif.run (it could no longer be tested alone)."""
    mods, bad = modules(), []
    for name, path in mods.items():
        mine = wing(name.removesuffix(".__init__") if name.count(".") > 1 else name)
        for dep in imports(path, name):
            top = dep.split(".")[0]
            if mine in RAY_FREE and top == "ray":
                bad.append(f"{name} imports ray")
            if top not in ("rlaif", "actors") or dep in ("rlaif", "actors"):
                continue
            target = dep if dep in mods else next((m for m in mods if m.startswith(dep + ".")), None)
            if target is None:
                continue  # a name imported from a module (from rlaif.x import name): the module is checked itself
            theirs = wing(target.removesuffix(".__init__") if target.count(".") > 1 else target)
            if LEVELS[theirs] > LEVELS[mine]:
                bad.append(f"{name} ({mine}) imports {dep} ({theirs})")
    assert not bad, "\n".join(sorted(set(bad)))


def test_no_import_circle():
    """Bug caught: two modules importing each other (even lazily, inside a function), which only works in one order."""
    graph = project_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_no_module_over_600_lines():
    lines = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in modules().values()}
    long = {p: n for p, n in lines.items() if n > MAX_LINES}
    assert not long, long


def test_the_rule_sees_a_violation():
    """The scanner itself: a lazy upward import inside a function and a relative import are both found."""
    code = "def f():\n    from rlaif.run.trainer import train\nfrom . import losses\n"
    path = REPO / "tests" / "_layout_probe.py"
    path.write_text(code)
    try:
        found = imports(path, "rlaif.rl.batch")
    finally:
        path.unlink()
    assert "rlaif.run.trainer" in found and "rlaif.rl.losses" in found
    assert wing("rlaif.rl.batch") == "rl" and LEVELS[wing("rlaif.run.trainer")] > LEVELS["rl"]
