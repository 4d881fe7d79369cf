"""The lenses per arm over its training seeds (method.md 8: a difference between arms is reported with an interval
over seeds and questions, never from one seed; issue 21 item 7).

Each seed's stage keeps its own rows in the lenses tables (intervals over questions only); this adds one row per arm
and lens, the mean over the arm's seeds:
- a per-question lens (KL per answer token on the task and control sets, the accuracy change on each, pass@1 and
  pass@k at the largest k against the reference) gets the hierarchical interval of rlsft.hierarchical (seeds
  redrawn, then questions; Student t on the two variance parts), the same as the arms study's EAP and accuracy rows;
- a per-model lens (the share of parameters unchanged at bf16) has one value per seed: a Student t interval over
  seeds.
A difference from the reference is tested (the interval's t test), Holm-adjusted over the table's differences, and
says "cannot tell" at an adjusted p of 0.05 or more; a level (a KL, a share) is a value with its interval, no test.
"""

from __future__ import annotations

import math

import numpy as np

from ..hierarchical import seed_question_interval
from ..stats import holm, t_interval


def _nan(values) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=float)


def _share(arm: str, measure: str, values, seeds: int) -> dict:
    """A share's mean over seeds with its t interval, kept inside [0, 1] (with 2-3 seeds t is wide)."""
    mean, lo, hi = t_interval(values)
    lo, hi = (max(lo, 0.0), min(hi, 1.0)) if math.isfinite(lo) else (lo, hi)
    return {"arm": arm, "measure": measure, "value": mean, "ci_low": lo, "ci_high": hi, "seeds": seeds,
            "questions": None, "p": None, "verdict": "level: no test"}


def _interval(arm: str, measure: str, a, b=None, n_boot: int = 2000, seed: int = 0) -> dict:
    iv = seed_question_interval(a, b, n_boot=n_boot, seed=seed)
    row = {"arm": arm, "measure": measure, "value": iv.diff, "ci_low": iv.lo, "ci_high": iv.hi, "seeds": iv.seeds,
           "questions": iv.questions, "p": None, "verdict": "level: no test"}
    if b is not None:
        tested = math.isfinite(iv.lo)
        row |= {"p": iv.p if tested else None, "verdict": "" if tested else f"cannot tell: {iv.questions} question(s)"}
    return row


def _holm_verdicts(rows: list[dict]) -> None:
    """Holm over every tested difference of the table (as the arms study adjusts within each table); "cannot tell"
    at an adjusted p of 0.05 or more."""
    tested = [r for r in rows if r.get("p") is not None]
    for row, p in zip(tested, holm([r["p"] for r in tested])):
        row["p_holm"] = float(p)
        row["verdict"] = "cannot tell" if p >= 0.05 else ("higher" if row["value"] > 0 else "lower")


def arm_rows(result: dict, arms: dict[str, list[str]], n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """One row per arm and lens (see the module docstring), from the per-seed results of the lenses run."""
    ref = result["reference"]
    outputs, passes = result["outputs"], result["pass_at_k"]
    rows = []
    for arm, names in arms.items():
        S = len(names)
        rows.append(_share(arm, "unchanged_share", [result["weights"][n]["all"]["unchanged"] for n in names], S))
        for where in ("task", "control"):
            kl = np.stack([_nan(outputs[n]["per_question"][f"{where}_kl"]) for n in names])
            rows.append(_interval(arm, f"{where}_kl", kl, n_boot=n_boot, seed=seed))
            correct = np.stack([_nan(outputs[n]["per_question"][f"{where}_correct"]) for n in names])
            reference = _nan(outputs["__reference__"]["per_question"][f"{where}_correct"])
            rows.append(_interval(arm, f"{where}_accuracy - {ref}", correct, reference, n_boot, seed))
        ks = passes[ref]["ks"]
        for k in sorted({1, ks[-1]}):
            j = ks.index(k)
            values = np.stack([np.asarray(passes[n]["per_question"], dtype=float)[:, j] for n in names])
            reference = np.asarray(passes[ref]["per_question"], dtype=float)[:, j]
            rows.append(_interval(arm, f"pass@{k} - {ref}", values, reference, n_boot, seed))
    _holm_verdicts(rows)
    return rows
