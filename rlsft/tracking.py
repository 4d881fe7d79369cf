"""Weights & Biases tracking, offline by default (no account needed), always finished even when a job fails.

A run's id is derived from its run folder (stable across a requeue of the same job, so the job continues its W&B
run rather than starting a duplicate); runs of one sweep share a group; the job type is the experiment name.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any


class Tracker:
    def __init__(self, mode: str, project: str, run_dir: str | Path, config: dict, group: str | None = None,
                 job_type: str | None = None, tags: list[str] | None = None, entity: str | None = None,
                 name: str | None = None):
        self.run = None
        self.mode = mode
        if mode == "disabled":
            return
        import wandb

        run_dir = Path(run_dir)
        run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=project, entity=entity, dir=str(run_dir), config=config, group=group, job_type=job_type,
            tags=[t for t in (tags or []) if t], name=name, id=run_id, resume="allow", mode=mode,
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            for k, v in values.items():
                self.run.summary[k] = v

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self.run is not None:
            import wandb

            self.run.log({name: wandb.Table(columns=columns, data=rows)})

    def log_image(self, name: str, path: str | Path) -> None:
        if self.run is not None:
            import wandb

            self.run.log({name: wandb.Image(str(path))})

    def finish(self, failed: bool = False) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None
