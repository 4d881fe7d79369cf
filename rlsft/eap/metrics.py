"""Circuit metrics over per-sample EAP matrices (method.md 2.5), on real edges only.

Every function takes `W` [n, n_src, n_dst] (torch or numpy) and the graph's boolean `mask` [n_src, n_dst]; entries off
the mask are not edges and never enter a statistic. Internally a model's scores are an edge array `X` [n, E] in fp64.
"""

import numpy as np
import torch


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


def _intensity(X):
    return float(np.abs(X).mean())


def _complexity(X, bins=100, value_range=None, eps=1e-12):
    a = np.abs(X).ravel()
    lo, hi = value_range if value_range is not None else (0.0, float(a.max()))
    if hi <= lo:  # every value equal: one occupied bin, entropy 0
        hi = lo + 1.0
    counts, _ = np.histogram(a, bins=bins, range=(lo, hi))
    p = counts / max(counts.sum(), 1)
    return float(-(p * np.log(p + eps)).sum())


def _kurtosis(X):
    d = X - X.mean(1, keepdims=True)
    m2, m4 = (d**2).mean(1), (d**4).mean(1)
    return float(np.mean(m4 / m2**2 - 3.0))  # Fisher (excess), biased moments as scipy.stats.kurtosis's default


def _diversity(X):
    n = len(X)
    if n < 2:
        raise ValueError(f"sample_diversity needs at least 2 samples; got {n}")
    Z = X - X.mean(1, keepdims=True)
    Z = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    C = Z @ Z.T  # Pearson correlation of every pair of samples
    return float(1.0 - C[np.triu_indices(n, k=1)].mean())


def activation_intensity(W, mask) -> float:
    """mean_k mean_E |W_k|: how strongly edges carry the loss, on average."""
    return _intensity(edge_values(W, mask))


def information_complexity(W, mask, bins: int = 100, value_range=None, eps: float = 1e-12) -> float:
    """Entropy (nats) of the histogram of |W_k[e]| pooled over samples; range [0, max|W|] unless given.

    The number depends on the range: compare two models on a shared range (`value_range`) or say which was used.
    Values outside a given range are left out of the histogram.
    """
    return _complexity(edge_values(W, mask), bins, value_range, eps)


def distribution_kurtosis(W, mask) -> float:
    """mean_k of the Fisher (excess) kurtosis of sample k's signed edge values: heavy tails = few dominant edges."""
    return _kurtosis(edge_values(W, mask))


def sample_diversity(W, mask) -> float:
    """1 - mean over pairs i<j of pearson(W_i, W_j): how differently samples use the circuit."""
    return _diversity(edge_values(W, mask))


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


def bootstrap_ci(fn, *arrays, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of `fn(*arrays)` resampling samples (axis 0) with replacement.

    Arrays are resampled with the same indices, so `fn(sft, rl) = metric(rl) - metric(sft)` gives a paired CI.
    Note for sample_diversity: a resample repeats samples, and a repeated pair has correlation 1, which biases the
    resampled diversity down by about (1 - mean r)/n; differences between models mostly cancel it.
    """
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        sizes = [len(a) for a in arrays]
        raise ValueError(f"bootstrap_ci needs the same number of samples in every array; got {sizes}")
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, n, n)
        stats[i] = fn(*(a[idx] for a in arrays))
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(stats, [tail, 100 - tail])
    return float(lo), float(hi)


def summarize(W_sft, W_rl, mask, bins: int = 100, shared_range: bool = False, eps: float = 1e-12,
              n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """The paper's three metrics for both models: value, RL - SFT, and bootstrap CIs (paired for the difference).

    W_sft and W_rl hold the same samples in the same order. Information complexity uses [0, max|W|] per model, or
    [0, max over both models] with `shared_range=True`; the ranges used are returned under "complexity_range".
    Returns {metric: {sft, rl, diff, sft_ci, rl_ci, diff_ci}, "complexity_range": {...}, "n_samples", "n_edges"}.
    """
    X_sft, X_rl = edge_values(W_sft, mask), edge_values(W_rl, mask)
    if X_sft.shape != X_rl.shape:
        raise ValueError(f"W_sft and W_rl must hold the same samples; got {X_sft.shape} and {X_rl.shape}")
    top_sft, top_rl = float(np.abs(X_sft).max()), float(np.abs(X_rl).max())
    if shared_range:
        r_sft = r_rl = (0.0, max(top_sft, top_rl))
    else:
        r_sft, r_rl = (0.0, top_sft), (0.0, top_rl)
    # The range is fixed at the full-data value so a resample changes the samples, not the bins.
    metrics = {
        "activation_intensity": (_intensity, _intensity),
        "information_complexity": (
            lambda X: _complexity(X, bins, r_sft, eps),
            lambda X: _complexity(X, bins, r_rl, eps),
        ),
        "distribution_kurtosis": (_kurtosis, _kurtosis),
    }
    boot = dict(n_boot=n_boot, seed=seed, level=level)
    out = {}
    for name, (f_sft, f_rl) in metrics.items():
        sft, rl = f_sft(X_sft), f_rl(X_rl)
        out[name] = {
            "sft": sft,
            "rl": rl,
            "diff": rl - sft,
            "sft_ci": bootstrap_ci(f_sft, X_sft, **boot),
            "rl_ci": bootstrap_ci(f_rl, X_rl, **boot),
            "diff_ci": bootstrap_ci(lambda a, b: f_rl(b) - f_sft(a), X_sft, X_rl, **boot),
        }
    out["complexity_range"] = {"shared": shared_range, "sft": r_sft, "rl": r_rl, "bins": bins}
    out["n_samples"], out["n_edges"] = X_sft.shape
    return out
