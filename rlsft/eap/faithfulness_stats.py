"""Summaries of faithfulness curves and their intervals (method.md 2.7).

Per curve: `faith_auc` (area under f clipped to [-1, 1] over kept share in [0, 1], f(0) = 0), `frac80` (smallest share
where the running maximum of f reaches 0.8, linear between evaluated shares; nan if never) and f at a few shares.

Intervals must include the split and the ranking: a bootstrap over questions with the splits and rankings held fixed
misses both (on the embedded pair, changing only the halves seed moved frac80 by half the arms' spread). So each
cross-fitted summary's variance is the bootstrap variance (questions redrawn, paired across stages) plus the
variance of the single-split summaries across the S splits (the ranking of another half of the questions: the
second acceptable way of method.md 2.7), and the interval is normal with that standard error. Its coverage is
checked by a simulation that redraws the questions and re-ranks (tests/test_eap_faithfulness.py).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from .faithfulness import LEVEL

AT = (0.05, 0.1, 0.2, 0.5)  # kept shares whose f is tabulated
CROSS = ("faith_auc", "faith_auc_minus_control", "frac80") + tuple(f"f_{q:g}" for q in AT)
OTHER = ("control_auc", "control_frac80", "within_auc", "within_frac80")
# Point values, no interval and no test: on a plasmode of the embedded pair (138 real questions' W_k, resampled;
# benchmarks/coverage_eap_intervals.py --faithfulness) their intervals covered 0.81-0.89 at n = 30 for the RL stage
# (control_auc 0.81, within_auc 0.87, within_frac80 0.84, its RL - SFT 0.89): a ratio of question means with no
# split to average over, from heavy-tailed per-question mass. Every cross-fitted summary covered 0.93-1.00.
POINT_VALUES = ("control_auc", "control_frac80", "within_auc", "within_frac80")


def curve_summaries(shares, F, level: float = LEVEL) -> dict:
    """faith_auc, frac80 and f at AT of curves F [..., X] on `shares` [X] (increasing, in (0, 1])."""
    F = np.asarray(F, float)
    x = np.concatenate([[0.0], shares])
    f = np.concatenate([np.zeros(F.shape[:-1] + (1,)), F], -1)
    out = {"auc": np.trapezoid(np.clip(f, -1, 1), x, axis=-1)}
    env = np.maximum.accumulate(f, -1)
    reached = env >= level
    i = np.argmax(reached, -1)  # first evaluated share where the envelope reaches the level (0: never, f(0) = 0)
    j = np.maximum(i - 1, 0)
    lo, hi = np.take_along_axis(env, j[..., None], -1)[..., 0], np.take_along_axis(env, i[..., None], -1)[..., 0]
    t = np.where(hi > lo, (level - lo) / np.where(hi > lo, hi - lo, 1), 1.0)
    out["frac80"] = np.where(reached.any(-1), x[j] + t * (x[i] - x[j]), np.nan)
    for q in AT:  # np.interp along the last axis of every curve at once
        k = min(int(np.searchsorted(x, q, "right")) - 1, len(x) - 2)
        w = (q - x[k]) / (x[k + 1] - x[k])
        out[f"f_{q:g}"] = (1 - w) * f[..., k] + w * f[..., k + 1]
    return out


def _curves(res: dict, rows: np.ndarray) -> dict:
    """The curves for resampled questions `rows` [B, n]: cross per split [S, B, X], control and within [B, X]."""
    none, clean = res["none"][rows].mean(-1), res["clean"][rows].mean(-1)  # [B]
    scale = (none - clean)[:, None]

    def f(losses):  # [..., X, n] -> [..., B, X]
        kept = np.moveaxis(losses[..., rows].mean(-1), -1, -2)
        return (none[:, None] - kept) / scale

    return {"cross": f(res["cross"]), "control": f(res["control"]), "within": f(res["within"])}


def _stats(res: dict, rows: np.ndarray) -> tuple[dict, dict]:
    """Every summary for `rows` [B, n] ([B] each), and the cross-fitted ones per split ([S, B] each)."""
    c = _curves(res, rows)
    x = res["shares"]
    mean, per_split = curve_summaries(x, c["cross"].mean(0)), curve_summaries(x, c["cross"])
    control, within = curve_summaries(x, c["control"]), curve_summaries(x, c["within"])
    out = {"faith_auc": mean["auc"], "faith_auc_minus_control": mean["auc"] - control["auc"], "frac80": mean["frac80"],
           "control_auc": control["auc"], "control_frac80": control["frac80"], "within_auc": within["auc"],
           "within_frac80": within["frac80"]} | {f"f_{q:g}": mean[f"f_{q:g}"] for q in AT}
    split = {"faith_auc": per_split["auc"], "faith_auc_minus_control": per_split["auc"] - control["auc"][None],
             "frac80": per_split["frac80"]} | {f"f_{q:g}": per_split[f"f_{q:g}"] for q in AT}
    return out, split


def _interval(point: float, boot: np.ndarray, between, n: int, level: float):
    """Interval (t with n-1 df) from the bootstrap variance plus the between-split variance, and the p-value for 0.
    nan when the point is nan or the summary is undefined (nan) in more than a tenth of the resamples."""
    finite = boot[np.isfinite(boot)]
    if not np.isfinite(point) or len(finite) < 0.9 * len(boot):  # e.g. frac80 never reached in many resamples
        return [float("nan")] * 2, float("nan")
    # n / (n - 1): the bootstrap's plug-in variance is too small at small n (Hesterberg 2015, stats.expanded_level);
    # without it frac80 and f_0.2 of one stage covered 0.80-0.82 at n = 12 in the ranking-redrawn simulation.
    var = finite.var(ddof=1) * n / (n - 1)
    if between is not None and np.isfinite(between).sum() > 1:
        var += np.nanvar(between, ddof=1)
    se, q = float(np.sqrt(var)), stats.t.ppf(0.5 + level / 2, n - 1)
    p = float(2 * stats.t.sf(abs(point) / se, n - 1)) if se > 0 else float("nan")
    return [point - q * se, point + q * se], p


def summarize(stages: dict[str, dict], level: float = 0.95, n_boot: int = 2000, seed: int = 0,
              withhold: bool = True) -> dict:
    """Curves, summaries with intervals per stage, and each later stage minus the first with interval and p-value.

    stages: name -> `faithfulness_losses` output, on the same questions (paired). Returns {stage: {shares, curve,
    curve_lo, curve_hi, control, within, <summary>: value, <summary>_ci: (lo, hi)}, f"{b}-{a}": {<summary>:
    {"diff", "ci", "p"}}}. The POINT_VALUES get (nan, nan) and p nan unless `withhold` is False (the coverage
    benchmark scores the intervals they would have had).
    """
    names = list(stages)
    n = len(stages[names[0]]["none"])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    point = {s: _stats(stages[s], np.arange(n)[None]) for s in names}
    boot = {s: [_stats(stages[s], idx[i : i + 200]) for i in range(0, n_boot, 200)] for s in names}
    boot = {s: {k: np.concatenate([b[0][k] for b in bs]) for k in point[s][0]} for s, bs in boot.items()}
    q = stats.t.ppf(0.5 + level / 2, n - 1)

    out = {}
    for s in names:
        res, (pt, split) = stages[s], point[s]
        curves = _curves(res, np.arange(n)[None])
        cross_b = _curves(res, idx[:500])["cross"].mean(0)  # [B, X]: the band (bootstrap + between-split)
        se = np.sqrt(cross_b.var(0, ddof=1) + curves["cross"][:, 0].var(0, ddof=1))
        cross = curves["cross"].mean(0)[0]
        row = dict(shares=res["shares"].tolist(), curve=cross.tolist(), curve_lo=(cross - q * se).tolist(),
                   curve_hi=(cross + q * se).tolist(), control=curves["control"][0].tolist(),
                   within=curves["within"][0].tolist(), n_splits=int(res["cross"].shape[0]))
        for k in pt:
            row[k] = float(pt[k][0])
            row[f"{k}_ci"] = [float("nan")] * 2 if withhold and k in POINT_VALUES else \
                _interval(row[k], boot[s][k], split[k][:, 0] if k in split else None, n, level)[0]
        out[s] = row
    for s in names[1:]:
        a, b = names[0], s
        diff = {}
        for k in point[a][0]:
            between = point[b][1][k][:, 0] - point[a][1][k][:, 0] if k in point[a][1] else None
            d = float(point[b][0][k][0] - point[a][0][k][0])
            ci, p = ([float("nan")] * 2, float("nan")) if withhold and k in POINT_VALUES else \
                _interval(d, boot[b][k] - boot[a][k], between, n, level)
            diff[k] = {"diff": d, "ci": ci, "p": p}
        out[f"{b}-{a}"] = diff
    return out
