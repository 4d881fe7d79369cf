"""The questions a recipe trains and evaluates on (``train`` / ``eval`` dataset sections of the recipe)."""

from __future__ import annotations

import random
from typing import Any

from ..data import Record, dataset_section, leave_out, load_records, normalise_question, subset
from ..errors import RlsftError
from .config import GRPOConfig


def recipe_data(recipe: GRPOConfig, default_dataset: Any = None) -> tuple[list[Record], list[Record]]:
    """(train, held-out) records. ``train`` defaults to ``default_dataset``; without an ``eval`` section,
    ``eval_n`` questions are held out of the training set (a seeded draw, never trained on); with one, the training
    records asking any of its questions are left out. The training arms (rlsft.arms) split the same way."""
    if recipe.train is None and default_dataset is None:
        raise RlsftError("grpo.train is not set: a recipe needs a training dataset section (e.g. {name: ..., "
                         "source: arithmetic, ...}); a derived model's recipe must name its own")
    train_cfg = dataset_section(recipe.train, "grpo.train") if recipe.train is not None else default_dataset
    train = load_records(train_cfg)
    if recipe.eval is not None:
        every_eval = load_records(dataset_section(recipe.eval, "grpo.eval"))
        evals = subset(every_eval, recipe.eval_n, recipe.seed)
        # never train on an evaluation question: drop them from the training set (synthetic sets share questions)
        held = {normalise_question(r.question) for r in every_eval}
        kept = leave_out(train, held, f"grpo: every training question is also an evaluation question ({len(train)} "
                         "records)", "[training data] {dropped} training records ask an evaluation question: left out "
                         "of training")
        return kept, evals
    # hold out whole questions: a synthetic set repeats question texts, and a repeat must not leak into training
    texts = sorted({r.question for r in train})
    if len(texts) <= recipe.eval_n:
        raise RlsftError(f"grpo: the training set has {len(texts)} distinct questions, not enough to hold out "
                         f"eval_n={recipe.eval_n}; lower grpo.eval_n or give grpo.eval a dataset")
    random.Random(f"{recipe.seed}-heldout").shuffle(texts)
    held = set(texts[: recipe.eval_n])
    first = {}
    for r in train:
        if r.question in held:
            first.setdefault(r.question, r)
    return [r for r in train if r.question not in held], list(first.values())
