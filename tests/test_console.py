"""What a user sees: one line per error (also in a sweep), the run's log, where results went; the documented
example commands compose."""

import re
import shlex
from pathlib import Path

import pytest

from conftest import ROOT, launch

DOCS = [ROOT / "README.md", ROOT / "docs" / "cluster.md", *sorted((ROOT / "conf").rglob("*.yaml")),
        *sorted((ROOT / "rlsft" / "presets").rglob("*.yaml")),
        ROOT / "rlsft" / "grpo" / "README.md"]


def example_commands() -> list[tuple[str, list[str]]]:
    """Every `python launch.py ...` of the docs and the config comments, continuation lines joined, placeholders
    (`...`, `<recipe>`) left out."""
    found = []
    for path in DOCS:
        text = path.read_text()
        if path.suffix == ".yaml":
            text = "\n".join(re.sub(r"^\s*#\s?", "", line) for line in text.splitlines() if line.lstrip().startswith("#"))
        text = re.sub(r"\\\n\s*", " ", text)
        for cmd in re.findall(r"python launch\.py[^`\n#(;]*", text):
            if "..." in cmd or "<" in cmd:
                continue
            args = [a for a in shlex.split(cmd)[2:] if a not in ("-m", "--multirun")]
            found.append((f"{path.relative_to(ROOT)}: {cmd.strip()}", args))
    return found


# Documented keys the schema does not have yet (reported in issue 15's note): a command using one must still fail to
# compose; when the key lands, this test fails until the entry is removed.
PENDING: dict[str, str] = {}


def covering_jobs(args: list[str]) -> list[list[str]]:
    """Jobs of a sweep in which every swept value occurs once (not the whole product: 32 jobs for the paper's)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values = []
    for o in OverridesParser.create().parse_overrides(args):
        key = o.get_key_element()
        values.append([f"{key}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
                      else [o.input_line])
    n = max((len(v) for v in values), default=1)
    return [[v[i % len(v)] for v in values] for i in range(n)]


@pytest.mark.slow  # composes every documented command: outside the default suite's 6 minutes, run by CI with -m slow
def test_every_documented_command_composes_and_validates():
    """Catches an example that names a key the schema does not have (`seed=0,1` instead of `dataset.seed=0,1`)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from rlsft.config import register_configs, validate

    register_configs()
    commands = example_commands()
    assert len(commands) >= 8 and any("slurm_local" in c for c, _ in commands)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for where, args in commands:
            pending = [k for k in PENDING if any(a.startswith(k + "=") for a in args)]
            for job in covering_jobs(args):
                try:
                    cfg = compose("config", overrides=job, return_hydra_config=True)
                    validate(cfg)
                    OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
                except Exception as exc:  # noqa: BLE001 - any failure is the documented command's failure
                    if not pending:
                        pytest.fail(f"{where}\n  job {job}: {type(exc).__name__}: {exc}")
                else:
                    assert not pending, f"{where} composes now: remove {pending} from PENDING"


TINY_EAP = ["experiment=eap", "model_pair=tiny", "dataset.arithmetic.count=6", "eap.n_boot=200", "eap.alphas=[]"]


@pytest.mark.slow  # a 3-task sweep in subprocesses: outside the default suite's 6 minutes, run by CI with -m slow
def test_sweep_with_failing_tasks_is_one_line_each_and_the_report_lists_every_task(tmp_path, cache_dir):
    """A 4-task sweep (default offline W&B logger): one task finishes, one raises RlsftError in the experiment (no
    question both models got right), two fail validation (alpha 2) before writing their resolved config.

    Catches: Hydra's traceback for an RlsftError of a sweep task (exit 1); a failed task's launch.log without its
    error line, a finished one's without the printed table; a report that finds tasks by config_resolved.yaml only
    (missing the validation failures) or shows W&B's copies of the figures; a sweep that does not say where its
    results and report are."""
    sweep = tmp_path / "sweep"
    res = launch("-m", *TINY_EAP, "eap.require_correct=false,true", "truncation.alpha=0.1,2.0",
                 f"hydra.sweep.dir={sweep}")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "Error executing job" not in res.stderr, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, res.stderr
    assert sum("no question of arithmetic was answered correctly by both models" in e for e in errors) == 1
    assert sum("truncation.alpha must be in (0, 1], got 2.0" in e for e in errors) == 2
    lines = res.stdout.strip().splitlines()
    assert lines[-2] == f"results: {sweep}" and lines[-1] == f"report: {sweep / 'report' / 'index.html'}"

    # Each task's log holds what its console showed: the table and the last line, or the error line.
    logs = {n: (sweep / str(n) / "launch.log").read_text() for n in range(4)}
    assert "| activation_intensity" in logs[0] or "activation_intensity" in logs[0]
    assert f"results: {sweep / '0'}" in logs[0]
    # Hydra numbers the product with the last override fastest: (false, 0.1), (false, 2.0), (true, 0.1), (true, 2.0)
    assert "error: no question of arithmetic" in logs[2]
    assert all("error: truncation.alpha must be in (0, 1], got 2.0" in logs[n] for n in (1, 3))
    assert not (sweep / "1" / "config_resolved.yaml").exists()

    tasks = (sweep / "report" / "tasks.csv").read_text().splitlines()
    assert [t.split(",")[:2] for t in tasks[1:]] == [["0", "finished"], ["1", "failed"], ["2", "failed"],
                                                      ["3", "failed"]]
    page = (sweep / "report" / "index.html").read_text()
    assert "tasks: 1 of 4 finished" in page and page.count("truncation.alpha must be in (0, 1], got 2.0") == 2
    wandb_images = list(sweep.glob("0/wandb/*/files/media/images/*.png"))
    assert wandb_images, "the offline W&B run copied no figure: the check below would prove nothing"
    shown = re.findall(r'<img src="([^"]+)"', page)
    assert shown and not [s for s in shown if "wandb" in s], shown
    assert len(shown) == len(set(Path(s).name for s in shown))


# launch.py with the evaluate experiment crashing (not bad input) on the 5-question task of a sweep.
CRASHING_LAUNCH = """
import runpy, sys
import rlsft.experiments.evaluate as evaluate
real = evaluate.run
def run(cfg, ctx):
    if cfg.dataset.arithmetic.count == 5:
        raise ZeroDivisionError("planted crash")
    return real(cfg, ctx)
evaluate.run = run
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow  # a sweep in subprocesses: outside the default suite's 6 minutes, run by CI with -m slow
def test_sweep_task_that_crashes_ends_like_bad_input_with_its_traceback_in_its_log(tmp_path, cache_dir):
    """A sweep task raising something other than RlsftError ended the sweep with Hydra's traceback (issue 23): now
    one error line names it, the other task still runs, exit 2, and the traceback is in the task's launch.log."""
    import sys

    from conftest import run_guarded

    sweep = tmp_path / "sweep"
    res = run_guarded([sys.executable, "-c", CRASHING_LAUNCH, str(ROOT / "launch.py"), "-m", "experiment=evaluate",
                       "model_pair=tiny", "logger=disabled", "generation.max_new_tokens=4",
                       "dataset.arithmetic.count=5,4", f"hydra.sweep.dir={sweep}"], cwd=ROOT)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "Error executing job" not in res.stderr, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: task 0 (experiment=evaluate model_pair=tiny logger=disabled generation.max_new_tokens=4 "
                      "dataset.arithmetic.count=5): failed: ZeroDivisionError: planted crash"], res.stderr
    assert (sweep / "1" / "result.json").exists()  # the sweep went on after the crash
    log = (sweep / "0" / "launch.log").read_text()
    assert "Traceback (most recent call last)" in log and "result = experiment.run(cfg, ctx)" in log
    assert "error: ZeroDivisionError: planted crash" in log
    assert res.stdout.strip().splitlines()[-1] == f"report: {sweep / 'report' / 'index.html'}"


def test_single_run_error_line_is_in_its_log_and_success_names_the_folder(tmp_path, cache_dir):
    """The missing-file run's log held nothing: now it holds the `error:` line the console showed."""
    bad = launch("model_pair=tiny", "dataset=gsm8k", "dataset.path=/no/such/file.jsonl",
                 f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: data file not found")
    assert "error: data file not found: /no/such/file.jsonl" in (tmp_path / "bad" / "launch.log").read_text()


def test_log_copy_keeps_what_the_console_showed_and_progress_lines_are_rate_limited(tmp_path, caplog):
    """The log copy holds each line's final state (a bar's carriage-return rewrites collapsed), and without a
    terminal a loop reports at most one line per interval plus a final one (none when it is quick)."""
    import logging
    import sys

    from rlsft.console import LineProgress, tee_console

    log = tmp_path / "launch.log"
    with tee_console(log):
        sys.stderr.write("bar 1/3\rbar 2/3\rbar 3/3\n")
        print("| table |")
        sys.stdout.write("no newline at the end")
    assert log.read_text() == "bar 3/3\n| table |\nno newline at the end\n"

    import rlsft.console as console

    now = [0.0]
    real = console.time.monotonic
    console.time.monotonic = lambda: now[0]
    try:
        with caplog.at_level(logging.INFO, logger="rlsft"):
            bar = LineProgress(5, "work", "item", every=10)  # starts at t=0
            for t in (1, 2, 12, 13, 19):  # a line at t=12 (3 done)
                now[0] = t
                bar.update()
            bar.close()  # and a final one
            again = LineProgress(2, "again", "item", every=10)
            now[0] = 30
            again.update(2)  # a line at t=30 with everything done, saying so: close() adds none
            quick = LineProgress(3, "quick", "item", every=10)
            quick.update(3)
            quick.close()  # quick: silent
    finally:
        console.time.monotonic = real
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(",")[0] for line in lines] == ["work: 3/5 item", "work: 5/5 item (done)",
                                                  "again: 2/2 item (done)"]


def test_markdown_table_leaves_a_missing_value_empty_as_the_csv_does():
    from rlsft.experiments.common import markdown_table

    assert markdown_table(["metric", "lo"], [["kurtosis", None], ["gini", 0.25]]).splitlines()[2:] == [
        "| kurtosis |  |", "| gini | 0.25 |"]


def test_never_silent_names_the_last_line_when_nothing_is_printed(capsys):
    """A step that cannot report (a model load) still shows a line every ``every`` seconds; output resets it."""
    import logging
    import time

    from rlsft.console import never_silent

    logger = logging.getLogger("rlsft.test_never_silent")
    handler = logging.StreamHandler()
    logging.getLogger().addHandler(handler)
    try:
        with never_silent(every=1.0):
            print("loading the sft model (gguf)")
            time.sleep(2.6)  # silent: one or two "still working" lines
            for _ in range(6):  # a log line every 0.5 s: never silent for a second
                logger.warning("batch done")
                time.sleep(0.5)
    finally:
        logging.getLogger().removeHandler(handler)
    out = capsys.readouterr().out.splitlines()
    still = [line for line in out if line.startswith("[rlsft] still working")]
    # 1-2 lines in the 2.6 s of silence, none while log records kept coming (without them: 2-3 more)
    assert 1 <= len(still) <= 2 and all(line.endswith("after: loading the sft model (gguf)") for line in still)
