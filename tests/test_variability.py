"""Token variability (method.md 6): the CV formula, the bins and the t-intervals against scipy; an end-to-end run."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from conftest import launch
from rlsft.stats import t_interval
from rlsft.variability import BIN_LABELS, accuracy_bin, bin_summary, corrected_cv, question_stats


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


def _answer(qid, n_tokens, correct, reason="eos"):
    return {"id": qid, "output_ids": [1] * n_tokens, "correct": correct, "finish_reason": reason}


def test_question_stats_bins_and_truncation():
    gens = [_answer("a", 10, True), _answer("a", 20, True), _answer("a", 30, False), _answer("a", 50, True, "length"),
            _answer("b", 10, False), _answer("b", 12, False), _answer("b", 14, False), _answer("b", 16, False)]
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
    assert (run_dir / "variability_cv.png").exists() and (run_dir / "variability_bins.csv").exists()
