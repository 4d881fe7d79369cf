"""Tiny Hydra app used by tests/test_slurm_cluster.py to exercise the SLURM launcher.

    python tests/slurm_app/app.py -m hydra/launcher=slurm_local x=1,2,3 \
        'hydra.searchpath=[file://<repo>/conf]'

Each job writes ``result.json`` into its Hydra output dir and appends one line per
attempt to ``attempts.txt`` (SLURM_RESTART_COUNT, SLURM_JOB_ID), so a test can see
whether a job was requeued. ``fail_on=<x>`` makes the job with that ``x`` raise; ``crash_on=<x>`` makes it exit
without a Python exception (like an OOM kill); ``sleep_s`` makes every job sleep.
"""

from __future__ import annotations

import json
import os
import logging
import socket
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class SweepJobError(RuntimeError):
    pass


@hydra.main(version_base=None, config_path="conf", config_name="slurm_app")
def main(cfg: DictConfig) -> dict:
    out = Path(HydraConfig.get().runtime.output_dir)
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    with open(out / "attempts.txt", "a") as f:
        f.write(f"{restart} {os.environ.get('SLURM_JOB_ID', '-')} {time.time():.1f}\n")
    if cfg.sleep_s:
        time.sleep(float(cfg.sleep_s))
    if cfg.crash_on is not None and int(cfg.x) == int(cfg.crash_on):
        print(f"job with x={cfg.x} crashes hard on purpose", file=sys.stderr, flush=True)
        os._exit(3)  # no Python exception: submitit never writes a result pickle
    if cfg.fail_on is not None and int(cfg.x) == int(cfg.fail_on):
        try:
            raise SweepJobError(f"job with x={cfg.x} failed on purpose")
        except Exception:
            # Hydra's run_job swallows the exception inside the job (SLURM sees exit 0) and
            # only the exception object travels back to the launcher, without its traceback:
            # log it here so the job's own log and .submitit/*_log.err keep the traceback.
            log.exception("job x=%s failed", cfg.x)
            raise
    result = {
        "x": int(cfg.x),
        "y": int(cfg.x) ** 2,
        "restart_count": restart,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "hostname": socket.gethostname(),
        "hydra_job_num": HydraConfig.get().job.num,
    }
    (out / "result.json").write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
