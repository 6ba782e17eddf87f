"""Reference role: the frozen starting policy, giving log-probs for the KL(policy || reference) penalty."""

from __future__ import annotations

import torch

from actors.group import use_cpu_threads
from rlaif.batch import Batch
from rlaif.config import Config
from rlaif.logprobs import batch_logprobs
from rlaif.models import load_causal_lm, resolve_model_path


class ReferenceWorker:
    def __init__(self, cfg: Config) -> None:
        use_cpu_threads(cfg, "aux")
        mc = cfg.policy.model
        path = resolve_model_path(mc.path, cfg.cache_dir)
        self.model = load_causal_lm(path, mc.dtype, mc.trust_remote_code).to(cfg.device).eval()
        self.batch_size = cfg.policy.micro_batch_size

    def logprobs(self, batch: Batch) -> torch.Tensor:
        """[B, R] reference log-probs at the sampling temperature (no top-p: the reference did not sample, and its
        own nucleus could exclude a sampled token, making the KL infinite)."""
        return batch_logprobs(self.model, batch, self.batch_size, batch.meta["temperature"])
