"""A model or dataset that cannot be fetched fails at once with one line: no retries, no warnings, no leftovers."""

import json
import os
import socket
import sys

from conftest import ROOT, launch, run_guarded


def _unreachable() -> dict:
    """The hub client pointed at a closed local port, offline mode off: as on a node without a network."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {"HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
            "HF_ENDPOINT": f"http://127.0.0.1:{port}"}


TIMED = """
import json, time
from types import SimpleNamespace
from rlsft.data import load_records
from rlsft.errors import RlsftError
from rlsft.models import load_model

took = {}
for name, call in [("model", lambda: load_model({"source": "hub", "path": "deepseek-ai/deepseek-math-7b-rl"})),
                   ("dataset", lambda: load_records(SimpleNamespace(source="hub", path="openai/gsm8k",
                                                                   config_name="main", split="test", name="gsm8k")))]:
    start = time.time()
    try:
        call()
    except RlsftError as exc:
        took[name] = [time.time() - start, str(exc)]
print(json.dumps(took))
"""


def test_unreachable_hub_fails_within_seconds():
    """Timed around the loads alone (imports excluded): the hub client's back-off (1 + 2 + 4 + 8 s) is never paid."""
    res = run_guarded([sys.executable, "-c", TIMED], cwd=ROOT, env={**os.environ, **_unreachable()})
    assert res.returncode == 0, res.stderr
    took = json.loads(res.stdout.strip().splitlines()[-1])
    for name in ("model", "dataset"):
        seconds, message = took[name]
        # The back-off would add 1 + 2 + 4 + 8 = 15 s: below that it was not paid, however busy the machine.
        assert seconds < 15 and "is unreachable" in message, (name, seconds, message)


def test_unreachable_hub_is_one_error_line_and_leaves_no_trace(tmp_path, cache_dir):
    for i, override in enumerate(["model_pair=deepseek_math", "dataset=gsm8k"]):
        res = launch(override, "logger=disabled", "dataset.arithmetic.count=4", f"hydra.run.dir={tmp_path / str(i)}",
                     env=_unreachable())
        assert res.returncode == 2, res.stderr
        assert res.stderr.splitlines() == [res.stderr.strip()] and res.stderr.startswith("error: "), res.stderr
        assert "is unreachable" in res.stderr
        assert "Retrying" not in res.stdout + res.stderr and "thrown while requesting" not in res.stdout + res.stderr
    # A failed run leaves no trace in the cache (it was an empty generations/<key>/ with records.lock).
    assert not [p for p in cache_dir.rglob("*") if p.is_file()], list(cache_dir.rglob("*"))
