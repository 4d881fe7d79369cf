"""The arms study (rlsft.experiments.eap_study): a tiny family of arms on two seeds, end to end through launch.py,
and its tables recomputed from the saved per-seed scores and answers."""

import csv
import json

import numpy as np
import pytest

from conftest import launch
from rlsft.eap import per_sample
from rlsft.hierarchical import seed_question_interval
from rlsft.tracking import read_offline_run

BASE = "{source:tiny,tiny:{seed:3}}"
TRAIN = "train:{name:arith,source:arithmetic,arithmetic:{count:30,digits:1}},eval_n:4,lr:0.001"
GRPO = (TRAIN + ",steps:2,max_new_tokens:16,num_generations:8,batch_questions:4,dynamic_sampling:false,eval_every:0,"
        "save_every:0")
STAGES = ("model_pair.stages=["
          f"{{name:base,model:{BASE}}},"
          f"{{name:sft,model:{{source:derived,base:{BASE},recipe:{{kind:sft,{TRAIN},steps:4,batch_size:8}}}}}},"
          f"{{name:grpo,model:{{source:derived,base:{BASE},recipe:{{{GRPO}}}}}}},"
          f"{{name:grpo_random,model:{{source:derived,base:{BASE},recipe:{{kind:grpo_random,{GRPO}}}}}}}]")
FAMILY = ["model_pair=tiny", STAGES, "model_pair.seeds=[0,1]", "model_pair.budget_reference=grpo",
          "dataset.arithmetic.count=8", "run.device=cpu"]
ARMS = {"sft": ["sft_s0", "sft_s1"], "grpo": ["grpo_s0", "grpo_s1"], "grpo_random": ["grpo_random_s0", "grpo_random_s1"]}


def _csv(path):
    return list(csv.DictReader(open(path)))


@pytest.mark.slow  # six tiny trainings and seven scored stages in a subprocess
def test_the_study_reports_every_arm_over_its_seeds(tmp_path, cache_dir):
    run = tmp_path / "run"
    res = launch("experiment=eap", *FAMILY, "eap.reference=base", "eap.compare=[sft,grpo,grpo_random]",
                 "eap.require_correct=false", "eap.alphas=[1.0]", "eap.n_boot=400", f"hydra.run.dir={run}")
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert out.index("STUDY (method.md 8): 3 arms x up to 2 seeds against base") < out.index(
        "PRIMARY comparison per arm: effective_edges at alpha 1") < out.index("Accuracy (secondary)") < out.index(
        "Arm against arm (secondary)") < out.index("Training budgets")
    # six trained models, one per arm and seed, each cached under its own key
    trained = sorted(p.name.split("-")[0] for p in (cache_dir / "models").iterdir() if p.is_dir())
    assert trained == ["grpo", "grpo", "grpo_random", "grpo_random", "sft", "sft"]

    # the primary per arm: the mean over seeds and questions of each seed's per-sample values, against the base
    ids = json.loads((run / "eap_selection.json").read_text())["ids"]
    scores = {}
    for stage in ["base", *sum(ARMS.values(), [])]:
        saved = np.load(run / f"eap_scores_{stage}_alpha1.npz")
        assert list(saved["ids"]) == ids
        scores[stage] = per_sample(saved["W"], saved["mask"], "effective_edges")
    rows = {r["arm"]: r for r in _csv(run / "study_primary.csv")}
    assert list(rows) == ["base", "sft", "grpo", "grpo_random"]
    for arm, stages in ARMS.items():
        values = np.stack([scores[s] for s in stages])
        expected = seed_question_interval(values, scores["base"], n_boot=400, seed=0)
        r = rows[arm]
        assert float(r["value"]) == pytest.approx(values.mean())
        assert float(r["diff"]) == pytest.approx(values.mean() - scores["base"].mean())
        assert (float(r["lo"]), float(r["hi"])) == pytest.approx((expected.lo, expected.hi))
        assert int(r["seeds"]) == 2 and int(r["questions"]) == len(ids)
        assert r["verdict"] == ("cannot tell" if float(r["p_holm"]) >= 0.05 else
                                f"{arm} {'higher' if float(r['diff']) > 0 else 'lower'}")
    assert rows["base"]["diff"] == "" and int(rows["base"]["seeds"] or 0) == 0

    # accuracy: random tiny models answer nothing right: every difference 0, "cannot tell"
    accuracy = _csv(run / "study_accuracy.csv")
    assert [r["arm"] for r in accuracy] == ["base", "sft", "grpo", "grpo_random"]
    assert all(float(r["value"]) == 0 for r in accuracy)
    assert all(r["verdict"] == "cannot tell" for r in accuracy[1:])
    pairs = _csv(run / "study_arm_pairs.csv")
    assert [(r["measure"], r["arms"]) for r in pairs] == [
        (m, p) for m in ("accuracy", "effective_edges") for p in ("sft - grpo", "sft - grpo_random",
                                                                  "grpo - grpo_random")]
    sft_grpo = next(r for r in pairs if r["measure"] == "effective_edges" and r["arms"] == "sft - grpo")
    paired = np.stack([scores[s] for s in ARMS["sft"]]) - np.stack([scores[s] for s in ARMS["grpo"]])
    assert float(sft_grpo["diff"]) == pytest.approx(paired.mean())

    # budgets: every trained stage, its lr, and whether it is within 10% of grpo's (sft trained 4 steps, grpo 2)
    budget = {r["stage"]: r for r in _csv(run / "study_budget.csv")}
    assert sorted(budget) == sorted(sum(ARMS.values(), []))
    assert {float(r["lr"]) for r in budget.values()} == {0.001}
    assert budget["sft_s0"]["optimizer_steps"] == "4" and "not within 10%" in budget["sft_s0"]["budget_vs_grpo"]
    assert "[budget] warning: not within 10% of grpo's budget" in out and "sft_s0 (optimizer_steps +100%" in out

    # every per-seed test is secondary (the primary is the arms'); W&B (offline) has the study's numbers
    assert {r["role"] for r in _csv(run / "eap_tests.csv")} <= {"secondary", "point"}
    summary = read_offline_run(run)["summary"]
    assert summary["study/effective_edges/sft_minus_base"] == pytest.approx(float(rows["sft"]["diff"]))

    # experiment=evaluate on the same family: the per-seed accuracy table with the budget check
    res = launch("experiment=evaluate", *FAMILY, "logger=disabled", f"hydra.run.dir={tmp_path / 'evaluate'}")
    assert res.returncode == 0, res.stderr[-3000:]
    table = {r["stage"]: r for r in _csv(tmp_path / "evaluate" / "accuracy.csv")}
    assert list(table) == ["base", *sum(ARMS.values(), [])]
    assert table["base"]["budget_vs_grpo"] == "" and "not within 10%" in table["sft_s1"]["budget_vs_grpo"]
    assert "is not cached: training it now" not in res.stdout  # the study's models, reused
    assert "[budget] warning: not within 10% of grpo's budget" in res.stdout


def test_the_study_refuses_what_it_cannot_pair_or_resolve(tmp_path):
    """Arms trained on different seeds cannot be paired by seed; loss_adjusted has no per-question values; an arm
    of several seeds is no reference."""
    from test_config import composed
    from rlsft.errors import RlsftError
    from rlsft.experiments.common import RunContext
    from rlsft.experiments.eap import compare_stages
    from rlsft.experiments.eap_study import check_study, compared_arms, is_study

    tiny = "model:{source:tiny}"
    stages = ("model_pair.stages=[{name:base,%s},{name:a0,arm:a,seed:0,%s},{name:a1,arm:a,seed:1,%s},"
              "{name:b0,arm:b,seed:0,%s},{name:b2,arm:b,seed:2,%s}]" % ((tiny,) * 5))
    cfg = composed("experiment=eap", "model_pair=tiny", stages, "eap.reference=base", "eap.compare=[a,b]")
    ctx = RunContext(cfg, tmp_path, str(tmp_path), None)
    reference, chosen = compare_stages(ctx)
    arms = compared_arms(ctx, chosen)
    assert reference == "base" and list(chosen) == ["base", "a0", "a1", "b0", "b2"] and is_study(arms)
    assert arms == {"a": ["a0", "a1"], "b": ["b0", "b2"]}
    with pytest.raises(RlsftError, match=r"trained on different seeds \(\{'a': \[0, 1\], 'b': \[0, 2\]\}\)"):
        check_study(cfg, ctx, arms)
    cfg = composed("experiment=eap", "model_pair=tiny", stages, "eap.reference=base", "eap.compare=[a]",
                   "eap.primary.metric=loss_adjusted")
    with pytest.raises(RlsftError, match="loss_adjusted is a refitted coefficient"):
        check_study(cfg, ctx, {"a": ["a0", "a1"]})
    cfg = composed("experiment=eap", "model_pair=tiny", stages, "eap.reference=a", "eap.compare=[b]")
    with pytest.raises(RlsftError, match="eap.reference='a' is an arm of 2 seeds"):
        compare_stages(RunContext(cfg, tmp_path, str(tmp_path), None))
