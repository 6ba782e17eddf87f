"""rlaif: reinforcement learning from AI feedback (Constitutional AI) on Ray, vLLM and DeepSpeed."""

__version__ = "0.1.0"
