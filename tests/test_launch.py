"""The entrypoint as a user runs it: end to end on the tiny pair, W&B offline output, and bad input."""

import json
import os

import shutil

import pytest

from conftest import launch
from rlsft.tracking import Tracker, localize_links, read_offline_run


def test_evaluate_end_to_end_writes_tables_provenance_and_wandb(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    res = launch("experiment=evaluate", "model_pair=tiny", "dataset.arithmetic.count=6", f"hydra.run.dir={run_dir}")
    assert res.returncode == 0, res.stderr
    acc = json.loads((run_dir / "accuracy.json").read_text())
    answers = [json.loads(line) for p in cache_dir.glob("generations/*/records.jsonl") for line in open(p)]
    assert len(answers) == 12
    for stage in ("sft", "rl"):  # the table agrees with the cached, graded answers
        assert acc[stage]["n"] == 6
    assert sum(a["correct"] for a in answers) == acc["sft"]["correct"] + acc["rl"]["correct"]
    assert (run_dir / "accuracy.md").read_text().startswith("| stage |")
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["packages"]["torch"] and "commit" in prov["git"]
    wb = read_offline_run(run_dir)
    assert wb["exit_code"] == 0 and wb["job_type"] == "evaluate" and "tiny" in wb["tags"]
    assert not [t for t in wb["tags"] if t.startswith("alpha=")]  # only the eap experiment tags its alpha
    assert wb["config"]["truncation"]["alpha"] == 0.1
    logged = {k: v for row in wb["history"] for k, v in row.items()}
    assert logged["sft/accuracy"] == acc["sft"]["accuracy"] and logged["accuracy._type"] == "table-file"

    # Run again into the same folder: the finished run is returned, not recomputed or overwritten.
    before = (run_dir / "result.json").stat().st_mtime_ns
    again = launch("experiment=evaluate", "model_pair=tiny", "dataset.arithmetic.count=6", f"hydra.run.dir={run_dir}")
    assert again.returncode == 0 and (run_dir / "result.json").stat().st_mtime_ns == before
    other = launch("experiment=evaluate", "model_pair=tiny", "dataset.arithmetic.count=5", f"hydra.run.dir={run_dir}")
    assert other.returncode == 2 and "already holds a different finished run" in other.stderr


def test_finished_offline_run_folder_survives_a_move(tmp_path):
    """wandb links logs/debug-core.log into ~/.cache/wandb; after finish no link leaves the run folder, so the
    folder moved elsewhere (the cache gone) still holds every file it lists (issue 23)."""
    tracker = Tracker("offline", "rlsft-test", tmp_path / "run", {"a": 1})
    tracker.log({"x": 1.0})
    gone = tracker.wandb_dir / "gone.log"
    gone.symlink_to(tmp_path / "no-such-file")  # a target already deleted: a note replaces the link
    tracker.finish()
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "run", moved)
    files = list((moved / "wandb").rglob("*"))
    assert [p for p in files if p.is_symlink() and not p.resolve().is_relative_to(moved.resolve())] == []
    assert all(p.exists() for p in files)
    core = next(moved.glob("wandb/offline-run-*/logs/debug-core.log"))
    assert not core.is_symlink() and core.stat().st_size > 0
    assert "no-such-file" in (moved / "wandb" / "gone.log").read_text()
    assert read_offline_run(moved)["history"][0]["x"] == 1.0
    localize_links(moved / "wandb")  # a second pass finds nothing left to replace
    assert sorted(map(str, (moved / "wandb").rglob("*"))) == sorted(map(str, files))


def _bad_rows(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "#### 1"}\n{"question": \n')
    return path


@pytest.mark.parametrize("overrides,message", [
    (["model_pair=nope"], "unknown option 'nope' for model_pair"),
    (["dataset=nope"], "unknown option 'nope' for dataset"),
    (["experiment=nope"], "unknown option 'nope' for experiment"),
    (["model_pair.template=nope"], "model_pair.template 'nope' is unknown"),
    (["truncation.alpha=2"], "truncation.alpha must be in (0, 1]"),
    (["truncation.alpah=0.1"], "alpah"),
    (["dataset=gsm8k", "dataset.path=/no/such/file.jsonl"], "data file not found: /no/such/file.jsonl"),
    (["dataset=gsm8k", "dataset.path={bad}"], "bad.jsonl:2: malformed JSON"),
    (["dataset=gsm8k", "dataset.source=hub", "dataset.path=nobody/none"], "could not be loaded from the hub"),
    (["model_pair.stages.0.model.source=local", "model_pair.stages.0.model.path=/no/model"],
     "local model directory not found"),
    (["model_pair.stages.0.model.source=hub", "model_pair.stages.0.model.path=nobody/none"], "could not be loaded"),
    (["dataset.arithmetic.n_ops=0"], "n_ops must be >= 1"),
])
def test_bad_input_is_one_clear_line_and_nothing_half_written(tmp_path, cache_dir, overrides, message):
    overrides = [o.replace("{bad}", str(_bad_rows(tmp_path))) for o in overrides]
    run_dir = tmp_path / "run"
    res = launch("model_pair=tiny", *overrides, f"hydra.run.dir={run_dir}",
                 env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert res.returncode != 0
    assert message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not (run_dir / "result.json").exists()
    leftovers = [p for p in cache_dir.rglob("*") if p.is_file() and not p.name.endswith(".lock")] \
        if cache_dir.exists() else []
    assert leftovers == []
