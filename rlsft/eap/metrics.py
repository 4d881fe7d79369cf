"""Circuit metrics over per-sample EAP matrices (method.md 2.5 and 2.6), on real edges only.

Every public function takes `W` [n, n_src, n_dst] (torch or numpy) and the graph's boolean `mask` [n_src, n_dst];
entries off the mask are not edges and never enter a statistic. Internally a model's scores are `X` [n, E] in fp64.

`METRICS` is the one list of metrics: name -> per-sample statistic s_k of one sample's edge vector (method.md 2.6).
A stage is summarised by mean_k s_k and RL - SFT by the mean of the paired differences (same question), each with a
BCa bootstrap interval over questions (`compare`). Tables, console, figures, W&B keys and the report iterate it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy import stats

from ..stats import bootstrap_ci, bootstrap_p


def edge_values(W, mask) -> np.ndarray:
    """The real edges of each sample: [n, E] float64 (a single matrix [n_src, n_dst] counts as n = 1)."""
    W = W.detach().cpu().numpy() if torch.is_tensor(W) else np.asarray(W)
    mask = mask.detach().cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
    mask = mask.astype(bool)
    if W.ndim == 2:
        W = W[None]
    if W.ndim != 3 or W.shape[1:] != mask.shape:
        raise ValueError(f"W must be [n, {mask.shape[0]}, {mask.shape[1]}] to match the mask; got {W.shape}")
    return W[:, mask].astype(np.float64)


# ------------------------------------------------------------------------------ per-sample statistics [n, E] -> [n]
def _intensity(X):
    return np.abs(X).mean(1)


def _complexity(X, bins: int = 100):
    """Entropy (nats) of the histogram of |X_k| / max|X_k| on `bins` equal bins over [0, 1], per sample."""
    A = np.abs(X)
    top = A.max(1, keepdims=True)
    A = np.divide(A, top, out=np.zeros_like(A), where=top > 0)  # an all-zero sample: one occupied bin, entropy 0
    out = np.empty(len(A))
    for k, row in enumerate(A):
        p = np.histogram(row, bins=bins, range=(0.0, 1.0))[0] / row.size
        p = p[p > 0]
        out[k] = -(p * np.log(p)).sum()
    return out


def _kurtosis(X):
    """Fisher (excess) kurtosis of the signed edge values, biased moments (scipy.stats.kurtosis's default).

    nan for a constant sample (0/0); `compare` leaves such questions out. With heavy-tailed edges kurtosis_k is itself
    extremely skewed (t3 edges, E = 400: skewness 5.4 across samples, mean 17 vs median 8), so no interval of its mean
    over 8-30 questions covers (BCa 60-83%, t 60-88%: benchmarks/coverage_eap_intervals.py). It is reported as a
    point value; `l_kurtosis` is the tail-weight statistic with an interval.
    """
    d = X - X.mean(1, keepdims=True)
    m2, m4 = (d**2).mean(1), (d**4).mean(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return m4 / m2**2 - 3.0


def _l_kurtosis(X):
    """L-kurtosis tau_4 = lambda_4 / lambda_2 of the signed edge values (Hosking 1990), per sample.

    The robust counterpart of kurtosis: a ratio of L-moments (linear in the order statistics), defined whenever the
    mean is, bounded in [-1/4, 1), 0.123 for a normal, 0.236 for a Laplace, larger for heavier tails; scale-free. Across
    samples it is nearly symmetric (skewness ~1 where kurtosis_k has 5), so its interval covers at n = 8. nan for a
    constant sample. scipy.stats.lmoment does the work (unbiased sample L-moments).
    """
    l2, l4 = stats.lmoment(X, order=[2, 4], axis=1, standardize=False)
    flat = l2 <= 1e-12 * np.abs(X).max(1)  # all values equal (up to rounding): 0/0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(flat, np.nan, l4 / np.where(flat, 1.0, l2))


def _shares(X):
    """p_k[e] = |X_k[e]| / sum_e |X_k[e]|; an all-zero sample counts as all edges equal (the limit of equal values)."""
    A = np.abs(X)
    total = A.sum(1, keepdims=True)
    return np.where(total > 0, A / np.where(total > 0, total, 1.0), 1.0 / A.shape[1])


def _effective_edges(X):
    p = _shares(X)
    H = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(1)
    return np.exp(H) / X.shape[1]


def _top_mass(X, share: float = 0.01):
    p = _shares(X)
    top = math.ceil(share * X.shape[1])
    return np.sort(p, axis=1)[:, -top:].sum(1)


def _gini(X):
    p = np.sort(_shares(X), axis=1)  # |X| scaled to sum 1: the Gini coefficient does not see the scale
    E = X.shape[1]
    i = np.arange(1, E + 1)
    return 2 * (p * i).sum(1) / (E * p.sum(1)) - (E + 1) / E


@dataclass(frozen=True)
class Metric:
    fn: Callable[[np.ndarray], np.ndarray]  # X [n, E] -> s [n]
    scale_free: bool  # unchanged when W_k is multiplied by any positive constant
    paper: bool  # one of the paper's Table 1 metrics (method.md 2.5), here per sample
    label: str
    interval: bool = True  # False: no interval of the stage mean covers (checked by simulation); point value only


# Order = display order: the scale-free shape metrics first, then the paper's three.
METRICS: dict[str, Metric] = {
    "effective_edges": Metric(_effective_edges, True, False, "effective share of edges, exp(H(p_k))/E"),
    "top_mass": Metric(_top_mass, True, False, "share of sum|W_k| in the top 1% of edges"),
    "gini": Metric(_gini, True, False, "Gini coefficient of |W_k|"),
    "l_kurtosis": Metric(_l_kurtosis, True, False, "L-kurtosis of W_k (robust tail weight)"),
    "activation_intensity": Metric(_intensity, False, True, "mean |W_k| (scales with the loss)"),
    "information_complexity": Metric(_complexity, True, True, "entropy of hist(|W_k|/max|W_k|), 100 bins, nats"),
    "distribution_kurtosis": Metric(_kurtosis, True, True, "excess kurtosis of W_k (no interval covers: see "
                                    "l_kurtosis)", interval=False),
}


def per_sample(W, mask, name: str) -> np.ndarray:
    """The registered metric `name` of each sample: [n]."""
    if name not in METRICS:
        raise ValueError(f"unknown EAP metric {name!r}; known: {', '.join(METRICS)}")
    return METRICS[name].fn(edge_values(W, mask))


def activation_intensity(W, mask) -> float:
    """mean_k mean_E |W_k|: how strongly edges carry the loss, on average (the paper's intensity)."""
    return float(per_sample(W, mask, "activation_intensity").mean())


def information_complexity(W, mask) -> float:
    """mean_k of the per-sample complexity (method.md 2.6): scale-free, and its range does not grow with n."""
    return float(per_sample(W, mask, "information_complexity").mean())


def distribution_kurtosis(W, mask) -> float:
    """mean_k of the Fisher (excess) kurtosis of sample k's signed edge values: heavy tails = few dominant edges."""
    return float(np.nanmean(per_sample(W, mask, "distribution_kurtosis")))


def information_complexity_pooled(W, mask, bins: int = 100, value_range=None, eps: float = 1e-12) -> float:
    """The paper's number (method.md 2.5): entropy of the histogram of |W_k[e]| pooled over samples, point value only.

    Its range [0, max|W|] (unless given) grows with n, so its expectation drifts with the number of samples and no
    bootstrap or jackknife interval is valid for it. Values outside a given range are left out of the histogram.
    """
    a = np.abs(edge_values(W, mask)).ravel()
    lo, hi = value_range if value_range is not None else (0.0, float(a.max()))
    if hi <= lo:  # every value equal: one occupied bin, entropy 0
        hi = lo + 1.0
    counts, _ = np.histogram(a, bins=bins, range=(lo, hi))
    p = counts / max(counts.sum(), 1)
    return float(-(p * np.log(p + eps)).sum())


def sample_diversity(W, mask) -> float:
    """1 - mean over pairs i<j of pearson(W_i, W_j): how differently samples use the circuit."""
    X = edge_values(W, mask)
    n = len(X)
    if n < 2:
        raise ValueError(f"sample_diversity needs at least 2 samples; got {n}")
    Z = X - X.mean(1, keepdims=True)
    Z = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    C = Z @ Z.T  # Pearson correlation of every pair of samples
    return float(1.0 - C[np.triu_indices(n, k=1)].mean())


def relative_change(W_sft, W_rl, mask, eps: float = 1e-12) -> np.ndarray:
    """Per edge (mean_k|W_rl| - mean_k|W_sft|) / (mean_k|W_sft| + eps), [n_src, n_dst] with NaN off the mask."""
    a, b = np.abs(edge_values(W_sft, mask)).mean(0), np.abs(edge_values(W_rl, mask)).mean(0)
    mask = np.asarray(mask.cpu() if torch.is_tensor(mask) else mask, dtype=bool)
    out = np.full(mask.shape, np.nan)
    out[mask] = (b - a) / (a + eps)
    return out


def output_edge_entropy(W, mask) -> np.ndarray:
    """Per source node u: entropy (nats) of p_uv = A[u,v] / sum_v A[u,v] over u's edges, A = mean_k |W|.

    High when u spreads its influence over many targets. NaN for a source whose edges are all zero.
    """
    mask = np.asarray(mask.cpu() if torch.is_tensor(mask) else mask, dtype=bool)
    A = np.zeros(mask.shape)
    A[mask] = np.abs(edge_values(W, mask)).mean(0)
    total = A.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = A / total
        terms = np.where(mask & (p > 0), -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    H = terms.sum(1)
    H[total[:, 0] == 0] = np.nan
    return H


# ---------------------------------------------------------------------------------------------------- comparisons
def compare_values(s_sft, s_rl, level: float = 0.95, n_resamples: int = 2000, seed: int = 0,
                   interval: bool = True) -> dict:
    """Stage means of paired per-sample values and RL - SFT = mean of d_k = s_rl[k] - s_sft[k], with BCa intervals.

    A question where either value is not finite (kurtosis of a constant sample) is left out of all three; "n" says
    how many were used. Resampling the d_k is the paired bootstrap of the difference of means. interval=False (a
    statistic no interval covers for): the intervals are (nan, nan).
    """
    s_sft, s_rl = np.asarray(s_sft, dtype=float), np.asarray(s_rl, dtype=float)
    if s_sft.shape != s_rl.shape:
        raise ValueError(f"paired values need the same questions; got {s_sft.shape} and {s_rl.shape}")
    keep = np.isfinite(s_sft) & np.isfinite(s_rl)
    a, b = s_sft[keep], s_rl[keep]
    boot = dict(level=level, n_boot=n_resamples, seed=seed)
    ci = (lambda v: bootstrap_ci(v, **boot)) if interval else (lambda v: (math.nan, math.nan))
    return {"sft": float(a.mean()) if a.size else math.nan, "rl": float(b.mean()) if b.size else math.nan,
            "diff": float((b - a).mean()) if a.size else math.nan,
            "sft_ci": ci(a), "rl_ci": ci(b), "diff_ci": ci(b - a),
            "n": int(keep.sum())}


def compare(W_sft, W_rl, mask, level: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Every registered metric for both stages: {name: {sft, rl, diff, sft_ci, rl_ci, diff_ci, n}}.

    W_sft and W_rl [n, n_src, n_dst] hold the same questions in the same order.
    """
    X_sft, X_rl = edge_values(W_sft, mask), edge_values(W_rl, mask)
    if X_sft.shape != X_rl.shape:
        raise ValueError(f"W_sft and W_rl must hold the same samples; got {X_sft.shape} and {X_rl.shape}")
    return {name: compare_values(m.fn(X_sft), m.fn(X_rl), level, n_resamples, seed, m.interval)
            for name, m in METRICS.items()}


def loss_adjusted(intensity_sft, intensity_rl, loss_sft, loss_rl, level: float = 0.95, n_resamples: int = 2000,
                  seed: int = 0) -> dict:
    """RL effect on log intensity at matched loss (method.md 2.6): c in log I_k = a + b log L_k + c [stage = RL].

    Least squares over both stages' samples; intervals for c and b from a paired BCa bootstrap over questions (both
    stages of a question move together), refitting each time. Questions with a non-positive intensity or loss (log
    undefined) are left out and counted. Returns {c, c_ci, c_p, b, b_ci, a, n, n_dropped}; c_p: bootstrap p of c = 0.
    """
    arrays = [np.asarray(v, dtype=float) for v in (intensity_sft, intensity_rl, loss_sft, loss_rl)]
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1:
        raise ValueError(f"loss_adjusted needs four [n] arrays of the same questions; got {[a.shape for a in arrays]}")
    keep = np.all([np.isfinite(a) & (a > 0) for a in arrays], axis=0)
    logs = [np.log(a[keep]) for a in arrays]
    n = int(keep.sum())
    if n < 3:
        raise ValueError(f"loss_adjusted needs at least 3 questions with positive intensity and loss; got {n}")

    def fit(i_sft, i_rl, l_sft, l_rl, axis=-1):
        """(a, b, c) by the normal equations, batched over leading axes (one fit per bootstrap resample)."""
        i_sft, i_rl, l_sft, l_rl = (np.moveaxis(v, axis, -1) for v in (i_sft, i_rl, l_sft, l_rl))
        m = i_sft.shape[-1]
        x, y = np.concatenate([l_sft, l_rl], -1), np.concatenate([i_sft, i_rl], -1)
        ones = np.ones_like(x[..., 0])
        G = np.stack([np.stack([2 * m * ones, x.sum(-1), m * ones], -1),
                      np.stack([x.sum(-1), (x * x).sum(-1), l_rl.sum(-1)], -1),
                      np.stack([m * ones, l_rl.sum(-1), m * ones], -1)], -2)  # X^T X [..., 3, 3]
        r = np.stack([y.sum(-1), (x * y).sum(-1), i_rl.sum(-1)], -1)  # X^T y [..., 3]
        return np.moveaxis(np.linalg.pinv(G) @ r[..., None], -2, 0)[..., 0]  # pinv: all losses equal still fits

    a, b, c = fit(*logs)
    boot = dict(level=level, n_boot=n_resamples, seed=seed, vectorized=True)
    c_of = lambda *x, axis=-1: fit(*x, axis=axis)[2]  # noqa: E731 - the statistic both bootstraps resample
    return {"c": float(c), "c_ci": bootstrap_ci(*logs, stat=c_of, **boot),
            "c_p": bootstrap_p(*logs, stat=c_of, n_boot=n_resamples, seed=seed),
            "b": float(b), "b_ci": bootstrap_ci(*logs, stat=lambda *x, axis=-1: fit(*x, axis=axis)[1], **boot),
            "a": float(a), "n": n, "n_dropped": int((~keep).sum())}
