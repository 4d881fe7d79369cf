"""EAP metrics against plain numpy/scipy on the real edges; garbage off the mask must not change anything."""

import numpy as np
import pytest
import scipy.stats
import torch

from rlsft.eap import (
    activation_intensity,
    bootstrap_ci,
    distribution_kurtosis,
    information_complexity,
    make_graph,
    output_edge_entropy,
    relative_change,
    sample_diversity,
    summarize,
)

MASK = make_graph(3).mask.numpy()


def scores(seed, n=12, scale=1.0):
    """Random heavy-tailed scores on the edges and huge garbage (incl. nan/inf) everywhere else."""
    rng = np.random.default_rng(seed)
    W = rng.standard_t(4, size=(n, *MASK.shape)) * scale
    W[:, ~MASK] = rng.choice([1e9, -1e9, np.nan, np.inf], size=(n, int((~MASK).sum())))
    return W


def edges(W):
    return W[:, MASK]


def test_activation_intensity():
    W = scores(0)
    assert np.isclose(activation_intensity(W, MASK), np.mean(np.abs(edges(W))))
    assert np.isclose(activation_intensity(torch.tensor(W), torch.tensor(MASK)), np.mean(np.abs(edges(W))))


def entropy_of_histogram(values, bins, rng_):
    counts, _ = np.histogram(values, bins=bins, range=rng_)
    p = counts / counts.sum()
    return -np.sum(p * np.log(p + 1e-12))


def test_information_complexity_default_and_given_range():
    W = scores(1)
    a = np.abs(edges(W)).ravel()
    assert np.isclose(information_complexity(W, MASK), entropy_of_histogram(a, 100, (0, a.max())))
    assert np.isclose(information_complexity(W, MASK, bins=20), entropy_of_histogram(a, 20, (0, a.max())))
    r = (0, 2 * a.max())
    assert np.isclose(information_complexity(W, MASK, value_range=r), entropy_of_histogram(a, 100, r))
    # scaling all scores leaves the entropy on the per-model range unchanged
    assert np.isclose(information_complexity(3 * W, MASK), information_complexity(W, MASK))
    assert abs(information_complexity(np.zeros_like(W), MASK)) < 1e-10  # one occupied bin


def test_distribution_kurtosis():
    W = scores(2)
    expected = np.mean([scipy.stats.kurtosis(row, fisher=True) for row in edges(W)])
    assert np.isclose(distribution_kurtosis(W, MASK), expected)


def test_sample_diversity():
    W = scores(3)
    C = np.corrcoef(edges(W))
    n = len(W)
    expected = 1 - np.mean([C[i, j] for i in range(n) for j in range(i + 1, n)])
    assert np.isclose(sample_diversity(W, MASK), expected)
    same = np.repeat(W[:1], 4, axis=0)
    assert np.isclose(sample_diversity(same, MASK), 0.0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        sample_diversity(W[:1], MASK)


def test_relative_change():
    W_sft, W_rl = scores(4), scores(5)
    out = relative_change(W_sft, W_rl, MASK)
    a, b = np.abs(edges(W_sft)).mean(0), np.abs(edges(W_rl)).mean(0)
    assert np.allclose(out[MASK], (b - a) / (a + 1e-12))
    assert np.isnan(out[~MASK]).all()


def test_output_edge_entropy():
    W = scores(6)
    A = np.where(MASK, np.abs(np.where(MASK, W, 0)).mean(0), 0)
    H = output_edge_entropy(W, MASK)
    assert H.shape == (MASK.shape[0],)
    for u in range(MASK.shape[0]):
        expected = scipy.stats.entropy(A[u][MASK[u]])
        assert np.isclose(H[u], expected)
    # the last source feeds only logits: one edge, entropy 0
    assert H[-1] == 0.0


def test_metrics_ignore_off_mask_entries():
    W = scores(7)
    clean = np.where(MASK, W, 0.0)
    for f in (activation_intensity, information_complexity, distribution_kurtosis, sample_diversity):
        assert f(W, MASK) == f(clean, MASK)


def test_bootstrap_ci_percentiles_and_pairing():
    x = np.random.default_rng(8).normal(size=50)
    lo, hi = bootstrap_ci(np.mean, x, n_boot=2000, seed=1)
    rng = np.random.default_rng(1)
    boots = [x[rng.integers(0, 50, 50)].mean() for _ in range(2000)]
    assert np.isclose(lo, np.percentile(boots, 2.5)) and np.isclose(hi, np.percentile(boots, 97.5))
    # paired: rl = sft + 1 exactly, so every resampled difference is exactly 1
    lo, hi = bootstrap_ci(lambda a, b: b.mean() - a.mean(), x, x + 1, n_boot=200)
    assert np.isclose(lo, 1) and np.isclose(hi, 1)
    with pytest.raises(ValueError, match="same number of samples"):
        bootstrap_ci(lambda a, b: 0.0, x, x[:10])


def test_summarize():
    W_sft, W_rl = scores(9), scores(10, scale=2.0)
    s = summarize(W_sft, W_rl, MASK, n_boot=200)
    assert s["n_samples"] == 12 and s["n_edges"] == MASK.sum()
    ai = s["activation_intensity"]
    assert np.isclose(ai["sft"], activation_intensity(W_sft, MASK))
    assert np.isclose(ai["rl"], activation_intensity(W_rl, MASK))
    assert np.isclose(ai["diff"], ai["rl"] - ai["sft"]) and ai["diff_ci"][0] > 0  # RL is twice as large
    for name in ("activation_intensity", "information_complexity", "distribution_kurtosis"):
        m = s[name]
        for key in ("sft", "rl", "diff"):
            lo, hi = m[f"{key}_ci"]
            assert lo <= hi
    assert s["complexity_range"]["shared"] is False
    assert np.isclose(s["information_complexity"]["sft"], information_complexity(W_sft, MASK))
    shared = summarize(W_sft, W_rl, MASK, shared_range=True, n_boot=50)
    top = max(np.abs(edges(W_sft)).max(), np.abs(edges(W_rl)).max())
    assert shared["complexity_range"]["sft"] == shared["complexity_range"]["rl"] == (0.0, top)
    expected = information_complexity(W_sft, MASK, value_range=(0, top))
    assert np.isclose(shared["information_complexity"]["sft"], expected)
    with pytest.raises(ValueError, match="same samples"):
        summarize(W_sft, W_rl[:5], MASK)
