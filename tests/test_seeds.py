"""Training seeds of a family (rlsft.seeds): one derived stage per seed, sharing the base, named by arm."""

import pytest

from rlsft.errors import RlsftError
from rlsft.models import fingerprint
from rlsft.seeds import arms, expand_seeds, stage_names
from rlsft.training.derived import folder_name, split_spec

TRAIN = {"name": "arith", "source": "arithmetic", "arithmetic": {"count": 30, "digits": 1}}
BASE = {"source": "tiny", "tiny": {"seed": 3}}
STAGES = [{"name": "base", "model": BASE},
          {"name": "sft", "model": {"source": "derived", "base": BASE, "recipe": {"kind": "sft", "train": TRAIN}}},
          {"name": "grpo", "model": {"source": "derived", "base": BASE, "recipe": "smollm2_arms"}}]


def test_each_derived_stage_becomes_one_stage_per_seed_on_the_same_base():
    got = expand_seeds(STAGES, [0, 1, 2])
    assert [s["name"] for s in got] == ["base", "sft_s0", "sft_s1", "sft_s2", "grpo_s0", "grpo_s1", "grpo_s2"]
    assert got[0] is STAGES[0]  # the base: one stage, as written
    assert [(s["arm"], s["seed"]) for s in got[1:4]] == [("sft", 0), ("sft", 1), ("sft", 2)]
    assert got[4]["model"]["recipe"] == {"preset": "smollm2_arms", "seed": 0}  # a preset name keeps its preset
    recipes = [split_spec(s["model"]) for s in got[1:]]
    assert [r.seed for _, _, r in recipes] == [0, 1, 2, 0, 1, 2]
    assert {fingerprint(base)["tiny"]["seed"] for base, _, _ in recipes} == {3}  # the seeds share the base
    keys = [folder_name(s["model"]) for s in got[1:]]
    assert len(set(keys)) == 6  # one trained model per (arm, seed)
    assert folder_name({**STAGES[1]["model"], "recipe": {**STAGES[1]["model"]["recipe"], "seed": 1}}) == keys[1]
    assert expand_seeds(STAGES, []) == STAGES  # no seeds: the stages as written


def test_arm_names_stand_for_their_seeds():
    got = arms(expand_seeds(STAGES, [2, 0]))
    assert got == {"base": ["base"], "sft": ["sft_s0", "sft_s2"], "grpo": ["grpo_s0", "grpo_s2"]}  # seed order
    assert stage_names(got, ["base", "grpo", "sft_s2", "zz"]) == ["base", "grpo_s0", "grpo_s2", "sft_s2", "zz"]


@pytest.mark.parametrize("stages,seeds,message", [
    (STAGES, [0, 0], r"model_pair.seeds must be distinct seeds >= 0, got \[0, 0\]"),
    ([STAGES[0], {**STAGES[1], "seed": 4}], [0], r"stage 'sft' sets its own seed"),
    (STAGES + [{"name": "sft_s1", "model": BASE}], [1], r"repeated names .*'sft_s1', 'grpo_s1', 'sft_s1'"),
    ([{"name": "a", "arm": "x", "seed": 1, "model": BASE}, {"name": "b", "arm": "x", "seed": 1, "model": BASE}], [],
     r"arm 'x' has stages \['a', 'b'\] with seeds \[1, 1\]"),
    ([{"name": "a", "arm": "b", "seed": 1, "model": BASE}, {"name": "b", "model": BASE}], [],
     r"arm 'b' has stages \['b', 'a'\] with seeds \[None, 1\]"),
])
def test_bad_seed_lists_are_named(stages, seeds, message):
    with pytest.raises(RlsftError, match=message):
        expand_seeds(stages, seeds)
