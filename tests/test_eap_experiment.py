"""The EAP experiment end to end on the tiny pair: alpha sweeps, identical models, bad input."""

import json

import numpy as np

from conftest import launch
from rlsft.eap import activation_intensity, distribution_kurtosis, information_complexity
from rlsft.report import main

TINY = ["experiment=eap", "model_pair=tiny", "eap.require_correct=false", "dataset.arithmetic.count=8",
        "eap.n_boot=200", "logger=disabled"]


def test_alpha_sweep_generates_once_and_saves_recomputable_matrices(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    res = launch("-m", *TINY, "truncation.alpha=0.1,0.5", f"hydra.sweep.dir={sweep}")
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
            assert np.isclose(summary["activation_intensity"][side], activation_intensity(W, mask))
            assert np.isclose(summary["distribution_kurtosis"][side], distribution_kurtosis(W, mask))
            assert np.isclose(summary["information_complexity"][side], information_complexity(W, mask))
        assert (job / "eap_summary.md").exists() and (job / f"eap_relative_change_alpha{alpha}.png").exists()
    assert len(cuts) == 2

    # The report gathers the sweep: Table 1 has one row per alpha, the page lists an unfinished job.
    import shutil

    shutil.copytree(jobs[0], sweep / "99")
    (sweep / "99" / "result.json").unlink()
    assert main([str(sweep)]) == 0
    table = (sweep / "report" / "table1_eap.csv").read_text().splitlines()
    assert table[0].startswith("model_pair,dataset,alpha,activation_intensity (sft),activation_intensity (rl)")
    assert [line.split(",")[2] for line in table[1:]] == ["0.1", "0.5"]
    page = (sweep / "report" / "index.html").read_text()
    assert "eap_vs_alpha_tiny_arithmetic.png" in page and "<td>99</td>" in page
    assert main([str(tmp_path / "nothing")]) == 2


def test_identical_models_give_zero_differences(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    res = launch(*TINY, "model_pair.stages.1.model.tiny.seed=0", "eap.alphas=[0.3]", "eap.shared_range=true",
                 f"hydra.run.dir={run_dir}")
    assert res.returncode == 0, res.stderr
    summary = json.loads((run_dir / "eap_metrics.json").read_text())["alphas"]["0.3"]
    for m in ("activation_intensity", "information_complexity", "distribution_kurtosis", "sample_diversity"):
        assert summary[m]["diff"] == 0.0, m
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
    assert res.returncode == 2 and "truncation.beta must be > 0 and < truncation.gamma" in res.stderr
