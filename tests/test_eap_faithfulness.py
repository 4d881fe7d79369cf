"""Faithfulness curves: the kept sets, the held-out ranking, the curve and frac80 against hand computations, and the
bootstrap band's coverage from a known population."""

import math

import numpy as np
import pytest
import torch

from rlsft.eap import build_graph
from rlsft.eap.faithfulness import curve, frac80, halves, held_out_losses, log_grid, summarize, top_edges
from test_eap_scores import batch, fp64_exact, ref_losses, tiny  # noqa: F401


def test_top_edges_keeps_the_largest_real_edges():
    graph = build_graph(tiny("llama"))
    ranking = torch.rand(graph.mask.shape, generator=torch.Generator().manual_seed(0))
    ranking[~graph.mask] = 10.0  # off-mask entries are never edges, however large
    E = graph.n_edges
    values = ranking[graph.mask].numpy()
    for q in (0.001, 0.1, 0.5, 1.0):
        keep = top_edges(ranking, graph.mask, q)
        k = max(1, math.ceil(q * E))
        assert int(keep.sum()) == k and not (keep & ~graph.mask).any()
        assert set(np.flatnonzero(keep[graph.mask].numpy())) == set(np.argsort(-values)[:k])


def test_frac80_interpolates_in_log_fraction_at_the_first_crossing():
    q = [0.001, 0.01, 0.1, 1.0]
    assert frac80(q, [0.1, 0.5, 0.9, 1.0]) == pytest.approx(10 ** (-2 + 0.3 / 0.4), rel=1e-12)
    assert frac80(q, [0.85, 0.5, 0.9, 1.0]) == 0.001  # first reach, not the last
    assert frac80(q, [0.1, 0.8, 0.9, 1.0]) == pytest.approx(0.01, rel=1e-12)
    assert math.isnan(frac80(q, [0.1, 0.2, 0.3, 0.5]))
    assert log_grid(13)[0] == pytest.approx(1e-3) and log_grid(13)[-1] == 1.0 and len(log_grid(13)) == 13


def test_curve_averages_each_halfs_ratio_of_means():
    rng = np.random.default_rng(0)
    losses = {"clean": rng.random(6), "none": 3 + rng.random(6), "kept": 1 + rng.random((2, 6))}
    half = np.array([0, 1, 0, 1, 1, 0])
    expected = []
    for i in range(2):
        per_half = []
        for h in (0, 1):
            r = half == h
            n, c, k = losses["none"][r].mean(), losses["clean"][r].mean(), losses["kept"][i, r].mean()
            per_half.append((n - k) / (n - c))
        expected.append(sum(per_half) / 2)
    assert np.allclose(curve(losses, half), expected, rtol=1e-12)


def test_held_out_losses_rank_on_the_other_half_only():
    model = tiny("llama")
    ids, lm, am = batch(lengths=(12, 7, 10, 9), prompt=(5, 3, 6, 4))
    graph = build_graph(model)
    W = torch.rand(4, graph.n_src, graph.n_dst, generator=torch.Generator().manual_seed(1)) * graph.mask
    half = np.array([0, 1, 0, 1])
    q = [0.05, 0.3, 1.0]
    out = held_out_losses(model, ids, lm, am, W, graph, q, half, batch_size=3)
    with torch.no_grad():
        clean = ref_losses(model, ids, lm, am).numpy()
    assert np.allclose(out["clean"], clean, rtol=1e-6)
    assert np.allclose(out["none"], math.log(50), rtol=1e-6)  # zero baseline, nothing kept: uniform next token
    assert np.allclose(out["kept"][-1], clean, rtol=1e-6)  # keeping every edge is the model
    W2 = W.clone()
    W2[half == 0] = torch.rand(2, graph.n_src, graph.n_dst, generator=torch.Generator().manual_seed(2)) * graph.mask
    out2 = held_out_losses(model, ids, lm, am, W2, graph, q, half, batch_size=3)
    assert np.array_equal(out2["kept"][:, half == 0], out["kept"][:, half == 0])  # ranked on half 1: unchanged
    assert not np.allclose(out2["kept"][:2, half == 1], out["kept"][:2, half == 1])  # ranked on half 0: changed


def synthetic(rng, n, slope_sft=1 / 3, slope_rl=1 / 2.5):
    """Per-question losses with population curve f(q) = min(1, slope * (log10 q + 3)): frac80 = 10^(0.8/slope - 3)."""
    grid = log_grid(13)
    g = lambda s: np.minimum(1, s * (np.log10(grid) + 3))  # noqa: E731
    question = rng.lognormal(0, 0.5, n)  # question difficulty shared by both stages (pairing matters)
    out = {}
    for name, slope in (("sft", slope_sft), ("rl", slope_rl)):
        clean = question * (1 + 0.3 * rng.standard_normal(n))
        none = question * (5 + rng.standard_normal(n))
        kept = none - g(slope)[:, None] * (none - clean) + 0.5 * question * rng.standard_normal((13, n))
        out[name] = {"clean": clean, "none": none, "kept": kept}
    return grid, out, {"sft": 10 ** (0.8 * 3 - 3), "rl": 10 ** (0.8 * 2.5 - 3)}


@pytest.mark.slow
@pytest.mark.parametrize("n", [8, 30])
def test_bootstrap_band_and_frac80_intervals_cover(n):
    """Catches the bootstrap at the nominal level: 83% (curve, sft frac80) at n = 8 (4 questions per half)."""
    rng = np.random.default_rng(0)
    hits = {"curve": 0, "sft": 0, "rl": 0, "diff": 0}
    reps = 200
    for rep in range(reps):
        grid, stages, true = synthetic(rng, n)
        half = halves(n, seed=rep)
        res = summarize(grid, stages, half, n_resamples=500, seed=rep)
        i = 6  # a grid point inside the rise: f = 0.5 for sft
        hits["curve"] += res["sft"]["curve_lo"][i] <= 0.5 <= res["sft"]["curve_hi"][i]
        for s in ("sft", "rl"):
            hits[s] += res[s]["frac80_lo"] <= true[s] <= res[s]["frac80_hi"]
        hits["diff"] += res["rl-sft"]["frac80_lo"] <= true["rl"] - true["sft"] <= res["rl-sft"]["frac80_hi"]
    coverage = {k: v / reps for k, v in hits.items()}
    print(coverage)
    assert all(c >= 0.9 for c in coverage.values()), coverage


def test_summarize_point_values_and_bad_input():
    rng = np.random.default_rng(1)
    grid, stages, _ = synthetic(rng, 12)
    half = halves(12)
    res = summarize(grid, stages, half, n_resamples=200)
    for s in ("sft", "rl"):
        assert np.allclose(res[s]["curve"], curve(stages[s], half))
        assert res[s]["frac80"] == frac80(grid, curve(stages[s], half))
    assert res["rl-sft"]["frac80"] == pytest.approx(res["rl"]["frac80"] - res["sft"]["frac80"])
    with pytest.raises(ValueError, match="at least 4 samples"):
        halves(3)
    with pytest.raises(ValueError, match="log grid"):
        log_grid(1)
