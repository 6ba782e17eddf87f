"""The driver: the central trainer, its stages, the Ray session, checkpoints, tracking, and the commands. The only
part of rlaif/ that drives Ray (through actors/)."""
