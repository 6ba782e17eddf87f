"""Thin Ray actors over `rlaif`, one role per file; `group` places N ranks of a role. This package file imports no
Ray: the CLI catches RoleDied and StartupFailed, and actor_death and task_failure word Ray's errors."""

import re


class StartupFailed(RuntimeError):
    """A role could not start (its model failed to load: a corrupt file, a bad path, no memory); nothing trained."""


class RoleDied(RuntimeError):
    """An actor that cannot be restarted (a DeepSpeed rank, or one out of restarts) died; the run stops, and
    resumes from its last checkpoint."""


def actor_death(exc: Exception) -> str:
    """Ray's many-line actor error in one line for the console: which actor, and why it is dead."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines()]
    who = [x for x in lines if x.startswith(("class_name:", "pid:"))]
    why = [x for x in lines if x.startswith("The actor is dead because")]
    # a constructor that raised: its own error is the last "...Error: ..." line, the part a person needs
    raised = [x for x in lines[1:] if re.match(r"[\w.]*(Error|Exception): ", x)][-1:]
    return " ".join([lines[0] if lines else type(exc).__name__, *who, *why, *raised])[:600]


def task_failure(exc: Exception) -> str:
    """A method that raised inside an actor (Ray's RayTaskError, a page of remote traceback), in one line: which
    call, and its own error."""
    cause, name = getattr(exc, "cause", None), getattr(exc, "function_name", None)
    if cause is None:
        return actor_death(exc)
    if not name:  # Ray leaves it unset for some calls; its message's first line names the call: "ray::Cls.method()"
        found = re.search(r"ray::([\w.]+)\(", str(exc))
        name = found.group(1) if found else "an actor's method"
    return f"{name} raised {type(cause).__name__}: {' '.join(str(cause).split())}"[:600]
