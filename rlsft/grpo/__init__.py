"""DAPO-style GRPO on torch + transformers, with temperature as an independent variable (method.md section 3).

config (GRPOConfig, the recipe) -> rollout (group sampling) -> reward -> advantages (+ dynamic sampling) -> loss
(token-level, clip-higher) -> trainer (mini-batches, checkpoints, evaluation with EAP metric differences).
Importing the package registers the ``derived`` model source (a base model trained by a recipe, cached).
"""

from ..models import register_source
from .config import GRPOConfig, LoRAConfig, as_recipe, check_recipe, recipe_hash

__all__ = ["GRPOConfig", "LoRAConfig", "GRPOTrainer", "as_recipe", "check_recipe", "recipe_hash"]


def _load_derived(spec, device="auto", dtype=None, cache_dir=None):
    from .derived import load_derived

    return load_derived(spec, device=device, dtype=dtype, cache_dir=cache_dir)


def _fingerprint_derived(spec):
    from .derived import derived_fingerprint

    return derived_fingerprint(spec)


register_source("derived", _load_derived, fingerprint=_fingerprint_derived)


def __getattr__(name):
    if name == "GRPOTrainer":
        from .trainer import GRPOTrainer

        return GRPOTrainer
    raise AttributeError(name)
