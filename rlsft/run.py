"""The entrypoint's body: validate, set up the run folder and provenance, track, dispatch, report errors.

Bad input raises ``RlsftError``; here it becomes one line on stderr and exit status 2. In a multirun the task records
it (``error.txt``, its log) and ends normally, any other exception too (its traceback kept in the task's log);
``SweepSummary`` then prints one ``error:`` line per failed task and the sweep exits with status 2. Every run ends with the line naming where its results are.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from contextlib import contextmanager, redirect_stdout
from importlib import metadata
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from .cache import atomic_write_bytes, atomic_write_json
from .config import validate
from .errors import RlsftError

log = logging.getLogger("rlsft")

PACKAGES = ["rlsft", "torch", "transformers", "hydra-core", "hydra-submitit-launcher", "submitit", "wandb",
            "math-verify", "scikit-learn", "scipy", "numpy", "peft", "datasets"]


def git_state() -> dict:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"commit": None, "dirty": None}


def provenance() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    slurm = {k: v for k, v in os.environ.items() if k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                                                          "SLURM_RESTART_COUNT", "SLURM_JOB_NODELIST")}
    return {"git": git_state(), "packages": versions, "python": sys.version.split()[0], "host": platform.node(),
            "argv": sys.argv, "slurm": slurm}


def sweep_info() -> tuple[bool, str | None, dict]:
    """(is this job a multirun task, the sweep folder or None, Hydra's group choices) of the running job."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        return multirun, (hc.sweep.dir if multirun else None), hc.runtime.choices
    except ValueError:  # not running under Hydra (tests calling main directly)
        return False, None, {}


def main(cfg) -> dict:
    """One job. Everything it prints is also kept in its ``launch.log`` (rlsft.console.tee_console); of several
    data-parallel processes (rlsft.parallel), the main one alone prints, logs and writes."""
    from .console import hydra_log_file, never_silent, quiet_libraries, tee_console
    from .parallel import processes
    from .threads import configure_threads

    configure_threads()  # the CPUs this process may use, not the machine's core count
    quiet_libraries(bool(cfg.run.get("verbose", False)))
    try:
        procs = processes()
    except RlsftError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    if not procs.main:
        with _quiet():
            return _main(cfg, procs)
    with tee_console(hydra_log_file()), never_silent():
        return _main(cfg, procs)


@contextmanager
def _quiet():
    """A data-parallel process other than the main one: no prints, log warnings only, not into the main one's log
    file (errors still reach stderr)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    log.setLevel(logging.WARNING)
    with open(os.devnull, "w") as null, redirect_stdout(null):
        yield


def _main(cfg, procs) -> dict:
    multirun, sweep_dir, choices = sweep_info()
    run_dir = Path(cfg.paths.run_dir)
    if procs.main:
        (run_dir / ERROR_FILE).unlink(missing_ok=True)  # a requeued job starts clean
    tracker = None
    failed = True
    try:
        validate(cfg)
        from .experiments import get_experiment
        from .experiments.common import RunContext, check_architectures

        experiment = get_experiment(cfg.run.experiment)
        if procs.count > 1:
            check_data_parallel(cfg, experiment, procs)
        if experiment.READS_INTERNALS:
            check_architectures(cfg.run.experiment, list(cfg.model_pair.stages),
                                lambda stage: OmegaConf.to_container(stage.model, resolve=True))
        resolved_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        if (run_dir / "result.json").exists():
            # A finished run is never overwritten. The same job run again (a SLURM requeue after it finished)
            # gets its stored result back; anything else is refused.
            if (run_dir / "config_resolved.yaml").read_text() == resolved_yaml:
                log.info("run folder %s already holds this finished run; returning its result", run_dir)
                failed = False
                return json.loads((run_dir / "result.json").read_text())
            raise RlsftError(f"run folder {run_dir} already holds a different finished run; it is never overwritten")
        tracker = _open_run(cfg, experiment, run_dir, resolved_yaml, sweep_dir, procs)
        ctx = RunContext(cfg=cfg, run_dir=run_dir, cache_dir=str(Path(cfg.paths.cache_dir).expanduser()),
                         tracker=tracker, processes=procs)
        result = experiment.run(cfg, ctx)
        failed = False
        if procs.main:
            atomic_write_json(run_dir / "result.json", result)
            print(f"results: {run_dir}", flush=True)  # every run ends naming its folder, the report's too
        return result
    except RlsftError as exc:
        _record_error(run_dir, str(exc))
        if multirun:
            # The task ends normally with its error recorded: the sweep's end (SweepSummary) lists every failed
            # task as one line and exits 2, where Hydra would print a traceback of the first one only.
            log.error("error: %s", exc)
            return {"error": str(exc)}
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Exception as exc:
        _record_error(run_dir, f"{type(exc).__name__}: {exc}")
        if multirun:
            # Like bad input: one line here and at the sweep's end (SweepSummary), the other tasks still run; the
            # traceback goes to the task's launch.log only.
            _traceback_to_log_file(exc)
            log.error("error: %s: %s", type(exc).__name__, exc)
            return {"error": f"{type(exc).__name__}: {exc}"}
        # The submitit launcher only carries the exception object back: keep the traceback in the job's own log.
        log.exception("job failed")
        raise
    finally:
        if tracker is not None:
            tracker.finish(failed=failed)


ERROR_FILE = "error.txt"


def _open_run(cfg, experiment, run_dir: Path, resolved_yaml: str, sweep_dir: str | None, procs):
    """The run folder's config and provenance, and the run's tracker (disabled except in the main process)."""
    from .tracking import Tracker

    run_dir.mkdir(parents=True, exist_ok=True)
    prov = {**provenance(), "num_processes": procs.count}
    if procs.main:
        atomic_write_bytes(run_dir / "config_resolved.yaml", resolved_yaml.encode())
        atomic_write_json(run_dir / "provenance.json", prov)
    lg = cfg.logger
    tags = [cfg.model_pair.name, cfg.dataset.name, *lg.tags, *experiment.tags(cfg)]
    group = lg.group or (Path(sweep_dir).name if sweep_dir else None)
    return Tracker(lg.mode if procs.main else "disabled", lg.project, run_dir,
                   {**OmegaConf.to_container(cfg, resolve=True), "provenance": prov}, group=group,
                   job_type=cfg.run.experiment, tags=tags, entity=lg.entity)


def check_data_parallel(cfg, experiment, procs) -> None:
    """RlsftError when this run cannot be split over its ``procs.count`` processes."""
    if not experiment.DATA_PARALLEL:
        raise RlsftError(f"experiment={cfg.run.experiment} runs in one process; {procs.count} were started "
                         "(only experiments that declare DATA_PARALLEL, e.g. grpo, run data-parallel)")
    kind = procs.device.split(":")[0]
    if cfg.run.device != "auto" and not str(cfg.run.device).startswith(kind):
        raise RlsftError(f"run.device={cfg.run.device}, but the {procs.count} processes joined on {kind}: leave "
                         "run.device=auto (on CPU with ACCELERATE_USE_CPU=1)")


def _traceback_to_log_file(exc: BaseException) -> None:
    """The full traceback of a failed sweep task, in its ``launch.log`` only (the console gets one line)."""
    import traceback

    from .console import hydra_log_file

    path = hydra_log_file()
    if path is not None:
        with open(path, "a") as fh:
            fh.write("".join(traceback.format_exception(exc)))


def _record_error(run_dir: Path, message: str) -> None:
    """The failure as one line in the job folder, where the sweep summary and the report read it (by the main
    process of several)."""
    from .parallel import processes

    if run_dir.is_dir() and processes().main:
        atomic_write_bytes(run_dir / ERROR_FILE, (message.splitlines() or [""])[0].encode() + b"\n")


class SweepSummary(Callback):
    """At the end of a multirun (in the launching process): one line per failed task, the sweep folder and the
    report's path, and exit status 2 when a task failed (read by ``exit_status``)."""

    failed = 0

    def on_multirun_end(self, config, **kwargs) -> None:
        from .report import build_report, sweep_tasks

        sweep = Path(config.hydra.sweep.dir)
        tasks = sweep_tasks(sweep)
        bad = [t for t in tasks if t["status"] != "finished"]
        SweepSummary.failed = len(bad)
        counts = {}
        for t in tasks:
            counts[t["status"]] = counts.get(t["status"], 0) + 1
        print(f"sweep: {len(tasks)} tasks, " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())), flush=True)
        for t in bad:
            print(f"error: task {t['job']} ({' '.join(t['overrides'])}): {t['status']}"
                  f"{': ' + t['error'] if t['error'] else ''}", file=sys.stderr, flush=True)
        print(f"results: {sweep}", flush=True)
        try:
            report = build_report(sweep)
            print(f"report: {report['index']}", flush=True)
        except Exception as exc:  # noqa: BLE001 - the sweep's results stand without their report
            print(f"report: not written ({type(exc).__name__}: {exc})", flush=True)


def exit_status() -> int:
    """2 when the multirun that just ended had a task that did not finish, else 0."""
    return 2 if SweepSummary.failed else 0
