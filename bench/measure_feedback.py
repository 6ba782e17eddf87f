"""How far can SmolLM2-135M-Instruct's AI feedback be trusted? Labeler figures against held-out human labels, and a
preference model trained on its AI labels against one trained on human labels.

    python bench/measure_feedback.py [--label-pairs 64] [--pm-train 48] [--pm-test 48] [--epochs 2] [--lr 3e-5]

Part 1, the labeler (SmolLM2-135M-Instruct, vLLM backend, in this process). The held-out human set is the one the
pipeline measures against (``build_pyrit_human_set(max_pairs=--label-pairs, seed=0)``, i.e. labeler.human_eval
"builtin:pyrit": pyrit's human-scored harm and refusal responses, paired; the better response in slot A for exactly
half the pairs). Every pair is scored in both orders under one sampled principle, once with the question inside
SmolLM2's chat template and once as plain text, and reported for each:

* agreement with the human label: raw, single order (the first response shown as (A), as a labeler scoring one
  order would), the other order alone, and debiased (order-averaged p_first); with a 95% Wilson interval;
* position consistency: share of pairs whose two orders prefer the same response;
* slot bias: mean P(A) over every presentation (0.5 = none) and the share of presentations answered (A); and on
  the balanced set, |mean P(A) - 0.5| of the single-order label vs |mean p_first - 0.5| of the averaged one;
* ECE of the order-averaged label against the human outcome (10 bins).

Part 2, the preference model (SmolLM2-135M base + a scalar head, DeepSpeed ZeRO-2, one rank each, on a local Ray;
the two PMs train side by side, one torch thread each).
A fair, small protocol: the pyrit pairs are split *by objective* (prompt) into a training and a test side, so no
test prompt is ever trained on (at most 2 pairs per prompt on either side, for variety). Two PMs start from the
same weights and seed and train with the same steps and hyper-parameters on the same number of pairs over the same
prompts:

* PM-AI: for each training pair's prompt, the policy (SmolLM2-135M-Instruct itself, T=1, 64 new tokens, via the
  same vLLM engine) samples two responses, and the labeler (chat template, both orders) gives the order-averaged
  soft label: RL-CAI's recipe;
* PM-human: the human-labelled pyrit pairs of those prompts (hard labels).

Both are evaluated on the held-out human test pairs (held-out accuracy, ECE of sigmoid(r_a - r_b) against the human
outcome, 10 bins). PM-AI is also evaluated against its own label source: AI labels of fresh policy pairs on the test
prompts. The PM sees at most 128 tokens per (prompt, response) (preference_model.max_tokens), the labeler at most
64 tokens of the prompt and of each response (labeler.max_response_tokens), which keeps the run near 10 minutes on
2 CPU cores (vLLM runs with OMP_NUM_THREADS = the core count; by default it drops to one torch thread).
SmolLM2 rather than the tiny model is the PM base: a random 2-layer model cannot read harm in text at all, so it
would only measure noise.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))  # else vLLM-CPU serves on one torch thread

REPO = Path(__file__).resolve().parents[1]


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion p measured on n trials."""
    if n == 0:
        return (float("nan"), float("nan"))
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return centre - half, centre + half


def fmt_acc(p: float | None, n: int) -> str:
    if p is None:
        return "n/a"
    lo, hi = wilson(p, n)
    return f"{p:.3f} [{lo:.2f}, {hi:.2f}]"


def labeler_figures(labels: list[dict], human_p: list[float]) -> dict[str, float]:
    from rlaif.audit.integrity import integrity_report

    r = integrity_report(labels, human_p)
    mean_fwd = sum(lab["p_first_in_a"] for lab in labels) / len(labels)
    return {"n": r.n_human, "agreement_raw": r.agreement_forward, "agreement_swapped": r.agreement_swapped,
            "agreement_debiased": r.agreement, "position_consistency": r.position_consistency,
            "p_slot_a_mean": r.p_slot_a_mean, "slot_a_rate": r.slot_a_rate,
            "slot_bias_raw_single": abs(mean_fwd - 0.5), "slot_bias_debiased_single": abs(r.p_first_mean - 0.5),
            "ece_debiased": r.ece, "ece_raw": r.ece_forward}


def split_by_prompt(pairs, n_train: int, n_test: int, seed: int, per_prompt: int = 2):
    """Disjoint objectives: whole prompts go to the training or the test side, at most `per_prompt` pairs each."""
    groups: dict[str, list] = {}
    for p in pairs:
        groups.setdefault(p.prompt, []).append(p)
    prompts = sorted(groups)
    random.Random(seed).shuffle(prompts)
    train, test = [], []
    for prompt in prompts:
        side = train if len(train) < n_train else test if len(test) < n_test else None
        if side is None:
            break
        room = (n_train - len(train)) if side is train else (n_test - len(test))
        side += groups[prompt][: min(room, per_prompt)]
    return train, test


def policy_pairs(labeler, prompts: list[str], max_tokens: int = 64) -> tuple[list[str], list[str]]:
    """Two T=1 samples per prompt from SmolLM2-135M-Instruct (the labeler's own engine), chat-templated."""
    from vllm import SamplingParams

    tok = labeler.tokenizer
    inputs = []
    for p in prompts:
        ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        inputs.append({"prompt_token_ids": list(ids)[-256:]})
    # No per-request seed: vLLM-CPU 0.32 fails ("CPU Generator does not use offset") when a seeded request is
    # prefilled in chunks, which happens once a call's prompts exceed 4096 tokens. The engine's seed fixes the draw.
    params = SamplingParams(n=2, temperature=1.0, max_tokens=max_tokens)
    outs = labeler.llm.generate(inputs, params, use_tqdm=False)
    return [o.outputs[0].text for o in outs], [o.outputs[1].text for o in outs]


def train_and_eval_pms(cfg, jobs: dict[str, tuple[dict, dict]]) -> dict[str, dict]:
    """Train one PM per job side by side (one rank each, one torch thread each), then score its evaluation sets.
    jobs: name -> (training pairs, {eval name: pairs}); pairs as PreferenceModelWorker.train takes them."""
    from actors.group import ActorGroup, get
    from actors.preference import PreferenceModelWorker
    from rlaif.audit.integrity import calibration_summary, preference_probs

    t0 = time.perf_counter()
    groups = {}
    try:
        for name in jobs:
            groups[name] = ActorGroup(PreferenceModelWorker, 1, cfg, num_cpus=1, env={"OMP_NUM_THREADS": "1"},
                                      timeout=3600, name=name)
        refs = {name: groups[name].actors[0].train.remote(train) for name, (train, _) in jobs.items()}
        out = {}
        for name, ref in refs.items():
            metrics = get(ref, 3600, f"{name}.train")
            out[name] = {"loss_first": metrics["pm/loss_first"], "loss_last": metrics["pm/loss_last"],
                         "train_seconds": metrics["pm/seconds"]}
        for name, (_, evals) in jobs.items():
            for key, pairs in evals.items():
                n = len(pairs["prompt"])
                s = groups[name].call("score", {"prompt": pairs["prompt"] * 2,
                                                "response": pairs["first"] + pairs["second"]}, False)[0]
                keep = [i for i in range(n) if pairs["p_first"][i] != 0.5]
                probs = preference_probs([s[i] for i in keep], [s[n + i] for i in keep])
                summary = calibration_summary(probs, [float(pairs["p_first"][i] > 0.5) for i in keep])
                out[name][key] = {"n": len(keep), "accuracy": summary["accuracy"], "ece": summary["ece"]}
    finally:
        for g in groups.values():
            g.shutdown()
    for res in out.values():
        res["seconds"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--label-pairs", type=int, default=64, help="held-out human pairs the labeler is measured on")
    ap.add_argument("--pm-train", type=int, default=48, help="training pairs of each PM")
    ap.add_argument("--pm-test", type=int, default=48, help="held-out human test pairs (prompts never trained on)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-pm", action="store_true", help="labeler figures only")
    a = ap.parse_args()

    from actors.labeler import LabelerWorker
    from rlaif.audit.integrity import comparison_inputs
    from rlaif.config import load_config
    from rlaif.data.human_labels import build_pyrit_human_set

    t_start = time.perf_counter()
    out = Path(tempfile.mkdtemp(prefix="rlaif-measure-feedback-"))
    cfg = load_config(REPO / "configs/smollm2.yaml", [
        f"output_dir={out}", f"seed={a.seed}", "labeler.backend=vllm", "labeler.chat_template=true",
        "labeler.cache=false", "labeler.max_response_tokens=64", "labeler.max_model_len=1024",
        "labeler.kv_cache_gib=2", "preference_model.max_tokens=128", "preference_model.batch_size=8",
        f"preference_model.epochs={a.epochs}", f"preference_model.lr={a.lr}", "preference_model.zero_stage=2",
    ])

    # ---- part 1: the labeler against held-out human labels, chat template on and off ----
    t = time.perf_counter()
    labeler = LabelerWorker(cfg)
    labeler.load()  # the engine starts on first use otherwise
    startup = time.perf_counter() - t
    human = build_pyrit_human_set(max_pairs=a.label_pairs, seed=a.seed).pairs
    prompts, firsts, seconds, human_p = comparison_inputs(human)
    figures, seconds_per = {}, {}
    for chat in (True, False):
        labeler.lc.chat_template = chat  # same engine, same principles (the labeler's rng is re-seeded)
        labeler.rng = random.Random(cfg.seed + 1)
        t = time.perf_counter()
        figures[chat] = labeler_figures(labeler.compare(prompts, firsts, seconds), human_p)
        seconds_per[chat] = time.perf_counter() - t
    labeler.lc.chat_template = True

    print(f"\n== SmolLM2-135M-Instruct as labeler (vLLM, logprob mode, 1 principle, both orders) on "
          f"{len(human)} pyrit human pairs (seed {a.seed}); engine start {startup:.0f}s ==")
    rows = [("agreement raw, single order (first as A)", "agreement_raw", "acc"),
            ("agreement, other order alone (first as B)", "agreement_swapped", "acc"),
            ("agreement debiased (order-averaged)", "agreement_debiased", "acc"),
            ("position consistency", "position_consistency", "acc"),
            ("mean P(A) over both presentations", "p_slot_a_mean", "f"),
            ("presentations answered (A)", "slot_a_rate", "f"),
            ("slot bias |mean P(A) - 0.5|, single order", "slot_bias_raw_single", "f"),
            ("slot bias |mean p_first - 0.5|, averaged", "slot_bias_debiased_single", "f"),
            ("ECE (10 bins), single order", "ece_raw", "f"),
            ("ECE (10 bins), order-averaged", "ece_debiased", "f")]
    print(f"{'':46s} {'chat template':>22s} {'plain text':>22s}")
    for label, key, kind in rows:
        cells = [fmt_acc(figures[c][key], figures[c]["n"]) if kind == "acc" else f"{figures[c][key]:.3f}"
                 for c in (True, False)]
        print(f"{label:46s} {cells[0]:>22s} {cells[1]:>22s}")
    print(f"{'seconds to label (2 orders)':46s} {seconds_per[True]:>22.1f} {seconds_per[False]:>22.1f}")
    if a.skip_pm:
        print(f"\ntotal {time.perf_counter() - t_start:.0f}s")
        return

    # ---- part 2: PM on AI labels of policy samples vs PM on human pairs, same prompts, same budget ----
    pool = build_pyrit_human_set(max_pairs=None, seed=a.seed + 1).pairs
    train_h, test_h = split_by_prompt(pool, a.pm_train, a.pm_test, a.seed)
    assert not {p.prompt for p in train_h} & {p.prompt for p in test_h}
    t = time.perf_counter()
    train_prompts = [p.prompt for p in train_h]
    test_prompts = sorted({p.prompt for p in test_h})
    ai_first, ai_second = policy_pairs(labeler, train_prompts)
    ai_labels = labeler.compare(train_prompts, ai_first, ai_second)
    ev_first, ev_second = policy_pairs(labeler, test_prompts)
    ev_labels = labeler.compare(test_prompts, ev_first, ev_second)
    ai_seconds = time.perf_counter() - t
    del labeler  # free the engine before the PM ranks start

    def as_batch(prompts, firsts, seconds, ps):
        return {"prompt": list(prompts), "first": list(firsts), "second": list(seconds), "p_first": list(ps)}

    ai_train = as_batch(train_prompts, ai_first, ai_second, [lab["p_first"] for lab in ai_labels])
    human_train = as_batch(*comparison_inputs(train_h))
    human_test = as_batch(*comparison_inputs(test_h))
    ai_test = as_batch(test_prompts, ev_first, ev_second, [lab["p_first"] for lab in ev_labels])

    from rlaif.run.session import init_ray, shutdown_ray

    init_ray(cfg, ())
    try:
        res = train_and_eval_pms(cfg, {"pm-ai": (ai_train, {"human_test": human_test, "ai_test": ai_test}),
                                       "pm-human": (human_train, {"human_test": human_test})})
    finally:
        shutdown_ray()
    pm_ai, pm_h = res["pm-ai"], res["pm-human"]

    p_ai = [lab["p_first"] for lab in ai_labels]
    print(f"\n== Preference model: SmolLM2-135M + scalar head, ZeRO-2, 1 rank; {a.epochs} epochs, lr {a.lr}, "
          f"batch 8, 128 tokens; {len(train_h)} training pairs on {len(set(train_prompts))} prompts; "
          f"{len(test_h)} held-out human test pairs on {len(test_prompts)} other prompts ==")
    print(f"AI training labels: mean p_first {sum(p_ai) / len(p_ai):.3f}, mean |p - 0.5| "
          f"{sum(abs(p - 0.5) for p in p_ai) / len(p_ai):.3f}, position consistency "
          f"{sum(bool(lab['consistent']) for lab in ai_labels) / len(ai_labels):.3f} (sampling + labelling "
          f"{ai_seconds:.0f}s)")
    for name, res in (("PM-AI (SmolLM2 labels)", pm_ai), ("PM-human (pyrit labels)", pm_h)):
        h = res["human_test"]
        line = (f"{name:26s} human test: accuracy {fmt_acc(h['accuracy'], h['n'])}, ECE {h['ece']:.3f}; "
                f"train loss {res['loss_first']:.3f} -> {res['loss_last']:.3f} in {res['train_seconds']:.0f}s")
        if "ai_test" in res:
            line += (f"\n{'':26s} AI-labelled test pairs (own label source): accuracy "
                     f"{fmt_acc(res['ai_test']['accuracy'], res['ai_test']['n'])}, ECE {res['ai_test']['ece']:.3f}")
        print(line)
    print(f"both PMs, trained side by side (one thread each) and scored: {pm_ai['seconds']:.0f}s")
    print(f"\ntotal {time.perf_counter() - t_start:.0f}s; load average at the end {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
