"""Every ``conf/experiment`` option end to end on the tiny pair with the DEFAULT logger (offline W&B), as a user
runs it: the run finishes with ``result.json``, and every table it wrote as CSV reads back from the offline W&B run
with the same columns and rows, text cells (``n/a``) of numeric columns logged as missing (issue 15, bug 1: one
``n/a`` row before numbers made ``wandb.Table`` raise after all the compute)."""

import csv
import json
from pathlib import Path

import pytest

from conftest import labelled_dataset, launch
from rlsft.tracking import read_offline_run, read_offline_table

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
TINY = ["model_pair=tiny", "dataset.n=4", "generation.max_new_tokens=6"]
GRPO_TINY = ["grpo.steps=1", "grpo.max_new_tokens=4", "grpo.eval_every=1", "grpo.eval_n=4", "truncation.n=4",
             "eap.alphas=[1.0]", "eap.require_correct=false", "dataset.n=null", "dataset.arithmetic.count=20"]
# The smallest settings at which each experiment runs on random tiny models; an experiment not listed runs on TINY.
SETTINGS = {
    "ablation": ["ablation.control.n=4"],
    "eap": ["eap.require_correct=false"],  # random models answer nothing correctly
    "grpo": GRPO_TINY,
    "grpo_rebuttal": [  # the rebuttal recipe, with the hub's Qwen and GSM8K swapped for the tiny model and arithmetic
        "dataset=arithmetic", "model_pair.template=chat", "grpo.batch_questions=2", "grpo.mini_batches=1",
        "grpo.warmup_steps=0", "grpo.train={name: arith, source: arithmetic}",
        "grpo.eval=null",  # eval_n questions held out of the training set
        "model_pair.stages=[{name: instruct, algorithm: sft, model: {source: tiny, tiny: {arch: llama, layers: 2, "
        "hidden: 64, heads: 4, kv_heads: 2, seed: 0}}}]", *GRPO_TINY],
    "lenses": ["lenses.pass_n=4", "lenses.control.n=4", "eap.require_correct=false"],
    "lr_sweep": ["model_pair.stages=[{name:base,model:{source:tiny}},{name:sft,model:{source:derived,"
                 "base:{source:tiny},recipe:{kind:sft,train:{name:arith,source:arithmetic},eval_n:4,steps:1,"
                 "batch_size:4}}}]", "lr_sweep.arm=sft", "lr_sweep.lrs=[0.001]"],
    "probe": ["probe.folds=3", "probe.inner_folds=2", "probe.repeats=1", "probe.Cs=[0.1,10]", "probe.n_jobs=1",
              "probe.positions=[before_answer,question_end]", "dataset.n=null"],
    "variability": ["variability.n_samples=3"],
}
STEP_LOGS = {"grpo_history"}
FILE_ONLY = {"tasks"}  # the report's list of a sweep's tasks and their status
SLOW = {"ablation", "grpo", "grpo_rebuttal", "lr_sweep", "report"}  # each also has its own end-to-end test elsewhere


def _text_to_none(columns, csv_rows, logged_rows):
    """The CSV rows with what W&B logs: numbers as numbers, text in a numeric column as None, an empty cell (None
    written to the CSV: e.g. a point value's interval, a column that may be empty in every row) as None."""
    def number(v):
        try:
            return float(v)
        except ValueError:
            return None

    numeric = [any(isinstance(r[j], (int, float)) and not isinstance(r[j], bool) for r in logged_rows)
               for j in range(len(columns))]
    return [[number(v) if numeric[j] else None if v == "" else v for j, v in enumerate(r)] for r in csv_rows]


def check_logged_tables(run_dir: Path, experiment: str, tables_dir: Path) -> int:
    """Every CSV table in ``tables_dir`` is a W&B table of the run with the same cells; returns how many missing
    (None) cells were logged."""
    run = read_offline_run(run_dir)
    assert run["exit_code"] == 0 and run["job_type"] == experiment
    missing = 0
    tables = [p for p in sorted(tables_dir.glob("*.csv")) if p.stem not in FILE_ONLY]
    assert tables, f"{experiment} wrote no table"
    for path in tables:
        with open(path, newline="") as fh:
            columns, *rows = list(csv.reader(fh))
        if path.stem in STEP_LOGS:  # logged as one W&B history row per step, not as a table
            logged_steps = [h for h in run["history"] if set(columns) - {"step"} <= set(h)]
            assert len(logged_steps) >= 1 and len(rows) >= 1, path.stem
            continue
        logged_columns, logged = read_offline_table(run_dir, path.stem)
        assert logged_columns == columns and len(logged) == len(rows), path.stem
        expected = _text_to_none(columns, rows, logged)
        for want, got in zip(expected, logged):
            for w, g in zip(want, got):
                if isinstance(w, float) and isinstance(g, (int, float)):
                    assert g == pytest.approx(w, rel=1e-3, nan_ok=True), path.stem
                elif isinstance(g, (int, float)) or g is None:
                    assert (w is None) == (g is None), (path.stem, w, g)
        missing += sum(v is None for r in logged for v in r)
    return missing


@pytest.mark.parametrize("experiment", [pytest.param(e, marks=pytest.mark.slow) if e in SLOW else e
                                        for e in EXPERIMENTS])
def test_experiment_runs_with_the_default_logger(experiment, tmp_path):
    env = {"RLSFT_CACHE_DIR": str(tmp_path / "cache")}
    run_dir = tmp_path / "run"
    settings = dict(o.split("=", 1) for o in [*TINY, *SETTINGS.get(experiment, [])])  # the experiment's win
    overrides = [f"experiment={experiment}", *(f"{k}={v}" for k, v in settings.items()), f"hydra.run.dir={run_dir}"]
    if experiment == "probe":  # questions the random tiny models answer right about a third of the time
        data = labelled_dataset(tmp_path / "questions.jsonl", tmp_path / "cache")
        overrides += ["dataset.source=local", f"dataset.path={data}", "dataset.answer_format=text",
                      "dataset.name=tinytext"]
    if experiment == "report":  # gather a finished two-job sweep
        sweep = tmp_path / "sweep"
        out = launch("-m", "experiment=evaluate", *TINY, "dataset.n=2,3", "logger=disabled",
                     f"hydra.sweep.dir={sweep}", env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        overrides.append(f"report.dir={sweep}")
    out = launch(*overrides, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert json.loads((run_dir / "result.json").read_text()) is not None
    if experiment == "report":  # the page's line, then the run folder's, as every run ends
        assert out.stdout.strip().splitlines()[-2:] == [f"report: {sweep / 'report' / 'index.html'}",
                                                        f"results: {run_dir}"], out.stdout[-3000:]
    tables_dir = sweep / "report" if experiment == "report" else run_dir  # the report writes beside the sweep
    missing = check_logged_tables(run_dir, "grpo" if experiment.startswith("grpo") else experiment, tables_dir)
    if experiment == "probe":  # before_answer is unavailable (no \boxed{}): its summary row is n/a, logged as None
        assert missing > 0


def test_every_experiment_is_covered():
    """A new experiment runs here on TINY; a setting for one that no longer exists is stale."""
    assert set(SETTINGS) <= set(EXPERIMENTS)
