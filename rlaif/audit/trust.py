"""The trust gate: the feedback-integrity measurements turned into a decision, and the mark a decision leaves on every
result. No Ray here.

A model trained on its own feedback amplifies that feedback's mistakes, so before the preference model trains and
before RL the run checks its AI feedback against held-out human labels (labeler.human_eval). Each check compares the
**lower end of the 95% Wilson interval** of a measured proportion with its bar (trust.*; 0 turns a check off):

* agreement: the order-averaged AI labels prefer the response the human preferred (trust.min_agreement, 0.55: a
  labeler whose interval reaches down to chance has shown nothing);
* position consistency: both presentation orders of a pair prefer the same response (trust.min_position_consistency,
  0.5: a labeler below a coin answers by slot, (A) or (B), not by the responses);
* the preference model's accuracy on the held-out human pairs (trust.min_pm_human_accuracy, 0.5), after it trains;
  or, with a pretrained reward model in its place (rl.reward_model), that model's accuracy, against the same bar.

A check passes when the interval's lower end reaches the bar; it fails when even the upper end is below; between the
two it is undecided: too few human labels to tell, which is a finding of its own and does not pass. A check with
nothing to measure (no human-labelled pair) does not pass either. The run stops (exit 3) on any check that does not
pass, unless trust.accept_untrusted_feedback (`--accept-untrusted-feedback`) says to train anyway: then every result
the run leaves (the checkpoints' model cards and trust.json, the wandb summary and tags, the eval report, the last
console line) is marked untrusted. Where the AI feedback trains nothing (rewards from rl.reward_functions alone), the
checks are measured and reported but stop nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlaif.audit.integrity import FeedbackIntegrityError, IntegrityReport, wilson_interval
from rlaif.config import Config, TrustConfig
from rlaif.data.human_labels import atomic_write_text

# FAILED: a check did not pass and the run stopped; UNTRUSTED: it did not pass and the run trained anyway
TRUSTED, UNTRUSTED, UNCHECKED, FAILED = "trusted", "untrusted", "unchecked", "failed"
STATUSES = (TRUSTED, UNTRUSTED, UNCHECKED, FAILED)
DISTRUSTED = (UNTRUSTED, FAILED)  # what a report marks at its top and in the model's row
CARD, RECORD = "README.md", "trust.json"  # written beside the weights of every checkpoint a run exports

NAMES = {"agreement": "agreement with held-out human labels",
         "position_consistency": "position consistency",
         "pm_human_accuracy": "preference model accuracy on held-out human pairs",
         "rm_human_accuracy": "reward model (rl.reward_model) accuracy on held-out human pairs"}
# What a failing check means, in plain words for the person reading the console.
MEANING = {
    "agreement": "the labeler prefers the response people preferred no more often than the bar allows; its labels "
                 "would teach the preference model its own mistakes",
    "position_consistency": "the labeler's choice flips when the two responses swap places: it answers by slot, "
                            "(A) or (B), not by what the responses say",
    "pm_human_accuracy": "the preference model ranks the held-out human pairs no better than the bar: RL against it "
                         "would optimise its errors",
    "rm_human_accuracy": "the pretrained reward model ranks the held-out human pairs no better than the bar: RL "
                         "against it would optimise its disagreements with the people who labelled them",
}


@dataclass
class Check:
    name: str  # agreement | position_consistency | pm_human_accuracy | rm_human_accuracy
    key: str  # the config key of its bar
    bar: float  # 0: off
    value: float | None
    n: int
    low: float | None = None  # 95% Wilson interval
    high: float | None = None
    verdict: str = "off"  # passed | failed | undecided | unmeasured | off

    @property
    def ok(self) -> bool:
        return self.verdict in ("passed", "off")

    def figure(self) -> str:
        if self.value is None:
            return "not measured"
        return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}] n={self.n}"

    def explain(self) -> str:
        """One line: the figure, the bar, the verdict and, when it does not pass, what that means."""
        head = f"{NAMES[self.name]}: {self.figure()}"
        if self.verdict == "off":
            return f"{head}; check off ({self.key} = 0)"
        bar = f"the lower end must reach {self.bar:.2f} ({self.key})"
        if self.verdict == "passed":
            return f"{head}; passed ({bar})"
        if self.verdict == "unmeasured":
            return (f"{head}; NOT MEASURED: no human-labelled pair was scored (labeler.human_eval is empty or holds "
                    f"only ties), so the feedback cannot be checked ({bar})")
        if self.verdict == "undecided":
            return (f"{head}; UNDECIDED: {bar}, and the interval straddles it: too few human labels to tell whether "
                    f"it clears the bar (more pairs decide it: labeler.human_eval_pairs, labeler.human_eval)")
        return f"{head}; FAILED: {bar}. {MEANING[self.name][0].upper()}{MEANING[self.name][1:]}"


def make_check(name: str, key: str, bar: float, value: float | None, n: int) -> Check:
    """Grade one measured proportion (value over n trials) against its bar by the 95% Wilson interval."""
    c = Check(name, key, bar, value, n)
    if value is not None and n > 0:
        c.low, c.high = wilson_interval(value, n)
    if not bar:
        c.verdict = "off"
    elif value is None or n == 0:
        c.verdict = "unmeasured"
    elif c.low >= bar:
        c.verdict = "passed"
    elif c.high < bar:
        c.verdict = "failed"
    else:
        c.verdict = "undecided"
    return c


def labeler_checks(report: IntegrityReport, tc: TrustConfig) -> list[Check]:
    """Agreement and position consistency of the labels on the held-out human pairs (integrity_report's figures)."""
    return [make_check("agreement", "trust.min_agreement", tc.min_agreement, report.agreement, report.n_human),
            make_check("position_consistency", "trust.min_position_consistency", tc.min_position_consistency,
                       report.position_consistency, report.n_both_orders)]


def pm_check(metrics: Mapping[str, float], tc: TrustConfig) -> Check:
    """The PM's accuracy on labeler.human_eval's pairs (rlaif.run.stages: pm/human_accuracy and its n)."""
    n = int(metrics.get("pm/human_accuracy_n", 0))
    return make_check("pm_human_accuracy", "trust.min_pm_human_accuracy", tc.min_pm_human_accuracy,
                      metrics.get("pm/human_accuracy") if n else None, n)


def feedback_trains(cfg: Config) -> str:
    """What the AI feedback trains in this run, in words; "" when it trains nothing (the gate then stops nothing)."""
    rl = cfg.rl
    parts = []
    if rl.use_preference_model and not rl.reward_model:  # a pretrained reward model learns nothing from them
        parts.append("the preference model the policy is trained against")
    if rl.use_labeler_rating:
        parts.append("the policy's reward (the labeler's direct rating)")
    if rl.labels_order_dpo:
        parts.append("the policy's online-DPO pairs")
    return " and ".join(parts)


@dataclass
class TrustRecord:
    """The gate's decision for a run; saved in feedback/trust.json, the checkpoints and every exported model."""

    status: str  # trusted | untrusted | unchecked | failed
    checks: list[Check] = field(default_factory=list)
    accepted: bool = False  # trust.accept_untrusted_feedback was set
    trains: str = ""  # what the AI feedback trains (feedback_trains)
    note: str = ""  # replaces the summary where no gate applies to a model (the SL-CAI policy)

    def summary(self) -> str:
        """One sentence for the console, a wandb summary, a report banner."""
        bad = [c for c in self.checks if not c.ok]
        names = ", ".join(f"{NAMES[c.name]} {c.verdict} ({c.figure()})" for c in bad)
        if self.note:
            return self.note
        if self.status == FAILED:
            return f"the AI feedback did not pass the trust gate ({names}); the run stopped"
        if self.status == UNTRUSTED:
            return (f"trained on AI feedback that did not pass the trust gate ({names}); trained anyway because "
                    f"trust.accept_untrusted_feedback was set")
        if self.status == TRUSTED:
            on = [c for c in self.checks if c.verdict != "off"]
            return "the AI feedback passed every trust check: " + "; ".join(
                f"{NAMES[c.name]} {c.figure()}" for c in on)
        if not self.trains:
            return ("the AI feedback trained nothing in this run (the reward came from rl.reward_functions alone)"
                    + (f"; its checks: {names}" if bad else ""))
        return "the AI feedback was not checked: every trust.* bar is 0"

    def to_dict(self) -> dict:
        return asdict(self) | {"summary": self.summary()}

    @classmethod
    def from_dict(cls, data: Mapping) -> TrustRecord:
        return cls(data["status"], [Check(**c) for c in data["checks"]], data["accepted"], data["trains"],
                   data.get("note", ""))


def decide(checks: list[Check], tc: TrustConfig, trains: str) -> TrustRecord:
    """The gate's decision: FAILED when a check does not pass, the feedback trains something and the user has not
    accepted untrusted feedback (enforce() then stops the run); UNTRUSTED when they have; TRUSTED when every check
    that is on passed; UNCHECKED when every check is off or the feedback trains nothing."""
    accepted = tc.accept_untrusted_feedback
    if not trains:
        return TrustRecord(UNCHECKED, checks, accepted, trains)
    if all(c.ok for c in checks):
        return TrustRecord(TRUSTED if any(c.verdict != "off" for c in checks) else UNCHECKED, checks, accepted, trains)
    return TrustRecord(UNTRUSTED if accepted else FAILED, checks, accepted, trains)


def enforce(record: TrustRecord, report: str | os.PathLike) -> None:
    """Stop the run (FeedbackIntegrityError: exit 3) on a FAILED decision, saying why and the two ways on."""
    if record.status == FAILED:
        raise FeedbackIntegrityError(gate_message(record.checks, record.trains, report))


def gate_message(checks: list[Check], trains: str, report: str | os.PathLike) -> str:
    failing = [c for c in checks if not c.ok]
    lines = [f"the AI feedback did not pass {len(failing)} of {sum(c.verdict != 'off' for c in checks)} trust "
             f"check(s) against held-out human labels, so it does not train {trains}:"]
    lines += [f"  - {c.explain()}" for c in checks]
    lines += ["Two ways on: a stronger labeler (labeler.model.path; labeler.chat_template=true for an instruct model; "
              "labeler.principles_per_pair; labeler.function for a rule-based judge), with more human labels where "
              "a check is undecided (labeler.human_eval_pairs); or train anyway with --accept-untrusted-feedback "
              "(trust.accept_untrusted_feedback=true), which marks every checkpoint, report and wandb run of this "
              "run untrusted.",
              f"The report: {report}"]
    return "\n".join(lines)


def brief(checks: list[Check]) -> str:
    """The checks in one console phrase: each figure with its interval and n, and the verdict where it is not a pass
    (the explanations go to the report, trust.json and the stop message)."""
    return ", ".join(f"{NAMES[c.name]} {c.figure()}" + ("" if c.verdict == "passed" else f" {c.verdict.upper()}")
                     for c in checks)


def trust_metrics(record: TrustRecord) -> dict[str, float]:
    """trust/untrusted (1: the run trained on feedback that failed the gate), trust/checks_passed, trust/checks_on."""
    on = [c for c in record.checks if c.verdict != "off"]
    return {"trust/untrusted": float(record.status == UNTRUSTED), "trust/checks_on": float(len(on)),
            "trust/checks_passed": float(sum(c.verdict == "passed" for c in on))}


# ---------------------------------------------------------------------------------------------------------------------
# the mark on every exported model: a model card (README.md) and trust.json beside the weights


def model_card(record: TrustRecord, what: str, cfg: Config, step: int | None = None) -> dict[str, str]:
    """The files written beside an exported model's weights (in the same atomic rename): {name: text}."""
    status = record.status.upper()
    lines = [f"# {what}", "",
             f"Trained by rlaif (RL from AI feedback, Constitutional AI) in `{cfg.output_dir}`"
             + (f", after {step} RL step(s)." if step is not None else "."), "",
             f"**Trust: {status}.** {record.summary()[0].upper()}{record.summary()[1:]}.", ""]
    if record.status == UNTRUSTED:
        lines += ["> This model was trained on AI feedback that the run measured and could not trust. Do not deploy "
                  "it or report its results without saying so.", ""]
    if record.checks:
        lines += ["## The AI feedback, checked against held-out human labels", "",
                  "| check | measured | 95% interval | n | bar (lower end) | verdict |",
                  "|---|---|---|---|---|---|"]
        for c in record.checks:
            value = "n/a" if c.value is None else f"{c.value:.3f}"
            ci = "n/a" if c.low is None else f"[{c.low:.3f}, {c.high:.3f}]"
            lines.append(f"| {NAMES[c.name]} | {value} | {ci} | {c.n} | {c.bar:g} (`{c.key}`) | {c.verdict} |")
        lines.append("")
    lines += ["## How it was trained", "", f"- base policy: `{cfg.policy.model.path}`"]
    if record.note:  # a model no gate applies to (the SL-CAI policy): the RL settings describe nothing of it
        lines += [f"- SL-CAI: {cfg.sl_cai.rounds} critique/revision round(s), {cfg.sl_cai.few_shot}-shot, then SFT", ""]
    else:
        lines += [f"- AI feedback: `{cfg.labeler.function or cfg.labeler.model.path}` (mode {cfg.labeler.mode}); human "
                  f"labels for the checks: `{cfg.labeler.human_eval or 'none'}`",
                  f"- what the AI feedback trained: {record.trains or 'nothing (reward functions only)'}",
                  f"- RL: {cfg.rl.algorithm}, KL coefficient {cfg.rl.kl_coef:g}",
                  "- reports: `feedback/integrity.html`, `feedback/trust.json` in the run folder", ""]
    return {CARD: "\n".join(lines), RECORD: json.dumps(record.to_dict() | {"model": what, "step": step}, indent=1)
            + "\n"}


def write_card(folder: str | os.PathLike, files: Mapping[str, str]) -> None:
    """Write the card's files into a folder that is being assembled (each atomically)."""
    for name, text in files.items():
        atomic_write_text(Path(folder) / name, text)


def read_mark(folder: str | os.PathLike) -> dict | None:
    """The trust mark (status, summary, checks) in a folder's trust.json: a run's feedback/ folder or an exported
    model's; None where there is none. Read leniently, since a person may hand-write or damage one: a mark that cannot
    be read is itself reported as untrusted."""
    path = Path(folder) / RECORD
    if not path.is_file():
        return None
    try:
        mark = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        return {"status": UNTRUSTED, "summary": f"{path} is not valid JSON ({exc}): treated as untrusted", "checks": []}
    status = mark.get("status") if isinstance(mark, dict) else None
    if status not in STATUSES:
        return {"status": UNTRUSTED, "summary": f"{path}: status {status!r} is not one of {STATUSES}: treated as "
                "untrusted", "checks": []}
    return {"status": status, "summary": str(mark.get("summary", "")), "checks": mark.get("checks", [])}
