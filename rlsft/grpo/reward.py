"""The answer reward of the rebuttal experiment (method.md 3), and DAPO's soft overlong punishment.

    correct (math-verify equivalence)            -> reward_correct              (+3)
    no number can be read from the answer        -> reward_wrong                (-0.5)
    (an empty \\boxed{}, or a restated sum such as "6 + 8": grading.unanswered)
    a wrong number pred, gold gt                 -> min(partial_max, -0.5 + 3.5 * max(0, 1 - |pred-gt| / max(|gt|, 1)))

With the defaults the partial credit runs from -0.5 (off by |gt| or more, or by 1 when |gt| <= 1) up to the cap
partial_max = 2.5 (< 3), so a near miss is rewarded but never as much as the right answer. The papers give no
formula; this is ours (recorded in every run's config). ``partial_credit: false`` gives -0.5 to every wrong answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import RlsftError
from ..grading import grade, numeric_value, unanswered


@dataclass(frozen=True)
class Scored:
    reward: float
    correct: bool
    pred: str | None


def gold_value(gold: str) -> float:
    """The gold answer as a number; a gold answer the reward cannot read is bad input, not a zero reward."""
    value = numeric_value(gold)
    if value is None or not math.isfinite(value):
        raise RlsftError(f"GRPO reward: cannot parse the gold answer {gold!r} as a number (partial credit needs one; "
                         f"set grpo.partial_credit=false or use a dataset with numeric answers)")
    return value


def partial_reward(pred: float, gt: float, wrong: float = -0.5, correct: float = 3.0, cap: float = 2.5) -> float:
    """Credit for a wrong numeric answer: linear in the relative error, from ``wrong`` up to ``cap`` (< correct)."""
    closeness = max(0.0, 1.0 - abs(pred - gt) / max(abs(gt), 1.0))
    return min(cap, wrong + (correct - wrong) * closeness)


def answer_reward(text: str, gold: str, kind: str = "math", correct: float = 3.0, wrong: float = -0.5,
                  partial_credit: bool = True, partial_max: float = 2.5) -> Scored:
    """Reward of one generated answer ``text`` against the gold answer string."""
    pred, ok = grade(text, gold, kind)
    if ok:
        return Scored(correct, True, pred)
    if not partial_credit or kind == "text" or unanswered(text, pred):  # a restated "6 + 8" is no number
        return Scored(wrong, False, pred)
    gt = gold_value(gold)
    value = numeric_value(pred)
    if value is None or not math.isfinite(value):
        return Scored(wrong, False, pred)
    return Scored(partial_reward(value, gt, wrong, correct, partial_max), False, pred)


def overlong_penalty(length: int, max_new_tokens: int, buffer: int, penalty: float = 1.0) -> float:
    """DAPO's soft overlong punishment: 0 up to max-buffer tokens, then linear down to -penalty at max_new_tokens."""
    if buffer <= 0 or length <= max_new_tokens - buffer:
        return 0.0
    return -penalty * min(1.0, (length - (max_new_tokens - buffer)) / buffer)
