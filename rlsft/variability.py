"""Token variability (method.md section 6): how much do answer lengths vary across samples of one question?

Per question: ``n`` sampled answers, the coefficient of variation of their token counts with the small-sample
correction ``sd / mean * (1 + 1 / (4n))`` (sd with n - 1 degrees of freedom), and the share answered correctly.
Questions are binned by that share into [0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1]; each bin gets the mean CV with
a 95% t-interval. An answer cut by the token limit has an artificial length, so every bin reports the share of
truncated answers, and ``exclude_truncated`` leaves them out of the CV.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .stats import t_interval

BIN_LABELS = ("[0,0.2]", "(0.2,0.4]", "(0.4,0.6]", "(0.6,0.8]", "(0.8,1]")


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


@dataclass
class QuestionStats:
    id: str
    n: int
    accuracy: float
    cv: float
    mean_tokens: float
    truncated: int
    bin: int


def question_stats(gens: list[dict], exclude_truncated: bool = False) -> list[QuestionStats]:
    """One row per question from its sampled answers (accuracy always over all samples)."""
    by_id: dict[str, list[dict]] = defaultdict(list)
    for g in gens:
        by_id[g["id"]].append(g)
    rows = []
    for qid, answers in by_id.items():
        k = sum(bool(a["correct"]) for a in answers)
        cut = sum(a["finish_reason"] == "length" for a in answers)
        kept = [a for a in answers if not (exclude_truncated and a["finish_reason"] == "length")]
        lengths = [len(a["output_ids"]) for a in kept]
        rows.append(QuestionStats(qid, len(answers), k / len(answers), corrected_cv(lengths),
                                  float(np.mean(lengths)) if lengths else math.nan, cut,
                                  accuracy_bin(k, len(answers))))
    return rows


def bin_summary(rows: list[QuestionStats]) -> list[dict]:
    """Per accuracy bin: questions, mean CV with its 95% t-interval, and the share of truncated answers."""
    out = []
    for b, label in enumerate(BIN_LABELS):
        members = [r for r in rows if r.bin == b]
        cvs = [r.cv for r in members if not math.isnan(r.cv)]
        mean, lo, hi = t_interval(cvs)
        answers = sum(r.n for r in members)
        out.append({"bin": label, "questions": len(members), "with_cv": len(cvs), "mean_cv": mean, "ci_low": lo,
                    "ci_high": hi, "answers": answers,
                    "truncated_share": sum(r.truncated for r in members) / answers if answers else math.nan})
    return out
