import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("RLSFT_SHARED_DATA", ROOT.parent / "shared" / "data"))
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("RLSFT_CACHE_DIR", str(d))
    return d


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


def launch(*overrides, cwd=None, env=None, timeout=600):
    """Run ``python launch.py ...`` in a subprocess, as a user would."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *overrides], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
