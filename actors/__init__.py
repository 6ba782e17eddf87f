"""Thin Ray actors over `rlaif`, one role per file; `group` places N ranks of a role. This package file imports no
Ray: the CLI catches RoleDied, and actor_death words Ray's errors."""

import re


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
