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
    # and each arm's mean over its seeds, the unit the verdict is on
    budget = {r["stage"]: r for r in _csv(run / "study_budget.csv")}
    means = [f"{arm} (mean of 2 seeds)" for arm in ARMS if arm != "base"]
    assert sorted(budget) == sorted(sum(ARMS.values(), []) + means)
    assert {float(r["lr"]) for r in budget.values()} == {0.001}
    assert budget["sft_s0"]["optimizer_steps"] == "4" and "not within 10%" in budget["sft_s0"]["budget_vs_grpo"]
    assert float(budget["sft (mean of 2 seeds)"]["answer_tokens"]) == pytest.approx(
        sum(float(budget[s]["answer_tokens"]) for s in ARMS["sft"]) / 2, abs=0.5)
    assert budget["grpo (mean of 2 seeds)"]["budget_vs_grpo"] == "within 10%"
    assert "[budget] warning: arms not within 10% of grpo's budget" in out and "sft (optimizer_steps +100%" in out
    assert "[budget] note: seeds not within 10% of grpo's mean" in out and "sft_s0 (optimizer_steps +100%" in out

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
    assert "not within 10%" in table["sft_s1"]["arm_budget_vs_grpo"] and table["base"]["arm_budget_vs_grpo"] == ""
    assert "is not cached: training it now" not in res.stdout  # the study's models, reused
    assert "[budget] warning: arms not within 10% of grpo's budget" in res.stdout

    # eap.selection=per_arm on the same models: each arm on its own questions (here all of them: require_correct is
    # off), the reference scored per arm beside the arm's scores; the same numbers as the shared selection's
    per_arm = tmp_path / "per_arm"
    res = launch("experiment=eap", *FAMILY, "eap.reference=base", "eap.compare=[sft,grpo,grpo_random]",
                 "eap.require_correct=false", "eap.alphas=[1.0]", "eap.n_boot=400", "eap.selection=per_arm",
                 "logger=disabled", f"hydra.run.dir={per_arm}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "on each arm's own selection (questions base and every seed of the arm answer correctly)" in res.stdout
    assert sorted(json.loads((per_arm / "eap_selection.json").read_text())["per_arm"]) == sorted(ARMS)
    for arm in ARMS:
        saved = np.load(per_arm / f"eap_scores_base_for_{arm}_alpha1.npz")
        assert per_sample(saved["W"], saved["mask"], "effective_edges") == pytest.approx(scores["base"])
    again = {r["arm"]: r for r in _csv(per_arm / "study_primary.csv")}
    assert {a: again[a]["diff"] for a in ARMS} == {a: rows[a]["diff"] for a in ARMS}

    # experiment=lenses on the same models: beside each seed's rows, every lens per arm over its seeds (lenses_arms),
    # recomputed here from the per-seed tables and the per-question values in lenses.json
    lenses = tmp_path / "lenses"
    res = launch("experiment=lenses", *FAMILY, "eap.reference=base", "eap.compare=[sft,grpo,grpo_random]",
                 "eap.require_correct=false", "lenses.pass_n=4", "lenses.control.n=4", "lenses.n_boot=400",
                 f"hydra.run.dir={lenses}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "is not cached: training it now" not in res.stdout and "## lenses_arms" in res.stdout
    result = json.loads((lenses / "lenses.json").read_text())
    by_arm = {(r["arm"], r["measure"]): r for r in _csv(lenses / "lenses_arms.csv")}
    assert {a for a, _ in by_arm} == set(ARMS) and all(int(r["seeds"]) == 2 for r in by_arm.values())
    unchanged = {r["stage"]: float(r["unchanged"]) for r in _csv(lenses / "lenses_weights.csv")}
    task_accuracy = {r["stage"]: float(r["task_accuracy"]) for r in _csv(lenses / "lenses_outputs.csv")}
    pass_1 = {r["stage"]: float(r["pass_at_k"]) for r in _csv(lenses / "lenses_pass_at_k.csv") if r["k"] == "1"}
    for arm, stages in ARMS.items():
        assert float(by_arm[(arm, "unchanged_share")]["value"]) == pytest.approx(
            np.mean([unchanged[s] for s in stages]), abs=1e-4)
        kl = np.array([[np.nan if x is None else x for x in result["outputs"][s]["per_question"]["task_kl"]]
                       for s in stages])
        assert float(by_arm[(arm, "task_kl")]["value"]) == pytest.approx(kl[:, np.isfinite(kl).all(0)].mean(),
                                                                         abs=1e-4)
        for s in stages:  # the per-question values behind the rows are the ones the per-seed tables average
            assert np.mean(result["outputs"][s]["per_question"]["task_correct"]) == pytest.approx(task_accuracy[s])
        assert float(by_arm[(arm, "pass@1 - base")]["value"]) == pytest.approx(
            np.mean([pass_1[s] for s in stages]) - pass_1["base"], abs=1e-4)
    summary = read_offline_run(lenses)["summary"]
    assert summary["lenses/arms/task_kl/sft"] == pytest.approx(float(by_arm[("sft", "task_kl")]["value"]), abs=1e-4)


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


def _gens(correct: dict[str, str]) -> dict:
    """Generations of one length per stage; ``correct`` {stage: a 0/1 string over questions q0, q1, ...}."""
    return {stage: {f"q{i}": {"id": f"q{i}", "correct": c == "1", "prompt_ids": [1, 2, 3], "output_ids": [4, 5, 6, 7]}
                    for i, c in enumerate(flags)} for stage, flags in correct.items()}


def test_per_arm_selection_keeps_each_arm_on_the_questions_it_and_the_reference_answer(capsys):
    """eap.selection=per_arm: an arm's questions are those the reference and every seed of the arm answer (not every
    stage's), so an arm that answers little leaves the others' comparisons whole and is itself left out, said once."""
    from test_config import composed
    from rlsft.errors import RlsftError
    from rlsft.experiments.eap import arm_selections, selection_json

    cfg = composed("experiment=eap", "eap.reference=base", "eap.selection=per_arm", "truncation.delta=1.0")
    gens = _gens({"base": "11111110", "a0": "11110011", "a1": "11011011", "b0": "00111111", "b1": "01111110",
                  "c0": "10000001", "c1": "10000000"})
    arms = {"a": ["a0", "a1"], "b": ["b0", "b1"], "c": ["c0", "c1"]}
    chosen = arm_selections(cfg, gens, "base", arms)
    assert chosen["a"][0].ids == ["q0", "q1", "q3", "q6"] and chosen["b"][0].ids == ["q2", "q3", "q4", "q5", "q6"]
    assert chosen["c"] is None  # one question (q0) answered by base, c0 and c1
    assert "[eap] c is left out of the EAP comparison: only 1 question(s)" in capsys.readouterr().out
    assert selection_json(chosen)["per_arm"]["b"]["ids"] == ["q2", "q3", "q4", "q5", "q6"]
    shared = arm_selections(composed("experiment=eap", "eap.reference=base", "truncation.delta=1.0"),
                            {n: gens[n] for n in ("base", "a0", "a1", "b0", "b1")}, "base", {"a": [], "b": []})
    assert shared["a"] is shared["b"] and shared["a"][0].ids == ["q3", "q6"]  # what every stage answers
    with pytest.raises(RlsftError, match="no arm has 2 questions that base and all its seeds answer correctly"):
        arm_selections(cfg, gens, "base", {"c": ["c0", "c1"]})


def test_arms_on_their_own_questions_are_compared_on_the_questions_both_hold():
    """between_arms and against_reference align by question id: values built from a known function of (seed,
    question) are compared on exactly the shared questions (recomputed here from the function, not the arrays)."""
    from rlsft.experiments.eap_study import ArmValues, against_reference, between_arms

    f = lambda arm, s, q: (1.0 if arm == "a" else 0.0) + 0.1 * s + 0.01 * int(q[1:]) ** 1.5  # noqa: E731
    def arm(name, ids):
        return ArmValues(ids, np.array([[0.05 * int(q[1:]) for q in ids]]),
                         np.array([[f(name, s, q) for q in ids] for s in range(3)]))
    values = {"a": arm("a", ["q0", "q1", "q4", "q7"]), "b": arm("b", ["q2", "q4", "q5", "q7", "q9"]),
              "c": arm("c", ["q3", "q8"]), "d": None}
    pairs = {r["arm"]: r for r in between_arms(values, ["a", "b", "c", "d"], n_boot=200, seed=0)}
    common = ["q4", "q7"]
    expected = np.mean([f("a", s, q) - f("b", s, q) for s in range(3) for q in common])
    assert pairs["a - b"]["diff"].diff == pytest.approx(expected) and pairs["a - b"]["diff"].questions == 2
    assert pairs["a - c"]["diff"] is None and pairs["a - c"]["verdict"] == "cannot tell: 0 question(s) in both selections"
    assert pairs["c - d"]["verdict"].startswith("cannot tell")
    # the table writes a pair that has no test (found on the real arms: dpo had 1 selected question) with empty cells
    from rlsft.experiments.eap_study import pairs_table
    columns, table = pairs_table("arith", {"effective_edges": list(pairs.values())})
    cells = {row[2]: dict(zip(columns, row)) for row in table}
    assert cells["a - c"]["p_holm"] is None and cells["a - c"]["diff"] is None
    assert cells["a - b"]["p_holm"] == pytest.approx(pairs["a - b"]["p_holm"])
    rows = {r["arm"]: r for r in against_reference(values, "base", n_boot=200, seed=0)}
    assert "base" not in rows  # no shared questions: the reference's value is per arm
    assert rows["b"]["reference_value"] == pytest.approx(np.mean([0.05 * k for k in (2, 4, 5, 7, 9)]))
    assert rows["b"]["diff"].diff == pytest.approx(
        np.mean([f("b", s, q) - 0.05 * int(q[1:]) for s in range(3) for q in values["b"].ids]))
    assert rows["d"]["value"] is None and rows["d"]["verdict"] == "cannot tell: fewer than 2 selected questions"


@pytest.mark.slow  # two tiny trainings, three scored stages and their causal checks in a subprocess
def test_the_study_gives_each_arms_causal_check_over_its_seeds(tmp_path, cache_dir):
    """eap.faithfulness=true in a study (method.md 8 with 2.7): each arm's cross-fitted summaries minus the base's,
    one mean over its seeds with an interval over seeds and questions, beside each seed's own check. The arm's
    difference is the mean of the seeds' differences that the per-seed check (summarize) gives."""
    run = tmp_path / "run"
    res = launch("experiment=eap", *FAMILY, "eap.reference=base", "eap.compare=[sft]", "eap.require_correct=false",
                 "eap.alphas=[1.0]", "eap.n_boot=300", "eap.faithfulness=true", "eap.faithfulness_points=8",
                 "eap.faithfulness_splits=4", "eap.faithfulness_draws=2", f"hydra.run.dir={run}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Causal check per arm (method.md 2.7, secondary" in res.stdout
    rows = {(r["summary"], r["arm"]): r for r in _csv(run / "study_faithfulness.csv")}
    assert {s for s, _ in rows} >= {"faith_auc", "faith_auc_minus_control", "frac80", "f_0.1"}
    per_seed = json.loads((run / "eap_compare.json").read_text())["alphas"]["1"]
    for summary in ("faith_auc", "faith_auc_minus_control"):
        r = rows[(summary, "sft")]
        seeds = [per_seed[s]["faithfulness"]["diffs"][summary]["diff"] for s in ARMS["sft"]]
        assert float(r["diff"]) == pytest.approx(np.mean(seeds))
        assert int(r["seeds"]) == 2 and float(r["lo"]) <= float(r["diff"]) <= float(r["hi"])
        assert r["verdict"] in ("cannot tell", "sft higher", "sft lower")
    summary = read_offline_run(run)["summary"]
    assert summary["study/faith_auc/sft_minus_base"] == pytest.approx(float(rows[("faith_auc", "sft")]["diff"]))
