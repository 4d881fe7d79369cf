"""Typed EAP results (rlsft.eap.results): one alpha's summary read as records, and the views that iterate them."""

import math

import numpy as np
import pytest

from rlsft.eap import METRICS, compare, compare_values
from rlsft.eap.results import RESULTS, Kind, results
from rlsft.experiments.eap import (compare_console, compare_tables, compare_wandb, console_summary, difference_rows,
                                  summary_rows, wandb_values)
from rlsft.report import table1


def summary(seed: int = 0, faithful: bool = True) -> dict:
    """One alpha's summary as compare_alpha writes it, from random scores (plus hand-set loss_adjusted, frac80)."""
    rng = np.random.default_rng(seed)
    W_sft, W_rl = rng.normal(size=(2, 8, 4, 5))
    mask = np.ones((4, 5), bool)
    s = compare(W_sft, W_rl, mask, n_resamples=50)
    s["self_entropy"] = compare_values(rng.uniform(1, 2, 8), rng.uniform(1, 2, 8), n_resamples=50)
    s["loss_adjusted"] = {"c": 0.1, "c_ci": (0.0, 0.2), "c_p": 0.3, "b": 1.5, "b_ci": (0.5, 2.5)}
    s["information_complexity_pooled"] = {"sft": 2.0, "rl": 1.5, "diff": -0.5}
    s["sample_diversity"] = {"sft": 0.6, "rl": 0.5, "diff": -0.1}
    if faithful:
        s["faithfulness"] = {"baseline": "counterfactual", "sft": {"frac80": 0.3, "frac80_ci": (0.1, 0.5)},
                             "rl": {"frac80": 0.2, "frac80_ci": (0.0, 0.4)},
                             "diff": {"frac80": -0.1, "frac80_ci": (-0.3, 0.1), "frac80_p": 0.4}}
    s.update(cut_len=8, n_samples=8, target="nll", scored_tokens={"sft": 8.0, "rl": 8.0},
             shorter_than_cut={"sft": 0, "rl": 0})
    return s


def test_a_summary_reads_as_one_record_per_result():
    rs = {r.name: r for r in results("0.5", summary(), "rl", "sft")}
    assert list(rs) == [*METRICS, "self_entropy", "loss_adjusted", "information_complexity_pooled", "sample_diversity",
                        "frac80"]
    assert all(r.alpha == 0.5 and r.cut_len == 8 and r.stage == "rl" and r.reference == "sft" for r in rs.values())
    k = rs["distribution_kurtosis"]  # no interval covers: a point value with empty bounds
    assert k.point_value and k.ci == k.reference_ci == k.diff_ci == (None, None)
    la = rs["loss_adjusted"]  # a coefficient: no value per stage
    assert la.value is None and la.reference_value is None and (la.diff, la.diff_ci, la.p) == (0.1, (0.0, 0.2), 0.3)
    assert la.extra == {"slope": 1.5} and "b = 1.5 [0.5, 2.5]" in la.label
    pooled = rs["information_complexity_pooled"]
    assert pooled.point_value and pooled.diff_ci is None and (pooled.reference_value, pooled.value) == (2.0, 1.5)
    assert rs["frac80"].diff_ci == (-0.3, 0.1) and rs["frac80"].p == 0.4
    assert "frac80" not in {r.name for r in results("0.5", summary(faithful=False), "rl", "sft")}
    assert "information_complexity_pooled" not in {r.name for r in results("0.5", summary(), "b", "a", view="tables")}


def test_pair_mode_is_compare_mode_with_reference_sft():
    s = summary()
    _, pair = difference_rows("d", {"0.5": s})
    _, tables = compare_tables("d", {"0.5": {"rl": s}}, "sft")
    from_compare = [["d", row[1], m, row[8], row[9], row[10]] for m, rows in tables.items() for row in rows
                    if row[3] == "rl"]
    assert from_compare == pair
    assert [row[5] for row in tables["gini"]] == [s["gini"]["sft"], s["gini"]["rl"]]  # the reference's row first


def test_a_new_result_is_one_registry_entry(monkeypatch):
    """A result that is not a per-sample metric: the code computing it (here: the summary) and one RESULTS entry
    give its rows in the tables, the console and W&B of both modes and the report's Table 1, with no other edit."""
    def toy(s: dict) -> dict | None:
        t = s.get("toy")
        return None if t is None else dict(value=t[1], ci=(t[1] - 1, t[1] + 1), reference_value=t[0],
                                           reference_ci=(t[0] - 1, t[0] + 1), diff=t[1] - t[0], diff_ci=(0.5, 1.5),
                                           p=0.01, label="toy result")

    monkeypatch.setitem(RESULTS, "toy", Kind(toy))
    s, b = summary() | {"toy": (2.0, 3.0)}, summary(1) | {"toy": (2.0, 5.0)}
    _, pair = difference_rows("d", {"0.5": s})
    assert pair[-1] == ["d", 0.5, "toy", 1.0, 0.5, 1.5]
    counts = {"questions": 8, "sft_correct": 8, "rl_correct": 8, "n_selected": 8, "tbar": 10.0}
    assert "| 0.5 | 8 | toy result | 2 [1, 3] | 3 [2, 4] | 1 [0.5, 1.5] |" in console_summary("d", counts, {"0.5": s},
                                                                                          "sft", "rl")
    columns, rows = summary_rows("d", {"0.5": s}, {"sft": "sft", "rl": "rl"})
    assert columns[-6:] == ["frac80", "frac80_lo", "frac80_hi", "toy", "toy_lo", "toy_hi"]
    assert [row[-3:] for row in rows] == [[2.0, 1.0, 3.0], [3.0, 2.0, 4.0]]
    head, table = table1({"eap_summary": (["job", "experiment", "model_pair", *columns],
                                          [["j", "eap", "p", *row] for row in rows])})
    assert table[0][head.index("toy (rl)")] == "3 [2, 4]"
    values = wandb_values("0.5", s)
    assert {k: v for k, v in values.items() if k.startswith("eap/toy/")} == {
        "eap/toy/sft": 2.0, "eap/toy/rl": 3.0, "eap/toy/diff": 1.0, "eap/toy/diff_lo": 0.5, "eap/toy/diff_hi": 1.5}
    _, tables = compare_tables("d", {"0.5": {"b": s, "c": b}}, "a")
    assert tables["toy"] == [["d", 0.5, 8, "a", 8, 2.0, 1.0, 3.0, None, None, None],
                             ["d", 0.5, 8, "b", 8, 3.0, 2.0, 4.0, 1.0, 0.5, 1.5],
                             ["d", 0.5, 8, "c", 8, 5.0, 4.0, 6.0, 3.0, 0.5, 1.5]]
    assert compare_wandb(tables, "a")["eap/toy/c_minus_a"] == 3.0
    counts = {"questions": 8, "a_correct": 8, "b_correct": 8, "c_correct": 8, "n_selected": 8, "tbar": 10.0}
    assert "| 0.5 | 8 | toy | c | 5 [4, 6] | 3 [0.5, 1.5] |" in compare_console("d", {"c": (None, counts)}, tables, "a")
    monkeypatch.delitem(RESULTS, "toy")
    assert "toy" not in compare_tables("d", {"0.5": {"b": s}}, "a")[1]


@pytest.mark.parametrize("faithful", [True, False])
def test_wandb_keys_of_each_kind(faithful):
    s = summary(faithful=faithful) | {"tau": 1.3}
    values = wandb_values("0.5", s)
    assert "eap/distribution_kurtosis/diff_lo" not in values and "eap/gini/diff_lo" in values  # point values: none
    assert values["eap/loss_adjusted/slope"] == 1.5 and "eap/loss_adjusted/sft" not in values
    assert {k for k in values if k.startswith("eap/information_complexity_pooled/")} == {
        f"eap/information_complexity_pooled/{k}" for k in ("sft", "rl", "diff")}
    assert values["eap/tau/rl"] == 1.3
    assert (values.get("eap/frac80/sft_lo"), values.get("eap/frac80/rl_hi")) == ((0.1, 0.4) if faithful else
                                                                                (None, None))
    assert all(isinstance(v, float) and not math.isnan(v) for v in values.values())


def test_ranked_tests_join_their_results_in_both_modes():
    """Role, p, Holm p and finding reach the row of their own result (pair mode: stage-less tests), never the
    reference's row."""
    from types import SimpleNamespace

    from rlsft.experiments.eap_family import run_family

    s = summary() | {"near_duplicates": [["gini", "top_mass"]]}
    for m in ("gini", "top_mass", "self_entropy"):
        s[m]["p"] = 0.01
    primary = SimpleNamespace(metric="gini", alpha=0.5)
    columns, rows = difference_rows("d", {"0.5": s}, run_family({"0.5": s}, primary))
    cells = {row[2]: dict(zip(columns[6:], row[6:])) for row in rows}
    assert cells["gini"]["role"] == "primary" and cells["gini"]["p"] == cells["gini"]["p_holm"] == 0.01
    assert cells["top_mass"]["role"] == "secondary" and cells["top_mass"]["p_holm"] >= 0.01
    assert cells["top_mass"]["finding"] == cells["gini"]["finding"] and "gini" in cells["gini"]["finding"]
    assert cells["distribution_kurtosis"] == {"role": "point", "p": None, "p_holm": None, "finding": None}
    per_stage = {"0.5": {"b": s, "c": s}}
    _, tables = compare_tables("d", per_stage, "a", run_family(per_stage, primary, compare=True))
    assert [row[11] for row in tables["gini"]] == [None, "primary", "primary"]
