"""rlsft installed as a user installs it (a wheel, not the checkout) finds its shipped recipes (rlsft/presets)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = """
import json, sys
import rlsft
from rlsft.models import load_model
from rlsft.training.derived import training_budget

spec = {"source": "derived", "base": {"source": "tiny", "tiny": {"seed": 3}}, "recipe": "smollm2_sft"}
model, _ = load_model(spec, device="cpu", cache_dir=sys.argv[1])
print(json.dumps({"rlsft": rlsft.__file__, "budget": training_budget(spec, sys.argv[1])}))
"""


@pytest.mark.slow
def test_a_wheel_install_outside_the_checkout_trains_a_preset_recipe(tmp_path):
    source = tmp_path / "source"  # a copy: pip builds in the source tree (build/, *.egg-info) and the checkout stays clean
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "outputs", "multirun", "build",
                                                                 "*.egg-info", "__pycache__", ".pytest_cache"))
    site = tmp_path / "site"
    built = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                            "--quiet", "--target", str(site), str(source)], capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    assert (site / "rlsft" / "presets" / "arms" / "smollm2_sft.yaml").is_file()  # shipped as package data
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "cache")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rlsft"].startswith(str(site))  # the installed copy, not the checkout
    # the preset's recipe: 77 distinct training questions (80 drawn, 3 also in its eval set), 20 optimizer steps of
    # full batches (full_batches: each pass's short batch dropped) sized to train ~4250 answer tokens with this
    # model's tokenizer (answer_tokens): the same batch every step, and the total within half an example a step
    budget = result["budget"]
    assert (budget["kind"], budget["examples"], budget["optimizer_steps"]) == ("sft", 77, 20)
    seen = budget["examples_seen"]
    assert seen == 20 * budget["batch_size"]
    assert seen % 20 == 0 and seen > 0
    mean_tokens = budget["answer_tokens"] / seen
    assert abs(budget["answer_tokens"] - 4250) <= 20 * mean_tokens / 2
    assert budget["epochs"] == pytest.approx(seen / 77)
