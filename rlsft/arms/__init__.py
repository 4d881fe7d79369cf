"""Controlled training arms from one base (method.md section 8) and reasoning vectors (method.md section 7).

A derived model ``{source: derived, base: <spec>, recipe: <recipe>}`` is trained by the arm its recipe names:
``kind: sft | rft | dpo`` (or a preset in ``conf/arms/`` that sets it) here, and a recipe without one is a GRPO recipe
(``rlsft.grpo``). ``rlsft.grpo.derived`` asks ``arm_of`` and hands the other arms to ``rlsft.arms.derived``.
Importing the package registers the ``vector`` model source (``rlsft.arms.vector``).
"""

from __future__ import annotations

from typing import Any

from ..errors import RlsftError
from ..models import register_source
from .config import KINDS, as_arm_recipe, is_preset, preset

ARMS = ("grpo", *KINDS)


def arm_of(recipe: Any) -> str:
    """The arm a derived model's recipe trains with: its ``kind``, its arm preset's, else ``grpo``."""
    from dataclasses import is_dataclass

    from omegaconf import DictConfig, OmegaConf

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
    if kind not in ARMS:
        raise RlsftError(f"unknown training arm {kind!r}; expected one of {list(ARMS)}")
    return kind


def check_derived_recipe(recipe: Any) -> None:
    """Validate a derived model's recipe with its arm's checks (for rlsft.config.validate)."""
    if arm_of(recipe) == "grpo":
        from ..grpo.config import as_recipe, check_recipe

        check_recipe(as_recipe(recipe))
    else:
        as_arm_recipe(recipe)


def _load_vector(spec, device="auto", dtype=None, cache_dir=None):
    from .vector import load_vector

    return load_vector(spec, device=device, dtype=dtype, cache_dir=cache_dir)


def _fingerprint_vector(spec):
    from .vector import vector_fingerprint

    return vector_fingerprint(spec)


register_source("vector", _load_vector, fingerprint=_fingerprint_vector)
