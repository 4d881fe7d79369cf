"""Token variability (method.md 6): the CV formula, the bins and the intervals against scipy, the interval's coverage
by simulation, the split-half binning against a population where the paper's binning is circular; end to end."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from conftest import launch
from rlsft.stats import t_interval
from rlsft.variability import BIN_LABELS, accuracy_bin, bin_summary, corrected_cv, cv_mean_interval, question_stats


def test_corrected_cv_against_scipy():
    x = np.array([120, 80, 95, 143, 101, 77])
    expected = stats.variation(x, ddof=1) * (1 + 1 / (4 * len(x)))
    assert corrected_cv(x) == pytest.approx(expected, rel=1e-12)
    assert math.isnan(corrected_cv([50])) and math.isnan(corrected_cv([0, 0]))
    assert corrected_cv([7, 7, 7]) == 0


@pytest.mark.parametrize("k, n, b", [(0, 5, 0), (1, 5, 0), (2, 10, 0), (1, 4, 1), (2, 5, 1), (3, 5, 2), (6, 10, 2),
                                     (4, 5, 3), (8, 10, 3), (9, 10, 4), (5, 5, 4), (13, 16, 4)])
def test_accuracy_bins_are_closed_on_the_right(k, n, b):
    assert accuracy_bin(k, n) == b
    # the same bin as the definition [0,.2], (.2,.4], ... in exact rational arithmetic
    assert b == (0 if 5 * k <= n else next(i for i in range(1, 5) if 5 * k <= (i + 1) * n))


def test_t_interval_against_scipy():
    x = np.array([0.31, 0.12, 0.25, 0.4, 0.18, 0.22, 0.09])
    mean, lo, hi = t_interval(x)
    e_lo, e_hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert (mean, lo, hi) == pytest.approx((x.mean(), e_lo, e_hi), rel=1e-12)
    assert math.isnan(t_interval([0.3])[1]) and t_interval([0.3])[0] == 0.3


def _answer(qid, n_tokens, correct, reason="eos", sample=0):
    return {"id": qid, "sample": sample, "output_ids": [1] * n_tokens, "correct": correct, "finish_reason": reason}


def _numbered(gens):
    seen = {}
    for g in gens:
        g["sample"] = seen[g["id"]] = seen.get(g["id"], -1) + 1
    return gens


def test_question_stats_bins_and_truncation():
    gens = _numbered([
        _answer("a", 10, True), _answer("a", 20, True), _answer("a", 30, False), _answer("a", 50, True, "length"),
        _answer("b", 10, False), _answer("b", 12, False), _answer("b", 14, False), _answer("b", 16, False)])
    rows = {r.id: r for r in question_stats(gens)}
    assert rows["a"].accuracy == 0.75 and rows["a"].bin == 3 and rows["a"].truncated == 1
    assert rows["a"].cv == pytest.approx(corrected_cv([10, 20, 30, 50]))
    assert rows["b"].bin == 0 and rows["b"].cv == pytest.approx(corrected_cv([10, 12, 14, 16]))
    kept = {r.id: r for r in question_stats(gens, exclude_truncated=True)}
    assert kept["a"].cv == pytest.approx(corrected_cv([10, 20, 30])) and kept["a"].accuracy == 0.75
    bins = bin_summary(list(rows.values()))
    assert [b["bin"] for b in bins] == list(BIN_LABELS)
    assert bins[3]["questions"] == 1 and bins[3]["truncated_share"] == 0.25 and bins[0]["truncated_share"] == 0
    assert bins[1]["questions"] == 0 and math.isnan(bins[1]["mean_cv"])
    # one question in a bin: its CV is the mean, and there is no interval (None, shown as n/a), not nan
    assert bins[3]["mean_cv"] == pytest.approx(rows["a"].cv) and bins[3]["ci_low"] is None
    assert bins[3]["ci_high"] is None


def test_split_halves_by_hand():
    """Bin on samples 0..n/2-1, CVs (all, and within correct answers) on the rest, whatever the order given."""
    gens = [_answer("q", 30, True, sample=5), _answer("q", 10, False, sample=0), _answer("q", 40, True, sample=3),
            _answer("q", 12, False, sample=1), _answer("q", 20, False, sample=4), _answer("q", 14, True, sample=2)]
    (row,) = question_stats(gens)
    assert row.accuracy == 0.5 and row.bin == 2  # paper: 3 of 6 over all samples
    assert row.bin_split == 1  # samples 0, 1, 2: one correct of three
    assert row.cv_split == pytest.approx(corrected_cv([40, 20, 30]))  # samples 3, 4, 5
    assert row.cv_correct_split == pytest.approx(corrected_cv([40, 30]))
    assert row.cv == pytest.approx(corrected_cv([10, 12, 14, 40, 20, 30]))
    split = bin_summary([row], "split")
    assert split[1]["questions"] == 1 and split[1]["mean_cv"] == pytest.approx(row.cv_split)
    assert split[1]["mean_cv_correct"] == pytest.approx(row.cv_correct_split)


def _alike_answers(rng, n):
    """n answers of a question like every other: right half the time, wrong answers 40% longer."""
    correct = rng.random(n) < 0.5
    return np.round(rng.normal(100, 5, n) * np.where(correct, 1.0, 1.4)).astype(int), correct


def test_split_halves_remove_the_circularity():
    """Every question alike: the true CV of a question's 4 held-out answers does not depend on its bin (computed
    here from 100k draws). Binning and CV on the same samples make the mixed middle bin look more variable than
    it is; binning on one half and measuring the other gives the true value in every bin."""
    rng = np.random.default_rng(0)
    draws = np.array([_alike_answers(rng, 4)[0] for _ in range(100_000)], dtype=float)
    truth = (draws.std(1, ddof=1) / draws.mean(1) * (1 + 1 / 16)).mean()
    gens = []
    for q in range(600):
        lengths, correct = _alike_answers(rng, 8)
        gens += [_answer(f"q{q}", int(n), bool(c), sample=s) for s, (n, c) in enumerate(zip(lengths, correct))]
    rows = question_stats(gens)
    paper, split = bin_summary(rows, "paper"), bin_summary(rows, "split")
    assert paper[2]["mean_cv"] > 1.5 * paper[0]["mean_cv"]  # the artefact
    for b in (0, 2, 4):
        assert split[b]["ci_low"] < truth < split[b]["ci_high"], (b, truth, split[b])


def _population_cvs(rng, n):
    """Per-question CVs of 8 token counts, question scales and spreads varied: a skewed population near 0."""
    mu, shape = rng.uniform(5, 60, n), rng.uniform(2, 30, n)
    lengths = rng.gamma(shape[:, None], (mu / shape)[:, None], size=(n, 8)).round().clip(1)
    return np.array([corrected_cv(x) for x in lengths])


def test_cv_interval_is_non_negative_and_covers():
    """Coverage of the mean CV from a known population (its mean from 200k questions): at least 0.88 at nominal 0.95
    for 2, 5 and 30 questions per bin; never below 0 (the plain t interval went to -2.6 at n = 2)."""
    rng = np.random.default_rng(1)
    truth = _population_cvs(rng, 200_000).mean()
    for n in (2, 5, 30):
        hits = 0
        for _ in range(400):
            x = _population_cvs(rng, n)
            mean, lo, hi = cv_mean_interval(x)
            assert lo >= 0 and mean == pytest.approx(x.mean())
            hits += lo <= truth <= hi
        assert hits / 400 >= 0.88, (n, hits / 400)
    # where the t interval stays above 0 it is exactly scipy's
    x = np.array([0.31, 0.12, 0.25, 0.4, 0.18])
    assert cv_mean_interval(x)[1:] == pytest.approx(stats.t.interval(0.95, 4, loc=x.mean(), scale=stats.sem(x)))
    assert cv_mean_interval([0.3]) == (0.3, None, None) and math.isnan(cv_mean_interval([])[0])


@pytest.mark.slow  # the default-logger run of tests/test_sweeps.py covers it in the default suite
def test_end_to_end_tiny(tmp_path):
    run_dir = tmp_path / "run"
    out = launch("experiment=variability", "model_pair=tiny", "dataset.n=4", "variability.n_samples=3",
                 "generation.max_new_tokens=6", "logger=disabled", f"hydra.run.dir={run_dir}",
                 env={"RLSFT_CACHE_DIR": str(tmp_path / "cache")}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    saved = json.loads((run_dir / "variability.json").read_text())
    assert saved["sampling"]["n_samples"] == 3 and saved["sampling"]["temperature"] == 0.7
    for stage in ("sft", "rl"):
        assert saved["stages"][stage]["answers"] == 12
        assert sum(b["questions"] for b in saved["stages"][stage]["bins"]) == 4
        assert sum(b["questions"] for b in saved["stages"][stage]["bins_split"]) == 4
        assert all(b["ci_low"] is None for b in saved["stages"][stage]["bins"] if b["with_cv"] < 2)
    assert (run_dir / "variability_cv.png").exists() and (run_dir / "variability_bins.csv").exists()


def test_cv_figure_scale_follows_the_bars_not_an_n2_interval():
    """An n = 2 bin's [0, 4.06] interval no longer sets the y scale; its whisker's end is written instead."""
    from rlsft.experiments.variability import figure
    from rlsft.variability import BIN_LABELS

    def bins(wide):
        return [dict(mean_cv=0.3, ci_low=0.0 if wide and i == 1 else 0.2, ci_high=4.06 if wide and i == 1 else 0.4,
                     answers=16, questions=2 if wide and i == 1 else 12, truncated_share=0.0, mean_cv_correct=0.3)
                for i in range(len(BIN_LABELS))]

    fig = figure({"sft": {"bins": bins(True), "bins_split": bins(False)}})
    assert fig.axes[0].get_ylim()[1] < 1.0
    assert any("CI to 4.06" in t.get_text() for t in fig.axes[0].texts)
