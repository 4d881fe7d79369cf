"""One primary comparison, Holm over the secondaries, near-duplicate metrics (method.md 2.8, issue 19 item 6)."""

import csv
import json
import math

import numpy as np
import pytest
import scipy.stats

from conftest import launch
from rlsft.eap.family import family_row, near_duplicates, rank_tests
from rlsft.stats import bootstrap_p, holm, paired_p


def hand_holm(p):
    """Holm written the slow way: reject in order while p_(i) <= a / (m - i); the adjusted p is the smallest a at
    which a hypothesis is rejected, found by scanning a grid of levels."""
    p = np.asarray(p, float)
    m = len(p)
    out = np.ones(m)
    for a in np.linspace(0, 1, 100001)[::-1]:
        order = np.argsort(p)
        for i, j in enumerate(order):
            if p[j] <= a / (m - i):
                out[j] = a
            else:
                break
    return out


def test_holm_matches_a_hand_computation():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4 = 0.02, x3 = 0.03, x2 = 0.06, x1 = 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_matches_the_rejection_rule_and_keeps_nan_out_of_the_family():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(0, 0.02, 4), rng.uniform(0, 1, 5)])
    assert holm(p) == pytest.approx(np.minimum(hand_holm(p), 1), abs=2e-5)
    with_nan = holm([0.01, math.nan, 0.04])
    assert math.isnan(with_nan[1]) and with_nan[[0, 2]] == pytest.approx([0.02, 0.04])  # m = 2, not 3


def test_paired_p_is_the_t_test_on_the_differences():
    d = np.array([0.3, -0.1, 0.5, 0.2, 0.4, 0.1])
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    assert paired_p(d) == pytest.approx(2 * scipy.stats.t.sf(abs(t), len(d) - 1))
    assert paired_p(np.zeros(5)) == 1.0 and math.isnan(paired_p([1.0]))


def test_bootstrap_p_holds_its_level_under_the_null_and_detects_a_shift():
    """Known population: normal d_k. Under mean 0, p < 0.05 in about 5% of samples (n = 30); at a 1-sd shift, always."""
    rng = np.random.default_rng(1)
    mean = lambda x, axis=-1: x.mean(axis)  # noqa: E731
    null = [bootstrap_p(rng.normal(0, 1, 30), stat=mean, n_boot=1000, seed=i) for i in range(400)]
    rate = np.mean(np.array(null) < 0.05)
    assert 0.02 <= rate <= 0.10, rate
    assert all(bootstrap_p(rng.normal(1, 1, 30), stat=mean, n_boot=1000, seed=i) < 0.05 for i in range(20))


def test_near_duplicates_groups_monotone_transforms_only():
    rng = np.random.default_rng(2)
    a = rng.normal(size=40)
    values = {"a": a, "exp_a": np.exp(a), "minus_a": -a + rng.normal(0, 0.01, 40), "b": rng.normal(size=40),
              "const": np.ones(40)}
    assert near_duplicates(values) == [["a", "exp_a", "minus_a"]]
    rho = abs(scipy.stats.spearmanr(a, values["b"]).statistic)
    assert rho < 0.9  # b stays out on its own correlation


def test_rank_tests_one_primary_and_holm_over_the_secondaries_only():
    tests = [family_row(0.1, "gini", 0.1, (0, 0.2), 0.01),
             family_row(1.0, "effective_edges", -0.02, (-0.03, -0.01), 0.03),
             family_row(1.0, "gini", 0.1, (0, 0.2), 0.02),
             family_row(1.0, "distribution_kurtosis", 1.0, None, math.nan),
             family_row(0.1, "self_entropy", -1.0, (-2, 0), 0.04)]
    ranked = rank_tests(tests, "effective_edges", 1.0)
    assert [t["role"] for t in ranked] == ["primary", "secondary", "secondary", "point", "secondary"]
    assert ranked[0]["metric"] == "effective_edges" and ranked[0]["p_holm"] == 0.03  # not adjusted
    secondary = {(t["alpha"], t["metric"]): t["p_holm"] for t in ranked if t["role"] == "secondary"}
    assert secondary == pytest.approx({(0.1, "gini"): 0.03, (1.0, "gini"): 0.04, (0.1, "self_entropy"): 0.04})
    none = rank_tests(tests, "effective_edges", 0.5)  # the primary alpha was not scored: all secondary
    assert not any(t["role"] == "primary" for t in none)


TINY = ["experiment=eap", "model_pair=tiny", "eap.require_correct=false", "dataset.arithmetic.count=8",
        "eap.n_boot=200", "eap.alphas=[0.5,1.0]"]


def _leads(stdout: str) -> None:
    """The primary comparison is the first thing the results print, before the table."""
    first = stdout.index("PRIMARY comparison: effective_edges at alpha 1, rl - sft = ")
    assert first < stdout.index("| alpha | T_cut | metric |") and "Secondary: " in stdout[first:]


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_run_leads_with_the_primary_and_its_tables_and_wandb_agree(tmp_path, cache_dir):
    from rlsft.tracking import read_offline_run

    run = tmp_path / "run"
    res = launch(*TINY, "logger=offline", f"hydra.run.dir={run}")
    assert res.returncode == 0, res.stderr[-3000:]
    _leads(res.stdout)
    tests = _csv(run / "eap_tests.csv")
    assert [t["role"] for t in tests].count("primary") == 1 and tests[0]["role"] == "primary"
    secondary = [t for t in tests if t["role"] == "secondary"]
    raw = [float(t["p"]) for t in secondary]
    assert [float(t["p_holm"]) for t in secondary] == pytest.approx(np.minimum(hand_holm(raw), 1), abs=2e-5)
    # each secondary p is the t test on the saved matrices' d_k (recomputed here for self_entropy at alpha 0.5)
    loss = {s: np.load(run / f"eap_scores_{s}_alpha0.5.npz")["loss"].astype(float) for s in ("sft", "rl")}
    row = next(t for t in tests if t["metric"] == "self_entropy" and t["alpha"] == "0.5")
    assert float(row["p"]) == pytest.approx(scipy.stats.ttest_1samp(loss["rl"] - loss["sft"], 0).pvalue, rel=1e-6)
    assert not any(t["p"] for t in tests if t["role"] == "point")  # point values: no test
    diffs = {(r["alpha"], r["metric"]): r for r in _csv(run / "eap_differences.csv")}
    for t in tests:
        if t["role"] != "point":
            assert diffs[(t["alpha"], t["metric"])]["p_holm"] == t["p_holm"]
    wb = read_offline_run(run)["summary"]
    assert wb["eap/primary/metric"] == "effective_edges" and wb["eap/primary/p"] == pytest.approx(float(tests[0]["p"]))
    assert wb["eap/tests/0.5/self_entropy/p_holm"] == pytest.approx(float(row["p_holm"]))
    saved = json.loads((run / "eap_metrics.json").read_text())["tests"]
    assert [t["metric"] for t in saved] == [t["metric"] for t in tests]


@pytest.mark.slow  # a second tiny EAP launch; the default suite keeps the plain-mode one
def test_compare_mode_has_one_primary_per_compared_stage(tmp_path, cache_dir):
    run = tmp_path / "cmp"
    res = launch(*TINY, "logger=disabled", "eap.reference=sft", "eap.compare=[rl]", f"hydra.run.dir={run}")
    assert res.returncode == 0, res.stderr[-3000:]
    _leads(res.stdout)
    tests = _csv(run / "eap_tests.csv")
    assert [(t["stage"], t["role"]) for t in tests if t["role"] == "primary"] == [("rl", "primary")]
    table = _csv(run / "eap_compare_effective_edges.csv")
    rl_at_1 = next(r for r in table if r["stage"] == "rl" and r["alpha"] == "1.0")
    assert rl_at_1["role"] == "primary" and rl_at_1["p"] == tests[0]["p"]


def test_a_bad_primary_metric_is_named(tmp_path, cache_dir):
    res = launch(*TINY, "eap.primary.metric=distribution_kurtosis", "logger=disabled", f"hydra.run.dir={tmp_path}")
    assert res.returncode != 0 and "eap.primary.metric must be one of" in res.stderr
