"""The ``grpo`` training kind (method.md 3): the GRPO loop of ``rlsft.grpo`` on the recipe's training split."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from ..cache import stage_key
from .kind import Trained, TrainingKind


def grpo_recipe(section: Any):
    """A GRPOConfig from a recipe section (a ``kind`` key, if given, is the registry's, not the recipe's)."""
    from omegaconf import DictConfig, OmegaConf

    from ..grpo.config import as_recipe, check_recipe

    if isinstance(section, DictConfig):
        section = OmegaConf.to_container(section, resolve=True)
    if isinstance(section, dict):
        section = {k: v for k, v in section.items() if k != "kind"}
    recipe = as_recipe(section)
    check_recipe(recipe)
    return recipe


def grpo_key(base_fingerprint: dict, recipe, **extra) -> str:
    """Every recipe key that changes the weights (``steps`` included), the base, and the kind's own ``extra``."""
    from ..grpo.config import GRPO_VERSION, training_fields

    weights = {**training_fields(recipe), "steps": recipe.steps}  # steps: a resumed run's, but a model's too
    return stage_key(version=GRPO_VERSION, base=base_fingerprint, recipe=weights, **extra)


def grpo_budget(history: list[dict], kind: str = "grpo") -> dict:
    """The budget fields of a GRPO run from its per-step rows (skipped steps sample but do not update)."""
    steps = [row for row in history if "train/skipped" in row]
    updated = [row for row in steps if not row["train/skipped"]]
    sampled = [row.get("train/sampled") for row in steps]
    return {"kind": kind, "steps": len(steps),
            "optimizer_steps": int(sum(row.get("train/mini_batches", 1) for row in updated)),
            "answer_tokens": int(sum(row.get("train/tokens", 0) for row in updated)),
            "samples": int(sum(sampled)) if sampled and None not in sampled else None,
            "wall_s": float(sum(row.get("time/step_s", 0.0) for row in steps))}


def saved_budget(folder: Path, kind: str = "grpo") -> dict | None:
    """The budget of a GRPO model saved before ``budget.json``, from its ``grpo_history.json``."""
    import json

    path = folder / "grpo_history.json"
    return grpo_budget(json.loads(path.read_text()), kind) if path.is_file() else None


def train_grpo(model, tokenizer, base: dict, recipe, work: Path, cache: Path, device: str, kind: str = "grpo",
               round_hook: Callable | None = None, callbacks: Sequence = ()) -> Trained:
    """Train ``model`` with GRPO; ``round_hook`` (a control kind's) sees each sampling round's scored answers;
    ``callbacks`` (rlsft.grpo.callbacks) come after the trainer's defaults, so the history keeps the dynamics."""
    from ..grpo.config import recipe_dict
    from ..grpo.data import recipe_data
    from ..grpo.trainer import GRPOTrainer

    train, held_out = recipe_data(recipe)
    trainer = GRPOTrainer(model, tokenizer, recipe, train, held_out, recipe.template, output_dir=work,
                          round_hook=round_hook, callbacks=callbacks)
    history = trainer.train()
    files = {"grpo_recipe.json": {"base": base, "recipe": recipe_dict(recipe)}, "grpo_history.json": history}
    budget = grpo_budget(history, kind)
    return Trained(trainer.final_model(), files, budget,
                   f"{budget['steps']} steps, {budget['optimizer_steps']} optimizer steps")


KIND = TrainingKind(
    name="grpo",
    recipe=grpo_recipe,
    key=grpo_key,
    train=train_grpo,
    describe=lambda r: f"GRPO, {r.steps} steps, T={r.temperature}",
    budget=saved_budget,
)
