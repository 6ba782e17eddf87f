"""The trust gate and the human audit round trip, end to end through the `rlaif` command.

The debug config's labeler is a random tiny model: its feedback cannot pass the trust gate's default bars on 16
human-labelled pairs (rlaif/audit/trust.py), and the debug config carries on past the gate by its own key. With that key
turned back off:
1. `rlaif label` exits 3, names each check that did not pass with its figure, interval, n and key, says the two ways
   on, and still writes the integrity report (the gate's checks first), the audit sheet and feedback/trust.json.
2. `rlaif train` stops before the preference model and RL: no checkpoint folder, no PM; with SL-CAI enabled it
   stops before SL-CAI, on the same figures (the human set is labelled with its own principle seed).
3. A reviewer fills `human_choice` in the exported audit sheet; `rlaif import-audit` turns it into human labels that
   load back with rlaif.data.human_labels.load_human_labels.
4. A short `rlaif train --accept-untrusted-feedback` (the flag wins over the key) mixes them into the PM's data, each
   once, on one side of its split, while pairs that labeler.human_eval holds out never train it; and every model it
   leaves carries the UNTRUSTED mark: the policy, the preference model and the resumable checkpoint have a README.md
   model card and a trust.json, and the console's last line says so.

The labeler uses the transformers backend here (one vLLM engine fewer per run; the backends agree, see
tests/test_labeler.py); everything else is the debug config on a local Ray.
"""

import json
import os
import subprocess
import sys

import pytest

from rlaif.config import load_config
from rlaif.data.human_labels import load_human_labels, write_human_labels
from rlaif.data.splits import pair_key
from rlaif.run.stages import human_eval_pairs

from .conftest import REPO

pytestmark = pytest.mark.e2e
BAR = "trust.accept_untrusted_feedback=false"  # the default everywhere but in the debug config
FAST = ["labeler.backend=transformers", "labeler.audit_samples=6"]
CHOICES = ["a", "b", "tie"]  # filled in turn into the audit rows
CHOICE_P = {"a": 1.0, "b": 0.0, "tie": 0.5}


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "rlaif.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_gate_stops_label_and_train_then_audit_round_trip(tmp_path):
    # 1. `rlaif label` on untrusted feedback: exit 3, every check named with its figure, the report written anyway
    labelled = tmp_path / "label"
    proc = run_cli("label", "--config", "configs/debug.yaml", f"output_dir={labelled}", BAR, *FAST)
    assert proc.returncode == 3, proc.stderr[-4000:]
    feedback = labelled / "feedback"
    for name in ("integrity.html", "integrity.json", "audit.jsonl", "trust.json"):
        assert (feedback / name).is_file(), f"{name} missing after the gate stopped the run"
    report = json.loads((feedback / "integrity.json").read_text())
    trust = json.loads((feedback / "trust.json").read_text())
    assert trust["status"] == "failed" and report["n_human"] > 0
    agreement = next(c for c in trust["checks"] if c["name"] == "agreement")
    assert agreement["value"] == report["agreement"] and agreement["n"] == report["n_human"]
    stderr = proc.stderr[proc.stderr.index("rlaif: stopped by the trust gate:"):]
    assert f"agreement with held-out human labels: {report['agreement']:.2f} [" in stderr
    failing = [c for c in trust["checks"] if c["verdict"] not in ("passed", "off")]
    assert failing and all(c["key"] in stderr and c["verdict"].upper() in stderr for c in failing)
    assert "--accept-untrusted-feedback" in stderr and str(feedback / "integrity.html") in stderr
    html = (feedback / "integrity.html").read_text()
    assert "Trust gate" in html and "FAILED" in html and html.index("Trust gate") < html.index("Headline figures")

    # 2. `rlaif train`: stopped before the PM and RL, no checkpoint
    gated = tmp_path / "train-gated"
    proc = run_cli("train", "--config", "configs/debug.yaml", f"output_dir={gated}", BAR, *FAST)
    assert proc.returncode == 3, proc.stderr[-4000:]
    assert "rlaif: stopped by the trust gate:" in proc.stderr
    assert json.loads((gated / "feedback" / "trust.json").read_text())["status"] == "failed"  # it got to the gate
    assert not [p.name for p in gated.iterdir() if p.name.startswith("checkpoint") or p.name == "preference_model"]
    assert not (gated / "feedback" / "pm_pairs.jsonl").exists()  # the PM never trained

    # 2b. with SL-CAI first, the labeler is checked before SL-CAI: the stop costs no SL-CAI time
    early = tmp_path / "train-sl-cai"
    proc = run_cli("train", "--config", "configs/debug.yaml", f"output_dir={early}", "sl_cai.enabled=true", BAR, *FAST)
    assert proc.returncode == 3, proc.stderr[-4000:]
    assert "checking the labeler on 16 human-labelled pairs before SL-CAI" in proc.stderr
    assert "rlaif: stopped by the trust gate:" in proc.stderr and not (early / "sl_cai").exists()
    assert json.loads((early / "feedback" / "trust.json").read_text())["checks"] == trust["checks"]  # same verdict

    # 3. review the audit sheet, import it, load it back, train on it
    rows = [json.loads(line) for line in (feedback / "audit.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["human_choice"] is None and r["human_p_a"] is None for r in rows)
    for i, row in enumerate(rows):
        row["human_choice"], row["reviewer"] = CHOICES[i % 3], "test-reviewer"
    reviewed = tmp_path / "audit.jsonl"
    reviewed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    human_path = tmp_path / "human.jsonl"
    proc = run_cli("import-audit", str(reviewed), str(human_path), timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"{len(rows)} reviewed pairs written to {human_path}" in proc.stdout

    human = load_human_labels(human_path)
    assert [h.id for h in human] == [r["id"] for r in rows]
    for h, r in zip(human, rows):
        assert h.p_a == CHOICE_P[r["human_choice"]]
        assert (h.prompt, h.response_a, h.response_b) == (r["prompt"], r["response_a"], r["response_b"])
        assert h.annotator == "test-reviewer" and h.source == "audit:audit.jsonl"

    # 4. train on them, with 4 of labeler.human_eval's held-out pairs slipped into the same file (responses swapped):
    # those must not train the PM, and the audited pairs, which this run's AI pairs repeat (same config and seeds),
    # must sit on one side of the PM's split once, with the person's label
    run = tmp_path / "train-human"
    cfg = load_config(REPO / "configs/debug.yaml", [f"output_dir={run}", "trainer.steps=1", *FAST])
    held_human = human_eval_pairs(cfg)[:4]
    mixed = tmp_path / "human-mixed.jsonl"
    write_human_labels(mixed, human + [h.swapped() for h in held_human])
    proc = run_cli("train", "--config", "configs/debug.yaml", "--accept-untrusted-feedback", f"output_dir={run}",
                   "trainer.steps=1", f"preference_model.human_pairs={mixed}", BAR, *FAST)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (run / "checkpoint" / "model.safetensors").is_file()
    assert proc.stdout.strip().splitlines()[-1].startswith("rlaif: UNTRUSTED: trained on AI feedback that did not pass")
    for model in ("checkpoint", "preference_model", "checkpoints/step_000001"):  # every model the run leaves is marked
        assert "**Trust: UNTRUSTED.**" in (run / model / "README.md").read_text(), model
        assert json.loads((run / model / "trust.json").read_text())["status"] == "untrusted", model
    assert "trust gate: the AI feedback did not pass, and the run trains on it anyway" in proc.stderr
    assert "4 pair(s) of preference_model.human_pairs are held out by labeler.human_eval" in proc.stderr
    pm_rows = [json.loads(line) for line in (run / "feedback" / "pm_pairs.jsonl").read_text().splitlines()]
    assert len(pm_rows) == 16 + len(human) + 4  # every pair is recorded, with its side
    side: dict[str, list[dict]] = {}
    for r in pm_rows:
        side.setdefault(pair_key(r["prompt"], r["first"], r["second"]), []).append(r)
    used = {k: [r for r in rows if r["split"] in ("train", "heldout", "unused")] for k, rows in side.items()}
    assert all(len(rows) == 1 for rows in used.values() if rows)  # one side, once
    for h in held_human:
        assert [r["split"] for r in side[pair_key(h.prompt, h.response_a, h.response_b)]] == ["human_eval"]
    for h in human:  # every reviewed pair went into the PM's data (its training or held-out share), as reviewed
        (r,) = used[pair_key(h.prompt, h.response_a, h.response_b)]
        assert r["origin"] == "human" and (r["prompt"], r["first"], r["second"], r["p_first"]) == \
            (h.prompt, h.response_a, h.response_b, h.p_a)
    duplicates = [r for r in pm_rows if r["split"] == "duplicate"]
    assert len(duplicates) == len(human) and all(r["origin"] == "ai" for r in duplicates)
    # the AI pairs came from RL's train prompts, never from its eval prompts
    prompts = {s: {json.loads(x)["prompt"] for x in (run / "data" / f"{s}_prompts.jsonl").read_text().splitlines()}
               for s in ("train", "eval")}
    ai_prompts = {r["prompt"] for r in pm_rows if r["origin"] == "ai"}
    assert ai_prompts <= prompts["train"] and not ai_prompts & prompts["eval"] and prompts["eval"]
