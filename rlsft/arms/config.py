"""The recipe of a supervised or preference training arm (method.md section 8): one dataclass for ``sft``, ``rft`` and
``dpo``, with the data fields named and split exactly as the GRPO recipe's, so every arm trains on the same questions.

A recipe is everything that determines the trained weights; its hash keys the derived-model cache. Keys in
``NON_TRAINING_KEYS`` (how often to save) do not enter it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from ..errors import RlsftError
from ..presets import PRESETS

ARM_VERSION = 3  # bump when a change alters what a recipe trains (invalidates the arms' derived-model caches); 2: grading.unanswered;
# 3: sft references in the base's format ("3 + 4 = 7", rlsft.arms.data.reference_answer)
KINDS = ("sft", "rft", "dpo")


@dataclass
class ArmConfig:
    kind: str = "sft"  # sft: reference answers | rft: the base's correct samples | dpo: (correct, incorrect) base pairs

    # ---------------------------------------------------------------- data (as in GRPOConfig: same split, same questions)
    train: Any = None  # a dataset section for the training questions
    eval: Any = None  # a dataset section never trained on (its questions are removed from `train`)
    eval_n: int = 64  # held-out questions (taken out of `train` when `eval` is None)
    template: Optional[str] = None  # prompt template; None: chat
    seed: int = 0

    # ---------------------------------------------------------------- sampling from the base (rft, dpo)
    samples: int = 4  # k answers per training question
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 32
    generation_batch_size: int = 64

    # ---------------------------------------------------------------- objective and optimisation
    beta: float = 0.1  # dpo: the DPO temperature (method.md 8)
    pairs_per_question: int = 1  # dpo: (correct, incorrect) pairs per question at most
    epochs: float = 1.0
    # optimizer steps; 0: `epochs` passes over the examples. Set, it gives arms with different example counts the
    # same steps (method.md 8, matched budgets): the examples are cycled, reshuffled each pass, and `epochs` is unused
    steps: int = 0
    batch_size: int = 8  # sequences (dpo: pairs) per optimizer step
    # every step exactly `batch_size` examples: each pass's short last batch is dropped (the HF Trainer's
    # dataloader_drop_last), so trained tokens are steps x batch_size x the mean example's, whatever the example count
    # (method.md 8, matched budgets: without it they jump in whole passes when the examples are few)
    full_batches: bool = False
    # the trained answer tokens to aim at (method.md 8, matched budgets: the reference arm's mean over its seeds); set,
    # the batch is sized from the examples built, batch = round(answer_tokens / (steps x mean tokens per example)),
    # and `batch_size` is unused. Why: an arm's example lengths are the lengths of the base's samples, which its seed
    # moves (rft: 15-21 tokens a sample), so a batch sized on one seed trains 17-23% fewer tokens on another. The
    # nearest whole batch is within half an example a step of the target (<= 10% from 5 examples a step); with fewer
    # examples than that batch, each step trains on all of them (a warning; the budget table shows the shortfall).
    # Needs `steps` and `full_batches`; 0: `batch_size` as given
    answer_tokens: int = 0
    lr: float = 1e-5
    # the lr was picked by experiment=lr_sweep because the family's shared rate did not train this arm (method.md 8):
    # the budget table then accepts a differing lr (and says so); not part of the cache key
    lr_swept: bool = False
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0

    # ---------------------------------------------------------------- checkpoints (not part of the cache key)
    save_every: int = 10  # optimizer steps between checkpoints; 0 = none (a killed run restarts)


NON_TRAINING_KEYS = ("save_every", "lr_swept")
PRESET_DIR = PRESETS / "arms"


def is_preset(name: Any) -> bool:
    return isinstance(name, str) and (PRESET_DIR / f"{name}.yaml").is_file()


def preset(name: str) -> dict:
    """The recipe ``rlsft/presets/arms/<name>.yaml`` as a dict."""
    from omegaconf import OmegaConf

    if not is_preset(name):
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise RlsftError(f"training-arm recipe preset {name!r} not found in {PRESET_DIR}; known: {known}")
    return OmegaConf.to_container(OmegaConf.load(PRESET_DIR / f"{name}.yaml"), resolve=True)  # type: ignore


def as_arm_recipe(section: Any) -> ArmConfig:
    """An ArmConfig from a preset name, ``{preset: name, ...overrides}`` or a dict; unknown keys rejected by name."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(section, ArmConfig):
        return section
    if isinstance(section, DictConfig):
        section = OmegaConf.to_container(section, resolve=True)
    section = {"preset": section} if isinstance(section, str) else dict(section or {})
    layers = [preset(section.pop("preset"))] if section.get("preset") else []
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ArmConfig), *layers, section)
    except OmegaConfBaseException as exc:
        raise RlsftError(f"training-arm recipe: {str(exc).splitlines()[0]}") from None
    recipe = OmegaConf.to_object(merged)
    check_arm_recipe(recipe)  # type: ignore[arg-type]
    return recipe  # type: ignore[return-value]


def arm_recipe_dict(recipe: ArmConfig) -> dict:
    return asdict(recipe)


def check_arm_recipe(r: ArmConfig) -> None:
    """Range checks, one message each."""

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise RlsftError(f"{r.kind} recipe: {msg}")

    need(r.kind in KINDS, f"unknown kind {r.kind!r}; expected one of {list(KINDS)}")
    need(r.train is not None, "`train` (a dataset section) is not set")
    need(r.eval_n >= 1, f"eval_n must be >= 1, got {r.eval_n}")
    need(r.samples >= 1, f"samples must be >= 1, got {r.samples}")
    need(r.temperature > 0, f"temperature must be > 0 (the base is sampled), got {r.temperature}")
    need(0 < r.top_p <= 1, f"top_p must be in (0, 1], got {r.top_p}")
    need(r.max_new_tokens >= 1 and r.generation_batch_size >= 1, "max_new_tokens and generation_batch_size must be >= 1")
    need(r.beta > 0, f"beta must be > 0, got {r.beta}")
    need(r.pairs_per_question >= 1, f"pairs_per_question must be >= 1, got {r.pairs_per_question}")
    need(r.epochs > 0 and r.batch_size >= 1 and r.lr > 0, "epochs, batch_size and lr must be positive")
    need(r.steps >= 0, f"steps must be >= 0 (0: `epochs` passes), got {r.steps}")
    need(r.answer_tokens >= 0, f"answer_tokens must be >= 0 (0: batch_size as given), got {r.answer_tokens}")
    need(not r.answer_tokens or (r.steps > 0 and r.full_batches),
         "answer_tokens sizes each step's batch, so it needs `steps` > 0 and `full_batches: true`")
    need(r.warmup_steps >= 0 and r.max_grad_norm >= 0 and r.save_every >= 0,
         "warmup_steps, max_grad_norm and save_every must be >= 0")
