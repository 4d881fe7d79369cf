"""The registry of training kinds: which module defines each, and which kind a recipe names."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import RlsftError
from .kind import TrainingKind


# kind -> the module defining it as ``KIND`` (imported on first use: the registry itself stays cheap to import)
KIND_MODULES = {"grpo": "rlsft.training.grpo_kind", "grpo_random": "rlsft.training.grpo_random",
                "grpo_format": "rlsft.training.grpo_format",
                "sft": "rlsft.training.offline", "rft": "rlsft.training.offline", "dpo": "rlsft.training.offline"}
KINDS = tuple(KIND_MODULES)


def training_kind(name: str) -> TrainingKind:
    if name not in KIND_MODULES:
        raise RlsftError(f"unknown training kind {name!r}; expected one of {list(KINDS)}")
    module = importlib.import_module(KIND_MODULES[name])
    return module.KINDS[name] if hasattr(module, "KINDS") else module.KIND


def kind_of(recipe: Any) -> str:
    """The kind a derived model's recipe trains with: its ``kind``, its arm preset's, else ``grpo``."""
    from dataclasses import is_dataclass

    from omegaconf import DictConfig, OmegaConf

    from ..arms.config import is_preset, preset

    if is_dataclass(recipe):
        return getattr(recipe, "kind", "grpo")
    if isinstance(recipe, DictConfig):
        recipe = OmegaConf.to_container(recipe, resolve=True)
    if isinstance(recipe, str):
        recipe = {"preset": recipe}
    recipe = dict(recipe or {})
    kind = recipe.get("kind")
    if kind is None and is_preset(recipe.get("preset")):
        kind = preset(recipe["preset"]).get("kind", "sft")
    kind = kind or "grpo"
    if kind not in KIND_MODULES:
        raise RlsftError(f"unknown training kind {kind!r}; expected one of {list(KINDS)}")
    return kind


def parse_recipe(recipe: Any) -> tuple[TrainingKind, Any]:
    """(kind, validated recipe) of a derived model's recipe section."""
    kind = training_kind(kind_of(recipe))
    return kind, kind.recipe(recipe)


def check_recipe(recipe: Any) -> None:
    """Validate a derived model's recipe with its kind's checks (for rlsft.config.validate)."""
    parse_recipe(recipe)
