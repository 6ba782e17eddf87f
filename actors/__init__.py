"""Thin Ray actors over `rlaif`, one role per file; `group` places N ranks of a role."""
