"""Intervals over training seeds and questions (method.md 8: a difference between arms is reported with an interval
over seeds and questions, never from one seed).

An arm's values are a matrix ``[S, Q]``: one row per training seed, one column per question (the same questions in
the same order in every arm; the base, which nobody trained, is one row). A difference between two arms is the mean
over seeds and questions of ``d[s, q] = a[s, q] - b[s, q]``: rows are paired by seed (arms trained with one seed
share its randomness: rft and dpo learn from the same base samples), and a one-row side meets every row of the other.

The hierarchical bootstrap resamples seeds with replacement, then questions with replacement, one question draw for
every drawn seed and both arms (the design is crossed: every seed answers every question; Owen 2007's pigeonhole
bootstrap). Its variance has two parts: ``v_q``, what redrawing questions alone gives (every seed kept), and ``v_s``,
what redrawing seeds adds. A percentile interval of the bootstrap is too narrow with few seeds: the mean of 3 seeds
needs Student's t with 2 degrees of freedom (4.30 where the normal has 1.96), and resampling 3 values never goes past
their range (tests/test_hierarchical.py: 3 seeds, 50 questions, seed spread dominating: coverage 0.75-0.78 at nominal
0.95).
So the interval is ``D +- t_df * sqrt(v_s + v_q)``, each part with its small-sample factor (S / (S - 1), Q / (Q - 1):
the bootstrap's plug-in variance divides by the count) and Satterthwaite's df (S - 1 for the seed part, Q - 1 for the
question part); it covers >= 0.9 at every seed-to-question variance ratio simulated there. With one seed row it is
the Student t interval of the paired question differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class SeedInterval:
    """A mean over seeds and questions (of ``a``, or of ``a - b``) with its interval and what the interval rests on."""

    diff: float
    lo: float
    hi: float
    p: float  # two-sided, "the mean is 0" (t with df degrees of freedom)
    seeds: int  # seed rows of d (1: the question part alone)
    questions: int  # questions with a finite value in every row
    se_seeds: float  # sqrt(v_s)
    se_questions: float  # sqrt(v_q)
    df: float

    def holds_zero(self) -> bool:
        return not (self.lo > 0 or self.hi < 0)


def paired_rows(a, b=None) -> np.ndarray:
    """``d = a - b`` as ``[S, Q]``, rows paired by seed (or broadcast from a one-row side); ``a`` when ``b`` is None.
    Questions with a non-finite value in any row are left out."""
    d = np.atleast_2d(np.asarray(a, dtype=float))
    if b is not None:
        b = np.atleast_2d(np.asarray(b, dtype=float))
        if b.shape[0] != d.shape[0] and 1 not in (b.shape[0], d.shape[0]):
            raise ValueError(f"seed rows cannot be paired: {d.shape[0]} against {b.shape[0]} (the same seeds on both "
                             "sides, or one row on one side)")
        d = d - b
    return d[:, np.isfinite(d).all(axis=0)]


def crossed_resamples(d: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(full, questions_only): ``n_boot`` resampled means of ``d`` [S, Q] with seeds and questions redrawn, and with
    the same question draws but every seed kept. Drawn as multinomial weights (the same as drawing indices)."""
    S, Q = d.shape
    weights_q = rng.multinomial(Q, np.full(Q, 1 / Q), size=n_boot) / Q  # [n_boot, Q]
    questions_only = weights_q @ d.mean(axis=0)
    if S == 1:
        return questions_only, questions_only
    weights_s = rng.multinomial(S, np.full(S, 1 / S), size=n_boot) / S  # [n_boot, S]
    return np.einsum("bs,sq,bq->b", weights_s, d, weights_q), questions_only


def seed_question_interval(a, b=None, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> SeedInterval:
    """The mean of ``a - b`` (or of ``a``) over seeds and questions, with its hierarchical-bootstrap interval."""
    d = paired_rows(a, b)
    S, Q = d.shape
    diff = float(d.mean()) if d.size else math.nan
    if Q < 2:
        return SeedInterval(diff, math.nan, math.nan, math.nan, S, Q, math.nan, math.nan, math.nan)
    full, questions_only = crossed_resamples(d, n_boot, np.random.default_rng(seed))
    v_q = float(questions_only.var()) * Q / (Q - 1)
    v_s = max(float(full.var()) - float(questions_only.var()), 0.0) * S / (S - 1) if S > 1 else 0.0
    return two_part_interval(diff, v_s, v_q, S, Q, level)


def two_part_interval(diff: float, v_s: float, v_q: float, S: int, Q: int, level: float = 0.95) -> SeedInterval:
    """``diff +- t_df * sqrt(v_s + v_q)``: the seed part with S - 1 degrees of freedom, the question part with Q - 1,
    joined by Satterthwaite; the two-sided p-value for 0 from the same t."""
    v = v_s + v_q
    df = float(Q - 1) if v_s == 0 else v * v / (v_s * v_s / (S - 1) + v_q * v_q / (Q - 1))
    se = math.sqrt(v)
    half = float(stats.t.ppf(1 - (1 - level) / 2, df)) * se
    if se > 0:
        p = float(2 * stats.t.sf(abs(diff) / se, df))
    else:  # every d equal: no spread to test against; 0 is no evidence, any other constant is
        p = 1.0 if diff == 0 else 0.0
    return SeedInterval(diff, diff - half, diff + half, p, S, Q, math.sqrt(v_s), math.sqrt(v_q), df)
