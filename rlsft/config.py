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
from .grpo.config import GRPOConfig


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
    recipe: Any = None  # source=derived: the training recipe (a grpo section, or another kind's: rlsft.training)
    target: Any = None  # source=vector: theta_target + scale * (theta_plus - theta_minus) (rlsft.arms.vector)
    plus: Any = None
    minus: Any = None
    scale: float = 1.0
    keep_checkpoints: bool = False  # source=derived: keep the resume checkpoints (GBs) once the model is trained


@dataclass
class StageConfig:
    name: str = MISSING
    model: ModelSpec = field(default_factory=ModelSpec)
    algorithm: str = "sft"
    arm: Optional[str] = None  # the arm this stage is one training seed of (set by model_pair.seeds); None: its name
    seed: Optional[int] = None  # that training seed (its recipe's `seed`)


@dataclass
class PairConfig:
    """An ordered list of named stages ("sft" then "rl" for the paper's pairs; more for model families)."""

    name: str = MISSING
    template: str = "chat"
    max_new_tokens: int = 512
    stages: List[StageConfig] = field(default_factory=list)
    # method.md 8: every derived stage trained once per seed, as stages <name>_s<seed> of arm <name> (rlsft.seeds);
    # empty: the stages as written
    seeds: List[int] = field(default_factory=list)
    # the arm whose training budget the others must match within 10% (rlsft.training.budget); None: the first
    # derived stage's arm
    budget_reference: Optional[str] = None


@dataclass
class ArithmeticConfig:
    count: int = 200
    digits: int = 2
    n_ops: int = 1
    style: str = "bare"
    ops: str = "+-"
    unique: bool = False  # distinct questions only (repeats are correlated trials for an accuracy interval)


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
    # dataset sections whose questions this one leaves out (before `n` is drawn): a held-out set kept disjoint from a
    # training set however many questions it grows to (conf/dataset/arith2_heldout.yaml)
    exclude: Optional[List[Any]] = None


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
    verbose: bool = False  # libraries' own progress bars and INFO logs (transformers, matplotlib, ...)


FAITHFULNESS_BASELINES = ("counterfactual", "resample", "mean", "zero")


@dataclass
class PrimaryConfig:
    """method.md 2.8: the one RL - SFT comparison named before the run; every other difference is secondary."""

    metric: str = "effective_edges"  # a metric with an interval (rlsft.eap.METRICS), self_entropy or loss_adjusted
    alpha: float = 1.0  # one of the scored alphas (1.0: the whole answer)


@dataclass
class EAPConfig:
    attn_inputs: str = "qkv"  # qkv | joint
    # all | answer | answer_span: the answer number's tokens and `span_before` tokens before them, the same count in
    # every stage (method.md 8; T_cut and alpha do not apply, reported as alpha 1.0), summed over those positions
    positions: str = "all"
    span_before: int = 2  # answer_span: generated tokens scored before the number (an answer with fewer is dropped)
    batch_size: int = 4
    bins: int = 100
    shared_range: bool = False  # information complexity histogram range shared by both models of a pair
    n_boot: int = 2000  # BCa bootstrap resamples (method.md 2.6: at least 2000)
    alphas: List[float] = field(default_factory=list)  # several alphas in one job (empty: truncation.alpha)
    sft_stage: str = "sft"
    rl_stage: str = "rl"
    require_correct: bool = True  # method.md 2.1: only questions both models answer correctly (false: smoke tests)
    reference: Optional[str] = None  # several stages at once: each of `compare` against this stage
    compare: List[str] = field(default_factory=list)
    # with eap.reference: shared (one selection, the questions every stage answers correctly) | per_arm (each arm
    # against the reference on the questions the reference and every seed of that arm answer correctly; arm against
    # arm on the questions both selections hold). per_arm keeps arms that answer little from emptying every selection.
    selection: str = "shared"
    # rlsft's additions (method.md 2.6-2.7); all of them are part of the scores' cache key
    target: str = "nll"  # nll: the paper's loss | margin: own-token logit margin (does not vanish as p -> 1)
    calibrate: str = "none"  # none | match_sft: RL logits / tau so its mean self-entropy equals SFT's (tau recorded)
    method: str = "eap"  # eap | eap_ig: integrated gradients over the input embeddings (Hanna et al. 2024)
    ig_steps: int = 5  # eap_ig: forward+backward passes per batch
    faithfulness: bool = False  # edge-patching curves per stage (method.md 2.7): cross-fitted, control, within
    faithfulness_points: int = 20  # kept shares 1/n, ..., 1 (plus a bisection to 1% of E at the 0.8 crossing)
    # counterfactual (a corrupted twin of each prompt; arithmetic only) | resample (another selected question with the
    # same prompt length) | mean (mean-positional) | zero: what a removed edge is replaced by, and what ranks
    faithfulness_baseline: str = "counterfactual"
    faithfulness_splits: int = 10  # random halvings; the curve is their mean, the interval includes their spread
    faithfulness_draws: int = 5  # random-edge control sets per sample and share
    faithfulness_ranking: str = "abs_mean"  # abs_mean: |mean_k W_k| | mean_abs: mean_k |W_k|
    faithfulness_seed: Optional[int] = None  # draws the splits (None: truncation.seed); the split-seed stability check
    primary: PrimaryConfig = field(default_factory=PrimaryConfig)  # printed first; the rest: Holm-adjusted secondaries


@dataclass
class ProbeConfig:
    """method.md 4: features at a position, question-grouped nested repeated CV, shuffled-label control."""

    positions: List[str] = field(default_factory=lambda: ["before_answer", "question_end", "answer_mean"])
    group_by: str = "auto"  # question | template | auto (template when the dataset has them): what a fold keeps
    folds: int = 5
    inner_folds: int = 3  # choose C (and the layer) inside each training fold
    repeats: int = 2
    Cs: List[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0])
    threshold: float = 0.7  # report the first layer whose balanced accuracy reaches it
    shuffle_control: bool = True
    control_permutations: int = 3  # shuffled-label runs averaged in the control (one moves every layer together)
    batch_size: int = 8
    n_jobs: int = -1  # per-layer fits in parallel (joblib); 1 = serial
    seed: int = 0


@dataclass
class AblationConfig:
    """method.md 5: one block at a time during generation, on the math dataset and a factual control."""

    modes: List[str] = field(default_factory=lambda: ["skip"])  # zero | mean | mean_delta | skip | contract
    layers: Optional[List[int]] = None  # None: every layer_step-th block from 0, and the last block
    layer_step: int = 1
    alpha: float = 0.3  # contract: h <- (1 - alpha) h + alpha mean_over_hidden(h)
    control: Optional[DatasetConfig] = field(
        default_factory=lambda: DatasetConfig(name="factual", source="factual", answer_format="text"))
    max_tokens: int = 1024  # tokens subsampled for the input/output CKA of each block
    n_boot: int = 1000
    seed: int = 0


@dataclass
class VariabilityConfig:
    """method.md 6: n sampled answers per question at a temperature; length CV by accuracy bin."""

    n_samples: int = 8
    temperature: float = 0.7
    seed: int = 0
    exclude_truncated: bool = False  # leave answers cut by the token limit out of the CV


@dataclass
class LensesConfig:
    """method.md 9: what RL changes in weights, outputs and pass@k; stages from eap.reference / eap.compare."""

    top_k: int = 16  # singular directions for spectral drift and principal angles
    temperature: float = 0.7  # sampling temperature of the KL answers and of pass@k (the arms' GRPO temperature)
    pass_n: int = 64  # samples per question for pass@k (k = 1, 2, 4, ... pass_n)
    pass_questions: Optional[int] = None  # the first this many task questions for pass@k (None: all)
    kl_questions: Optional[int] = None  # the first this many task / control questions for KL and accuracy (None: all)
    control: DatasetConfig = field(
        default_factory=lambda: DatasetConfig(name="factual", source="factual", answer_format="text"))
    circuit: bool = True  # where the update meets the circuit (EAP scores of every stage at truncation.alpha)
    circuit_share: float = 0.25  # the top this share of blocks by EAP mass
    n_boot: int = 2000
    # sampled answers per generate call (pass@k's n samples of a question, the KL answers): on a 2-core CPU a batch of
    # 64 gave 4x the answers per second of a batch of 8 (benchmarks/bench_sampling.py); lower it if a GPU runs short
    batch_size: int = 64


def _validation_split() -> DatasetConfig:
    """200 distinct 2-digit +/- questions of another seed than the arms' training (1) and held-out (0) splits."""
    return DatasetConfig(name="arith2_val", source="arithmetic", answer_format="plain", seed=2,
                         arithmetic=ArithmeticConfig(count=200, digits=2, n_ops=1, style="bare", ops="+-", unique=True))


@dataclass
class LrSweepConfig:
    """method.md 8: where an arm does not learn at the shared learning rate, a small sweep for it, picked by accuracy
    on a validation split (never the evaluated questions: those and the training pool are left out of it)."""

    arm: Optional[str] = None  # the swept arm (a derived stage of model_pair, or the arm of its seeds)
    lrs: List[float] = field(default_factory=list)  # the learning rates tried (the arm's own is added if missing)
    seed: Optional[int] = None  # the training seed swept (None: the first of model_pair.seeds, else the recipe's)
    validation: DatasetConfig = field(default_factory=_validation_split)


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
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    variability: VariabilityConfig = field(default_factory=VariabilityConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    lenses: LensesConfig = field(default_factory=LensesConfig)
    lr_sweep: LrSweepConfig = field(default_factory=LrSweepConfig)


def register_configs() -> None:
    ConfigStore.instance().store(name="rlsft_schema", node=Config)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise RlsftError(message)


def validate(cfg: Any) -> None:
    """Range checks, each naming the key and the value (types and key names are checked by the schema), then the
    checks only the chosen experiment needs (its module's ``check``, rlsft/experiments/__init__.py)."""
    t, g = cfg.truncation, cfg.generation
    _check(0 < t.alpha <= 1, f"truncation.alpha must be in (0, 1], got {t.alpha}")
    _check(0 <= t.beta < t.gamma, f"truncation.beta must be >= 0 and < truncation.gamma (0: no lower length bound), "
                                  f"got beta={t.beta}, gamma={t.gamma}")
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
    _validate_seeds(cfg.model_pair)
    _check(cfg.logger.mode in ("offline", "online", "disabled"),
           f"logger.mode must be offline, online or disabled, got {cfg.logger.mode!r}")
    _validate_eap(cfg.eap)
    from .experiments import get_experiment  # here: the schema itself needs no experiment

    get_experiment(cfg.run.experiment).check(cfg)
    _validate_probe_ablation_variability(cfg)
    _validate_lenses(cfg.lenses)
    _validate_grpo(cfg)
    from .templates import TEMPLATES

    _check(cfg.model_pair.template in TEMPLATES,
           f"model_pair.template {cfg.model_pair.template!r} is unknown; expected one of {list(TEMPLATES)}")
    if cfg.dataset.n is not None:
        _check(cfg.dataset.n >= 1, f"dataset.n must be >= 1, got {cfg.dataset.n}")


def _validate_seeds(pair: Any) -> None:
    """The seeds expand (rlsft.seeds: names, one stage per arm and seed), and budget_reference names an arm."""
    from omegaconf import OmegaConf

    from .seeds import arms, expand_seeds

    stages = expand_seeds(OmegaConf.to_container(pair.stages, resolve=True), list(pair.seeds))
    _check(pair.budget_reference is None or pair.budget_reference in arms(stages),
           f"model_pair.budget_reference={pair.budget_reference!r} names no arm; arms: {list(arms(stages))}")


def _validate_eap(e: Any) -> None:
    """The eap section's ranges and choices, each named."""
    _check(e.attn_inputs in ("qkv", "joint"), f"eap.attn_inputs must be qkv or joint, got {e.attn_inputs!r}")
    _check(e.positions in ("all", "answer", "answer_span"),
           f"eap.positions must be all, answer or answer_span, got {e.positions!r}")
    _check(e.span_before >= 0, f"eap.span_before must be >= 0, got {e.span_before}")
    _check(e.selection in ("shared", "per_arm"), f"eap.selection must be shared or per_arm, got {e.selection!r}")
    _check(e.bins >= 2, f"eap.bins must be >= 2, got {e.bins}")
    _check(e.batch_size >= 1, f"eap.batch_size must be >= 1, got {e.batch_size}")
    _check(all(0 < a <= 1 for a in e.alphas), f"eap.alphas must each be in (0, 1], got {list(e.alphas)}")
    _check(e.target in ("nll", "margin"), f"eap.target must be nll or margin, got {e.target!r}")
    _check(e.calibrate in ("none", "match_sft"),
           f"eap.calibrate must be none or match_sft, got {e.calibrate!r}")
    _check(e.method in ("eap", "eap_ig"), f"eap.method must be eap or eap_ig, got {e.method!r}")
    _check(e.ig_steps >= 1, f"eap.ig_steps must be >= 1, got {e.ig_steps}")
    _check(e.faithfulness_points >= 2,
           f"eap.faithfulness_points must be >= 2, got {e.faithfulness_points}")
    _check(e.faithfulness_baseline in FAITHFULNESS_BASELINES,
           f"eap.faithfulness_baseline must be one of {', '.join(FAITHFULNESS_BASELINES)}, "
           f"got {e.faithfulness_baseline!r}")
    _check(e.faithfulness_splits >= 1, f"eap.faithfulness_splits must be >= 1, got {e.faithfulness_splits}")
    _check(e.faithfulness_draws >= 1, f"eap.faithfulness_draws must be >= 1, got {e.faithfulness_draws}")
    _check(e.faithfulness_ranking in ("abs_mean", "mean_abs"),
           f"eap.faithfulness_ranking must be abs_mean or mean_abs, got {e.faithfulness_ranking!r}")
    _check(not e.reference or e.calibrate == "none",
           "eap.calibrate matches the rl stage to the sft stage; leave eap.reference unset to use it")
    from .eap.metrics import METRICS  # here: the schema itself needs no torch

    primaries = [m for m, spec in METRICS.items() if spec.interval] + ["self_entropy", "loss_adjusted"]
    _check(e.primary.metric in primaries,
           f"eap.primary.metric must be one of {', '.join(primaries)} (a metric with an interval), got "
           f"{e.primary.metric!r}")
    _check(0 < e.primary.alpha <= 1, f"eap.primary.alpha must be in (0, 1], got {e.primary.alpha}")
    _check(e.n_boot >= 100, f"eap.n_boot must be >= 100 (method.md 2.6 uses 2000), got {e.n_boot}")


def _validate_probe_ablation_variability(cfg: Any) -> None:
    from .ablation import MODES
    from .probe import POSITIONS

    p, a, v = cfg.probe, cfg.ablation, cfg.variability
    _check(len(p.positions) >= 1 and all(x in POSITIONS for x in p.positions),
           f"probe.positions must be some of {list(POSITIONS)}, got {list(p.positions)}")
    _check(p.group_by in ("auto", "question", "template"),
           f"probe.group_by must be auto, question or template, got {p.group_by!r}")
    _check(p.folds >= 2 and p.inner_folds >= 2, f"probe.folds and probe.inner_folds must be >= 2, got {p.folds}, "
           f"{p.inner_folds}")
    _check(p.repeats >= 1, f"probe.repeats must be >= 1, got {p.repeats}")
    _check(p.control_permutations >= 1, f"probe.control_permutations must be >= 1, got {p.control_permutations}")
    _check(len(p.Cs) >= 1 and all(c > 0 for c in p.Cs), f"probe.Cs must be positive, got {list(p.Cs)}")
    _check(0 < p.threshold <= 1, f"probe.threshold must be in (0, 1], got {p.threshold}")
    _check(p.batch_size >= 1, f"probe.batch_size must be >= 1, got {p.batch_size}")
    _check(p.n_jobs != 0, "probe.n_jobs must not be 0 (1 = serial, -1 = all cores)")
    _check(len(a.modes) >= 1 and all(m in MODES for m in a.modes),
           f"ablation.modes must be some of {list(MODES)}, got {list(a.modes)}")
    _check(a.layers is None or all(l >= 0 for l in a.layers), f"ablation.layers must be >= 0, got {a.layers}")
    _check(a.layer_step >= 1, f"ablation.layer_step must be >= 1, got {a.layer_step}")
    _check(0 < a.alpha <= 1, f"ablation.alpha must be in (0, 1], got {a.alpha}")
    _check(a.max_tokens >= 2, f"ablation.max_tokens must be >= 2, got {a.max_tokens}")
    _check(a.n_boot >= 100, f"ablation.n_boot must be >= 100, got {a.n_boot}")
    _check(v.n_samples >= 2, f"variability.n_samples must be >= 2 (a CV needs two answers), got {v.n_samples}")
    _check(v.temperature > 0, f"variability.temperature must be > 0 (sampling), got {v.temperature}")


def _validate_lenses(L: Any) -> None:
    _check(L.top_k >= 1, f"lenses.top_k must be >= 1, got {L.top_k}")
    _check(L.temperature > 0, f"lenses.temperature must be > 0 (sampling), got {L.temperature}")
    _check(L.pass_n >= 1, f"lenses.pass_n must be >= 1, got {L.pass_n}")
    for key in ("pass_questions", "kl_questions"):
        _check(L[key] is None or L[key] >= 2, f"lenses.{key} must be >= 2 (an interval over questions), got {L[key]}")
    _check(0 < L.circuit_share <= 1, f"lenses.circuit_share must be in (0, 1], got {L.circuit_share}")
    _check(L.n_boot >= 100, f"lenses.n_boot must be >= 100, got {L.n_boot}")
    _check(L.batch_size >= 1, f"lenses.batch_size must be >= 1, got {L.batch_size}")


def _validate_grpo(cfg: Any) -> None:
    """The grpo section and the recipe of every derived stage (its kind's checks: rlsft.training.check_recipe)."""
    from .grpo.config import as_recipe, check_recipe
    from .training import check_recipe as check_derived_recipe

    check_recipe(as_recipe(cfg.grpo))
    for stage in cfg.model_pair.stages:
        if stage.model.source == "derived":
            _check(stage.model.base is not None and stage.model.recipe is not None,
                   f"stage {stage.name!r}: a derived model needs `base` and `recipe`")
            check_derived_recipe(stage.model.recipe)
        if stage.model.source == "vector":
            _check(None not in (stage.model.target, stage.model.plus, stage.model.minus),
                   f"stage {stage.name!r}: a vector model needs `target`, `plus` and `minus` model specs")
