"""Stage caching: keys from everything that determines an output, atomic writes, locks, resumable JSONL.

Every expensive stage (generation, attribution, training, features) stores its output under
``<cache_dir>/<stage>/<key>``. The key is a hash of a JSON description of its inputs, so a rerun (or another
job of the same sweep) finds the work already done. Writes go to a temporary file that is renamed into place,
and a file lock serialises two jobs asking for the same key: a crash never leaves a half-written result.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock


def stage_key(**parts: Any) -> str:
    """A short stable hash of the JSON form of ``parts`` (sorted keys, so order never matters)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_dir(cache_dir: str | os.PathLike, stage: str, key: str) -> Path:
    path = Path(cache_dir).expanduser() / stage / key
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def locked(path: str | os.PathLike, timeout: float = -1) -> Iterator[None]:
    """Hold an inter-process lock beside ``path`` (works across SLURM jobs on a shared filesystem)."""
    lock = FileLock(str(path) + ".lock", timeout=timeout)
    with lock:
        yield


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    For writers that want a filename (torch.save, np.savez, savefig) rather than bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.stem + ".", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix="." + path.name + "."))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


class ResumableJsonl:
    """An append-only JSONL file of finished items, renamed to its final name once complete.

    Items are appended (and fsync'd) as they finish, so a job killed halfway loses at most the batch in flight.
    A torn last line from a crash is ignored on read. ``finish`` renames ``<name>.partial.jsonl`` to
    ``<name>.jsonl``: the final file only ever exists complete.
    """

    def __init__(self, directory: str | os.PathLike, name: str = "records"):
        self.final = Path(directory) / f"{name}.jsonl"
        self.partial = Path(directory) / f"{name}.partial.jsonl"

    @property
    def complete(self) -> bool:
        return self.final.exists()

    def read(self) -> list[dict]:
        path = self.final if self.final.exists() else self.partial
        if not path.exists():
            return []
        items = []
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a torn write from a crash: everything after it is redone
        return items

    def append(self, items: list[dict]) -> None:
        if self.final.exists():
            raise RuntimeError(f"{self.final} is already complete")
        if self.partial.exists():
            # Only the last line can be torn (the file is append-only): cut back to the last newline.
            with open(self.partial, "r+b") as fh:
                raw = fh.read()
                if raw and not raw.endswith(b"\n"):
                    fh.truncate(raw.rfind(b"\n") + 1)
        with open(self.partial, "a", encoding="utf-8") as fh:
            for item in items:
                fh.write(json.dumps(item, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def finish(self) -> None:
        if self.partial.exists():
            os.replace(self.partial, self.final)
        elif not self.final.exists():
            atomic_write_bytes(self.final, b"")
