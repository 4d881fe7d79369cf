"""What training a derived model cost, one record for every arm (method.md 8: budgets are compared, not assumed).

The sft / rft / dpo arms save ``arm_budget.json`` beside their weights (rlsft.arms.derived); a GRPO model saves its
per-step history (``grpo_history.json``), from which the same fields are summed here, so models trained before this
module existed need no retraining. Fields every arm has: kind, answer_tokens (trained answer tokens, all epochs or
steps), optimizer_steps, samples (answers sampled from a model to build the training data; 0 for sft; None for a GRPO
history older than ``train/sampled``), wall_s (training wall time on the machine that trained it); the offline arms
add their examples per epoch and losses, GRPO its rollout steps.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..cache import default_cache_dir
from . import arm_of


def model_folder(spec: dict, cache_dir: str | None = None) -> Path:
    """Where a derived model's weights are cached (trained or not)."""
    from ..grpo.derived import derived_key

    key = derived_key(spec)
    return default_cache_dir(cache_dir) / "models" / (f"grpo-{key}" if arm_of(spec.get("recipe")) == "grpo" else key)


def grpo_budget(history: list[dict]) -> dict:
    """The budget fields of a GRPO run from its per-step rows (skipped steps sample but do not update)."""
    steps = [row for row in history if "train/skipped" in row]
    updated = [row for row in steps if not row["train/skipped"]]
    sampled = [row.get("train/sampled") for row in steps]
    return {"kind": "grpo", "steps": len(steps),
            "optimizer_steps": int(sum(row.get("train/mini_batches", 1) for row in updated)),
            "answer_tokens": int(sum(row.get("train/tokens", 0) for row in updated)),
            "samples": int(sum(sampled)) if sampled and None not in sampled else None,
            "wall_s": float(sum(row.get("time/step_s", 0.0) for row in steps))}


def training_budget(spec: dict, cache_dir: str | None = None) -> dict | None:
    """The recorded budget of a derived model that is cached; None for other sources or an untrained model."""
    if spec.get("source") != "derived":
        return None
    folder = model_folder(spec, cache_dir)
    if (folder / "arm_budget.json").is_file():
        budget = json.loads((folder / "arm_budget.json").read_text())
        return {"samples": 0, **budget}  # sft trains on reference answers: it samples nothing
    if (folder / "grpo_history.json").is_file():
        return grpo_budget(json.loads((folder / "grpo_history.json").read_text()))
    return None
