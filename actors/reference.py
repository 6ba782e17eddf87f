"""Reference role: the frozen starting policy, giving log-probs for the KL(policy || reference) penalty."""

from __future__ import annotations

from rlaif.config import Config
from rlaif.models import load_causal_lm, load_tokenizer, resolve_model_path, response_logprobs


class ReferenceWorker:
    def __init__(self, cfg: Config) -> None:
        mc = cfg.policy.model
        path = resolve_model_path(mc.path, cfg.cache_dir)
        self.model = load_causal_lm(path, mc.dtype, mc.trust_remote_code).to(cfg.device).eval()
        self.pad_id = load_tokenizer(path, mc.trust_remote_code).pad_token_id
        self.batch_size = cfg.policy.micro_batch_size

    def logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[float]]:
        return response_logprobs(self.model, prompt_ids, response_ids, self.pad_id, self.batch_size)
