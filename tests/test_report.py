"""rlsft.report lists a sweep's tasks from its multirun.yaml in the order Hydra numbered them."""

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from rlsft.report import expected_tasks, sweep_jobs


def write_record(sweep, task, params=None):
    sweep.mkdir(parents=True, exist_ok=True)
    record = {"hydra": {"sweeper": {"params": params}, "overrides": {"task": task}}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(record, sort_keys=False))


def test_tasks_are_every_combination_last_key_fastest(tmp_path):
    write_record(tmp_path, ["experiment=eap", "truncation.alpha=0.1,0.5", "dataset.n=range(1,3)"])
    assert expected_tasks(tmp_path) == [["experiment=eap", f"truncation.alpha={a}", f"dataset.n={n}"]
                                        for a in (0.1, 0.5) for n in (1, 2)]


def test_the_command_line_replaces_a_sweeper_param_in_its_place(tmp_path):
    write_record(tmp_path, ["logger=disabled", "model_pair=tiny"],
                 params={"model_pair": "tiny,qwen25", "dataset.n": "4,8"})
    assert expected_tasks(tmp_path) == [["model_pair=tiny", "dataset.n=4", "logger=disabled"],
                                        ["model_pair=tiny", "dataset.n=8", "logger=disabled"]]


def test_a_record_that_lists_no_jobs_falls_back_to_the_folders(tmp_path):
    write_record(tmp_path / "interval", ["truncation.alpha=interval(0.1,0.5)"])
    assert expected_tasks(tmp_path / "interval") is None
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "multirun.yaml").write_text("hydra: [")
    assert expected_tasks(tmp_path / "damaged") is None


@pytest.mark.parametrize("overrides", [
    ["a=1,2", "b=x", "c=range(0,3)", "a=3,4,5"],
    ["+new=1,2", "~gone", "group/sub=opt", "quoted='a,b',c", "list=[1,2]", "hydra.job.chdir=false"],
    ["b=choice(1,2)", "a=sort(3,1,2)", "c=range(0,1,0.25)", "d=sort(b,a,reverse=true)"],
])
def test_the_jobs_are_those_of_hydras_basic_sweeper(overrides):
    """The reference is the code Hydra numbers jobs with (not its API: only this test may import it)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = OverridesParser.create().parse_overrides(overrides)
    assert sweep_jobs(parsed) == [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
