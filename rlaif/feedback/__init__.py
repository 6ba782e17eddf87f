"""AI feedback: the constitution, the labeling prompts and soft labels, SL-CAI conversations, self-consistency.
No Ray; imports only rlaif.config, rlaif.data, rlaif.models and rlaif.rl."""
