"""SL-CAI (Constitutional AI, phase 1): critique -> revision conversations and the SFT examples built from them.

No Ray here: `revise` takes a `chat(conversations) -> replies` callable, so the same code drives the rollout actor
in a run and a plain function in tests. Batched across prompts: every round is one critique call and one revision
call over all prompts.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass, field

from rlaif.data.loader import fit_chat
from rlaif.feedback.constitution import Constitution
from rlaif.feedback.selfconsistency import majority_filter

Chat = Callable[[list[list[dict[str, str]]]], list[str]]
Key = Callable[[list[str], list[str]], list[Hashable | None]]  # (prompts, revisions) -> one verdict per revision

# A critique that finds nothing to change is recorded, not hidden (the revision then often repeats the original).
NO_CHANGE = re.compile(
    r"\b(no (changes?|issues?|problems?|revisions?) (are |is )?(needed|required|necessary)|nothing (to change|to "
    r"revise|harmful|wrong|problematic)|(is|was) (already )?(fine|appropriate|harmless|not harmful|safe|helpful))\b",
    re.IGNORECASE,
)


def few_shot_messages(constitution: Constitution, k: int) -> list[dict[str, str]]:
    """The first k worked examples as a prior conversation: prompt, response, critique, revision."""
    msgs: list[dict[str, str]] = []
    for shot in constitution.few_shot[:k]:
        msgs += [
            {"role": "user", "content": shot.prompt},
            {"role": "assistant", "content": shot.response},
            {"role": "user", "content": shot.critique_request},
            {"role": "assistant", "content": shot.critique},
            {"role": "user", "content": shot.revision_request},
            {"role": "assistant", "content": shot.revision},
        ]
    return msgs


@dataclass
class Round:
    principle: int  # index into constitution.critique_revision
    critique_request: str
    critique: str
    revision_request: str
    revision: str
    no_change: bool  # the critique found nothing to change
    copies_critique: bool = False  # a degenerate "revision" that repeats the critique: never an SFT target
    # Self-consistency (sl_cai.self_consistency): every sampled revision, the majority's (the SFT targets; the
    # first is `revision`, or the first sample when no verdict could be extracted), and the agreement rate.
    samples: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    agreement: float | None = None


@dataclass
class Revision:
    """One red-team prompt's SL-CAI record, with its provenance."""

    id: str
    source: str
    prompt: str
    original: str
    rounds: list[Round] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    @property
    def final(self) -> str:
        return self.rounds[-1].revision if self.rounds else self.original

    def to_dict(self) -> dict:
        return {**asdict(self), "final": self.final}


def revise(
    prompts: list, chat: Chat, constitution: Constitution, rounds: int, few_shot: int, rng: random.Random,
    provenance: dict, samples: int = 0, key: Key | None = None, min_agreement: float = 0.0,
) -> list[Revision]:
    """Answer each prompt, then `rounds` times: critique under a freshly sampled principle, revise.

    Each round's context is the few-shot examples, the prompt, the current answer and the new critique request:
    the latest revision replaces the earlier turns, so the context stays bounded however many rounds are run.

    samples >= 2 (self-consistency, Huang et al.): each revision is sampled that many times in the same batched call,
    `key` gives each a verdict, and the revisions of the majority verdict are kept (rlaif.feedback.selfconsistency)
    when at least `min_agreement` of the samples share it; a less confident round keeps none (no SFT target).
    """
    if samples and key is None:
        raise ValueError("revise: self-consistency (samples >= 2) needs a key")
    shots = few_shot_messages(constitution, few_shot)
    base = [shots + [{"role": "user", "content": p.text}] for p in prompts]
    answers = chat(base)
    records = [
        Revision(p.id, getattr(p, "source", "") or p.id.split(":")[0], p.text, a, provenance=dict(provenance))
        for p, a in zip(prompts, answers)
    ]
    for _ in range(rounds):
        picks = [rng.randrange(len(constitution.critique_revision)) for _ in prompts]
        convs = [
            b + [{"role": "assistant", "content": r.final},
                 {"role": "user", "content": constitution.critique_revision[i].critique}]
            for b, r, i in zip(base, records, picks)
        ]
        critiques = chat(convs)
        convs = [
            c + [{"role": "assistant", "content": crit},
                 {"role": "user", "content": constitution.critique_revision[i].revision}]
            for c, crit, i in zip(convs, critiques, picks)
        ]
        if not samples:
            for r, i, crit, rev in zip(records, picks, critiques, chat(convs)):
                cr = constitution.critique_revision[i]
                copies = rev.strip() == crit.strip()
                r.rounds.append(Round(i, cr.critique, crit, cr.revision, rev, bool(NO_CHANGE.search(crit)), copies))
            continue
        sampled = chat([c for c in convs for _ in range(samples)])  # each prompt's samples contiguous
        verdicts = key([p.text for p in prompts for _ in range(samples)], sampled)
        if len(verdicts) != len(sampled):
            raise ValueError(f"self-consistency key returned {len(verdicts)} verdicts for {len(sampled)} revisions")
        groups = [list(range(k * samples, (k + 1) * samples)) for k in range(len(prompts))]
        kept, agreement = majority_filter(groups, verdicts.__getitem__, min_agreement)
        for r, i, crit, group, keep, rate in zip(records, picks, critiques, groups, kept, agreement):
            cr = constitution.critique_revision[i]
            texts = [sampled[j] for j in keep]
            rev = texts[0] if texts else sampled[group[0]]
            r.rounds.append(Round(i, cr.critique, crit, cr.revision, rev, bool(NO_CHANGE.search(crit)),
                                  rev.strip() == crit.strip(), [sampled[j] for j in group], texts, rate))
    return records


def sft_examples(records: list[Revision], targets: str) -> list[tuple[str, str, str]]:
    """(prompt id, prompt, target) triples: the revision of every round ("all") or only the last -- with
    self-consistency, each distinct revision of the majority; never the critique, nor a revision that merely repeats
    it (small models do: it would teach the policy to answer with critiques)."""
    out = []
    for r in records:
        chosen = r.rounds if targets == "all" else r.rounds[-1:]
        for rd in chosen:
            if rd.agreement is None:
                texts = [] if rd.copies_critique else [rd.revision]
            else:
                texts = [t for t in dict.fromkeys(rd.kept) if t.strip() != rd.critique.strip()]
            out += [(r.id, r.prompt, t) for t in texts if t.strip()]
    return out


def revision_stats(records: list[Revision], targets: str) -> dict[str, float]:
    """What the critique -> revision loop produced. Rates are over every round's critique and revision (the loop
    runs them all whatever `targets` says); `revisions` counts the SFT candidates that `targets` selects."""
    rounds = [rd for r in records for rd in r.rounds]
    n = max(len(rounds), 1)
    voted = [rd for rd in rounds if rd.agreement is not None]
    consistency = {
        "sl_cai/self_consistency_agreement": sum(rd.agreement for rd in voted) / len(voted),
        "sl_cai/self_consistency_kept": sum(len(rd.kept) for rd in voted) / sum(len(rd.samples) for rd in voted),
        "sl_cai/self_consistency_no_verdict": sum(not rd.kept for rd in voted) / len(voted),
        # of which: a majority was found but fewer than sl_cai.self_consistency_min_agreement of the samples agreed
        "sl_cai/self_consistency_below_min_agreement": sum(not rd.kept and rd.agreement > 0 for rd in voted)
        / len(voted),
    } if voted else {}
    return consistency | {
        "sl_cai/prompts": float(len(records)),
        "sl_cai/critiques": float(len(rounds)),
        "sl_cai/revisions": float(len(rounds) if targets == "all" else sum(1 for r in records if r.rounds)),
        "sl_cai/no_change_rate": sum(rd.no_change for rd in rounds) / n,
        "sl_cai/revision_copies_critique_rate": sum(rd.copies_critique for rd in rounds) / n,
        "sl_cai/revision_changed_rate": sum(r.final != r.original for r in records) / max(len(records), 1),
    }


def sft_token_ids(tokenizer, prompt: str, target: str, max_tokens: int) -> tuple[list[int], list[int], bool]:
    """(prompt ids, target ids, whether either was cut) in the chat template, max_tokens in all; the target ends
    with the end-of-turn token and is the only part the SFT loss sees. The prompt takes at most half, cut inside its
    text (the template kept); the target the rest."""
    prompt_ids, cut = fit_chat(tokenizer, [{"role": "user", "content": prompt}], max_tokens // 2,
                               "sl_cai.max_tokens / 2")
    target_ids = tokenizer.encode(target, add_special_tokens=False) + [tokenizer.eos_token_id]
    room = max_tokens - len(prompt_ids)
    return prompt_ids, target_ids[:room], cut or len(target_ids) > room
