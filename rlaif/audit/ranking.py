"""Checkpoints ranked against each other, as the Constitutional AI paper's Elo figures do. No Ray here.

Every two checkpoints are compared on the same prompts by the judge (P(first better), both orders averaged). The Elo
scores are the Bradley-Terry maximum-likelihood strengths fitted to those soft outcomes, in Elo points
(400 * log10 of the odds), the baseline at 0. Each pair of checkpoints also gets one virtual tie (weight 1), a weak
prior that keeps the scores finite when one checkpoint wins every prompt: for two checkpoints where A's mean
P(win) over n prompts is w, A's score is 400 * log10(q / (1 - q)) with q = (n * w + 0.5) / (n + 1).
Intervals: a percentile bootstrap over prompts (the same resampled prompts for every pair), refitted each time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

ELO_SCALE = 400.0 / math.log(10.0)  # Elo points per natural-log odds unit


def bradley_terry(labels: Sequence[str], wins: dict[tuple[str, str], tuple[float, float]], anchor: str,
                  iterations: int = 200) -> dict[str, float]:
    """Elo scores from soft outcomes. wins: (a, b) -> (summed P(a better), comparisons); each pair also gets one
    virtual tie. Newton steps on the log-likelihood (concave; the anchor's score is fixed at 0)."""
    import numpy as np

    idx = {lab: k for k, lab in enumerate(labels)}
    m = len(labels)
    w = np.zeros((m, m))  # w[a, b]: (soft) wins of a over b, virtual tie included
    n = np.zeros((m, m))
    for (a, b), (s, cnt) in wins.items():
        i, j = idx[a], idx[b]
        w[i, j] += s + 0.5
        w[j, i] += cnt - s + 0.5
        n[i, j] += cnt + 1
        n[j, i] += cnt + 1
    free = [k for k in range(m) if k != idx[anchor]]
    theta = np.zeros(m)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(theta[None, :] - theta[:, None]))  # p[i, j] = P(i beats j)
        grad = (w - n * p).sum(axis=1)
        h = n * p * (1 - p)
        hess = -np.diag(h.sum(axis=1)) + h
        g, hm = grad[free], hess[np.ix_(free, free)]
        if not free:
            break
        step = np.linalg.solve(hm, g)
        theta[free] -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return {lab: float(theta[idx[lab]] * ELO_SCALE) for lab in labels}


def elo_table(labels: Sequence[str], outcomes: dict[tuple[str, str], Sequence[float]], anchor: str,
              n_resamples: int = 1000, seed: int = 0) -> dict[str, dict]:
    """label -> {value, n, low, high, method}: Elo points against `anchor` (0) with a 95% bootstrap interval over
    prompts. outcomes: (a, b) -> P(a better) per prompt, the same prompts (in the same order) for every pair."""
    import numpy as np

    if not outcomes:
        return {}
    n = len(next(iter(outcomes.values())))
    if n == 0 or any(len(v) != n for v in outcomes.values()):
        raise ValueError("elo_table: every pair needs the same, non-empty list of prompts")
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in outcomes.items()}
    point = bradley_terry(labels, {k: (float(v.sum()), n) for k, v in arrays.items()}, anchor)
    rng = np.random.default_rng(seed)
    samples = {lab: [] for lab in labels}
    for _ in range(n_resamples):
        pick = rng.integers(0, n, size=n)
        fit = bradley_terry(labels, {k: (float(v[pick].sum()), n) for k, v in arrays.items()}, anchor)
        for lab in labels:
            samples[lab].append(fit[lab])
    out = {}
    for lab in labels:
        low, high = np.quantile(samples[lab], [0.025, 0.975])
        out[lab] = {"value": point[lab], "n": n, "low": float(low), "high": float(high), "method": "bootstrap"}
    return out
