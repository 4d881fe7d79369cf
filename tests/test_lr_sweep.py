"""experiment=lr_sweep (method.md 8: a small lr sweep where an arm does not learn at the shared rate): the validation
split never holds an evaluated or trained question, each rate is a model of its own, and the refusals."""

import csv
import json

import pytest

from conftest import launch
from rlsft.data import distinct_records, load_records, normalise_question
from rlsft.overlap import training_pool

BASE = "{source:tiny,tiny:{seed:3}}"
TRAIN = "train:{name:arith,source:arithmetic,arithmetic:{count:30,digits:1}},eval_n:4"
STAGES = ("model_pair.stages=["
          f"{{name:base,model:{BASE}}},"
          f"{{name:sft,model:{{source:derived,base:{BASE},recipe:{{kind:sft,{TRAIN},steps:2,batch_size:4,lr:0.001}}}}}}]")
# validation: 1-digit questions of another seed, so some are also evaluated (dataset seed 0) or trained (seed 0 too)
VALIDATION = "lr_sweep.validation={name:val,source:arithmetic,seed:5,arithmetic:{count:40,digits:1,unique:false}}"
FAMILY = ["model_pair=tiny", STAGES, "dataset.arithmetic.count=12", "run.device=cpu", "lr_sweep.arm=sft"]


@pytest.mark.slow  # two tiny trainings in a subprocess
def test_a_sweep_trains_each_rate_and_scores_it_on_questions_never_evaluated_or_trained(tmp_path, cache_dir):
    run = tmp_path / "run"
    res = launch("experiment=lr_sweep", *FAMILY, VALIDATION, "lr_sweep.lrs=[0.01]", f"hydra.run.dir={run}")
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((run / "lr_sweep.json").read_text())
    assert [r["lr"] for r in result["rows"]] == [0.001, 0.01] and result["own_lr"] == 0.001
    assert [r["stage"] for r in result["rows"]] == ["sft", "sft_lr0.01"]
    assert all(r["optimizer_steps"] == 2 for r in result["rows"])
    # two trained models under different keys (the lr is part of the recipe)
    assert sorted(p.name.split("-")[0] for p in (cache_dir / "models").iterdir() if p.is_dir()) == ["sft", "sft"]
    # the validation questions, recomputed here: the split minus the evaluated and the training questions
    from omegaconf import OmegaConf

    val = OmegaConf.create({"name": "val", "source": "arithmetic", "seed": 5, "answer_format": "plain", "n": None,
                            "arithmetic": {"count": 40, "digits": 1, "n_ops": 1, "style": "bare", "ops": "+-",
                                           "unique": False}})
    evaluated = OmegaConf.create({**OmegaConf.to_container(val), "name": "arithmetic", "seed": 0,
                                  "arithmetic": {**OmegaConf.to_container(val.arithmetic), "count": 12,
                                                 "unique": True}})  # conf/dataset/arithmetic.yaml
    spec = {"source": "derived", "base": {"source": "tiny", "tiny": {"seed": 3}},
            "recipe": {"kind": "sft", "train": {"name": "arith", "source": "arithmetic",
                                                "arithmetic": {"count": 30, "digits": 1}},
                       "eval_n": 4, "steps": 2, "batch_size": 4, "lr": 0.001}}
    pool = training_pool(spec)  # the recipe's training split minus its own eval questions (rlsft.overlap)
    left_out = {normalise_question(r.question) for r in [*load_records(evaluated), *pool]}
    expected = [r for r in distinct_records(load_records(val))[0] if normalise_question(r.question) not in left_out]
    assert 0 < len(expected) < len(distinct_records(load_records(val))[0])
    assert result["n"] == len(expected) and all(r["n"] == len(expected) for r in result["rows"])
    assert f"{len(expected)} kept" in res.stdout
    rows = list(csv.DictReader(open(run / "lr_sweep.csv")))
    assert [float(r["lr"]) for r in rows] == [0.001, 0.01]
    assert (run / "lr_sweep_accuracy.png").is_file()
    assert f"[lr_sweep] sft (seed None): picked lr {result['picked_lr']:g}" in res.stdout
    # the base, on the same questions: random tiny models answer none, so no rate is above it
    assert result["base"]["n"] == len(expected) and result["picked_beats_base"] is False
    assert "cannot tell that sft learns at any of these rates" in res.stdout


def test_the_gain_over_the_base_is_paired_and_its_p_value_is_mcnemars():
    """Against statsmodels-free arithmetic: the exact McNemar test is a binomial test on the discordant questions
    (here 30 only the pick answers, 10 only the base: p = 2 P(X <= 10), X ~ Bin(40, 1/2))."""
    from math import comb

    from rlsft.experiments.lr_sweep import paired_gain

    picked = [True] * 30 + [False] * 10 + [True] * 50 + [False] * 60
    base = [False] * 30 + [True] * 10 + [True] * 50 + [False] * 60
    gain = paired_gain(picked, base)
    assert gain["diff"] == pytest.approx(20 / 150) and (gain["only_picked"], gain["only_base"]) == (30, 10)
    assert gain["p"] == pytest.approx(2 * sum(comb(40, k) for k in range(11)) / 2**40)
    assert paired_gain([True, False], [True, False])["p"] == 1.0  # no discordant question: nothing to tell


def test_the_pick_is_the_most_accurate_rate_and_a_tie_keeps_the_nearest_to_the_arms_own():
    from rlsft.experiments.lr_sweep import pick

    rows = [{"lr": lr, "correct": c} for lr, c in ((1e-6, 30), (5e-6, 41), (1e-5, 41), (2e-5, 12))]
    assert pick(rows, 2e-5)["lr"] == 1e-5
    assert pick(rows, 1e-6)["lr"] == 5e-6
    assert pick([{"lr": 1e-6, "correct": 0}, {"lr": 2e-5, "correct": 0}], 2e-5)["lr"] == 2e-5


@pytest.mark.parametrize("overrides,message", [
    (["lr_sweep.arm=null"], "experiment=lr_sweep needs lr_sweep.arm"),
    (["lr_sweep.lrs=[]"], "lr_sweep.lrs must be a non-empty list of learning rates > 0"),
    (["lr_sweep.lrs=[0.01,-1]"], "lr_sweep.lrs must be a non-empty list of learning rates > 0"),
    (["lr_sweep.lrs=[0.01]", "lr_sweep.arm=base"], "lr_sweep.arm='base' is not a trained arm of model_pair 'tiny' "
                                                   r"\(trained arms: \['sft'\]\)"),
    (["lr_sweep.lrs=[0.01]", "lr_sweep.seed=4"], "arm 'sft' has no stage of seed 4"),
    (["lr_sweep.lrs=[0.01]", "lr_sweep.validation.arithmetic.count=5"], r"keeps \d+ questions \(< 20\)"),
])
def test_bad_sweeps_are_refused_in_one_line(tmp_path, cache_dir, overrides, message):
    import re

    res = launch("experiment=lr_sweep", *FAMILY, "logger=disabled", *overrides, f"hydra.run.dir={tmp_path / 'r'}")
    assert res.returncode != 0
    assert re.search(message, res.stderr), res.stderr[-2000:]
    assert not (cache_dir / "models").exists()  # refused before anything trained
