"""What a training kind is: how its recipe is read, keyed, trained and costed (one per kind, rlsft.training)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class Trained:
    """What a kind's ``train`` hands back: the model to save (in the dtype to save), the JSON files to keep beside it
    (its recipe, history...), its budget (method.md 8: compared, not assumed) and a one-line summary."""

    model: Any
    files: dict[str, Any]
    budget: dict
    summary: str


@dataclass(frozen=True)
class TrainingKind:
    """One way to train: how its recipe is read, keyed, trained and costed.

    ``recipe(section)`` validates a recipe section (a preset name, a dict, a DictConfig) into its dataclass; ``key(base_fp, recipe)`` is
    the cache key (a hash of everything that changes the weights); ``train(model, tokenizer, base, recipe, work,
    cache, device)`` trains the loaded base (``work`` holds resume checkpoints); ``budget(folder)`` reads the budget of
    a model saved before ``budget.json`` existed; ``describe(recipe)`` is the "training it now (...)" text.
    """

    name: str
    recipe: Callable[[Any], Any]
    key: Callable[[dict, Any], str]
    train: Callable[..., Trained]
    describe: Callable[[Any], str]
    budget: Callable[[Path], dict | None] = lambda folder: None
