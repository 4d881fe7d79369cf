"""Weights & Biases tracking, offline by default (no account needed), always finished even when a job fails.

A run's id is derived from its run folder (stable across a requeue of the same job, so the job continues its W&B
run rather than starting a duplicate); runs of one sweep share a group; the job type is the experiment name.
"""

from __future__ import annotations

import hashlib
import numbers
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
        self.wandb_dir = run_dir / "wandb"
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

    def config(self, values: dict[str, Any]) -> None:
        """Add run-level facts known only after start (e.g. the EAP cut length) to the run's config."""
        if self.run is not None:
            self.run.config.update(values, allow_val_change=True)

    def define_metric(self, name: str, step_metric: str) -> None:
        """Plot ``name`` (a glob such as ``eap/*``) against ``step_metric`` instead of the step."""
        if self.run is not None:
            self.run.define_metric(step_metric)
            self.run.define_metric(name, step_metric=step_metric)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self.run is not None:
            import wandb

            self.run.log({name: wandb.Table(columns=columns, data=table_rows(rows))})

    def log_image(self, name: str, path: str | Path) -> None:
        if self.run is not None:
            import wandb

            self.run.log({name: wandb.Image(str(path))})

    def finish(self, failed: bool = False) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None
            localize_links(self.wandb_dir)


def localize_links(folder: Path) -> None:
    """Replace each link under ``folder`` that points outside it by a copy of its target (a note if it is gone).

    wandb links ``logs/debug-core.log`` into ``~/.cache/wandb``: the link breaks once the outputs are moved or
    copied to another machine. wandb's own relative links between files of the folder (``latest-run``,
    ``debug.log``) move with it and stay.
    """
    import shutil

    root = folder.resolve()
    for link in [p for p in folder.rglob("*") if p.is_symlink()]:
        target = link.resolve()
        if target.is_relative_to(root):
            continue
        link.unlink()
        if target.is_file():
            shutil.copyfile(target, link)
        else:
            link.write_text(f"wandb linked this file to {target}, which was gone when the run finished\n")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def table_rows(rows: list[list[Any]]) -> list[list[Any]]:
    """Rows W&B can type: in a column that holds numbers, a text cell (``n/a``, ``none``: a missing value) is None.

    ``wandb.Table`` fixes each column's type from the values it sees, so one ``n/a`` before a number fails the whole
    table ("Number not assignable to None or String"); None is the missing value every W&B type accepts. The CSV and
    markdown copies keep the text.
    """
    if not rows:
        return rows
    numeric = [any(_is_number(row[j]) for row in rows) for j in range(len(rows[0]))]
    return [[None if numeric[j] and not _is_number(v) else v for j, v in enumerate(row)] for row in rows]


# ----------------------------------------------------------------------------------------------- reading runs back
_BLOCK, _HEADER = 32768, 7


def _wandb_log_records(path: str | Path):
    """Raw protobuf payloads of a ``run-<id>.wandb`` file.

    Written by hand because wandb 0.31 ships no Python reader of its transaction log (an offline run can only be
    synced, not read). The file is a LevelDB-style log: a 7-byte file header (":W&B", magic, version), then
    32 KiB blocks of records, each with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last).
    """
    import struct

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, parts = _HEADER, []
    while pos + _HEADER <= len(data):
        if _BLOCK - pos % _BLOCK < _HEADER:  # block trailer too small for a header: zero padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0 and length == 0:
            break
        payload = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 1:
            yield payload
        elif kind == 2:
            parts = [payload]
        elif kind == 3:
            parts.append(payload)
        elif kind == 4:
            parts.append(payload)
            yield b"".join(parts)


def read_offline_run(run_dir: str | Path) -> dict:
    """Config, history rows, summary, defined metrics ({name: step metric}), group, job type, tags and exit code of
    the offline W&B run under ``run_dir``."""
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no offline W&B run under {run_dir}")
    out: dict[str, Any] = {"history": [], "config": {}, "exit_code": None, "summary": {}, "metrics": {}}
    for path in files:
        for payload in _wandb_log_records(path):
            record = pb.Record()
            record.ParseFromString(payload)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                out.update(id=record.run.run_id, group=record.run.run_group, job_type=record.run.job_type,
                           tags=list(record.run.tags), project=record.run.project)
                for item in record.run.config.update:
                    out["config"][item.key] = json.loads(item.value_json)
            elif kind == "config":
                for item in record.config.update:
                    out["config"][item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
            elif kind == "metric":
                out["metrics"][record.metric.name or record.metric.glob_name] = record.metric.step_metric
            elif kind == "history":
                out["history"].append({i.key or ".".join(i.nested_key): json.loads(i.value_json)
                                       for i in record.history.item})
            elif kind == "summary":
                for item in record.summary.update:
                    out["summary"][item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
            elif kind == "exit":
                out["exit_code"] = record.exit.exit_code
    return out


def read_offline_table(run_dir: str | Path, name: str) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of the W&B table ``name`` logged by the offline run under ``run_dir`` (its last logging)."""
    import json

    runs = sorted(Path(run_dir).glob("wandb/offline-run-*"))
    logged = [row[f"{name}.path"] for row in read_offline_run(run_dir)["history"] if f"{name}.path" in row]
    if not runs or not logged:
        raise FileNotFoundError(f"no W&B table {name!r} in the offline run under {run_dir}")
    table = json.loads((runs[-1] / "files" / logged[-1]).read_text())
    return table["columns"], table["data"]
