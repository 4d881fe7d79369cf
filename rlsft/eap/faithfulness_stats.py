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

import math

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


def _boot_stats(res: dict, idx: np.ndarray) -> tuple[dict, dict, dict]:
    """(point summaries, per-split summaries, bootstrap summaries [B]) of one stage's losses; idx [B, n]."""
    n = len(res["none"])
    point, split = _stats(res, np.arange(n)[None])
    chunks = [_stats(res, idx[i : i + 200])[0] for i in range(0, len(idx), 200)]
    return point, split, {k: np.concatenate([c[k] for c in chunks]) for k in point}


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
    stats_of = {s: _boot_stats(stages[s], idx) for s in names}
    point = {s: stats_of[s][:2] for s in names}
    boot = {s: stats_of[s][2] for s in names}
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


def seed_differences(reference: dict, seeds: list[dict], level: float = 0.95, n_boot: int = 2000,
                     seed: int = 0) -> dict:
    """Each cross-fitted summary (CROSS) of an arm trained on several seeds minus the reference's, as one mean over
    the seeds, with an interval over seeds and questions (method.md 8: never from one seed; 2.7: the split inside).

    ``reference`` and every entry of ``seeds``: ``faithfulness_losses`` outputs on the same questions with the same
    splits. The variance has the two parts of rlsft.hierarchical: ``v_q``, questions redrawn with every seed kept
    (one draw for the reference and every seed: paired) plus the variance of the seed-mean difference across the
    splits, as each stage's interval has it (summarize); and ``v_s``, what redrawing the seeds adds, from the same
    crossed resamples (S / (S - 1) for the plug-in). Student t with Satterthwaite's df, as seed_question_interval.
    With one seed it is summarize's interval of that seed minus the reference (the same question draws).
    Why not seed_question_interval itself: a summary of a curve is not a mean of per-question values, so each
    resample recomputes the curves (and the split part has no per-question form)."""
    from ..hierarchical import SeedInterval, two_part_interval

    n, S = len(reference["none"]), len(seeds)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))  # first, as summarize draws it: one seed gives its interval
    weights = rng.multinomial(S, np.full(S, 1 / S), size=n_boot) / S  # [B, S]: seeds redrawn
    ref_point, ref_split, ref_boot = _boot_stats(reference, idx)
    per_seed = [_boot_stats(res, idx) for res in seeds]
    out = {}
    for k in CROSS:
        d = np.array([float(p[k][0] - ref_point[k][0]) for p, _, _ in per_seed])  # [S]
        boot = np.stack([b[k] - ref_boot[k] for _, _, b in per_seed])  # [S, B]
        between = np.mean([sp[k][:, 0] - ref_split[k][:, 0] for _, sp, _ in per_seed], axis=0)  # [splits]
        diff = float(d.mean())
        ok = np.isfinite(boot).all(axis=0)
        if not np.isfinite(diff) or ok.sum() < 0.9 * n_boot:  # e.g. frac80 never reached in many resamples
            out[k] = SeedInterval(diff, math.nan, math.nan, math.nan, S, n, math.nan, math.nan, math.nan)
            continue
        questions_only = boot[:, ok].mean(axis=0)
        full = np.einsum("bs,sb->b", weights[ok], boot[:, ok])
        v_q = float(questions_only.var(ddof=1)) * n / (n - 1)
        if np.isfinite(between).sum() > 1:
            v_q += float(np.nanvar(between, ddof=1))
        v_s = max(float(full.var(ddof=1)) - float(questions_only.var(ddof=1)), 0.0) * S / (S - 1) if S > 1 else 0.0
        out[k] = two_part_interval(diff, v_s, v_q, S, n, level)
    return out
