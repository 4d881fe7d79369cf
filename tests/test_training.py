"""The one training registry (rlsft.training): kinds, cache keys kept from before it, and the grpo_random control."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rlsft.cache import stage_key
from rlsft.errors import RlsftError
from rlsft.models import fingerprint, load_model
from rlsft.training import KINDS, kind_of, training_kind
from rlsft.training.derived import derived_fingerprint, folder_name, training_budget
from rlsft.training.grpo_format import format_rewards, well_formed
from rlsft.training.grpo_random import shuffle_rewards

CONF = Path(__file__).resolve().parent.parent / "conf"
TRAIN = {"name": "arith", "source": "arithmetic", "arithmetic": {"count": 30, "digits": 1}}
GRPO = {"train": TRAIN, "eval_n": 4, "steps": 2, "max_new_tokens": 8, "batch_questions": 4, "lr": 1e-3,
        "num_generations": 4, "dynamic_sampling": False, "eval_every": 0, "save_every": 0}
BASE = {"source": "tiny", "tiny": {"seed": 3}}


def test_every_kind_is_registered_and_named():
    assert set(KINDS) == {"grpo", "grpo_random", "grpo_format", "sft", "rft", "dpo"}
    for name in KINDS:
        assert training_kind(name).name == name
    assert kind_of({**GRPO, "kind": "grpo_random"}) == "grpo_random" and kind_of(GRPO) == "grpo"
    with pytest.raises(RlsftError, match="unknown training kind 'kto'"):
        training_kind("kto")


def test_cache_keys_are_the_ones_before_the_registry():
    """Models trained before rlsft.training keep loading: the key is the old formula, written out here."""
    from rlsft.arms.config import ARM_VERSION, as_arm_recipe
    from rlsft.grpo.config import GRPO_VERSION, NON_TRAINING_KEYS, as_recipe, recipe_dict

    spec = {"source": "derived", "base": BASE, "recipe": GRPO}
    recipe = recipe_dict(as_recipe(GRPO)) | {"template": "chat"}
    del recipe["random_reward_rate"]  # fields added since, at their defaults, are not in an old recipe
    old = stage_key(version=GRPO_VERSION, base=fingerprint(BASE),
                    recipe={k: v for k, v in recipe.items() if k not in NON_TRAINING_KEYS or k == "steps"})
    assert folder_name(spec) == f"grpo-{old}" and derived_fingerprint(spec) == {"source": "derived", "key": old}
    arm = {"source": "derived", "base": BASE, "recipe": {"kind": "rft", "train": TRAIN}}
    d = vars(as_arm_recipe(arm["recipe"])) | {"template": "chat"}
    d = {k: v for k, v in d.items() if k not in ("full_batches", "answer_tokens", "lr_swept")}  # added since, at defaults
    old = "rft-" + stage_key(version=ARM_VERSION, base=fingerprint(BASE), recipe={k: v for k, v in d.items()
                                                                                    if k != "save_every"})
    assert folder_name(arm) == old and derived_fingerprint(arm)["key"] == old


def test_the_embedded_rl_stage_keeps_its_cached_model():
    """The default pair's rl stage resolves to the folder every cache trained before the registry holds."""
    from rlsft.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config")
    rl = next(s for s in cfg.model_pair.stages if s.name == "rl")
    assert folder_name(OmegaConf.to_container(rl.model, resolve=True)) == "grpo-5c81f95790ca834c"


def test_shuffled_rewards_keep_the_rate_and_lose_the_answer():
    answers = [SimpleNamespace(reward=3.0 if i % 4 == 0 else -0.5, correct=i % 4 == 0, pred=str(i)) for i in range(16)]
    before = sorted((a.reward, a.correct) for a in answers)
    shuffle_rewards(answers, seed=7)
    assert sorted((a.reward, a.correct) for a in answers) == before  # the same rewards, so the same rate
    assert [a.pred for a in answers] == [str(i) for i in range(16)]  # each answer keeps what it said
    again = [SimpleNamespace(reward=3.0 if i % 4 == 0 else -0.5, correct=i % 4 == 0, pred=str(i)) for i in range(16)]
    shuffle_rewards(again, seed=7)
    assert [a.reward for a in again] == [a.reward for a in answers]  # seeded
    # Independence: over many rounds, an answer that was right is rewarded at the base rate (1/4), not always.
    hits = 0
    for seed in range(2000):
        round_ = [SimpleNamespace(reward=1.0 if i < 4 else 0.0, correct=i < 4, pred=None) for i in range(16)]
        shuffle_rewards(round_, seed)
        hits += sum(a.reward for a in round_[:4])
    rate = hits / (2000 * 4)
    assert abs(rate - 0.25) < 4 * (0.25 * 0.75 / 8000) ** 0.5, rate


def test_random_rewards_at_a_fixed_rate_ignore_the_answer_and_keep_the_rate():
    """random_reward_rate r > 0: each answer rewarded with probability r (a binomial check over many answers, and
    for the answers that were right alike), seeded; the rate is keyed, its default 0 is not."""
    from rlsft.grpo.config import as_recipe
    from rlsft.training.grpo_random import draw_rewards

    recipe = as_recipe({"train": TRAIN, "max_new_tokens": 8, "random_reward_rate": 0.3})
    answers = [SimpleNamespace(ids=[1, 2], reward=3.0 if i % 2 else -0.5, correct=bool(i % 2)) for i in range(20000)]
    draw_rewards(answers, 5, recipe)
    rewarded = [a.correct for a in answers]
    sd = (0.3 * 0.7 / len(answers)) ** 0.5
    assert abs(sum(rewarded) / len(answers) - 0.3) < 4 * sd
    assert abs(sum(rewarded[1::2]) / len(rewarded[1::2]) - 0.3) < 4 * sd * 2 ** 0.5  # the right ones: no signal
    assert {a.reward for a in answers} == {3.0, -0.5} and all((a.reward == 3.0) == a.correct for a in answers)
    again = [SimpleNamespace(ids=[1, 2], reward=0.0, correct=False) for _ in range(20000)]
    draw_rewards(again, 5, recipe)
    assert [a.correct for a in again] == rewarded  # seeded
    spec = {"source": "derived", "base": BASE, "recipe": {**GRPO, "kind": "grpo_random"}}
    assert folder_name({**spec, "recipe": {**spec["recipe"], "random_reward_rate": 0.0}}) == folder_name(spec)
    assert folder_name({**spec, "recipe": {**spec["recipe"], "random_reward_rate": 0.3}}) != folder_name(spec)
    from rlsft.grpo.config import check_recipe

    with pytest.raises(Exception, match=r"random_reward_rate must be in \[0, 1\), got 1.5"):
        check_recipe(as_recipe({"train": TRAIN, "random_reward_rate": 1.5}))


def test_grpo_random_trains_as_its_own_kind(tmp_path, capsys):
    """One registry entry + its module: it trains, caches under its own kind and records its budget."""
    updating = {**GRPO, "max_new_tokens": 16, "num_generations": 8}  # enough spread in the rewards to update
    random_spec = {"source": "derived", "base": BASE, "recipe": {**updating, "kind": "grpo_random"}}
    real_spec = {"source": "derived", "base": BASE, "recipe": updating}
    format_spec = {**random_spec, "recipe": {**updating, "kind": "grpo_format"}}
    keys = [folder_name(s).split("-", 1) for s in (random_spec, format_spec, real_spec)]
    assert [k[0] for k in keys] == ["grpo_random", "grpo_format", "grpo"] and len({k[1] for k in keys}) == 3
    model, _ = load_model(random_spec, device="cpu", cache_dir=str(tmp_path))
    out = capsys.readouterr().out
    assert "GRPO rewards shuffled within each round (control)" in out and "trained in" in out
    folder = tmp_path / "models" / folder_name(random_spec)
    budget = training_budget(random_spec, str(tmp_path))
    assert budget == {**json.loads((folder / "budget.json").read_text()), "lr_swept": False}  # the recipe's say
    assert (budget["kind"], budget["steps"], budget["samples"]) == ("grpo_random", 2, 2 * 4 * 8)
    assert budget["optimizer_steps"] >= 1
    history = json.loads((folder / "grpo_history.json").read_text())
    assert [row["step"] for row in history if "train/skipped" in row] == [1, 2]
    base, _ = load_model(BASE, device="cpu")
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), base.parameters()))
    load_model(random_spec, device="cpu", cache_dir=str(tmp_path))
    assert "is not cached" not in capsys.readouterr().out


def test_round_hook_sees_every_round_before_groups_form():
    """The trainer hands each sampling round's scored answers to the hook, and trains on what the hook left."""
    from rlsft.data import arithmetic_records
    from rlsft.grpo.config import as_recipe
    from rlsft.grpo.reward import Scored
    from rlsft.models import build_tiny_model
    from rlsft.grpo.trainer import GRPOTrainer

    model, tok = build_tiny_model(seed=0)
    seen = []

    def hook(answers, seed):
        seen.append((len(answers), seed))
        for i, a in enumerate(answers):  # every group gets one rewarded answer: all groups informative
            a.reward, a.correct = (1.0, True) if i % 4 == 0 else (0.0, False)

    recipe = as_recipe({**GRPO, "steps": 1, "dynamic_sampling": True, "max_resample": 2})
    trainer = GRPOTrainer(model, tok, recipe, arithmetic_records(30, 1, 1, "bare", 0), [], "chat",
                          reward_fn=lambda text, rec: Scored(0.0, False, None), round_hook=hook)
    groups, stats = trainer.collect()
    assert seen and seen[0][0] == 16 and len(groups) == 4 and stats["train/zero_var_frac"] == 0
    assert stats["train/accuracy"] == 0.25  # what the hook set, not the reward function's all-wrong


@pytest.mark.parametrize("text,pred,formed", [
    ("3 + 4 = 7.", "7", True),
    ("The answer is \\boxed{12}.", "12", True),
    ("I think it is 9, wrong but stated.", "9", True),
    ("6 + 8 = \\boxed{}", "6 + 8", False),  # the restated question (rlsft.grading.unanswered)
    ("I do not know.", None, False),
])
def test_format_reward_pays_for_a_readable_answer_right_or_wrong(text, pred, formed):
    from rlsft.grpo.config import as_recipe

    recipe = as_recipe({"train": TRAIN, "max_new_tokens": 8, "overlong_buffer": 2})
    assert well_formed(text, pred) is formed
    a = SimpleNamespace(text=text, pred=pred, ids=[1, 2, 3], reward=0.0, correct=not formed)
    format_rewards([a], 0, recipe)
    assert (a.reward, a.correct) == ((3.0, True) if formed else (-0.5, False))
    long = SimpleNamespace(text=text, pred=pred, ids=list(range(8)), reward=0.0, correct=False)
    format_rewards([long], 0, recipe)
    assert long.reward == (3.0 if formed else -0.5) - 1.0  # DAPO's overlong punishment, as for the real reward
