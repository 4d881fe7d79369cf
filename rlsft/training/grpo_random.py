"""The ``grpo_random`` control (method.md 8; Shao et al. 2025, spurious rewards, arXiv 2506.10947): GRPO exactly as
the ``grpo`` kind trains it, except that each sampling round's rewards are shuffled across the round's answers.

The reward is then drawn at random at the real reward's rate (the round holds as many rewarded answers as the real
reward gave, and of the same values), but which answer gets it no longer depends on the answer, so the run learns
whatever GRPO does without a correctness signal. The whole reward moves with the correctness flag (DAPO's overlong
punishment too, when a recipe turns it on), so length carries no signal either. The permutation is seeded by
(recipe seed, step, round): two trainings of one recipe are identical.
"""

from __future__ import annotations

import random
from functools import partial

from .kind import TrainingKind
from .grpo_kind import grpo_key, grpo_recipe, saved_budget, train_grpo


def shuffle_rewards(answers: list, seed: int) -> None:
    """Permute (reward, correct) across ``answers`` in place; each answer keeps its own text and parsed ``pred``."""
    order = list(range(len(answers)))
    random.Random(seed).shuffle(order)
    drawn = [(answers[i].reward, answers[i].correct) for i in order]
    for a, (reward, correct) in zip(answers, drawn):
        a.reward, a.correct = reward, correct


KIND = TrainingKind(
    name="grpo_random",
    recipe=grpo_recipe,
    key=partial(grpo_key, control="random"),
    train=partial(train_grpo, kind="grpo_random", round_hook=shuffle_rewards),
    describe=lambda r: f"GRPO with rewards shuffled within each round (control), {r.steps} steps, T={r.temperature}",
    budget=partial(saved_budget, kind="grpo_random"),
)
