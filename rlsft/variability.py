"""Token variability (method.md section 6): how much do answer lengths vary across samples of one question?

Per question: ``n`` sampled answers, the coefficient of variation of their token counts with the small-sample
correction ``sd / mean * (1 + 1 / (4n))`` (sd with n - 1 degrees of freedom), and the share answered correctly.
Questions are binned by that share into [0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1]; each bin gets the mean CV with
a 95% t-interval (cut at 0: a CV is never negative). An answer cut by the token limit has an artificial length, so
every bin reports the share of truncated answers, and ``exclude_truncated`` leaves them out of the CV.

Two binnings (``METHODS``):
  ``paper``  bin and CV from the same samples. Circular: right and wrong answers differ in length, so a question
             with mixed answers gets a higher CV by construction, and mixed questions are the middle bins.
  ``split``  bin each question on half of its samples (sample index < n/2) and take its CVs from the other half,
             independent of the bin given the question; with the CV within correct answers of that half too.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from scipy import stats

BIN_LABELS = ("[0,0.2]", "(0.2,0.4]", "(0.4,0.6]", "(0.6,0.8]", "(0.8,1]")
METHODS = ("paper", "split")


def corrected_cv(counts) -> float:
    """``sd / mean * (1 + 1/(4n))`` of token counts; nan with fewer than two counts or a zero mean."""
    x = np.asarray(counts, dtype=float)
    n = x.size
    if n < 2 or x.mean() == 0:
        return math.nan
    return float(x.std(ddof=1) / x.mean() * (1 + 1 / (4 * n)))


def accuracy_bin(correct: int, n: int) -> int:
    """Bin index of the accuracy ``correct / n`` (exact integer arithmetic, so 0.2 falls in the first bin)."""
    return max(0, -(-5 * correct // n) - 1)  # ceil(5k/n) - 1, with k = 0 in bin 0


def cv_mean_interval(cvs, level: float = 0.95) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of the mean CV over questions: the t interval intersected with [0, inf).

    A CV is never negative, so cutting the interval at 0 never drops the true mean: coverage stays the t interval's
    (checked by simulation in tests/test_variability.py; a percentile bootstrap over questions covered far less at
    3-10 questions). Bounds are None (no interval) with fewer than two questions; the mean is nan with none.
    """
    x = np.asarray(cvs, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, None, None
    mean = float(x.mean())
    if x.size < 2:
        return mean, None, None
    half = float(stats.t.ppf(1 - (1 - level) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, max(0.0, mean - half), mean + half


@dataclass
class QuestionStats:
    id: str
    n: int
    accuracy: float
    cv: float  # all samples (paper)
    mean_tokens: float
    truncated: int
    bin: int  # accuracy over all samples (paper)
    bin_split: int  # accuracy over the binning half
    cv_split: float  # CV over the other half
    cv_correct_split: float  # CV of the correct answers of the other half (nan with fewer than two)


def _lengths(answers: list[dict], exclude_truncated: bool) -> list[int]:
    return [len(a["output_ids"]) for a in answers if not (exclude_truncated and a["finish_reason"] == "length")]


def question_stats(gens: list[dict], exclude_truncated: bool = False) -> list[QuestionStats]:
    """One row per question: accuracy, CV and bin over all samples (paper), and the split-half bin and CVs."""
    by_id: dict[str, list[dict]] = defaultdict(list)
    for g in gens:
        by_id[g["id"]].append(g)
    rows = []
    for qid, answers in by_id.items():
        answers = sorted(answers, key=lambda a: a["sample"])
        k = sum(bool(a["correct"]) for a in answers)
        cut = sum(a["finish_reason"] == "length" for a in answers)
        lengths = _lengths(answers, exclude_truncated)
        half = len(answers) // 2
        binning, measured = answers[:half], answers[half:]
        k_half = sum(bool(a["correct"]) for a in binning)
        rows.append(QuestionStats(
            qid, len(answers), k / len(answers), corrected_cv(lengths),
            float(np.mean(lengths)) if lengths else math.nan, cut, accuracy_bin(k, len(answers)),
            accuracy_bin(k_half, half) if half else 0, corrected_cv(_lengths(measured, exclude_truncated)),
            corrected_cv(_lengths([a for a in measured if a["correct"]], exclude_truncated))))
    return rows


def bin_summary(rows: list[QuestionStats], method: str = "paper") -> list[dict]:
    """Per accuracy bin: questions, mean CV with its 95% interval (None where it has none), the mean CV within
    correct answers (``split`` only) and the share of truncated answers."""
    if method not in METHODS:
        raise ValueError(f"variability: method must be one of {list(METHODS)}, got {method!r}")
    out = []
    for b, label in enumerate(BIN_LABELS):
        members = [r for r in rows if (r.bin_split if method == "split" else r.bin) == b]
        cvs = [r.cv_split if method == "split" else r.cv for r in members]
        mean, lo, hi = cv_mean_interval(cvs)
        correct = cv_mean_interval([r.cv_correct_split for r in members]) if method == "split" else (math.nan,) * 3
        answers = sum(r.n for r in members)
        out.append({"method": method, "bin": label, "questions": len(members),
                    "with_cv": int(np.isfinite(np.asarray(cvs, dtype=float)).sum()), "mean_cv": mean,
                    "ci_low": lo, "ci_high": hi, "mean_cv_correct": correct[0], "ci_low_correct": correct[1],
                    "ci_high_correct": correct[2], "answers": answers,
                    "truncated_share": sum(r.truncated for r in members) / answers if answers else math.nan})
    return out
