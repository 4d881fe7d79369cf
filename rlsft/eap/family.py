"""One primary comparison, a Holm family of secondary tests, near-duplicate metrics (method.md 2.8).

A run prints dozens of RL - SFT differences (metrics x alphas, loss_adjusted, faithfulness summaries); read one by one,
some exclude 0 by chance. So one comparison is named in advance (``eap.primary``: a metric at an alpha) and judged at
its own p-value; every other difference is secondary, its p-value Holm-adjusted over all secondary tests of the run.
Shape metrics that move together across questions are one finding, not several: they are flagged.

A test is a plain dict ``{"alpha", "metric", "diff", "lo", "hi", "p"}`` (``"stage"`` too in compare mode), so any
summary with a difference, an interval and a p-value (faithfulness summaries: ``{"diff", "ci", "p"}``) joins the family.
"""

from __future__ import annotations

import math

import numpy as np

from ..stats import holm


def near_duplicates(values: dict[str, np.ndarray], threshold: float = 0.9) -> list[list[str]]:
    """Groups of names whose per-sample values correlate above ``threshold`` in |Spearman rho| (linked chains join
    one group); singletons left out. Spearman, not Pearson: the metrics are monotone transforms of each other at best.
    Names with fewer than three finite values or a constant vector join no group."""
    from scipy.stats import spearmanr

    names = list(values)
    n = len(names)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            a, b = np.asarray(values[names[i]], float), np.asarray(values[names[j]], float)
            ok = np.isfinite(a) & np.isfinite(b)
            if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
                continue
            if abs(spearmanr(a[ok], b[ok]).statistic) > threshold:
                parent[root(j)] = root(i)
    groups: dict[int, list[str]] = {}
    for i, name in enumerate(names):
        groups.setdefault(root(i), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def family_row(alpha: float, metric: str, diff: float, ci, p: float, stage: str | None = None) -> dict:
    """One test of the family; ``ci`` may be (nan, nan) / (None, None) for a point value (then p is nan too)."""
    lo, hi = (math.nan, math.nan) if ci is None or any(v is None for v in ci) else (float(ci[0]), float(ci[1]))
    row = {"alpha": float(alpha), "metric": metric, "diff": float(diff), "lo": lo, "hi": hi,
           "p": math.nan if p is None else float(p)}
    return row | ({"stage": stage} if stage is not None else {})


def rank_tests(tests: list[dict], metric: str, alpha: float) -> list[dict]:
    """Each test with ``role`` (primary | secondary | point: no test) and ``p_holm``.

    Primary: ``metric`` at ``alpha`` (one per compared stage in compare mode, Holm-adjusted among themselves when there
    are several); its ``p_holm`` is its own p then. Secondary: every other test with a p-value, Holm over all of them.
    Point values (no interval, no p) are listed with role ``point`` and no p.
    """
    out = [dict(t) for t in tests]
    is_primary = [t["metric"] == metric and math.isclose(t["alpha"], alpha) and np.isfinite(t["p"]) for t in out]
    for flag in (True, False):
        idx = [i for i, t in enumerate(out) if is_primary[i] == flag and np.isfinite(t["p"])]
        adjusted = holm([out[i]["p"] for i in idx])
        for i, p in zip(idx, adjusted):
            out[i].update(role="primary" if flag else "secondary", p_holm=float(p))
    for t in out:
        t.setdefault("role", "point")
        t.setdefault("p_holm", math.nan)
    return sorted(out, key=lambda t: t["role"] != "primary")  # the primary first, the rest in their given order


def verdict(t: dict, who: str = "RL", level: float = 0.05) -> str:
    """What a test says in words: its direction when its (adjusted) p-value is below ``level``, else cannot tell."""
    if not np.isfinite(t.get("p_holm", math.nan)):
        return "point value: no test"
    if t["p_holm"] >= level:
        return "cannot tell"
    return f"{who} higher" if t["diff"] > 0 else f"{who} lower"


def findings(groups_by_alpha: dict, tests: list[dict]) -> list[dict]:
    """Each test with ``finding``: the '+'-joined names of its near-duplicate group at its alpha (and stage), or ''."""
    out = []
    for t in tests:
        groups = groups_by_alpha.get((t["alpha"], t.get("stage")), [])
        group = next((g for g in groups if t["metric"] in g), [])
        out.append(t | {"finding": "+".join(group)})
    return out
