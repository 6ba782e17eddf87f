"""Every train / held-out boundary of a run, planned in one place. No Ray here.

Prompts
-------
One rule for every prompt source (``data.prompts``, ``sl_cai.red_team``, ``sl_cai.helpful``): a prompt is held out
when the seeded hash of its content key (:func:`rlaif.data.sources.prompt_key`: case-, whitespace- and
punctuation-insensitive) falls below ``data.eval_fraction`` (seed ``data.seed``), or when ``data.eval_prompts``
holds a prompt with the same key. The side depends only on the content, so a prompt held out in one source is held
out in every source that has it, under any id. Held-out prompts reach no optimizer: RL samples only ``rl.train``,
SL-CAI revises only ``red_team.train`` and answers only ``helpful.train``. ``rl.heldout`` is what ``eval/*``
scores; :func:`heldout_prompts` gives every held-out set to an evaluation.

Preference pairs
----------------
The preference model's pairs (AI-labelled, and ``preference_model.human_pairs``, where imported audit verdicts go)
are keyed by content: the prompt and the two responses, order-insensitive. A pair that ``labeler.human_eval`` holds
out is removed; a pair seen twice is kept once, a person's label before the AI's; the rest are split by the same
seeded hash at ``preference_model.eval_fraction``, so a pair sits on one side only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rlaif.config import Config
from rlaif.data.human_labels import HumanPair
from rlaif.data.loader import DataError
from rlaif.data.sources import PromptRecord, key_score, load_prompt_mix, normalize_text, prompt_key, split_heldout

log = logging.getLogger(__name__)

SETS = ("rl", "red_team", "helpful")


@dataclass
class Split:
    train: list[PromptRecord] = field(default_factory=list)
    heldout: list[PromptRecord] = field(default_factory=list)
    removed: int = 0  # prompts taken off the train side because data.eval_prompts holds them


@dataclass
class PromptPlan:
    rl: Split  # data.prompts; heldout = its held-out share plus data.eval_prompts: the eval/* prompts
    red_team: Split  # sl_cai.red_team
    helpful: Split  # sl_cai.helpful


def plan_prompts(cfg: Config, sets: Iterable[str] = ("rl",)) -> PromptPlan:
    """Load the named prompt sets (see SETS; the others stay empty) and split each by the one rule above."""
    d, sets = cfg.data, set(sets)
    extra = load_prompt_mix(d.eval_prompts).prompts if d.eval_prompts else []
    extra_keys = {prompt_key(p) for p in extra}
    specs = {"rl": ("data.prompts", [d.prompts] if d.prompts else []),
             "red_team": ("sl_cai.red_team", cfg.sl_cai.red_team), "helpful": ("sl_cai.helpful", cfg.sl_cai.helpful)}
    splits: dict[str, Split] = {}
    for name in SETS:
        key, spec = specs[name]
        if name not in sets:
            splits[name] = Split()
            continue
        if not spec:
            raise DataError(f"{key}: no prompt sources given")
        try:
            loaded = load_prompt_mix(spec).prompts
        except DataError as exc:  # the file and line are named; the key the user set is named too
            raise DataError(f"{key}: {exc}") from exc
        train, held = split_heldout(loaded, d.eval_fraction, d.seed)
        kept = [p for p in train if prompt_key(p) not in extra_keys]
        splits[name] = Split(kept, held, len(train) - len(kept))
        if len(kept) < len(train):
            log.info("%s: %d prompt(s) held out because data.eval_prompts holds them", key, len(train) - len(kept))
        if not kept and name != "helpful":
            raise DataError(f"{key}: all {len(train) + len(held)} prompts are held out (data.eval_fraction = "
                            f"{d.eval_fraction}, data.eval_prompts = {d.eval_prompts!r}): nothing left to train on")
    if "rl" in sets:
        rl_keys = {prompt_key(p) for p in splits["rl"].heldout}
        splits["rl"].heldout += [p for p in extra if prompt_key(p) not in rl_keys]
        if d.eval_fraction > 0 and not splits["rl"].heldout:
            log.warning("data.prompts: no prompt fell in the held-out share (data.eval_fraction = %s): eval/* "
                        "will not run; give data.eval_prompts or more prompts", d.eval_fraction)
    return PromptPlan(**splits)


def heldout_prompts(cfg: Config) -> dict[str, list[PromptRecord]]:
    """Every held-out prompt set: "rl" (the eval/* prompts), "red_team" and "helpful" (SL-CAI's sources)."""
    plan = plan_prompts(cfg, SETS)
    return {"rl": plan.rl.heldout, "red_team": plan.red_team.heldout, "helpful": plan.helpful.heldout}


# ---------------------------------------------------------------------------------------------------------------------
# preference pairs


def pair_key(prompt: str, a: str, b: str) -> str:
    """The content key of a comparison: normalised prompt and responses, the two responses in either order."""
    return "\n".join([normalize_text(prompt), *sorted((normalize_text(a), normalize_text(b)))])


@dataclass(frozen=True)
class PMPair:
    prompt: str
    first: str
    second: str
    p_first: float  # P(first is the better response)
    origin: str  # "ai" (labelled this run) or "human" (preference_model.human_pairs, audit verdicts included)
    id: str = ""

    @classmethod
    def from_human(cls, h: HumanPair) -> PMPair:
        return cls(h.prompt, h.response_a, h.response_b, h.p_a, "human", h.id)

    @property
    def key(self) -> str:
        return pair_key(self.prompt, self.first, self.second)


@dataclass
class PairPlan:
    train: list[PMPair]
    heldout: list[PMPair]
    excluded: list[PMPair]  # labeler.human_eval holds these out
    duplicates: list[PMPair]  # the same comparison as an earlier pair (a human label wins over the AI's)


def plan_pairs(ai: Sequence[PMPair], human: Sequence[PMPair], human_eval: Sequence[HumanPair], fraction: float,
               seed: int) -> PairPlan:
    """Remove labeler.human_eval's pairs, de-duplicate by content key, split by the seeded hash of the key."""
    eval_keys = {pair_key(h.prompt, h.response_a, h.response_b) for h in human_eval}
    plan, seen = PairPlan([], [], [], []), set()
    for pair in [*human, *ai]:
        key = pair.key
        if key in eval_keys:
            plan.excluded.append(pair)
        elif key in seen:
            plan.duplicates.append(pair)
        else:
            seen.add(key)
            (plan.heldout if key_score(key, seed) < fraction else plan.train).append(pair)
    return plan
