"""The EAP run's tests (method.md 2.8): p-values per difference, the primary comparison, Holm over the secondaries,
near-duplicate metrics, and the same numbers for the console, the tables and W&B.

p-values: Student t on the paired differences d_k for every per-sample metric and self_entropy (``stats.paired_p``;
the BCa interval beside it is the bootstrap's, so the two can disagree at the margin), a paired bootstrap for
loss_adjusted's c (a refitted coefficient has no d_k). Point values (distribution_kurtosis, the pooled complexity)
have no interval and no test. Faithfulness summaries join as ``summary["faithfulness_tests"] = {name: {"diff", "ci",
"p"}}`` (the hook for rlsft.eap.faithfulness's summaries).
"""

from __future__ import annotations

import math

import numpy as np

from ..eap import METRICS, per_sample
from ..eap.family import family_row, findings, near_duplicates, rank_tests, verdict
from ..stats import paired_p

TESTED = [m for m, spec in METRICS.items() if spec.interval] + ["self_entropy"]  # per-sample d_k, t test


def add_tests(summary: dict, scored: dict) -> None:
    """p-value of each per-sample difference (into ``summary[m]["p"]``) and the near-duplicate groups of their d_k."""
    mask = scored["mask"]
    d = {}
    for m in TESTED:
        if m == "self_entropy":
            d[m] = scored["rl"]["loss"].astype(float) - scored["sft"]["loss"].astype(float)
        else:
            d[m] = per_sample(scored["rl"]["W"], mask, m) - per_sample(scored["sft"]["W"], mask, m)
        summary[m]["p"] = paired_p(d[m])
    # d_k, not each stage's s_k: two tests are one finding when their per-question differences move together
    summary["near_duplicates"] = near_duplicates({m: d[m] for m in TESTED if m != "self_entropy"})


def summary_tests(alpha: str, s: dict, stage: str | None = None) -> list[dict]:
    """Every test of one alpha's summary, in display order; point values with p = nan."""
    rows = [family_row(float(alpha), m, s[m]["diff"], s[m]["diff_ci"], s[m].get("p", math.nan), stage) for m in TESTED]
    if "loss_adjusted" in s:
        la = s["loss_adjusted"]
        rows.append(family_row(float(alpha), "loss_adjusted", la["c"], la["c_ci"], la.get("c_p", math.nan), stage))
    for name, f in s.get("faithfulness_tests", {}).items():
        rows.append(family_row(float(alpha), name, f["diff"], f["ci"], f["p"], stage))
    rows += [family_row(float(alpha), m, s[m]["diff"], None, math.nan, stage) for m, spec in METRICS.items()
             if not spec.interval]
    return rows


def run_family(summaries: dict, primary, compare: bool = False, stage_primaries: bool = True) -> list[dict]:
    """Ranked tests of the whole run: {alpha: summary} (or {alpha: {stage: summary}} in compare mode). Without
    ``stage_primaries`` (the arms study, whose primary is each arm's over its seeds: rlsft.experiments.eap_study)
    every per-stage test is secondary."""
    tests, groups = [], {}
    for a, s in summaries.items():
        per_stage = s.items() if compare else [(None, s)]
        for stage, summary in per_stage:
            tests += summary_tests(a, summary, stage)
            groups[(float(a), stage)] = summary.get("near_duplicates", [])
    return findings(groups, rank_tests(tests, primary.metric if stage_primaries else None, primary.alpha))


def family_table(dataset: str, ranked: list[dict]) -> tuple[list[str], list[list]]:
    """The run's tests: the primary first, then the secondaries with raw and Holm-adjusted p-values."""
    # "stage" always (empty outside compare mode): a report stacks every job's table and needs one set of columns
    columns = ["dataset", "stage", "alpha", "metric", "role", "diff", "lo", "hi", "p", "p_holm", "verdict", "finding"]
    rows = [[dataset, t.get("stage"), t["alpha"], t["metric"], t["role"], t["diff"],
             *_cells(t["lo"], t["hi"], t["p"], t["p_holm"]), verdict(t, t.get("stage", "RL")), t["finding"]]
            for t in ranked]
    return columns, rows


def _cells(*values) -> list:
    """nan (no interval, no test) as an empty cell, as W&B logs None."""
    return [None if v is None or not np.isfinite(v) else float(v) for v in values]


def lookup(ranked: list[dict]) -> dict:
    """{(alpha, metric, stage): test} for the tables that show a test beside their own columns."""
    return {(t["alpha"], t["metric"], t.get("stage")): t for t in ranked}


def primary_text(ranked: list[dict], primary, who: str = "RL", reference: str = "SFT") -> str:
    """The console's first lines: the primary comparison, or why there is none."""
    first = [t for t in ranked if t["role"] == "primary"]
    if not first:
        return (f"PRIMARY comparison ({primary.metric} at alpha {primary.alpha:g}): not in this run (that alpha was "
                f"not scored); every difference below is secondary.\n")
    lines = []
    for t in first:
        name = t.get("stage", who)
        lines.append(f"PRIMARY comparison: {t['metric']} at alpha {t['alpha']:g}, {name} - {reference} = "
                     f"{t['diff']:.4g} [{t['lo']:.4g}, {t['hi']:.4g}], p = {_p(t['p'])}"
                     + (f" (Holm over {len(first)} primaries: {_p(t['p_holm'])})" if len(first) > 1 else "")
                     + f": {verdict(t, name)}")
    n_sec = sum(t["role"] == "secondary" for t in ranked)
    lines.append(f"Secondary: {n_sec} other differences, p-values Holm-adjusted over all {n_sec} (t on d_k; "
                 f"loss_adjusted: paired bootstrap); metrics with |Spearman| > 0.9 across questions are one finding.")
    return "\n".join(lines) + "\n"


def _p(p: float) -> str:
    return "n/a" if not np.isfinite(p) else f"{p:.2g}"


def family_cell(t: dict | None) -> str:
    """A table cell: role and Holm-adjusted p (primary: its own p), with the near-duplicate group if any."""
    if t is None or t["role"] == "point":
        return "no test (point value)"
    text = f"secondary, Holm p = {_p(t['p_holm'])}" if t["role"] == "secondary" else f"PRIMARY, p = {_p(t['p'])}"
    return text + (f"; one finding: {t['finding']}" if t.get("finding") else "")


def family_wandb(ranked: list[dict]) -> dict:
    """W&B summary keys: eap/primary/* and eap/tests/<alpha>/<metric>[/<stage>]/{p, p_holm}."""
    out = {}
    for t in ranked:
        if t["role"] == "primary":
            key = "eap/primary" + (f"/{t['stage']}" if "stage" in t else "")
            out |= {f"{key}/{k}": t[k] for k in ("diff", "lo", "hi", "p", "alpha")} | {f"{key}/metric": t["metric"]}
        if t["role"] != "point":
            key = f"eap/tests/{t['alpha']:g}/{t['metric']}" + (f"/{t['stage']}" if "stage" in t else "")
            out |= {f"{key}/p": t["p"], f"{key}/p_holm": t["p_holm"], f"{key}/role": t["role"]}
    return out

