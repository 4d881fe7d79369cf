"""Faithfulness curves (method.md 2.7): how large a share of the edges must be kept for the model to keep its behaviour.

For a kept set K (every other edge patched to its baseline), `f(K) = (L_none - L_K) / (L_none - L_clean)` with the
losses averaged over samples before the ratio. The edges are ranked by mean |W| on one half of the questions and `f` is
evaluated on the other half (then the halves swap and the two curves are averaged), so a ranking is never judged on
the samples it was fitted to. `frac80` is the smallest kept fraction where the curve reaches 0.8, interpolated
linearly in log fraction: a more distributed circuit has a larger frac80.

Cost: one patched forward (`patched_losses`) per grid point and batch, plus two (all kept, none kept).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats

from ..stats import expanded_level
from .graph import Graph
from .patching import patched_losses

LEVEL = 0.8


def log_grid(n_points: int = 13, lowest: float = 1e-3) -> np.ndarray:
    """Kept fractions from `lowest` to 1, evenly spaced in log (13 points: 4 per decade)."""
    if n_points < 2 or not 0 < lowest < 1:
        raise ValueError(f"a log grid needs >= 2 points and 0 < lowest < 1; got {n_points}, {lowest}")
    return np.logspace(math.log10(lowest), 0, n_points)


def top_edges(ranking: torch.Tensor, mask: torch.Tensor, fraction: float) -> torch.Tensor:
    """The kept set [n_src, n_dst] (bool): the ceil(fraction * E) real edges with the largest `ranking` (ties: first
    in row-major order)."""
    values = ranking[mask]
    k = min(len(values), max(1, math.ceil(fraction * len(values) - 1e-9)))
    order = torch.sort(-values, stable=True).indices[:k]
    chosen = torch.zeros(len(values), dtype=torch.bool)
    chosen[order] = True
    keep = torch.zeros_like(mask)
    keep[mask] = chosen
    return keep


def halves(n: int, seed: int = 0) -> np.ndarray:
    """Each sample's half (0 or 1), balanced, in a fixed random order."""
    if n < 4:
        raise ValueError(f"faithfulness needs at least 4 samples (two per half, ranked on the other); got {n}")
    half = np.arange(n) % 2
    return np.random.default_rng(seed).permutation(half)


def held_out_losses(model, input_ids, loss_mask, attention_mask, W, graph: Graph, fractions, half, batch_size=8,
                    **patch) -> dict:
    """Per-sample losses for the curve: clean [n], none [n] (every edge removed), kept [n_frac, n] where sample k keeps
    the top edges by mean |W| over the samples of the other half.

    input_ids, loss_mask, attention_mask: [n, seq] (any padding); W: [n, n_src, n_dst] scores of the same samples;
    half: [n] in {0, 1}; patch: baseline, baseline_acts, target, tau for `patched_losses`.
    """
    W = torch.as_tensor(W).abs()
    half = np.asarray(half)
    n = len(half)
    out = {"clean": np.zeros(n), "none": np.zeros(n), "kept": np.zeros((len(fractions), n))}

    def run(rows, keep):
        rows = np.flatnonzero(rows)
        losses = [patched_losses(model, input_ids[r], loss_mask[r], attention_mask[r], graph=graph, keep=keep, **patch)
                  for r in (rows[i : i + batch_size] for i in range(0, len(rows), batch_size))]
        return rows, torch.cat(losses).double().numpy()

    for name, keep in (("clean", None), ("none", torch.zeros_like(graph.mask))):
        rows, losses = run(np.ones(n, bool), keep)
        out[name][rows] = losses
    for h in (0, 1):
        ranking = W[torch.as_tensor(half != h)].mean(0)
        for i, q in enumerate(fractions):
            rows, losses = run(half == h, top_edges(ranking, graph.mask, q))
            out["kept"][i, rows] = losses
    return out


def curve(losses: dict, half, rows=None) -> np.ndarray:
    """f on the grid [n_frac]: each half's f (its own clean/none/kept means), averaged over the two halves."""
    half = np.asarray(half)
    rows = np.arange(len(half)) if rows is None else np.asarray(rows)
    fs = []
    for h in (0, 1):
        r = rows[half[rows] == h]
        none, clean = losses["none"][r].mean(), losses["clean"][r].mean()
        fs.append((none - losses["kept"][:, r].mean(1)) / (none - clean))
    return np.mean(fs, 0)


def frac80(fractions, f, level: float = LEVEL) -> float:
    """The smallest kept fraction where `f` reaches `level`, linear in log fraction between grid points (nan: never)."""
    fractions, f = np.asarray(fractions, float), np.asarray(f, float)
    above = np.flatnonzero(f >= level)
    if len(above) == 0:
        return float("nan")
    i = above[0]
    if i == 0:
        return float(fractions[0])
    t = (level - f[i - 1]) / (f[i] - f[i - 1])
    return float(np.exp(np.log(fractions[i - 1]) + t * (np.log(fractions[i]) - np.log(fractions[i - 1]))))


def summarize(fractions, stages: dict[str, dict], half, level=0.95, n_resamples=2000, seed=0) -> dict:
    """Curves, frac80 per stage and each later stage minus the first, with percentile bootstrap intervals over the
    evaluation questions (resampled within each half; the same resample for every stage, so differences are paired).

    Each half is a stratum of n/2 questions, so the bootstrap runs at Hesterberg's expanded level for n/2
    (rlsft.stats.expanded_level): at the nominal level it covered 83-90% at n = 8 and 88-95% at n = 16; expanded,
    93-98% at n = 8, 16 and 30 (200 simulated data sets each, tests/test_eap_faithfulness.py).

    stages: name -> `held_out_losses` output, all on the same questions. Returns {stage: {curve, curve_lo, curve_hi,
    frac80, frac80_lo, frac80_hi}, f"{b}-{a}": {frac80, frac80_lo, frac80_hi}}.
    """
    half = np.asarray(half)
    names = list(stages)
    k = len(fractions)

    def statistic(rows0, rows1):
        rows = np.concatenate([rows0, rows1])
        cs = [curve(stages[s], half, rows) for s in names]
        f80 = [frac80(fractions, c) for c in cs]
        return np.concatenate([np.concatenate([c, [f]]) for c, f in zip(cs, f80)] + [[f - f80[0] for f in f80[1:]]])

    point = statistic(np.flatnonzero(half == 0), np.flatnonzero(half == 1))
    res = stats.bootstrap((np.flatnonzero(half == 0), np.flatnonzero(half == 1)), statistic, paired=False,
                          vectorized=False, n_resamples=n_resamples, confidence_level=expanded_level(level, len(half) // 2),
                          method="percentile", rng=np.random.default_rng(seed))
    lo, hi = res.confidence_interval.low, res.confidence_interval.high
    out = {}
    for j, s in enumerate(names):
        sl = slice(j * (k + 1), j * (k + 1) + k)
        f = j * (k + 1) + k
        out[s] = dict(curve=point[sl], curve_lo=lo[sl], curve_hi=hi[sl], frac80=point[f], frac80_lo=lo[f],
                      frac80_hi=hi[f])
    for j, s in enumerate(names[1:]):
        d = len(names) * (k + 1) + j
        out[f"{s}-{names[0]}"] = dict(frac80=point[d], frac80_lo=lo[d], frac80_hi=hi[d])
    return out
