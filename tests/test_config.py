"""Every config in conf/ composes against the schema; misspelt keys, wrong types and bad ranges fail clearly."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

from conftest import launch
from rlsft.config import Config, register_configs, validate
from rlsft.errors import RlsftError

CONF = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ["model_pair", "dataset", "truncation", "experiment", "logger", "paths"]
register_configs()


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def composed(*overrides, hydra=False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_config_composes_and_validates(group, option):
    cfg = composed(f"{group}={option}")
    validate(cfg)
    assert OmegaConf.select(cfg, "run.experiment")


@pytest.mark.parametrize("launcher", sorted(p.stem for p in (CONF / "hydra" / "launcher").glob("*.yaml")))
def test_launcher_configs_compose(launcher):
    cfg = composed(f"hydra/launcher={launcher}", hydra=True)
    assert "submitit" in cfg.hydra.launcher._target_


def test_paper_pairs_are_ordered_stages():
    for name in ["deepseek_math", "mistral", "distill_qwen", "qwen25"]:
        cfg = composed(f"model_pair={name}")
        assert [s.name for s in cfg.model_pair.stages] == ["sft", "rl"]
        assert all(s.model.source == "hub" and "/" in s.model.path for s in cfg.model_pair.stages)
    assert len(composed("model_pair=olmo3").model_pair.stages) == 6
    assert composed("model_pair=qwen25").model_pair.template == "qwen25_math_cot"


def test_lineage_families_name_their_stages_in_training_order():
    for name, stages in {"olmo2_family": ["sft", "dpo", "rl"], "tulu3_family": ["sft", "dpo", "rl", "rl_grpo"],
                         "qwen3_polaris": ["sft", "rl"]}.items():
        pair = composed(f"model_pair={name}").model_pair
        assert [s.name for s in pair.stages] == stages and pair.template == "chat"
        assert all(s.model.source == "hub" and "/" in s.model.path for s in pair.stages)


@pytest.mark.slow
def test_olmo3_eap_reaches_the_hub_loader(cache_dir, tmp_path):
    """EAP between two OLMo-3 stages is not refused for its architecture: offline, it stops at the hub loader with
    the one unreachable-model line."""
    res = launch("experiment=eap", "model_pair=olmo3", "eap.sft_stage=think_sft", "eap.rl_stage=think",
                 "logger=disabled", f"hydra.run.dir={tmp_path / 'run'}",
                 env={"HF_HUB_OFFLINE": "1", "RLSFT_CACHE_DIR": str(cache_dir)})
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: model 'allenai/Olmo-3-7B-Think-SFT' could not be loaded")


def test_misspelt_key_and_wrong_type_fail_at_composition():
    with pytest.raises(ConfigCompositionException, match="alpah"):
        composed("truncation.alpah=0.1")
    with pytest.raises(ConfigCompositionException, match="alpha"):
        composed("truncation.alpha=abc")
    with pytest.raises(ConfigKeyError, match="nmae"):
        OmegaConf.merge(OmegaConf.structured(Config), {"dataset": {"nmae": "gsm8k"}})
    with pytest.raises(ConfigCompositionException, match="model_pair"):
        composed("model_pair=no_such_pair")


@pytest.mark.parametrize("override,message", [
    ("truncation.alpha=0", "truncation.alpha must be in (0, 1]"),
    ("truncation.alpha=1.5", "truncation.alpha must be in (0, 1]"),
    ("truncation.beta=2.0", "truncation.beta must be >= 0 and < truncation.gamma"),
    ("truncation.beta=-0.1", "truncation.beta must be >= 0 and < truncation.gamma"),
    ("truncation.alpha=0.5", "truncation.alpha=0.5 would be ignored: eap.alphas=[0.1, 0.3, 0.5, 1.0]"),
    ("truncation.delta=0", "truncation.delta must be in (0, 1]"),
    ("truncation.n=1", "truncation.n must be >= 2"),
    ("generation.temperature=-1", "generation.temperature must be >= 0"),
    ("generation.n_samples=0", "generation.n_samples must be >= 1"),
    ("model_pair.template=nope", "model_pair.template 'nope' is unknown"),
    ("logger.mode=loud", "logger.mode must be"),
    ("dataset.n=0", "dataset.n must be >= 1"),
    ("eap.target=kl", "eap.target must be nll or margin, got 'kl'"),
    ("eap.calibrate=match_rl", "eap.calibrate must be none or match_sft, got 'match_rl'"),
    ("eap.method=ig", "eap.method must be eap or eap_ig, got 'ig'"),
    ("eap.ig_steps=0", "eap.ig_steps must be >= 1, got 0"),
    ("eap.positions=number", "eap.positions must be all, answer or answer_span, got 'number'"),
    ("eap.span_before=-1", "eap.span_before must be >= 0, got -1"),
    ("eap.faithfulness_points=1", "eap.faithfulness_points must be >= 2"),
    ("eap.faithfulness_baseline=input", "eap.faithfulness_baseline must be one of counterfactual, resample, mean"),
    ("eap.faithfulness_splits=0", "eap.faithfulness_splits must be >= 1"),
    ("eap.faithfulness_ranking=max", "eap.faithfulness_ranking must be abs_mean or mean_abs"),
])
def test_out_of_range_values_are_named(override, message):
    with pytest.raises(RlsftError) as err:
        validate(composed(override))
    assert message in str(err.value)


def test_an_experiments_own_checks_apply_to_it_only():
    """rlsft.experiments.<name>.check runs for the chosen experiment alone."""
    validate(composed("experiment=evaluate", "eap.alphas=[0.1]", "truncation.alpha=0.5"))
    validate(composed("experiment=evaluate", "dataset=factual"))
    with pytest.raises(RlsftError, match=r"^ablation: dataset and ablation.control are the same dataset "
                                         r"\('factual'\)$"):
        validate(composed("experiment=ablation", "dataset=factual"))
    with pytest.raises(RlsftError, match="^unknown experiment 'abalation'; expected one of"):
        validate(composed("run.experiment=abalation"))


def test_beta_zero_is_valid_as_in_select_samples():
    """beta = 0 (no lower length bound) is accepted by select_samples, so the config must accept it too."""
    from rlsft.eap import select_samples

    validate(composed("truncation.beta=0"))
    lengths = {"a": 1, "b": 9}  # Tbar 5: "a" lies below beta * Tbar for any beta > 0.2
    assert select_samples(lengths, lengths, beta=0.0, gamma=2.0).ids == ["a", "b"]
