"""The ``grpo_format`` control (method.md 8; Shao et al. 2025, spurious rewards, arXiv 2506.10947): GRPO exactly as
the ``grpo`` kind trains it, except that an answer is rewarded for its format alone.

An answer earns ``reward_correct`` when it states a final value the grader can read (math-verify extracts a number,
and it is not an empty ``\\boxed{}`` or the question restated, rlsft.grading.unanswered), right or wrong, and
``reward_wrong`` otherwise; DAPO's overlong punishment is added as for the real reward. The held-out evaluation still
grades correctness, so the run's accuracy says what format-only rewards do to it; its ``train/accuracy`` is the rate
of well-formed answers (the signal it trains on).
"""

from __future__ import annotations

import math
from functools import partial

from ..grading import numeric_value, unanswered
from .grpo_kind import grpo_key, grpo_recipe, saved_budget, train_grpo
from .kind import Trained, TrainingKind


def well_formed(text: str, pred: str | None) -> bool:
    """Whether an answer gives a final value the grader reads as a number."""
    value = numeric_value(pred)
    return value is not None and math.isfinite(value) and not unanswered(text, pred)


def format_rewards(answers: list, seed: int, recipe) -> None:
    """Replace each answer's reward by its format reward (``seed`` unused: nothing is drawn)."""
    from ..grpo.reward import overlong_penalty

    for a in answers:
        a.correct = well_formed(a.text, a.pred)
        a.reward = (recipe.reward_correct if a.correct else recipe.reward_wrong) + overlong_penalty(
            len(a.ids), recipe.max_new_tokens, recipe.overlong_buffer, recipe.overlong_penalty)


def train_format(model, tokenizer, base: dict, recipe, work, cache, device: str) -> Trained:
    return train_grpo(model, tokenizer, base, recipe, work, cache, device, kind="grpo_format",
                      round_hook=partial(format_rewards, recipe=recipe))


KIND = TrainingKind(
    name="grpo_format",
    recipe=grpo_recipe,
    key=partial(grpo_key, control="format"),
    train=train_format,
    describe=lambda r: f"GRPO rewarding the answer format only (control), {r.steps} steps, T={r.temperature}",
    budget=partial(saved_budget, kind="grpo_format"),
)
