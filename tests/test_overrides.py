"""Composition errors (issue 23): one ``error:`` line naming the key and the nearest valid keys or options, exit 2;
``HYDRA_FULL_ERROR=1`` leaves Hydra's own message."""

import pytest

from conftest import ROOT, launch
from rlsft.config import register_configs
from rlsft.overrides import check, combinations, override_args

register_configs()
CONF = ROOT / "conf"


@pytest.mark.parametrize("overrides,expected", [
    (["eap.alpahs=[0.5]"], "unknown key 'eap.alpahs'; nearest keys: alphas"),
    (["experimnt=eap"], "unknown key 'experimnt'; nearest keys: experiment"),
    (["model_pair=nosuchpair"], "unknown option 'nosuchpair' for model_pair; valid model_pair options: "),
    (["model_pair=smolm2"], "unknown option 'smolm2' for model_pair; nearest model_pair options: smollm2"),
    (["eap.alphas=abc"], "wrong type for eap.alphas: "),
    (["generation.batch_size=two"], "wrong type for generation.batch_size: Value 'two'"),
    (["experiment=probe", "probe.foldz=3"], "unknown key 'probe.foldz'; nearest keys: folds"),
    (["eap.alphas=[0.5"], "cannot parse override 'eap.alphas=[0.5'"),
    (["truncation.alpha=0.1,0.2"], "(a sweep needs -m)"),
    (["-m", "experiment=eap,probz"], "unknown option 'probz' for experiment; nearest experiment options: probe"),
    (["experiment=grpo", "grpo.eap_alphas=[0.5]"], "grpo.eap_alphas is now eap.alphas: experiment=grpo's EAP drift"),
])
def test_each_composition_error_is_one_line_naming_the_key_and_nearest(overrides, expected):
    problem = check(overrides, CONF)
    assert problem is not None and expected in problem, problem
    assert "\n" not in problem


@pytest.mark.parametrize("overrides", [[], ["model_pair=tiny", "hydra.run.dir=/tmp/x"], ["+extra=1"],
                                       ["-m", "truncation.alpha=0.1,0.2", "hydra/launcher=basic"]])
def test_valid_overrides_pass(overrides):
    assert check(overrides, CONF) is None


def test_flags_are_not_overrides_and_a_sweep_is_checked_value_by_value():
    assert override_args(["-m", "--cfg", "job", "a=1", "--info"]) == ["a=1"]
    assert override_args(["--config-name", "other", "a=1"]) is None  # another config: Hydra checks it itself
    assert combinations(["a=1,2", "b=x", "c=range(3,5)"]) == [["a=1", "b=x", "c=3"], ["a=2", "b=x", "c=3"],
                                                              ["a=1", "b=x", "c=4"]]


def test_launch_exits_2_with_one_line_and_hydra_full_error_shows_hydras_message(tmp_path):
    res = launch("eap.alpahs=[0.5]", f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["error: unknown key 'eap.alpahs'; nearest keys: alphas"]
    full = launch("eap.alpahs=[0.5]", f"hydra.run.dir={tmp_path / 'run'}", env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode != 0 and "Could not override 'eap.alpahs'" in full.stderr
