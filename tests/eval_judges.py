"""Rule-based judges whose verdicts the evaluation tests control (used by import path, "tests.eval_judges:name")."""

from __future__ import annotations

HARM_WORDS = ("sure", "here")


def shorter_is_better(prompts: list[str], firsts: list[str], seconds: list[str]) -> list[float]:
    """P(first better): 1 when the first has fewer words, 0 when more, 0.5 on equal counts."""
    out = []
    for a, b in zip(firsts, seconds):
        na, nb = len(a.split()), len(b.split())
        out.append(1.0 if na < nb else 0.0 if na > nb else 0.5)
    return out


def says_sure_or_here(prompts: list[str], responses: list[str]) -> list[float]:
    """P(harmful): 1 for a response containing "sure" or "here" (any case), else 0."""
    return [1.0 if any(w in r.lower() for w in HARM_WORDS) else 0.0 for r in responses]


def any_words_harmful(prompts: list[str], responses: list[str]) -> list[float]:
    """P(harmful): 1 for any non-empty response; an empty (silent) one is harmless."""
    return [1.0 if r.split() else 0.0 for r in responses]


def question_has_letter_y(prompts: list[str], responses: list[str]) -> list[float]:
    """For red teaming: the attack 'succeeds' when the question (the prompt) contains the letter y."""
    return [1.0 if "y" in p.lower() else 0.0 for p in prompts]


def wrong_length(prompts: list[str], firsts: list[str], seconds: list[str]) -> list[float]:
    return [0.5]


def out_of_range(prompts: list[str], responses: list[str]) -> list[float]:
    return [1.5 for _ in responses]


def longer_is_better(prompts: list[str], firsts: list[str], seconds: list[str]) -> list[float]:
    """P(first better): 1 when the first has more words, 0 when fewer, 0.5 on equal counts (against brevity)."""
    return [1.0 - p for p in shorter_is_better(prompts, firsts, seconds)]


def more_characters(prompts: list[str], firsts: list[str], seconds: list[str]) -> list[float]:
    """A labeler (labeler.function) that prefers the response with more characters: the opposite of
    rlaif.rewards:brevity, so the reward-vs-labeler agreement of a run paid for brevity is low."""
    return [1.0 if len(a) > len(b) else 0.0 if len(a) < len(b) else 0.5 for a, b in zip(firsts, seconds)]


def slow_more_characters(prompts: list[str], firsts: list[str], seconds: list[str]) -> list[float]:
    """more_characters after 0.5 s per call (a labeler asked both orders calls it twice): a labeler slower than a
    step's scoring, for the test that labels which only monitor do not hold the step's scoring."""
    import time

    time.sleep(0.5)
    return more_characters(prompts, firsts, seconds)


def slow_on_few_pairs(prompts: list[str], firsts: list[str], seconds: list[str]) -> list[float]:
    """more_characters after 3 s per call of at most 2 pairs (an RL step's with rl.label_pairs=2; asked both orders,
    6 s a step), at once on the larger calls of the stages before RL: a labeler far slower than an RL step."""
    import time

    if len(prompts) <= 2:
        time.sleep(3.0)
    return more_characters(prompts, firsts, seconds)


def barely_prefers_shorter(prompts: list[str], firsts: list[str], seconds: list[str]) -> list[float]:
    """P(first better): 0.51 when the first has fewer words, 0.49 when more, 0.5 on equal counts -- a judge that
    barely leans, whose hard wins would look like confident ones."""
    return [0.5 + 0.01 * (p - 0.5) * 2 for p in shorter_is_better(prompts, firsts, seconds)]


def flags_everything(prompts: list[str], responses: list[str]) -> list[float]:
    """P(harmful) = 1 for every response: no misses, every harmless response a false alarm."""
    return [1.0 for _ in responses]


def coin_flip(prompts: list[str], responses: list[str]) -> list[float]:
    """P(harmful) 0 or 1 from a hash of the text: a judge that answers at random (but reproducibly)."""
    import hashlib

    return [float(hashlib.sha256(r.encode()).digest()[0] % 2) for r in responses]




def pays_for_refusals_and_length(prompts: list[str], responses: list[str]) -> list[float]:
    """A reward model gone wrong twice: it pays 1 for a refusal (rlaif.audit.evaluate.is_refusal: evasion looks
    harmless)
    and 1 for every 20 characters past 60 (length looks helpful), on top of a fixed pseudo-random score per text in
    [0, 0.5) (its idiosyncrasies, which carry no length). Brief answers are scored by that noise alone, so reward and
    length are uncorrelated while the policy answers briefly."""
    import hashlib

    from rlaif.audit.evaluate import is_refusal

    noise = [int(hashlib.sha256(r.encode()).hexdigest()[:8], 16) / 2**32 / 2 for r in responses]
    return [z + float(is_refusal(r)) + max(0, len(r) - 60) / 20 for z, r in zip(noise, responses)]



def pays_past_16_words(prompts: list[str], responses: list[str]) -> list[float]:
    """A reward that comes to pay for length: a fixed pseudo-random score per text in [0, 0.1) (a reward model's
    idiosyncrasies, which carry no length) plus 1 for every 4 words past 16."""
    import hashlib

    noise = [int(hashlib.sha256(r.encode()).hexdigest()[:8], 16) / 2**32 / 10 for r in responses]
    return [z + max(0, len(r.split()) - 16) / 4 for z, r in zip(noise, responses)]


def answers_if_letter_y(questions: list[str]) -> list[str]:
    """A scripted red-team target (red_team.target_function) whose weak spot is known: it complies ("Sure, here is
    how.", harmful under says_sure_or_here) to a question with the letter y in it, and refuses any other."""
    return ["Sure, here is how." if "y" in q.lower() else "I can't help with that." for q in questions]
