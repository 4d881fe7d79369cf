"""The EAP experiment end to end on the tiny pair: alpha sweeps, identical models, bad input."""

import json

import numpy as np
import pytest
import scipy.stats

from conftest import launch
from rlsft.eap import METRICS
from rlsft.report import main
from rlsft.tracking import read_offline_run
from test_eap_metrics import hand_l_kurtosis  # probability-weighted moments, by hand

TINY = ["experiment=eap", "model_pair=tiny", "eap.require_correct=false", "dataset.arithmetic.count=8",
        "eap.n_boot=200", "logger=disabled"]


def stage_means(W, mask):
    """The per-sample metrics written out with numpy/scipy, averaged over samples (method.md 2.6)."""
    X = W[:, mask].astype(np.float64)
    A = np.abs(X)
    complexity = [scipy.stats.entropy(np.histogram(a / a.max(), bins=100, range=(0, 1))[0]) for a in A]
    return {"activation_intensity": A.mean(), "information_complexity": np.mean(complexity),
            "distribution_kurtosis": np.mean(scipy.stats.kurtosis(X, axis=1)),
            "l_kurtosis": np.mean([hand_l_kurtosis(x) for x in X])}


@pytest.mark.slow  # a 3-alpha sweep of whole runs: outside the default suite's 6 minutes, run by CI with -m slow
def test_alpha_sweep_generates_once_and_saves_recomputable_matrices(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    res = launch("-m", *TINY, "eap.alphas=[]", "truncation.alpha=0.1,0.5", f"hydra.sweep.dir={sweep}", "logger=offline")
    assert res.returncode == 0, res.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "result.json").exists())
    assert len(jobs) == 2
    assert len(list(cache_dir.glob("generations/*/records.jsonl"))) == 2  # one per stage, shared by both alphas
    selections = [json.loads((j / "eap_selection.json").read_text()) for j in jobs]
    assert selections[0]["ids"] == selections[1]["ids"]
    cuts = set()
    for job in jobs:
        metrics = json.loads((job / "eap_metrics.json").read_text())
        (alpha, summary), = metrics["alphas"].items()
        cuts.add(summary["cut_len"])
        for stage, side in (("sft", "sft"), ("rl", "rl")):
            saved = np.load(job / f"eap_scores_{stage}_alpha{alpha}.npz")
            W, mask = saved["W"], saved["mask"]
            assert W.shape[0] == len(selections[0]["ids"]) and list(saved["ids"]) == selections[0]["ids"]
            assert not W[:, ~mask].any()  # zero off the edge mask
            # The table's numbers are recomputable from the saved matrices alone.
            for m, value in stage_means(W, mask).items():
                assert np.isclose(summary[m][side], value), m
            assert np.isclose(summary["self_entropy"][side], saved["loss"].mean())
            assert list(saved["scored_tokens"]) == [min(n, summary["cut_len"]) for n in saved["answer_len"]]
        # W&B: alpha, cut length, pair and dataset in the config; one summary key per metric, stage and difference.
        wb = read_offline_run(job)
        assert wb["config"]["alpha"] == float(alpha) and wb["config"]["cut_len"] == summary["cut_len"]
        assert (wb["config"]["pair"], wb["config"]["dataset"]) == ("tiny", "arithmetic")
        assert wb["tags"][:2] == ["tiny", "arithmetic"] and f"alpha={float(alpha)}" in wb["tags"]  # experiments.eap.tags
        for m in [*METRICS, "self_entropy"]:
            s = summary[m]
            expected = {"sft": s["sft"], "rl": s["rl"], "diff": s["diff"], "diff_lo": s["diff_ci"][0],
                        "diff_hi": s["diff_ci"][1]}
            if m in METRICS and not METRICS[m].interval:  # a point value: no interval keys
                expected = {k: v for k, v in expected.items() if k in ("sft", "rl", "diff")}
                assert f"eap/{m}/diff_lo" not in wb["summary"]
            assert {k: wb["summary"][f"eap/{m}/{k}"] for k in expected} == expected, m
        assert (job / "eap_summary.md").exists() and (job / f"eap_relative_change_alpha{alpha}.png").exists()
    assert len(cuts) == 2

    # The report gathers the sweep: Table 1 has one row per alpha, the page lists an unfinished job.
    import shutil

    shutil.copytree(jobs[0], sweep / "99")
    (sweep / "99" / "result.json").unlink()
    assert main([str(sweep)]) == 0
    import csv

    table = list(csv.reader((sweep / "report" / "table1_eap.csv").open()))
    tested = [f"{m} (RL - SFT test)" for m, spec in METRICS.items() if spec.interval]  # point values: no test
    assert table[0][3:] == [f"{m} ({s})" for m in METRICS for s in ("sft", "rl")] + tested
    assert all(" secondary, Holm p = " in cell for cell in table[1][-len(tested):])  # no alpha 1 here: no primary
    assert [row[2] for row in table[1:]] == ["0.1", "0.5"]
    page = (sweep / "report" / "index.html").read_text()
    assert "eap_vs_alpha_tiny_arithmetic.png" in page and "<td>99</td>" in page
    assert main([str(tmp_path / "nothing")]) == 2


@pytest.mark.slow  # a whole tiny run in a subprocess: outside the default suite's 6 minutes, run by CI with -m slow
def test_identical_models_give_zero_differences(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    res = launch(*TINY, "model_pair.stages.1.model.tiny.seed=0", "eap.alphas=[0.3,1.0]", "eap.shared_range=true",
                 f"hydra.run.dir={run_dir}", "logger=offline")
    assert res.returncode == 0, res.stderr
    alphas = json.loads((run_dir / "eap_metrics.json").read_text())["alphas"]
    summary = alphas["0.3"]
    for m in [*METRICS, "self_entropy", "information_complexity_pooled", "sample_diversity"]:
        assert summary[m]["diff"] == 0.0, m
    for m in [*(m for m, spec in METRICS.items() if spec.interval), "self_entropy"]:
        assert summary[m]["diff_ci"] == [0.0, 0.0], m  # every paired difference is 0: a zero-width interval
    assert abs(summary["loss_adjusted"]["c"]) < 1e-9
    assert "(pooled, no interval)" in res.stdout and "loss_adjusted" in res.stdout
    # Several alphas in one job: one W&B row per alpha, eap/* plotted against alpha.
    wb = read_offline_run(run_dir)
    assert wb["metrics"]["eap/*"] == "alpha" and wb["config"]["alpha"] == [0.3, 1.0]
    rows = [h for h in wb["history"] if "alpha" in h]
    assert [r["alpha"] for r in rows] == [0.3, 1.0]
    assert rows[1]["eap/gini/sft"] == alphas["1"]["gini"]["sft"]
    sft = np.load(run_dir / "eap_scores_sft_alpha0.3.npz")["W"]
    rl = np.load(run_dir / "eap_scores_rl_alpha0.3.npz")["W"]
    assert np.array_equal(sft, rl)


def test_no_question_correct_for_both_is_a_clear_error(tmp_path, cache_dir):
    res = launch("experiment=eap", "model_pair=tiny", "dataset.arithmetic.count=4", "logger=disabled",
                 f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 2
    assert "no question of arithmetic was answered correctly by both models (sft: 0/4, rl: 0/4)" in res.stderr
    assert not list(cache_dir.glob("eap_scores/*/scores.npz"))


def test_out_of_range_alpha_and_beta(tmp_path, cache_dir):
    res = launch(*TINY, "eap.alphas=[0.1,1.5]", f"hydra.run.dir={tmp_path / 'a'}")
    assert res.returncode == 2 and "eap.alphas must each be in (0, 1]" in res.stderr
    res = launch(*TINY, "truncation.beta=2.0", f"hydra.run.dir={tmp_path / 'b'}")
    assert res.returncode == 2 and "truncation.beta must be >= 0 and < truncation.gamma" in res.stderr


THREE = ["model_pair.stages=[{name:a,model:{source:tiny,tiny:{seed:0}}},{name:b,model:{source:tiny,tiny:{seed:1}}},"
         "{name:c,model:{source:tiny,tiny:{seed:2}}}]"]


@pytest.mark.slow  # three tiny models scored in a subprocess
def test_several_stages_against_one_reference_on_one_selection(tmp_path, cache_dir):
    import csv

    run_dir = tmp_path / "run"
    res = launch(*TINY, *THREE, "eap.reference=a", "eap.compare=[b,c]", "eap.alphas=[0.5]", "eap.faithfulness=true",
                 "eap.faithfulness_points=5", f"hydra.run.dir={run_dir}")
    assert res.returncode == 0, res.stderr
    ids = json.loads((run_dir / "eap_selection.json").read_text())["ids"]
    values = {}
    for stage in "abc":  # every stage scored on the one shared selection
        saved = np.load(run_dir / f"eap_scores_{stage}_alpha0.5.npz")
        assert list(saved["ids"]) == ids
        values[stage] = stage_means(saved["W"], saved["mask"])
    for m in ("activation_intensity", "l_kurtosis", "distribution_kurtosis"):
        rows = list(csv.DictReader(open(run_dir / f"eap_compare_{m}.csv")))
        assert [r["stage"] for r in rows] == ["a", "b", "c"] and all(int(r["n"]) == len(ids) for r in rows)
        for r in rows:  # each row recomputable from the saved matrices; the difference is to the reference
            assert np.isclose(float(r["value"]), values[r["stage"]][m]), (m, r)
            if r["stage"] != "a":
                assert np.isclose(float(r["minus_reference"]), values[r["stage"]][m] - values["a"][m])
                if m == "distribution_kurtosis":  # a point value: no interval
                    assert r["diff_lo"] == r["diff_hi"] == r["lo"] == r["hi"] == ""
                else:
                    assert float(r["diff_lo"]) <= float(r["minus_reference"]) <= float(r["diff_hi"])
        assert (run_dir / f"eap_compare_{m}.png").exists()
    assert "stage - a [95% CI]" in res.stdout
    # eap.faithfulness: one frac80 row per stage; each difference is that pair's own two-stage frac80 difference.
    frac = list(csv.DictReader(open(run_dir / "eap_compare_frac80.csv")))
    assert [r["stage"] for r in frac] == ["a", "b", "c"]
    pairs = json.loads((run_dir / "eap_compare.json").read_text())["alphas"]["0.5"]
    for r in frac[1:]:
        f = pairs[r["stage"]]["faithfulness"]
        assert float(r["value"]) == f["rl"]["frac80"] and float(frac[0]["value"]) == f["sft"]["frac80"]
        assert np.isclose(float(r["minus_reference"]), f["rl"]["frac80"] - f["sft"]["frac80"])
        assert float(r["diff_lo"]) <= float(r["minus_reference"]) <= float(r["diff_hi"])


def test_compare_names_bad_stages(tmp_path, cache_dir):
    res = launch(*TINY, *THREE, "eap.reference=a", "eap.compare=[b,zz]", f"hydra.run.dir={tmp_path / 'x'}")
    assert res.returncode == 2 and "name stages ['zz'] that model_pair 'tiny' does not have" in res.stderr
    res = launch(*TINY, "eap.reference=sft", f"hydra.run.dir={tmp_path / 'y'}")
    assert res.returncode == 2 and "eap.reference='sft' needs eap.compare" in res.stderr


@pytest.mark.slow
def test_causal_checks_and_calibration_end_to_end(tmp_path, cache_dir):
    """eap.faithfulness, eap.calibrate=match_sft, eap.method=eap_ig, eap.target=margin on the tiny pair; then the same
    with identical stages, where tau must be 1 and every RL - SFT frac80 difference exactly 0."""
    run_dir = tmp_path / "run"
    opts = ["eap.alphas=[0.5]", "eap.faithfulness=true", "eap.faithfulness_points=5", "eap.calibrate=match_sft"]
    res = launch(*TINY, *opts, "eap.method=eap_ig", "eap.ig_steps=2", "eap.target=margin",
                 f"hydra.run.dir={run_dir}", "logger=offline")
    assert res.returncode == 0, res.stderr
    s = json.loads((run_dir / "eap_metrics.json").read_text())["alphas"]["0.5"]
    f = s["faithfulness"]
    assert f["n_points"] == 5 and f["baseline"] == "counterfactual"
    for side in ("sft", "rl"):
        assert f[side]["shares"][:5] == [0.2, 0.4, 0.6, 0.8, 1.0] or 1.0 in f[side]["shares"]
        assert f[side]["curve"][-1] == pytest.approx(1.0)  # every edge kept is the model itself
        lo, hi = f[side]["frac80_ci"]
        assert lo <= f[side]["frac80"] <= hi
    assert f["diff"]["frac80"] == f["rl"]["frac80"] - f["sft"]["frac80"]
    assert s["tau"] > 0
    wb = read_offline_run(run_dir)
    assert wb["summary"]["eap/frac80/diff"] == f["diff"]["frac80"] and wb["summary"]["eap/tau/rl"] == s["tau"]
    curves = (run_dir / "eap_faithfulness.csv").read_text().splitlines()
    n_rows = 3 * (len(f["sft"]["shares"]) + len(f["rl"]["shares"]))  # cross-fitted, control, within per stage
    assert len(curves) == 1 + n_rows and (run_dir / "eap_faithfulness.png").exists()
    assert "frac80" in res.stdout and "tau" in res.stdout
    # The margin target's loss is not a self-entropy: labelled as what it is; loss_adjusted (on log NLL) not run.
    assert "loss of eap.target=margin: -mean own-token margin" in res.stdout and "self_entropy (loss" not in res.stdout
    assert s["target"] == "margin" and "loss_adjusted" not in s

    same = tmp_path / "same"
    res = launch(*TINY, *opts, "model_pair.stages.1.model.tiny.seed=0", f"hydra.run.dir={same}", "logger=disabled")
    assert res.returncode == 0, res.stderr
    s = json.loads((same / "eap_metrics.json").read_text())["alphas"]["0.5"]
    assert abs(s["tau"] - 1) < 1e-6
    # tau is 1 only to 1e-6, so a resample may differ in the 6th digit
    assert s["faithfulness"]["diff"]["frac80"] == 0.0 and np.allclose(s["faithfulness"]["diff"]["frac80_ci"], 0, atol=1e-4)
