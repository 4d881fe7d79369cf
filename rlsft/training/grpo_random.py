"""The ``grpo_random`` control (method.md 8; Shao et al. 2025, spurious rewards, arXiv 2506.10947): GRPO exactly as
the ``grpo`` kind trains it, except that the reward does not depend on the answer.

Two ways, by the recipe's ``random_reward_rate``:
- 0 (the default): each sampling round's rewards are shuffled across the round's answers: the real reward's rate
  round by round, and of the same values, but which answer gets it no longer depends on the answer. The whole reward
  moves with the correctness flag (DAPO's overlong punishment too), so length carries no signal either. As the
  policy drifts its real rate can fall to 0; then every group is uniform and the run stops updating.
- r > 0: each answer is rewarded (``reward_correct``, else ``reward_wrong``, plus the overlong punishment) with
  probability r, drawn anew for every answer: Shao et al.'s random reward at a fixed rate, which a collapsing policy
  cannot switch off. Set r to the real run's mean reward rate to keep the rate matched.
Draws are seeded by (recipe seed, step, round): two trainings of one recipe are identical.
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


def draw_rewards(answers: list, seed: int, recipe) -> None:
    """Reward each answer with probability ``recipe.random_reward_rate``, independently of the answer."""
    from ..grpo.reward import overlong_penalty

    rng = random.Random(seed)
    for a in answers:
        a.correct = rng.random() < recipe.random_reward_rate
        a.reward = (recipe.reward_correct if a.correct else recipe.reward_wrong) + overlong_penalty(
            len(a.ids), recipe.max_new_tokens, recipe.overlong_buffer, recipe.overlong_penalty)


def train_random(model, tokenizer, base: dict, recipe, work, cache, device: str):
    hook = partial(draw_rewards, recipe=recipe) if recipe.random_reward_rate > 0 else shuffle_rewards
    return train_grpo(model, tokenizer, base, recipe, work, cache, device, kind="grpo_random", round_hook=hook)


def _describe(r) -> str:
    how = (f"rewarded at random with probability {r.random_reward_rate:g}" if r.random_reward_rate > 0 else
           "rewards shuffled within each round")
    return f"GRPO {how} (control), {r.steps} steps, T={r.temperature}"


KIND = TrainingKind(
    name="grpo_random",
    recipe=grpo_recipe,
    key=partial(grpo_key, control="random"),
    train=train_random,
    describe=_describe,
    budget=partial(saved_budget, kind="grpo_random"),
)
