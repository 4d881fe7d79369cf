"""A model or dataset that cannot be fetched fails at once with one line: no retries, no warnings, no leftovers."""

import socket
import time

from conftest import launch


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(*overrides, env):
    start = time.time()
    res = launch(*overrides, "logger=disabled", "dataset.arithmetic.count=4", env=env)
    return res, time.time() - start


def test_unreachable_hub_fails_fast_with_one_line(tmp_path, cache_dir):
    online = {"HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
              "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"}
    # The same failure with the hub switched off by hand: the time a run takes to start and fail by itself.
    baseline, base_s = _timed("model_pair=deepseek_math", f"hydra.run.dir={tmp_path / 'base'}",
                              env={"HF_HUB_OFFLINE": "1"})
    assert baseline.returncode == 2, baseline.stderr
    for i, override in enumerate(["model_pair=deepseek_math", "dataset=gsm8k"]):
        res, took = _timed(override, f"hydra.run.dir={tmp_path / str(i)}", env=online)
        assert res.returncode == 2, res.stderr
        assert res.stderr.splitlines() == [res.stderr.strip()] and res.stderr.startswith("error: "), res.stderr
        assert "is unreachable" in res.stderr
        assert "Retrying" not in res.stdout + res.stderr and "thrown while requesting" not in res.stdout + res.stderr
        # The hub client's back-off alone (1 + 2 + 4 + 8 s) would add 15 s: one refused connection adds none.
        assert took < base_s + 8, (took, base_s)
    # A failed run leaves no trace in the cache (it was an empty generations/<key>/ with records.lock).
    assert not [p for p in cache_dir.rglob("*") if p.is_file()], list(cache_dir.rglob("*"))
