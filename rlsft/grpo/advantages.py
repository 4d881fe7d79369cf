"""Group-relative advantages and DAPO's dynamic-sampling filter.

Rewards arrive as one flat tensor, group after group (``num_generations`` answers of one question each).
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """A_i = r_i - mean(group), divided by the group's std (``group``, GRPO), the batch's std (``batch``), or 1 (``none``).

    std is the unbiased sample std (as in GRPO/TRL); ``eps`` keeps a zero-variance group at advantage 0.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)
    centred = r - r.mean(1, keepdim=True)
    if scale == "group":
        centred = centred / (r.std(1, keepdim=True) + eps)
    elif scale == "batch":
        centred = centred / (rewards.float().std() + eps)
    elif scale != "none":
        raise ValueError(f"scale must be group, batch or none, got {scale!r}")
    return centred.view(-1)


def informative_groups(correct: list[bool], group_size: int) -> list[int]:
    """Indices of the groups whose answers are neither all right nor all wrong (DAPO dynamic sampling).

    Judged on correctness, not on reward: a group of wrong answers with different partial credit still teaches
    nothing about being right, and is dropped.
    """
    groups = [correct[i : i + group_size] for i in range(0, len(correct), group_size)]
    return [g for g, c in enumerate(groups) if 0 < sum(c) < len(c)]
