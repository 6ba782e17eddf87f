"""The RL building blocks: the typed batch, log-probs, losses and advantages, the algorithm table, LR schedules and
LoRA. No Ray; imports only rlaif.config, rlaif.data and rlaif.models."""
