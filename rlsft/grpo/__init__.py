"""DAPO-style GRPO on torch + transformers, with temperature as an independent variable (method.md section 3).

config (GRPOConfig, the recipe) -> rollout (group sampling) -> reward -> advantages (+ dynamic sampling) -> loss
(token-level, clip-higher) -> trainer (mini-batches, checkpoints, held-out evaluation) -> callbacks (what is measured
while it learns: the dynamics of method.md 9 by default; experiment=grpo adds its EAP drift).
A derived model trained with GRPO is a kind of the one training registry (rlsft.training.grpo_kind).
"""

from .config import GRPOConfig, LoRAConfig, as_recipe, check_recipe, recipe_hash

__all__ = ["GRPOConfig", "LoRAConfig", "GRPOTrainer", "as_recipe", "check_recipe", "recipe_hash"]


def __getattr__(name):
    if name == "GRPOTrainer":
        from .trainer import GRPOTrainer

        return GRPOTrainer
    raise AttributeError(name)
