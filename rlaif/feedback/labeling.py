"""AI feedback: the multiple-choice comparison prompt and soft labels from option log-probs (CAI, RLAIF).

Everything here is model-agnostic: the labeler actor supplies log-probs (from vLLM prompt log-probs or a
transformers forward pass) and these functions turn them into labels.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rlaif.feedback.constitution import Comparison, Constitution

OPTIONS = (" (A)", " (B)")  # the continuations scored after the answer cue
ANSWER_CUE = "The answer is:"
SCORE_CUE = "Rating:"
# Direct RLAIF: the continuations " 1" .. " 9". A 1-9 scale, because digits tokenize one by one in byte-level BPE
# and SmolLM2 tokenizers (" 10" = " 1" + "0"): on a 1-10 scale P(" 1") would hold the mass of " 10" too. No score
# here is a prefix of another, so the nine continuations are mutually exclusive.
SCORES = tuple(f" {i}" for i in range(1, 10))
COT_CUE = "Let's think step by step:"
RATIONALE_END = "\n" + ANSWER_CUE  # follows a chain-of-thought rationale; the options are scored after it
JudgeFn = Callable[[list[str], list[str], list[str]], Sequence[float]]


def comparison_question(conversation: str, principle: str, first: str, second: str, shots: str = "") -> str:
    """The feedback question (CAI appendix): conversation, principle, the two options; after `shots`, the answered
    examples of CAI's few-shot feedback prompt (few_shot_feedback), if any."""
    return shots + (
        "Consider the following conversation between a human and an assistant:\n"
        f"Human: {conversation}\n\n"
        f"{principle}\n"
        "Options:\n"
        f"(A) {first}\n"
        f"(B) {second}"
    )


def comparison_prompt(conversation: str, principle: str, first: str, second: str, shots: str = "") -> str:
    """The plain-text prompt for a base-model labeler, ending at the answer cue."""
    return comparison_question(conversation, principle, first, second, shots) + "\n" + ANSWER_CUE


def few_shot_feedback(examples: Sequence[Comparison]) -> str:
    """CAI's few-shot feedback prompt: each labelled comparison as the same question, answered after the cue
    ("The answer is: (B)"), then a blank line; the question to be labelled follows. "" for no examples."""
    return "".join(comparison_prompt(e.conversation, e.principle, e.response_a, e.response_b) + f" ({e.choice})\n\n"
                   for e in examples)


def feedback_examples(constitution: Constitution, k: int) -> str:
    """The first k labelled comparisons of the constitution as few_shot_feedback (labeler.few_shot_examples)."""
    if k > len(constitution.comparisons):
        raise ValueError(f"labeler.few_shot_examples = {k}, but the constitution (constitution.path) has "
                         f"{len(constitution.comparisons)} labelled comparisons")
    return few_shot_feedback(constitution.comparisons[:k])


def rating_question(conversation: str, principle: str, response: str) -> str:
    """Direct RLAIF: ask for a 1-9 rating of one response under a principle (see SCORES for why 1-9)."""
    return (
        "Consider the following conversation between a human and an assistant:\n"
        f"Human: {conversation}\n"
        f"Assistant: {response}\n\n"
        f"{principle}\n"
        "Rate the assistant's response on a scale from 1 to 9, where 9 is best."
    )


def render(tokenizer, question: str, chat_template: bool, cue: str = "") -> str:
    """The labeler's prompt text, ending right before what is scored or generated next.

    With chat_template the question is the user turn and what follows opens the assistant turn, as an instruct
    model expects. With cue="" it ends at the chain-of-thought cue (to generate the rationale; the labeler then
    scores the options after rationale ids + RATIONALE_END, without re-tokenizing what was generated).
    """
    if chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
    else:
        text = question + "\n"
    return text + (cue or COT_CUE)


def continuation_ids(tokenizer, prompt: str, option: str) -> tuple[list[int], list[int]]:
    """(prompt ids, option ids) with the option tokenized as it would be in context.

    Tokenizers can merge across the boundary (a trailing space in the prompt with the option's leading space, or
    "(" with the letter), so the option's ids are read off the tokenization of prompt + option whenever that
    keeps the prompt's own ids as a prefix; otherwise the option is tokenized on its own after the prompt.
    """
    if prompt and prompt[-1].isspace():
        option = option.lstrip()
    base = tokenizer.encode(prompt, add_special_tokens=False)
    full = tokenizer.encode(prompt + option, add_special_tokens=False)
    if full[: len(base)] == base and len(full) > len(base):
        return base, full[len(base) :]
    return base, tokenizer.encode(option, add_special_tokens=False)


def soft_label(logp_a: float, logp_b: float) -> float:
    """P(A) = softmax over the two option log-probs, normalised so the two options sum to one."""
    m = max(logp_a, logp_b)
    ea, eb = math.exp(logp_a - m), math.exp(logp_b - m)
    return ea / (ea + eb)


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before plain text (BOS for Llama-style tokenizers; often nothing).

    A plain-text labeler prompt starts with these, as the model saw text in training and as vLLM tokenizes a text
    prompt. A chat-templated prompt takes none: the template writes its own special tokens, and adding the
    tokenizer's BOS in front of a template that already starts with it would double it.
    """
    bare = tokenizer.encode("x", add_special_tokens=False)
    full = tokenizer.encode("x", add_special_tokens=True)
    for k in range(len(full) - len(bare) + 1):
        if full[k : k + len(bare)] == bare:
            return full[:k]
    raise ValueError(f"cannot find the text's own ids {bare} inside its ids with special tokens {full}")


def rating_reward(score_logprobs: Sequence[float]) -> float:
    """Direct RLAIF (Lee et al.): reward = sum_i i * P(i) over the scores 1..n (P normalised over the n score
    continuations), rescaled linearly from [1, n] to [-1, 1]. score_logprobs: one summed log-prob per SCORES entry."""
    n = len(score_logprobs)
    if n != len(SCORES):
        raise ValueError(f"expected the log-probs of the {len(SCORES)} score continuations, got {n}")
    m = max(score_logprobs)
    weights = [math.exp(x - m) for x in score_logprobs]
    expected = sum(i * w for i, w in enumerate(weights, start=1)) / sum(weights)
    return (expected - 1.0) / (n - 1) * 2.0 - 1.0


def load_judge(spec: str, key: str = "labeler.function") -> JudgeFn:
    """Import a rule-based pairwise judge "package.module:function"; a bad spec is a config error naming `key`."""
    from rlaif.config import import_callable

    return import_callable(spec, key)


def judge_probs(fn: JudgeFn, spec: str, prompts: list[str], firsts: list[str], seconds: list[str]) -> list[float]:
    """Call a pairwise judge and check its answer: one probability P(first better) in [0, 1] per pair."""
    try:
        out = list(fn(list(prompts), list(firsts), list(seconds)))
    except Exception as exc:  # re-raised with the judge's name: the user's code failed, not the labeler
        raise RuntimeError(f"labeler.function '{spec}' raised {type(exc).__name__}: {exc}") from exc
    if len(out) != len(prompts):
        raise ValueError(f"labeler.function '{spec}' returned {len(out)} values for {len(prompts)} pairs")
    probs = []
    for i, v in enumerate(out):
        try:
            p = math.nan if isinstance(v, (str, bytes)) else float(v)
        except (TypeError, ValueError):
            p = math.nan
        if not 0.0 <= p <= 1.0:  # also rejects NaN
            raise ValueError(f"labeler.function '{spec}' returned {v!r} for pair {i}: expected P(first better) "
                             f"in [0, 1]")
        probs.append(p)
    return probs


@dataclass(frozen=True)
class PairLabel:
    p_first: float  # probability that the first response is better, averaged over the orders scored
    p_first_in_a: float  # P(A) with the first response shown as (A)
    p_first_in_b: float | None  # P(B) with the first response shown as (B); None when one order was scored
    consistent: bool | None  # do both orders prefer the same response? None with one order


def combine_orders(p_a_forward: float, p_a_swapped: float | None) -> PairLabel:
    """Average the label over both presentation orders, removing the labeler's slot bias to first order.

    p_a_forward: P(A) with (first, second) as (A, B). p_a_swapped: P(A) with (second, first) as (A, B), so the
    first response's probability there is 1 - p_a_swapped.
    """
    if p_a_swapped is None:
        return PairLabel(p_a_forward, p_a_forward, None, None)
    p_first_in_b = 1.0 - p_a_swapped
    consistent = (p_a_forward > 0.5) == (p_first_in_b > 0.5)
    return PairLabel(0.5 * (p_a_forward + p_first_in_b), p_a_forward, p_first_in_b, consistent)


def ensemble(labels: list[PairLabel]) -> PairLabel:
    """Average labels of one pair taken under several sampled principles; consistent only if every one is."""
    k = len(labels)
    p_b = [lab.p_first_in_b for lab in labels]
    cons = [lab.consistent for lab in labels]
    return PairLabel(
        sum(lab.p_first for lab in labels) / k,
        sum(lab.p_first_in_a for lab in labels) / k,
        None if None in p_b else sum(p_b) / k,
        None if None in cons else all(cons),
    )


def clamp_cot(p: float, low: float = 0.4, high: float = 0.6) -> float:
    """Chain-of-thought labels are near 0 or 1; CAI clamps them to [0.4, 0.6] so the PM is not overconfident."""
    return min(max(p, low), high)


class LabelCache:
    """Labels keyed by a content hash, appended to a JSONL file, so a resumed or repeated run does not re-label."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self.entries: dict[str, dict] = {}
        if self.path and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self.entries[rec["key"]] = rec["value"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn last line from an interrupted run: that label is simply recomputed

    @staticmethod
    def key(*parts: object) -> str:
        return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, items: dict[str, dict]) -> None:
        self.entries.update(items)
        if self.path and items:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                for k, v in items.items():
                    f.write(json.dumps({"key": k, "value": v}) + "\n")
                f.flush()
                os.fsync(f.fileno())
