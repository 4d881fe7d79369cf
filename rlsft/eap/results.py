"""Typed EAP results (method.md 2.5-2.8): one record per result, alpha and compared stage, and one registry of kinds.

An EAP run compares stages with a reference: pair mode is compare mode with the reference ``sft`` (its summaries keep
the keys "sft" / "rl" for reference / stage). Each `Kind` reads one result out of one alpha's summary; the views
(tables, W&B, console) iterate `results`, so a new result that is not a per-sample metric is the code computing it
plus one `RESULTS` entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from .metrics import METRICS

VIEWS = frozenset({"tables", "wandb", "console", "summary"})  # summary: the per-stage table (and the report's)


@dataclass(frozen=True)
class Result:
    """One result of one alpha for one stage against the reference. An interval is (lo, hi); (None, None) where a
    per-sample metric has no valid one (a point value); None where the result has no interval at all."""

    name: str
    alpha: float
    cut_len: int | None
    n: int  # questions the run scored
    stage: str
    reference: str
    value: float | None  # the stage's value; None: no per-stage value exists (loss_adjusted's coefficient c)
    ci: tuple | None
    reference_value: float | None
    reference_ci: tuple | None
    diff: float  # stage - reference (loss_adjusted: the stage coefficient c)
    diff_ci: tuple | None
    p: float = math.nan  # unadjusted; nan: no test
    point_value: bool = False  # no interval covers by design (distribution_kurtosis, the pooled complexity)
    label: str = ""  # the console's name of the result
    extra: dict | None = None  # further W&B values, {key: value} under eap/<name>/ (loss_adjusted's slope b)
    role: str | None = None  # primary | secondary | point, from the run's ranked tests (method.md 2.8)
    p_holm: float = math.nan
    finding: str = ""  # the near-duplicate group this difference belongs to


@dataclass(frozen=True)
class Kind:
    """How to read one result from one alpha's summary (None: this run has no such result) and where it shows."""

    read: Callable[[dict], dict | None]
    views: frozenset = VIEWS
    per_sample: bool = False  # a mean of per-sample values (a metric, self_entropy): the per-stage table's first columns
    console_first: bool = False  # shown with the scale-free shape, before the paper's metrics
    wandb_stage_ci: bool = False  # W&B also gets each stage's interval (<stage>_lo, <stage>_hi)
    console_test: str | None = None  # a fixed text in the console's test column instead of the ranked test's


def has_interval(ci) -> bool:
    """False for a point value's interval: (nan, nan) from `compare`, (None, None) once read as a result."""
    return all(v is not None for v in ci) and bool(np.isfinite(ci).any())


def metric_interval(ci) -> tuple:
    """A per-sample metric's interval; (None, None) for a point value, which has no valid interval."""
    return tuple(ci) if has_interval(ci) else (None, None)


def _stage_values(m: str, label: str) -> Callable[[dict], dict]:
    """A per-sample value of both stages with its paired difference: a registered metric or self_entropy."""
    def read(s: dict) -> dict:
        x = s[m]
        return dict(value=x["rl"], ci=metric_interval(x["rl_ci"]), reference_value=x["sft"],
                    reference_ci=metric_interval(x["sft_ci"]), diff=x["diff"], diff_ci=metric_interval(x["diff_ci"]),
                    p=x.get("p", math.nan), point_value=m in METRICS and not METRICS[m].interval, label=label)
    return read


def _self_entropy(s: dict) -> dict:
    target = s.get("target", "nll")
    label = "self_entropy (loss, nats)" if target == "nll" else \
        f"loss of eap.target={target}: -mean own-token margin (logits)"
    return _stage_values("self_entropy", label)(s)


def _loss_adjusted(s: dict) -> dict | None:
    """The RL effect c on log intensity at matched loss (method.md 2.6): a coefficient, no per-stage value."""
    if "loss_adjusted" not in s:
        return None
    la = s["loss_adjusted"]
    return dict(value=None, ci=None, reference_value=None, reference_ci=None, diff=la["c"], diff_ci=tuple(la["c_ci"]),
                p=la.get("c_p", math.nan), extra={"slope": la["b"]},
                label=f"loss_adjusted: RL effect on log intensity at matched loss (slope on log loss b = "
                      f"{interval_text(la['b'], la['b_ci'])})")


def _pooled(s: dict) -> dict:
    """The paper's pooled information complexity: one value per stage, no interval."""
    p = s["information_complexity_pooled"]
    return dict(value=p["rl"], ci=None, reference_value=p["sft"], reference_ci=None, diff=p["diff"], diff_ci=None,
                point_value=True, label="information_complexity (pooled, no interval)")


def _sample_diversity(s: dict) -> dict:
    """1 - mean correlation between the samples' edge scores: one value per stage, no interval."""
    d = s["sample_diversity"]
    return dict(value=d["rl"], ci=None, reference_value=d["sft"], reference_ci=None, diff=d["diff"], diff_ci=None,
                point_value=True, label="sample_diversity")


def _frac80(s: dict) -> dict | None:
    """eap.faithfulness: the kept share of edges for 80% faithfulness (method.md 2.7)."""
    if "faithfulness" not in s:
        return None
    f = s["faithfulness"]
    return dict(value=f["rl"]["frac80"], ci=tuple(f["rl"]["frac80_ci"]), reference_value=f["sft"]["frac80"],
                reference_ci=tuple(f["sft"]["frac80_ci"]), diff=f["diff"]["frac80"],
                diff_ci=tuple(f["diff"]["frac80_ci"]), p=f["diff"].get("frac80_p", math.nan),
                label=f"frac80: kept share of edges for 80% faithfulness ({f['baseline']})")


def _metric_label(spec) -> str:
    return " (scale-free)" if spec.scale_free or not spec.paper else ""


RESULTS: dict[str, Kind] = {
    **{m: Kind(_stage_values(m, m + _metric_label(spec)), per_sample=True, console_first=not spec.paper)
       for m, spec in METRICS.items()},
    "self_entropy": Kind(_self_entropy, per_sample=True),
    "loss_adjusted": Kind(_loss_adjusted, console_first=True),
    "information_complexity_pooled": Kind(_pooled, views=frozenset({"wandb", "console", "summary"})),
    "sample_diversity": Kind(_sample_diversity, views=frozenset({"summary"})),
    # frac80's console text predates its test joining the Holm family (eap_differences shows that test): kept as is
    "frac80": Kind(_frac80, wandb_stage_ci=True, console_test="not in the Holm family (no p)"),
}


def results(alpha: str, summary: dict, stage: str, reference: str, view: str | None = None) -> list[Result]:
    """Every registered result of one alpha's summary of ``stage`` against ``reference``, in registry order; with
    ``view`` only those shown there."""
    out = []
    for name, kind in RESULTS.items():
        if view is not None and view not in kind.views:
            continue
        fields = kind.read(summary)
        if fields is not None:
            out.append(Result(name=name, alpha=float(alpha), cut_len=summary["cut_len"], n=summary["n_samples"],
                              stage=stage, reference=reference, **fields))
    return out


def with_tests(rs: list[Result], tests: dict, compare: bool) -> list[Result]:
    """Each result with its ranked test, ``tests`` = {(alpha, name, stage or None in pair mode): test}."""
    out = []
    for r in rs:
        t = tests.get((r.alpha, r.name, r.stage if compare else None))
        out.append(r if t is None else replace(r, role=t["role"], p=t["p"], p_holm=t["p_holm"], finding=t["finding"]))
    return out


def interval_text(value: float, ci) -> str:
    """A value with its interval for the console; a point value says so."""
    if ci is None or not has_interval(ci):
        return f"{value:.4g} (point)"
    return f"{value:.4g} [{ci[0]:.4g}, {ci[1]:.4g}]"
