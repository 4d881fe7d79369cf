"""EAP metrics against numpy/scipy written here, on the real edges only; intervals checked by what they must contain.

Each test names the wrong implementation it catches.
"""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from rlsft.eap import (
    METRICS,
    activation_intensity,
    compare,
    distribution_kurtosis,
    information_complexity,
    information_complexity_pooled,
    loss_adjusted,
    make_graph,
    output_edge_entropy,
    per_sample,
    relative_change,
    sample_diversity,
)
from rlsft.stats import bootstrap_ci, expanded_level

MASK = make_graph(3).mask.numpy()


def scores(seed, n=12, scale=1.0):
    """Random heavy-tailed scores on the edges and huge garbage (incl. nan/inf) everywhere else."""
    rng = np.random.default_rng(seed)
    W = rng.standard_t(4, size=(n, *MASK.shape)) * scale
    W[:, ~MASK] = rng.choice([1e9, -1e9, np.nan, np.inf], size=(n, int((~MASK).sum())))
    return W


def edges(W):
    return W[:, MASK]


def hand_gini(x):
    """Gini as the mean absolute difference over all pairs / (2 * mean): a different formula from method.md's."""
    x = np.abs(x)
    return np.abs(x[:, None] - x[None, :]).mean() / (2 * x.mean())


def reference(name, x):
    """One sample's metric written with numpy/scipy (method.md 2.6)."""
    a = np.abs(x)
    if name == "activation_intensity":
        return a.mean()
    if name == "information_complexity":
        return scipy.stats.entropy(np.histogram(a / a.max(), bins=100, range=(0, 1))[0])
    if name == "distribution_kurtosis":
        return scipy.stats.kurtosis(x, fisher=True)
    if name == "effective_edges":
        return math.exp(scipy.stats.entropy(a)) / a.size
    if name == "top_mass":
        return np.sort(a)[::-1][: math.ceil(0.01 * a.size)].sum() / a.sum()
    if name == "gini":
        return hand_gini(a)
    if name == "l_kurtosis":
        return hand_l_kurtosis(x)
    raise KeyError(name)


def hand_l_kurtosis(x):
    """tau_4 from probability-weighted moments b_r = mean_i x_(i) C(i-1, r) / C(n-1, r) (Hosking 1990, eq. 2.5)."""
    x = np.sort(x)
    n = len(x)
    b = [np.mean([x[i] * math.comb(i, r) / math.comb(n - 1, r) for i in range(n)]) for r in range(4)]
    l2 = 2 * b[1] - b[0]
    l4 = 20 * b[3] - 30 * b[2] + 12 * b[1] - b[0]
    return l4 / l2


def test_l_kurtosis_population_values():
    """tau_4 = 30/pi arctan(sqrt 2) - 9 = 0.1226 for a normal, 1/(3 sqrt 2) = 0.2357 for a Laplace, 0 for a uniform
    (Hosking 1990, table 1): catches a moment kurtosis, a missing normalisation by lambda_2, the wrong L-moment."""
    rng = np.random.default_rng(0)
    X = np.stack([rng.normal(size=400_000), rng.laplace(size=400_000), rng.uniform(size=400_000)])
    got = METRICS["l_kurtosis"].fn(X)
    assert np.allclose(got, [30 / math.pi * math.atan(math.sqrt(2)) - 9, 1 / (3 * math.sqrt(2)), 0.0], atol=3e-3)


def test_registry_is_the_issue_list():
    assert set(METRICS) == {"activation_intensity", "information_complexity", "distribution_kurtosis",
                            "effective_edges", "top_mass", "gini", "l_kurtosis"}
    assert [m for m, s in METRICS.items() if not s.interval] == ["distribution_kurtosis"]  # point value only
    assert [m for m, s in METRICS.items() if not s.scale_free] == ["activation_intensity"]
    with pytest.raises(ValueError, match="unknown EAP metric 'nope'"):
        per_sample(scores(0), MASK, "nope")


@pytest.mark.parametrize("name", list(METRICS))
def test_per_sample_against_numpy_scipy(name):
    """Catches: a pooled instead of per-sample statistic, a wrong histogram range, off-mask entries counted,
    a wrong top-k, a Gini off by (E+1)/E."""
    W = scores(1, n=6)
    got = per_sample(W, MASK, name)
    want = [reference(name, x) for x in edges(W)]
    assert got.shape == (6,)
    assert np.allclose(got, want, rtol=1e-10, atol=1e-12)
    assert np.allclose(per_sample(torch.tensor(W), torch.tensor(MASK), name), want, rtol=1e-10, atol=1e-12)


def test_stage_functions_are_means_of_per_sample_values():
    """Catches the paper's pooled complexity sneaking back in as `information_complexity`."""
    W = scores(2)
    X = edges(W)
    assert np.isclose(activation_intensity(W, MASK), np.mean(np.abs(X)))
    assert np.isclose(distribution_kurtosis(W, MASK), np.mean(scipy.stats.kurtosis(X, axis=1)))
    assert np.isclose(information_complexity(W, MASK), np.mean([reference("information_complexity", x) for x in X]))


@pytest.mark.parametrize("name", [m for m, s in METRICS.items() if s.scale_free])
def test_scale_free_metrics_ignore_each_samples_scale(name):
    """Catches: a shape metric that normalises by a pooled max/sum (one constant for all samples) or not at all."""
    rng = np.random.default_rng(3)
    W = scores(3, n=10)
    c = np.exp(rng.uniform(-12, 12, size=(10, 1, 1)))  # each W_k by its own constant, over ten orders of magnitude
    assert np.allclose(per_sample(c * W, MASK, name), per_sample(W, MASK, name), rtol=0, atol=1e-12)
    assert not np.allclose(per_sample(c * W, MASK, "activation_intensity"),
                           per_sample(W, MASK, "activation_intensity"))


def test_edge_cases_all_zero_and_constant_samples():
    """An all-zero sample is 'all edges equal': every edge counts, nothing dominates, one occupied bin."""
    E = int(MASK.sum())
    W = np.zeros((2, *MASK.shape))
    assert np.allclose(per_sample(W, MASK, "effective_edges"), 1.0)
    assert np.allclose(per_sample(W, MASK, "gini"), 0.0)
    assert np.allclose(per_sample(W, MASK, "top_mass"), math.ceil(0.01 * E) / E)
    assert np.allclose(per_sample(W, MASK, "information_complexity"), 0.0)
    assert np.isnan(per_sample(W, MASK, "distribution_kurtosis")).all()  # 0/0, left out by compare
    assert np.isnan(per_sample(W, MASK, "l_kurtosis")).all()
    assert np.isnan(per_sample(np.full((1, *MASK.shape), 0.3), MASK, "l_kurtosis")).all()


def test_pooled_complexity_is_the_papers_number():
    W = scores(4)
    a = np.abs(edges(W)).ravel()

    def entropy_of_histogram(values, bins, rng_):
        p = np.histogram(values, bins=bins, range=rng_)[0] / values.size
        return -np.sum(p * np.log(p + 1e-12))

    assert np.isclose(information_complexity_pooled(W, MASK), entropy_of_histogram(a, 100, (0, a.max())))
    assert np.isclose(information_complexity_pooled(W, MASK, bins=20), entropy_of_histogram(a, 20, (0, a.max())))
    r = (0, 2 * a.max())
    assert np.isclose(information_complexity_pooled(W, MASK, value_range=r), entropy_of_histogram(a, 100, r))
    assert abs(information_complexity_pooled(np.zeros_like(W), MASK)) < 1e-10  # one occupied bin


def test_sample_diversity():
    W = scores(5)
    C = np.corrcoef(edges(W))
    n = len(W)
    expected = 1 - np.mean([C[i, j] for i in range(n) for j in range(i + 1, n)])
    assert np.isclose(sample_diversity(W, MASK), expected)
    same = np.repeat(W[:1], 4, axis=0)
    assert np.isclose(sample_diversity(same, MASK), 0.0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        sample_diversity(W[:1], MASK)


def test_relative_change():
    W_sft, W_rl = scores(6), scores(7)
    out = relative_change(W_sft, W_rl, MASK)
    a, b = np.abs(edges(W_sft)).mean(0), np.abs(edges(W_rl)).mean(0)
    assert np.allclose(out[MASK], (b - a) / (a + 1e-12))
    assert np.isnan(out[~MASK]).all()


def test_output_edge_entropy():
    W = scores(8)
    A = np.where(MASK, np.abs(np.where(MASK, W, 0)).mean(0), 0)
    H = output_edge_entropy(W, MASK)
    assert H.shape == (MASK.shape[0],)
    for u in range(MASK.shape[0]):
        assert np.isclose(H[u], scipy.stats.entropy(A[u][MASK[u]]))
    assert H[-1] == 0.0  # the last source feeds only logits: one edge, entropy 0


def test_metrics_ignore_off_mask_entries():
    W = scores(9)
    clean = np.where(MASK, W, 0.0)
    for name in METRICS:
        assert np.array_equal(per_sample(W, MASK, name), per_sample(clean, MASK, name), equal_nan=True)
    assert sample_diversity(W, MASK) == sample_diversity(clean, MASK)


def test_compare_values_and_intervals_against_scipy():
    """Catches: an unpaired difference, a percentile instead of a BCa interval, intervals of the wrong statistic."""
    W_sft, W_rl = scores(10, n=20), scores(11, n=20, scale=2.0)
    out = compare(W_sft, W_rl, MASK, n_resamples=999, seed=4)
    assert set(out) == set(METRICS)
    for name, r in out.items():
        s, t = per_sample(W_sft, MASK, name), per_sample(W_rl, MASK, name)
        assert (r["sft"], r["rl"], r["n"]) == pytest.approx((s.mean(), t.mean(), 20))
        assert r["diff"] == pytest.approx((t - s).mean())
        if not METRICS[name].interval:
            assert all(math.isnan(v) for key in ("sft_ci", "rl_ci", "diff_ci") for v in r[key]), name
            continue
        for key, x in (("sft_ci", s), ("rl_ci", t), ("diff_ci", t - s)):
            ci = scipy.stats.bootstrap((x,), np.mean, n_resamples=999, method="BCa", rng=np.random.default_rng(4),
                                       confidence_level=expanded_level(0.95, 20)).confidence_interval
            assert r[key] == pytest.approx((ci.low, ci.high), rel=1e-9), (name, key)
    assert out["activation_intensity"]["diff_ci"][0] > 0  # RL twice as large
    with pytest.raises(ValueError, match="same samples"):
        compare(W_sft, W_rl[:5], MASK)


def test_paired_interval_is_narrower_than_unpaired_when_questions_vary():
    """Catches an unpaired bootstrap of the difference: RL = SFT * 1.1 per question, question scales vary 100x."""
    rng = np.random.default_rng(12)
    W_sft = scores(12, n=30) * np.exp(rng.uniform(-2.3, 2.3, size=(30, 1, 1)))
    r = compare(W_sft, 1.1 * W_sft, MASK, n_resamples=999)["activation_intensity"]
    lo, hi = r["diff_ci"]
    assert lo < r["diff"] < hi and lo > 0  # every paired difference is positive
    assert hi - lo < 0.5 * (r["sft_ci"][1] - r["sft_ci"][0])


def test_expanded_level_matches_the_t_interval_width_for_a_normal_sample():
    """Catches a missing small-n correction: at the expanded level, the normal-theory interval is the t interval."""
    from scipy.stats import norm, t

    for n in (5, 8, 30):
        z = norm.ppf(1 - (1 - expanded_level(0.95, n)) / 2)
        assert z * math.sqrt((n - 1) / n) == pytest.approx(t.ppf(0.975, n - 1))  # plug-in sd * z = sample sd * t
    assert expanded_level(0.95, 10_000) == pytest.approx(0.95, abs=1e-3)


def test_degenerate_samples_fall_back_to_a_t_interval():
    """All-equal values: BCa is undefined (scipy returns nan); the interval is the point, not a crash or nan."""
    assert bootstrap_ci(np.full(10, 0.25)) == (0.25, 0.25)
    assert all(math.isnan(v) for v in bootstrap_ci([1.0]))
    W = scores(13, n=5)
    r = compare(W, W, MASK, n_resamples=200)
    assert all(r[m]["diff_ci"] == (0.0, 0.0) for m, spec in METRICS.items() if spec.interval)


def test_bootstrap_ci_paired_statistic():
    x = np.random.default_rng(14).normal(size=40)
    lo, hi = bootstrap_ci(x, x + 1 + 0.1 * np.random.default_rng(15).normal(size=40),
                          stat=lambda a, b: b.mean() - a.mean(), n_boot=999)
    ref = scipy.stats.bootstrap((x, x + 1 + 0.1 * np.random.default_rng(15).normal(size=40)),
                                lambda a, b: b.mean() - a.mean(), paired=True, vectorized=False, n_resamples=999,
                                confidence_level=expanded_level(0.95, 40),
                                rng=np.random.default_rng(0)).confidence_interval
    assert (lo, hi) == pytest.approx((ref.low, ref.high))
    assert 0.9 < lo < 1 < hi < 1.1
    with pytest.raises(ValueError, match="same number of samples"):
        bootstrap_ci(x, x[:10], stat=lambda a, b: 0.0)


def test_loss_adjusted_recovers_the_stage_effect_against_lstsq():
    """Catches: a fit without the loss term (c would absorb the loss shift), b and c swapped, unpaired resampling."""
    rng = np.random.default_rng(16)
    n = 40
    loss_sft = np.exp(rng.normal(0, 1, n))
    loss_rl = loss_sft * np.exp(rng.normal(-2, 0.3, n))  # RL far more confident
    b_true, c_true = 0.8, 0.3
    i_sft = np.exp(0.5 + b_true * np.log(loss_sft) + 0.05 * rng.normal(size=n))
    i_rl = np.exp(0.5 + b_true * np.log(loss_rl) + c_true + 0.05 * rng.normal(size=n))
    res = loss_adjusted(i_sft, i_rl, loss_sft, loss_rl, n_resamples=999)
    X = np.column_stack([np.ones(2 * n), np.log(np.r_[loss_sft, loss_rl]), np.r_[np.zeros(n), np.ones(n)]])
    a, b, c = np.linalg.lstsq(X, np.log(np.r_[i_sft, i_rl]), rcond=None)[0]
    assert (res["a"], res["b"], res["c"]) == pytest.approx((a, b, c))
    assert res["c_ci"][0] < c_true < res["c_ci"][1] and res["b_ci"][0] < b_true < res["b_ci"][1]
    assert res["c_ci"][1] - res["c_ci"][0] < 0.2
    assert np.log(i_rl).mean() - np.log(i_sft).mean() < -1  # the raw difference has the opposite sign
    # a question with a zero loss is left out and counted
    loss_rl[0] = 0.0
    assert loss_adjusted(i_sft, i_rl, loss_sft, loss_rl, n_resamples=200)["n_dropped"] == 1
    with pytest.raises(ValueError, match="at least 3 questions"):
        loss_adjusted(i_sft[:2], i_rl[:2], loss_sft[:2], loss_rl[:2])
