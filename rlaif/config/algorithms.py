"""What each RL algorithm (rl.algorithm) needs started, as data: the table the config's placement and validation
read, and rlaif's RL code (its advantages and losses) builds on. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlaif.config.schema import RLConfig


@dataclass(frozen=True)
class Algorithm:
    needs_critic: bool = False
    pairwise: bool = False  # trains on AI-labelled pairs (online DPO) rather than on advantages
    loss_agg: str = "token-mean"  # the default reduction of the policy loss (rl.loss_agg=auto)


ALGORITHMS = {
    "ppo": Algorithm(needs_critic=True),
    "grpo": Algorithm(),
    "dr-grpo": Algorithm(loss_agg="seq-mean-token-sum-norm"),
    "rloo": Algorithm(),
    "reinforce++": Algorithm(),
    "online-dpo": Algorithm(pairwise=True),
}


def needs_reference(cfg: RLConfig) -> bool:
    """Does anything read reference log-probs? (KL in the reward or loss, the KL metric, or DPO's log-ratios)"""
    return cfg.kl_coef > 0 or cfg.kl_target > 0 or cfg.measure_kl or ALGORITHMS[cfg.algorithm].pairwise
