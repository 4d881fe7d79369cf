"""The structured config schema (registered in Hydra's ConfigStore) and the range checks OmegaConf can't do.

Merging ``conf/`` into these dataclasses makes a misspelt key or a wrong type fail at composition, naming the key.
``validate`` then checks ranges (alpha in (0, 1], temperature > 0, ...) with one clear message per problem.
Each experiment has its own section; fields are named as in method.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from .errors import RlsftError


@dataclass
class TinySpec:
    arch: str = "llama"
    layers: int = 2
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    intermediate: Optional[int] = None
    seed: int = 0


@dataclass
class ModelSpec:
    """Where a model comes from: hub id / local dir / GGUF (file or package) / tiny random / derived (trained)."""

    source: str = "hub"
    path: Optional[str] = None
    revision: Optional[str] = None
    gguf_file: Optional[str] = None
    package: Optional[str] = None
    tiny: TinySpec = field(default_factory=TinySpec)
    dtype: Optional[str] = None
    base: Any = None  # source=derived: the spec of the model that is trained
    recipe: Any = None  # source=derived: the training recipe (a grpo section)


@dataclass
class StageConfig:
    name: str = MISSING
    model: ModelSpec = field(default_factory=ModelSpec)
    algorithm: str = "sft"


@dataclass
class PairConfig:
    """An ordered list of named stages ("sft" then "rl" for the paper's pairs; more for model families)."""

    name: str = MISSING
    template: str = "chat"
    max_new_tokens: int = 512
    stages: List[StageConfig] = field(default_factory=list)


@dataclass
class ArithmeticConfig:
    count: int = 200
    digits: int = 2
    n_ops: int = 1
    style: str = "bare"
    ops: str = "+-"


@dataclass
class DatasetConfig:
    name: str = MISSING
    source: str = "auto"  # auto (local path if it exists, else hub) | hub | local | arithmetic | templates | factual
    path: Optional[str] = None
    config_name: Optional[str] = None
    split: str = "test"
    question_field: str = "question"
    answer_field: str = "answer"
    id_field: Optional[str] = None
    answer_format: str = "plain"  # gsm8k | boxed | dollar | plain | text
    n: Optional[int] = None
    seed: int = 0
    per_template: int = 1000
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)


@dataclass
class TruncationConfig:
    """method.md 2.1: alpha sets T_cut; beta, gamma, delta, n, seed select the EAP samples."""

    alpha: float = 0.1
    beta: float = 0.5
    gamma: float = 1.5
    delta: float = 0.5
    n: int = 100
    seed: int = 0


@dataclass
class GenerationConfig:
    max_new_tokens: Optional[int] = None  # None: the pair's max_new_tokens
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    n_samples: int = 1
    batch_size: int = 8
    seed: int = 0


@dataclass
class LoggerConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "rlsft"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class PathsConfig:
    cache_dir: str = "${oc.env:RLSFT_CACHE_DIR,'~/.cache/rlsft'}"
    run_dir: str = "${hydra:runtime.output_dir}"


@dataclass
class RunConfig:
    experiment: str = "evaluate"
    device: str = "auto"
    dtype: Optional[str] = None
    seed: int = 0


@dataclass
class EAPConfig:
    attn_inputs: str = "qkv"  # qkv | joint
    positions: str = "all"  # all | answer
    batch_size: int = 4
    bins: int = 100
    shared_range: bool = False  # information complexity histogram range shared by both models of a pair
    n_boot: int = 1000
    alphas: List[float] = field(default_factory=list)  # several alphas in one job (empty: truncation.alpha)
    sft_stage: str = "sft"
    rl_stage: str = "rl"
    require_correct: bool = True  # method.md 2.1: only questions both models answer correctly (false: smoke tests)


@dataclass
class ReportConfig:
    dir: Optional[str] = None  # the multirun folder to gather


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model_pair: PairConfig = field(default_factory=PairConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    truncation: TruncationConfig = field(default_factory=TruncationConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    eap: EAPConfig = field(default_factory=EAPConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


def register_configs() -> None:
    ConfigStore.instance().store(name="rlsft_schema", node=Config)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise RlsftError(message)


def validate(cfg: Any) -> None:
    """Range checks, each naming the key and the value (types and key names are checked by the schema)."""
    t, g = cfg.truncation, cfg.generation
    _check(0 < t.alpha <= 1, f"truncation.alpha must be in (0, 1], got {t.alpha}")
    _check(0 < t.beta < t.gamma, f"truncation.beta must be > 0 and < truncation.gamma, got beta={t.beta}, gamma={t.gamma}")
    _check(0 < t.delta <= 1, f"truncation.delta must be in (0, 1], got {t.delta}")
    _check(t.n >= 2, f"truncation.n must be >= 2, got {t.n}")
    _check(g.temperature >= 0, f"generation.temperature must be >= 0 (0 = greedy), got {g.temperature}")
    _check(0 < g.top_p <= 1, f"generation.top_p must be in (0, 1], got {g.top_p}")
    _check(g.n_samples >= 1, f"generation.n_samples must be >= 1, got {g.n_samples}")
    _check(g.batch_size >= 1, f"generation.batch_size must be >= 1, got {g.batch_size}")
    _check(g.max_new_tokens is None or g.max_new_tokens >= 1,
           f"generation.max_new_tokens must be >= 1, got {g.max_new_tokens}")
    _check(cfg.model_pair.max_new_tokens >= 1, f"model_pair.max_new_tokens must be >= 1")
    _check(len(cfg.model_pair.stages) >= 1, f"model_pair {cfg.model_pair.name!r} has no stages")
    names = [s.name for s in cfg.model_pair.stages]
    _check(len(set(names)) == len(names), f"model_pair.stages has repeated names: {names}")
    _check(cfg.logger.mode in ("offline", "online", "disabled"),
           f"logger.mode must be offline, online or disabled, got {cfg.logger.mode!r}")
    _check(cfg.eap.attn_inputs in ("qkv", "joint"), f"eap.attn_inputs must be qkv or joint, got {cfg.eap.attn_inputs!r}")
    _check(cfg.eap.positions in ("all", "answer"), f"eap.positions must be all or answer, got {cfg.eap.positions!r}")
    _check(cfg.eap.bins >= 2, f"eap.bins must be >= 2, got {cfg.eap.bins}")
    _check(cfg.eap.batch_size >= 1, f"eap.batch_size must be >= 1, got {cfg.eap.batch_size}")
    _check(all(0 < a <= 1 for a in cfg.eap.alphas), f"eap.alphas must each be in (0, 1], got {list(cfg.eap.alphas)}")
    from .templates import TEMPLATES

    _check(cfg.model_pair.template in TEMPLATES,
           f"model_pair.template {cfg.model_pair.template!r} is unknown; expected one of {list(TEMPLATES)}")
    if cfg.dataset.n is not None:
        _check(cfg.dataset.n >= 1, f"dataset.n must be >= 1, got {cfg.dataset.n}")
