"""What a run shows on its console and keeps in its ``launch.log``: quiet libraries, progress, a copy of the console.

Libraries (transformers' loading and shard bars, the GGUF conversion bar, INFO logs of every package but rlsft,
matplotlib's font cache message) stay quiet unless ``run.verbose=true``. Long loops report progress through
``progress``: a tqdm bar on a terminal, and in a log file or a SLURM task's output (no terminal) one line at most
every ``LINE_EVERY_S`` seconds, so nothing is silent for long. ``tee_console`` copies what the console shows (prints,
the result table, the ``error:`` line) into the job's log file beside Hydra's log records.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

log = logging.getLogger("rlsft")

LINE_EVERY_S = 10.0  # at most this long between two progress lines when there is no terminal


_SAID: set[str] = set()


def say_once(line: str) -> None:
    """Print ``line`` the first time this process says it: a note that every stage of a family recomputes (the same
    recipe split, read once per stage) is one fact, not eighteen lines."""
    if line not in _SAID:
        _SAID.add(line)
        print(line)


def forget_said() -> None:
    """Forget what say_once said: a test starts as a new process would."""
    _SAID.clear()


def quiet_libraries(verbose: bool) -> None:
    """Third-party bars and INFO logs off (``verbose``: everything on, as the libraries default to)."""
    level = logging.INFO if verbose else logging.WARNING
    logging.getLogger().setLevel(level)  # Hydra sets the root to INFO: every package's INFO lines would show
    logging.getLogger("rlsft").setLevel(logging.INFO)
    logging.getLogger("matplotlib").setLevel(level)
    try:
        from transformers.utils import logging as hf_logging

        if verbose:
            hf_logging.set_verbosity_info()
            hf_logging.enable_progress_bar()
        else:
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()  # "Loading weights", "Writing model shards"
    except ImportError:
        pass
    try:
        import huggingface_hub.utils as hub_utils

        (hub_utils.enable_progress_bars if verbose else hub_utils.disable_progress_bars)()
    except ImportError:
        pass
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
        from tqdm.auto import tqdm

        # The GGUF conversion bar is a bare tqdm that transformers' switch above does not reach: a line every
        # LINE_EVERY_S instead (none when it is quick).
        gguf_utils.tqdm = tqdm if verbose else _gguf_lines
    except ImportError:
        pass


def _gguf_lines(iterable, desc: str = "", **_):
    return progress(desc="converting GGUF tensors", unit="tensor", iterable=iterable, bar=False)


class LineProgress:
    """tqdm's ``update``/``set_postfix``/``close`` as log lines, one at most every ``every`` seconds."""

    def __init__(self, total: int | None, desc: str, unit: str, every: float = LINE_EVERY_S):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.n, self.postfix, self.lines, self.shown = 0, "", 0, 0
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._line(done=self.total is not None and self.n >= self.total)  # a loop's last line says "(done)"

    def set_postfix(self, **values) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self.lines and self.shown != self.n:  # a quick loop stays silent; a slow one says it finished
            self._line(done=True)

    def _line(self, done: bool = False) -> None:
        self.lines, self.shown = self.lines + 1, self.n
        elapsed = time.monotonic() - self.start
        of = f"/{self.total}" if self.total is not None else ""
        rate = f", {self.n / elapsed:.3g} {self.unit}/s" if elapsed > 0 else ""
        log.info("%s: %d%s %s%s, %.0f s%s%s", self.desc, self.n, of, self.unit, " (done)" if done else "", elapsed,
                 rate, f" ({self.postfix})" if self.postfix else "")


def progress(total: int | None = None, desc: str = "", unit: str = "it", iterable: Iterable | None = None,
             bar: bool = True):
    """A tqdm bar on a terminal (``bar``), otherwise ``LineProgress``; iterate it when ``iterable`` is given."""
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if bar and sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit=unit)
    else:
        bar = LineProgress(total, desc, unit)
    if iterable is None:
        return bar
    return _iterate(bar, iterable)


def _iterate(bar, iterable: Iterable) -> Iterator:
    try:
        for item in iterable:
            yield item
            bar.update(1)
    finally:
        bar.close()


class Heartbeat:
    """A line every ``every`` seconds while a long step runs whose inner loops cannot report (one GRPO step on a
    busy machine took minutes of silence); ``what`` may change as the step moves on. Quick steps stay silent."""

    def __init__(self, say, what: str, every: float = LINE_EVERY_S):
        self.say, self.what, self.every = say, what, every
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rlsft-heartbeat")

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.say(f"{self.what} ({time.monotonic() - self.start:.0f} s into the step)")

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class _Tee:
    """A text stream that writes to the console and copies each finished line to a file.

    Carriage-return rewrites (progress bars) are collapsed to the line's final state, so the file reads like the
    console looked when the line ended.
    """

    def __init__(self, stream, path: Path):
        self.stream, self.path, self.pending = stream, path, ""

    def write(self, text: str) -> int:
        n = self.stream.write(text)
        self.pending += text
        if "\n" in self.pending:
            *lines, self.pending = self.pending.split("\n")
            with open(self.path, "a") as fh:
                fh.writelines(line.rsplit("\r", 1)[-1] + "\n" for line in lines)
        return n

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ...
        return getattr(self.stream, name)


def hydra_log_file() -> Path | None:
    """The file Hydra's job logging writes to (``<run dir>/launch.log``), if any."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return Path(handler.baseFilename)
    return None


@contextmanager
def tee_console(path: Path | None):
    """While inside, stdout and stderr are also copied to ``path`` (log records reach it through Hydra's own file
    handler: the console handlers keep writing to the original streams, so no line is written twice)."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(out, path), _Tee(err, path)
    try:
        yield
    finally:
        for tee in (sys.stdout, sys.stderr):
            if isinstance(tee, _Tee) and tee.pending.strip():
                with open(path, "a") as fh:
                    fh.write(tee.pending.rsplit("\r", 1)[-1] + "\n")
        sys.stdout, sys.stderr = out, err


class _Noting:
    """A stream that notes each non-blank write for ``never_silent`` and passes everything through."""

    def __init__(self, stream, note):
        self.stream, self.note = stream, note

    def write(self, text: str) -> int:
        if text.strip():
            self.note(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ...
        return getattr(self.stream, name)


class _NoteRecords(logging.Filter):
    def __init__(self, note):
        super().__init__()
        self.note = note

    def filter(self, record: logging.LogRecord) -> bool:
        self.note(record.getMessage())
        return True


@contextmanager
def never_silent(every: float = LINE_EVERY_S + 3) -> Iterator[None]:
    """While inside, a line whenever nothing was printed or logged for ``every`` seconds, naming the last line.

    A user on a busy node took minutes of silence for a hang (issue 23: loading a GGUF model took 91 s beside two
    CPU-bound processes, a generation batch 38 s). Loops report their own progress; this covers every step that
    cannot (a model load, one batch, a bootstrap), without each step having to know it may be slow. The default
    sits just above the progress lines' 10 s, so it speaks only where they do not (and no silence reaches 15 s).
    """
    lock = threading.Lock()
    state = {"at": time.monotonic(), "last": "", "since": time.monotonic()}

    def note(text: str) -> None:
        with lock:
            state["at"] = time.monotonic()
            if not text.startswith("[rlsft] still working"):
                state["last"] = text.strip().splitlines()[-1][:120]
                state["since"] = state["at"]

    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(1.0):
            with lock:
                quiet = time.monotonic() - state["at"]
                last, since = state["last"], time.monotonic() - state["since"]
            if quiet >= every:
                print(f"[rlsft] still working, {since:.0f} s after: {last}", flush=True)

    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Noting(out, note), _Noting(err, note)
    records = _NoteRecords(note)
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(records)
    thread = threading.Thread(target=watch, daemon=True, name="rlsft-never-silent")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        for handler in handlers:
            handler.removeFilter(records)
        sys.stdout, sys.stderr = out, err
