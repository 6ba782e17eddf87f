"""Reference role: the frozen starting policy, giving log-probs for the KL(policy || reference) penalty."""

from __future__ import annotations

import torch

from actors.group import use_cpu_threads
from rlaif.config import Config
from rlaif.models import load_causal_lm, resolve_model_path
from rlaif.rl.batch import Batch
from rlaif.rl.logprobs import batch_logprobs


class ReferenceWorker:
    def __init__(self, cfg: Config) -> None:
        use_cpu_threads(cfg, "aux")
        mc = cfg.policy.model
        path = resolve_model_path(mc.path, cfg.cache_dir)
        self.model = load_causal_lm(path, mc.dtype, mc.trust_remote_code, mc.attn_implementation).to(cfg.device).eval()
        self.batch_size, self.packing = cfg.policy.micro_batch_size, cfg.policy.packing  # checked by the policy

    def logprobs(self, batch: Batch) -> torch.Tensor:
        """[B, R] reference log-probs under the sampling settings the policy's are computed with: logits / T,
        restricted to the reference's own top-p nucleus.

        Why the nucleus on both sides (and not on neither, as veRL, OpenRLHF and TRL do): the policy's log-probs must
        be vLLM's "processed" ones for PPO ratios and TIS to describe the real sampler, and a reference without the
        nucleus then differs by -log Z > 0 on every token even with identical weights (KL > 0, online-DPO loss off
        ln 2 at step 0). Each model's own nucleus makes KL(pi || pi_ref) the KL between the two sampling
        distributions: 0 for identical weights. A sampled token outside the reference's nucleus is scored as if
        inside (rlaif.rl.logprobs._chunk_logprobs), which keeps the KL finite where the truncated KL would be infinite.
        """
        return batch_logprobs(self.model, batch, self.batch_size, batch.meta["temperature"], batch.meta["top_p"],
                              self.packing)
