"""The GRPO recipe: one dataclass, knobs named as in the DAPO paper (Yu et al. 2025) and TRL where they agree.

A recipe is everything that determines the trained weights. It is the ``grpo`` section of the run config, and the
``recipe`` of a ``{source: derived}`` model spec; its hash (``recipe_hash``) keys derived-model caches and guards
resumes. Keys in ``NON_TRAINING_KEYS`` (how long to train, how often to save or evaluate) do not enter the hash, so
extending ``steps`` resumes the same run. What is measured while a model learns is not in the recipe: callbacks
(rlsft.grpo.callbacks) read their own sections, e.g. experiment=grpo's EAP drift reads ``eap`` and ``truncation``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from ..cache import stage_key
from ..errors import RlsftError
from ..presets import PRESETS

GRPO_VERSION = 2  # 2: the reward no longer credits restated questions (grading.unanswered); bump when a change alters what a recipe trains (invalidates derived-model caches)


@dataclass
class LoRAConfig:
    """LoRA via peft; ``r: 0`` = full fine-tuning (the default)."""

    r: int = 0
    alpha: int = 32
    dropout: float = 0.0
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"])


@dataclass
class GRPOConfig:
    # ---------------------------------------------------------------- data
    train: Any = None  # a dataset section (see conf/dataset) for the training questions; None: the run's dataset
    eval: Any = None  # a dataset section for held-out accuracy; None: hold out eval_n questions of `train`
    eval_n: int = 64  # held-out questions (taken out of `train` when `eval` is None; a subset of `eval` otherwise)
    template: Optional[str] = None  # prompt template; None: the pair's

    # ---------------------------------------------------------------- rollouts (group sampling)
    temperature: float = 1.0  # sampling temperature: the independent variable of the rebuttal experiment
    top_p: float = 1.0
    max_new_tokens: int = 200
    num_generations: int = 4  # G: answers per question
    batch_questions: int = 32  # questions per step after dynamic sampling (rollout batch = batch_questions * G)
    generation_batch_size: int = 0  # sequences per generate() call; 0 = the whole rollout round at once

    # ---------------------------------------------------------------- reward (rlsft.grpo.reward)
    reward_correct: float = 3.0
    reward_wrong: float = -0.5
    partial_credit: bool = True  # wrong numeric answers earn -0.5 + 3.5*max(0, 1-|pred-gt|/max(|gt|,1)) ...
    partial_max: float = 2.5  # ... capped here, so a wrong answer never scores as a correct one
    overlong_buffer: int = 0  # DAPO soft overlong punishment: L_cache tokens before max_new_tokens (0 = off)
    # the grpo_random control only (rlsft.training.grpo_random): 0 = each round's real rewards shuffled across its
    # answers; > 0 = each answer rewarded with this probability (Shao et al.'s random reward at a fixed rate)
    random_reward_rate: float = 0.0
    overlong_penalty: float = 1.0  # its largest penalty (reached at max_new_tokens)

    # ---------------------------------------------------------------- objective (DAPO)
    scale_rewards: str = "group"  # advantage = (r - group mean) / std over: group | batch | none (not scaled)
    loss_agg: str = "token"  # token: sum over all tokens / total tokens (DAPO) | sequence: mean of per-answer means
    epsilon_low: float = 0.2  # clip-higher: ratio clipped to [1 - epsilon_low, 1 + epsilon_high]
    epsilon_high: float = 0.28
    mini_batches: int = 1  # optimizer steps per rollout batch; clipping only acts from the second one on
    dynamic_sampling: bool = True  # drop groups whose answers are all right or all wrong, resample to fill the batch
    max_resample: int = 3  # extra sampling rounds at most per step
    beta: float = 0.0  # KL to the initial model (k3 estimator); 0 = off (DAPO)
    loss_temperature: bool = True  # score tokens at logits/temperature (the sampling distribution) or at T=1

    # ---------------------------------------------------------------- optimisation
    steps: int = 160  # rollout steps (each gives `mini_batches` optimizer steps)
    lr: float = 1e-6
    weight_decay: float = 0.0
    adam_betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0  # linear warmup in optimizer steps, then constant
    max_grad_norm: float = 1.0  # 0 = no clipping
    micro_batch_size: int = 8  # sequences per forward/backward; a mini-batch accumulates its micro-batches' gradients
    gradient_checkpointing: bool = False
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    seed: int = 0

    # ---------------------------------------------------------------- checkpoints and evaluation
    save_every: int = 20  # checkpoint every k steps (and at the end); 0 = only at the end
    keep_checkpoints: int = 1
    resume: bool = True  # continue from the newest checkpoint in the output folder when there is one
    save_final: bool = True  # experiment=grpo: also save the trained model (save_pretrained) to <run_dir>/model
    eval_every: int = 20  # held-out accuracy (and callbacks' on_evaluate) every k steps, at 0 and the end; 0 = never
    eval_max_new_tokens: Optional[int] = None  # None: max_new_tokens
    eval_batch_size: int = 16


NON_TRAINING_KEYS = ("steps", "save_every", "keep_checkpoints", "resume", "save_final", "eval_every", "eval_max_new_tokens",
                     "eval_batch_size")

# Recipe keys that have left the recipe, and where the setting lives now: experiment=grpo's EAP drift
# (rlsft.experiments.eap_drift) reads the eap experiment's own sections (no copies of them in a recipe).
MOVED_KEYS = {"eap_alphas": "eap.alphas", "eap_n": "truncation.n", "eap_batch_size": "eap.batch_size",
              "eap_positions": "eap.positions", "eap_bins": "eap.bins", "eap_faithfulness": "eap.faithfulness",
              "eap_faithfulness_points": "eap.faithfulness_points"}


def moved_key_message(key: str) -> str:
    """The one line for a recipe key in MOVED_KEYS."""
    return (f"grpo.{key} is now {MOVED_KEYS[key]}: experiment=grpo's EAP drift reads the eap experiment's own "
            f"settings (a derived model's recipe just drops the key)")


PRESET_DIR = PRESETS / "grpo"


def preset(name: str) -> dict:
    """The recipe ``rlsft/presets/grpo/<name>.yaml`` as a dict (the same files Hydra's ``grpo=<name>`` selects)."""
    from omegaconf import OmegaConf

    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise RlsftError(f"GRPO recipe preset {name!r} not found in {PRESET_DIR}; known: {known}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)  # type: ignore[return-value]


def as_recipe(section: Any) -> GRPOConfig:
    """A GRPOConfig from a dataclass, DictConfig or (partial) dict, unknown keys rejected by name.

    A derived model may name a preset instead of spelling the recipe out: ``recipe: smollm2_arith`` or
    ``recipe: {preset: smollm2_arith, steps: 30}`` (the preset's keys, then the given ones on top).
    """
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(section, GRPOConfig):
        return section
    if isinstance(section, DictConfig):
        section = OmegaConf.to_container(section, resolve=True)
    if isinstance(section, str):
        section = {"preset": section}
    section = dict(section or {})
    layers = [preset(section.pop("preset"))] if section.get("preset") else []
    moved = [k for layer in (*layers, section) for k in layer if k in MOVED_KEYS]
    if moved:
        raise RlsftError(f"GRPO recipe: {moved_key_message(moved[0])}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(GRPOConfig), *layers, section)
    except OmegaConfBaseException as exc:
        raise RlsftError(f"GRPO recipe: {str(exc).splitlines()[0]}") from None
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def recipe_dict(recipe: GRPOConfig) -> dict:
    from dataclasses import asdict

    return asdict(recipe)


ADDED_AT_DEFAULT = {"random_reward_rate": 0.0}  # keys added after models were trained: keyed only when set


def training_fields(recipe: GRPOConfig) -> dict:
    """What determines the trained weights: the recipe less NON_TRAINING_KEYS, and less each ADDED_AT_DEFAULT key at its
    default, so the hashes and cache keys of recipes written before it existed do not change."""
    return {k: v for k, v in recipe_dict(recipe).items()
            if k not in NON_TRAINING_KEYS and not (k in ADDED_AT_DEFAULT and v == ADDED_AT_DEFAULT[k])}


def recipe_hash(recipe: GRPOConfig) -> str:
    """Hash of what determines the trained weights (training_fields)."""
    return stage_key(version=GRPO_VERSION, recipe=training_fields(recipe))


def check_recipe(r: GRPOConfig) -> None:
    """Range checks with one clear message each (also called from rlsft.config.validate)."""

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise RlsftError(f"grpo.{msg}")

    need(r.temperature > 0, f"temperature must be > 0 (GRPO samples; greedy groups have no variance), got {r.temperature}")
    need(0 < r.top_p <= 1, f"top_p must be in (0, 1], got {r.top_p}")
    need(r.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {r.max_new_tokens}")
    need(r.num_generations >= 2, f"num_generations must be >= 2 (advantages compare answers within a group), "
                                 f"got {r.num_generations}")
    need(r.batch_questions >= 1, f"batch_questions must be >= 1, got {r.batch_questions}")
    need(r.generation_batch_size >= 0, f"generation_batch_size must be >= 0, got {r.generation_batch_size}")
    need(r.generation_batch_size == 0 or r.generation_batch_size % r.num_generations == 0,
         f"generation_batch_size ({r.generation_batch_size}) must be a multiple of num_generations "
         f"({r.num_generations}) so that a group is sampled together")
    rollout = r.batch_questions * r.num_generations
    need(r.mini_batches >= 1 and rollout % r.mini_batches == 0,
         f"mini_batches ({r.mini_batches}) must divide the rollout batch batch_questions*num_generations ({rollout})")
    need((rollout // r.mini_batches) % r.num_generations == 0,
         f"a mini-batch ({rollout // r.mini_batches} answers) must be a multiple of num_generations "
         f"({r.num_generations}); lower mini_batches")
    need(r.micro_batch_size >= 1, f"micro_batch_size must be >= 1, got {r.micro_batch_size}")
    need(r.scale_rewards in ("group", "batch", "none"), f"scale_rewards must be group, batch or none, got {r.scale_rewards!r}")
    need(r.loss_agg in ("token", "sequence"), f"loss_agg must be token or sequence, got {r.loss_agg!r}")
    need(0 <= r.epsilon_low < 1, f"epsilon_low must be in [0, 1), got {r.epsilon_low}")
    need(r.epsilon_high >= 0, f"epsilon_high must be >= 0, got {r.epsilon_high}")
    need(r.max_resample >= 0, f"max_resample must be >= 0, got {r.max_resample}")
    need(0 <= r.random_reward_rate < 1, f"random_reward_rate must be in [0, 1), got {r.random_reward_rate}")
    need(r.beta >= 0, f"beta must be >= 0, got {r.beta}")
    need(r.reward_correct > r.partial_max > r.reward_wrong,
         f"rewards must satisfy reward_wrong < partial_max < reward_correct, got {r.reward_wrong}, {r.partial_max}, "
         f"{r.reward_correct}")
    need(0 <= r.overlong_buffer < r.max_new_tokens,
         f"overlong_buffer must be in [0, max_new_tokens), got {r.overlong_buffer}")
    need(r.steps >= 1, f"steps must be >= 1, got {r.steps}")
    need(r.lr > 0, f"lr must be > 0, got {r.lr}")
    need(r.warmup_steps >= 0 and r.max_grad_norm >= 0, "warmup_steps and max_grad_norm must be >= 0")
    need(len(r.adam_betas) == 2 and all(0 <= b < 1 for b in r.adam_betas), f"adam_betas must be two values in [0, 1)")
    need(r.lora.r >= 0, f"lora.r must be >= 0 (0 = full fine-tuning), got {r.lora.r}")
    need(r.save_every >= 0 and r.eval_every >= 0, "save_every and eval_every must be >= 0")
    need(r.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {r.keep_checkpoints}")
    need(r.eval_n >= 1, f"eval_n must be >= 1, got {r.eval_n}")
    need(r.eval_max_new_tokens is None or r.eval_max_new_tokens >= 1, "eval_max_new_tokens must be >= 1")
