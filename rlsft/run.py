"""The entrypoint's body: validate, set up the run folder and provenance, track, dispatch, report errors.

Bad input raises ``RlsftError``; here it becomes one line on stderr and exit status 2 (in a multirun it is
re-raised so the launcher marks that job failed and the sweep's exit status says so).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

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


def _sweep_info():
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        return multirun, (hc.sweep.dir if multirun else None), hc.runtime.choices
    except ValueError:  # not running under Hydra (tests calling main directly)
        return False, None, {}


def main(cfg) -> dict:
    multirun, sweep_dir, choices = _sweep_info()
    tracker = None
    failed = True
    try:
        validate(cfg)
        from .experiments import get_experiment
        from .experiments.common import RunContext
        from .tracking import Tracker

        experiment = get_experiment(cfg.run.experiment)
        run_dir = Path(cfg.paths.run_dir)
        resolved_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        if (run_dir / "result.json").exists():
            # A finished run is never overwritten. The same job run again (a SLURM requeue after it finished)
            # gets its stored result back; anything else is refused.
            if (run_dir / "config_resolved.yaml").read_text() == resolved_yaml:
                log.info("run folder %s already holds this finished run; returning its result", run_dir)
                failed = False
                return json.loads((run_dir / "result.json").read_text())
            raise RlsftError(f"run folder {run_dir} already holds a different finished run; it is never overwritten")
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        atomic_write_bytes(run_dir / "config_resolved.yaml", resolved_yaml.encode())
        prov = provenance()
        atomic_write_json(run_dir / "provenance.json", prov)
        lg = cfg.logger
        tags = [cfg.model_pair.name, cfg.dataset.name, *lg.tags]
        if cfg.run.experiment == "eap":
            tags.append(f"alpha={cfg.truncation.alpha}")
        group = lg.group or (Path(sweep_dir).name if sweep_dir else None)
        tracker = Tracker(lg.mode, lg.project, run_dir, {**resolved, "provenance": prov}, group=group,
                          job_type=cfg.run.experiment, tags=tags, entity=lg.entity)
        ctx = RunContext(cfg=cfg, run_dir=run_dir, cache_dir=str(Path(cfg.paths.cache_dir).expanduser()),
                         tracker=tracker)
        result = experiment(cfg, ctx)
        atomic_write_json(run_dir / "result.json", result)
        failed = False
        return result
    except RlsftError as exc:
        if multirun:
            log.error("error: %s", exc)
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception:
        # The submitit launcher only carries the exception object back to the sweep: keep the traceback in the
        # job's own log.
        log.exception("job failed")
        raise
    finally:
        if tracker is not None:
            tracker.finish(failed=failed)
