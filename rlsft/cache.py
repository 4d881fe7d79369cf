"""Stage caching: keys from everything that determines an output, atomic writes, locks, resumable JSONL.

Every expensive stage (generation, attribution, training, features) stores its output under
``<cache_dir>/<stage>/<key>``. The key is a hash of a JSON description of its inputs, so a rerun (or another
job of the same sweep) finds the work already done. Writes go to a temporary file that is renamed into place,
and a file lock serialises two jobs asking for the same key: a crash never leaves a half-written result.
``cached`` (and its ``cached_npz`` / ``cached_json`` forms) is that whole pattern in one call: lock, check the
seal, compute and seal on a miss, load.

A disk, a copy or a person can still damage an entry, so entries are sealed: a file gets a ``<name>.sha256``
beside it, a folder a ``SHA256SUMS`` inside it (both in ``sha256sum -c`` format), and ``intact`` checks the seal
before an entry is used. A damaged entry is reported in one warning line, moved aside to ``<name>.corrupt-<time>``
and recomputed. Files are written with the mode the user's umask gives, as ``open()`` would (``mkstemp`` alone
gives 0600, which hides a shared cache and a run's results from collaborators).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from filelock import FileLock

log = logging.getLogger(__name__)
T = TypeVar("T")
SEAL = "SHA256SUMS"  # a sealed folder's manifest: "<sha256>  <relative path>" per file


def stage_key(**parts: Any) -> str:
    """A short stable hash of the JSON form of ``parts`` (sorted keys, so order never matters)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_dir(cache_dir: str | os.PathLike, stage: str, key: str) -> Path:
    path = Path(cache_dir).expanduser() / stage / key
    path.mkdir(parents=True, exist_ok=True)
    return path


def umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask can only set it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _as_open_would(path: str | os.PathLike, directory: bool = False) -> None:
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


@contextmanager
def locked(path: str | os.PathLike, timeout: float = -1) -> Iterator[None]:
    """Hold an inter-process lock beside ``path`` (works across SLURM jobs on a shared filesystem).

    The lock file gets the umask's mode, so a collaborator sharing the cache (umask 002) can take it too.
    """
    lock = FileLock(str(path) + ".lock", timeout=timeout, mode=0o666 & ~umask())
    with lock:
        yield


def atomic_write_bytes(path: str | os.PathLike, data: bytes, sealed: bool = False) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        _as_open_would(tmp)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if sealed:
            _seal_file(Path(tmp), path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


@contextmanager
def atomic_path(path: str | os.PathLike, sealed: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    For writers that want a filename (torch.save, np.savez, savefig) rather than bytes. ``sealed``: a cache
    entry, written with its checksum (see ``intact``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.stem + ".", suffix=path.suffix)
    os.close(fd)
    _as_open_would(tmp)
    try:
        yield Path(tmp)
        if sealed:
            _seal_file(Path(tmp), path)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: str | os.PathLike, sealed: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; rename it to ``path`` only if the block succeeds.

    ``sealed``: a cache entry, written with a ``SHA256SUMS`` of its files (see ``intact``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix="." + path.name + "."))
    _as_open_would(tmp, directory=True)
    try:
        yield tmp
        for p in tmp.rglob("*"):  # writers that use a private temp file (safetensors' model.safetensors) leave 0600
            if p.is_dir() or p.is_file():
                _as_open_would(p, directory=p.is_dir())
        if sealed:
            files = sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != SEAL)
            lines = "".join(f"{file_sha256(p)}  {p.relative_to(tmp).as_posix()}\n" for p in files)
            atomic_write_bytes(tmp / SEAL, lines.encode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$RLSFT_CACHE_DIR`` or ``~/.cache/rlsft`` (what conf/paths/default.yaml
    resolves to)."""
    return Path(cache_dir or os.environ.get("RLSFT_CACHE_DIR") or "~/.cache/rlsft").expanduser()


def content_hash(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """sha256 of a file's content, remembered per (path, size, mtime) in ``<cache_dir>/file_hashes.json``.

    Why content and not (size, mtime): the same model installed twice (another venv, another node, a copy) must
    give the same cache keys. The index makes it one read per file version, not one per run.
    """
    path = Path(path).resolve()
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns]
    index_path = default_cache_dir(cache_dir)
    index_path = index_path / "file_hashes.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    known = index.get(str(path))
    if known and known["stamp"] == stamp:
        return known["sha256"]
    digest = file_sha256(path)
    with locked(index_path):
        index = json.loads(index_path.read_text()) if index_path.exists() else {}
        index[str(path)] = {"stamp": stamp, "sha256": digest}  # an older version of the file is forgotten
        atomic_write_json(index_path, index)
    return digest


# ----------------------------------------------------------------------------------------------- seals
def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _seal_file(tmp: Path, path: Path) -> None:
    atomic_write_bytes(_sidecar(path), f"{file_sha256(tmp)}  {path.name}\n".encode())


def _npz_loads(path: Path) -> None:
    """Read every array: a zip member's CRC-32 is checked on a full read, so truncation and bit flips both fail."""
    import numpy as np

    with np.load(path) as z:
        for name in z.files:
            z[name]


def damage(path: str | os.PathLike) -> str | None:
    """What is wrong with an existing cache entry, or None when its seal matches.

    An entry written before seals existed is checked by loading it where its format allows (``.npz``).
    """
    path = Path(path)
    if path.is_dir():
        manifest = path / SEAL
        if not manifest.exists():
            return None
        for line in manifest.read_text().splitlines():
            want, name = line.split("  ", 1)
            if not (path / name).is_file():
                return f"{name} is missing"
            if file_sha256(path / name) != want:
                return f"{name} does not match its checksum"
        return None
    sidecar = _sidecar(path)
    if sidecar.exists():
        want = sidecar.read_text().split(" ", 1)[0]
        return None if file_sha256(path) == want else "it does not match its checksum"
    if path.suffix == ".npz":
        try:
            _npz_loads(path)
        except Exception as exc:  # zipfile, numpy and OS errors alike mean "unreadable"
            return f"it cannot be read ({type(exc).__name__}: {exc})"
    return None


def discard(path: str | os.PathLike, why: str) -> Path:
    """Move a damaged entry aside (kept for inspection, never read again) and say so in one line."""
    path = Path(path)
    # The time says when; the random suffix keeps two discards of one entry within a second apart.
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}")
    os.replace(path, aside)
    if _sidecar(path).exists():
        os.replace(_sidecar(path), _sidecar(aside))
    log.warning("damaged cache entry %s (%s): moved aside to %s, recomputing", path, why, aside.name)
    return aside


def intact(path: str | os.PathLike) -> bool:
    """Whether the cache entry ``path`` (file or folder) exists and passes its check; a damaged one is discarded."""
    path = Path(path)
    if not path.exists():
        return False
    why = damage(path)
    if why is not None:
        discard(path, why)
        return False
    return True


# ----------------------------------------------------------------------------------------------- cached stages
def cached(path: str | os.PathLike, compute: Callable[[Path], None], load: Callable[[Path], T],
           folder: bool = False) -> T:
    """``load(path)`` of a cache entry, written first by ``compute(tmp)`` when absent or damaged.

    The one way a stage caches: under ``locked(path)``, a damaged entry is discarded with its warning line,
    ``compute`` fills a temporary file (``folder``: a temporary folder) that is sealed and renamed into place
    only if it returns, and ``load`` reads the entry before the lock is released (so no other job can
    discard it halfway through the read).
    """
    path = Path(path)
    with locked(path):
        if not intact(path):
            with (atomic_dir if folder else atomic_path)(path, sealed=True) as tmp:
                compute(tmp)
        return load(path)


def load_npz(path: str | os.PathLike) -> dict:
    """Every array of an ``.npz`` file, read in full (the file is closed on return)."""
    import numpy as np

    with np.load(path) as z:
        return {name: z[name] for name in z.files}


def cached_npz(path: str | os.PathLike, compute: Callable[[], dict], compressed: bool = True) -> dict:
    """``cached`` for a stage whose result is named arrays: ``compute() -> {name: array}``, read back as
    ``{name: np.ndarray}``. ``compressed`` picks ``np.savez_compressed`` or ``np.savez`` (kept per stage as its
    files were first written; both load alike)."""
    import numpy as np

    def write(tmp: Path) -> None:
        (np.savez_compressed if compressed else np.savez)(tmp, **compute())

    return cached(path, write, load_npz)


def cached_json(path: str | os.PathLike, compute: Callable[[], Any]) -> Any:
    """``cached`` for a JSON result: ``compute()`` is stored as one line of sorted-key JSON and every call returns
    what the file holds (so a first call and a cached one give the same value)."""
    return cached(path, lambda tmp: tmp.write_text(json.dumps(compute(), sort_keys=True)),
                  lambda p: json.loads(p.read_text()))


@contextmanager
def tidy_on_failure(folder: str | os.PathLike) -> Iterator[None]:
    """Remove ``folder`` if the block fails and leaves nothing in it but lock files (no trace of a failed run)."""
    try:
        yield
    except BaseException:
        folder = Path(folder)
        if folder.is_dir() and all(p.suffix == ".lock" for p in folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _line_sha(item: dict) -> str:
    return hashlib.sha256(json.dumps(item, sort_keys=True).encode()).hexdigest()[:16]


def _parse_line(line: str) -> dict | None:
    """The item of one stored line, or None when the line is damaged (not JSON, or not matching its checksum)."""
    try:
        item = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(item, dict):
        return None
    want = item.pop("_sha256", None)  # lines written before checksums have none: accepted as parsed
    return item if want is None or want == _line_sha(item) else None


class ResumableJsonl:
    """An append-only JSONL file of finished items, renamed to its final name once complete.

    Items are appended (and fsync'd) as they finish, so a job killed halfway loses at most the batch in flight.
    A torn last line from a crash is ignored on read. ``finish`` renames ``<name>.partial.jsonl`` to
    ``<name>.jsonl``: the final file only ever exists complete. Each line carries a checksum of its item: a
    damaged line anywhere else (garbage, a flipped bit) gets the file moved aside with a warning and its intact
    lines written back as the partial file, so only the damaged items are computed again.
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
        raw = path.read_text(encoding="utf-8", errors="replace")
        lines = raw.split("\n")
        if lines[-1] == "":
            lines.pop()
        elif path == self.partial:
            lines.pop()  # a torn last write from a crash: append() cuts it, its items are redone
        items = [_parse_line(line) for line in lines]
        good = [item for item in items if item is not None]
        why = f"{len(items) - len(good)} of {len(items)} lines damaged" if len(good) < len(items) else None
        if why is None and path == self.final:
            why = damage(path)  # the whole file's seal also catches a cut at a line boundary
        if why is not None:
            discard(path, why)
            body = "".join(json.dumps({**item, "_sha256": _line_sha(item)}, sort_keys=True) + "\n" for item in good)
            atomic_write_bytes(self.partial, body.encode())
        return good

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
                fh.write(json.dumps({**item, "_sha256": _line_sha(item)}, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def finish(self) -> None:
        if self.partial.exists():
            _seal_file(self.partial, self.final)
            os.replace(self.partial, self.final)
        elif not self.final.exists():
            atomic_write_bytes(self.final, b"", sealed=True)
