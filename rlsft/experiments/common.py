"""What every experiment needs: the run folder, the tracker, and cached per-stage generations."""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..cache import atomic_write_bytes, atomic_write_json
from ..data import Record, distinct_records, load_records
from ..errors import RlsftError
from ..generate import Sampling, generate_answers
from ..models import fingerprint, load_model, pick_device, pick_dtype
from ..parallel import Processes
from ..tracking import Tracker

log = logging.getLogger(__name__)


def check_architectures(experiment: str, stages, spec_of) -> None:
    """RlsftError naming the stage whose architecture ``experiment`` (one that reads a model's modules:
    ``READS_INTERNALS``) cannot read, before anything is loaded or generated (``spec_of(stage)``: its model spec)."""
    from ..architectures import architecture
    from ..models import model_type

    for stage in stages:
        kind = model_type(spec_of(stage))
        if kind is not None:
            try:
                architecture(kind)
            except RlsftError as exc:
                raise RlsftError(f"stage {stage.name!r}: {exc} (experiment={experiment} reads the model's "
                                 "modules)") from None


@dataclass
class RunContext:
    cfg: Any
    run_dir: Path
    cache_dir: str
    tracker: Tracker
    processes: Processes = field(default_factory=Processes)  # data-parallel processes (rlsft.parallel)
    _models: dict = field(default_factory=dict)
    _stages: list = field(default_factory=list)  # the pair's stages, seeds expanded (rlsft.seeds), once
    _overlaps: dict = field(default_factory=dict)  # {dataset name: {stage: overlap}}, checked once per dataset

    # ------------------------------------------------------------------ models and data
    def stages(self) -> list[Any]:
        """The pair's stages, each derived one once per training seed when ``model_pair.seeds`` is set."""
        pair = self.cfg.model_pair
        if not pair.get("seeds"):
            return list(pair.stages)
        if not self._stages:
            from ..config import StageConfig
            from ..seeds import expand_seeds

            expanded = expand_seeds(OmegaConf.to_container(pair.stages, resolve=True), list(pair.seeds))
            self._stages = [OmegaConf.merge(OmegaConf.structured(StageConfig), s) for s in expanded]
        return list(self._stages)

    def arms(self) -> dict[str, list[str]]:
        """{arm: its stage names in seed order} (rlsft.seeds); a stage without ``arm`` is an arm of one seed."""
        from ..seeds import arms

        return arms([{"name": s.name, "arm": s.get("arm"), "seed": s.get("seed")} for s in self.stages()])

    def model_spec(self, stage: Any) -> dict:
        return OmegaConf.to_container(stage.model, resolve=True) if not isinstance(stage.model, dict) else stage.model

    def load_stage(self, stage: Any):
        """(model, tokenizer) of a stage, loaded once per run (on this process's GPU when several share a run)."""
        if stage.name not in self._models:
            start = time.time()
            log.info("loading the %s model (%s)", stage.name, self.model_spec(stage).get("source"))
            device = self.processes.device or self.cfg.run.device
            self._models[stage.name] = load_model(self.model_spec(stage), device=device,
                                                  dtype=self.cfg.run.dtype, cache_dir=self.cache_dir)
            trained_s = getattr(self._models[stage.name][0], "rlsft_trained_s", None)
            if trained_s is not None:  # a derived model trained on first use
                log.info("trained the %s model in %.0f s (then loaded it: %.0f s in all)", stage.name, trained_s,
                         time.time() - start)
            else:
                log.info("loaded the %s model in %.0f s", stage.name, time.time() - start)
        return self._models[stage.name]

    def release(self, stage: Any) -> None:
        self._models.pop(stage.name, None)

    def records(self, dataset_cfg: Any = None) -> list[Record]:
        """The evaluated questions: distinct (repeats dropped, said once), train/eval overlap printed (method.md
        2.8)."""
        dataset_cfg = dataset_cfg or self.cfg.dataset
        records, repeats = distinct_records(load_records(dataset_cfg))
        if dataset_cfg.name not in self._overlaps:
            if repeats:
                print(f"[data] {dataset_cfg.name}: {repeats} repeated questions dropped ({len(records)} distinct "
                      "questions evaluated)", flush=True)
            self.check_overlap(dataset_cfg.name, records)
        return records

    def check_overlap(self, dataset: str, records: list[Record]) -> dict:
        """Print and record (run summary, W&B ``data/overlap/<stage>``) each derived stage's train/eval overlap."""
        from ..overlap import overlap_lines, stage_overlaps

        overlaps = stage_overlaps({s.name: self.model_spec(s) for s in self.stages()}, records)
        for line in overlap_lines(dataset, overlaps):
            print(line, flush=True)
        self._overlaps[dataset] = overlaps
        self.write_json("data_overlap.json", self._overlaps)
        self.tracker.summary({f"data/overlap/{dataset}/{name}": o["overlap"] for name, o in overlaps.items()
                              if "overlap" in o})
        return overlaps

    def sampling(self, **overrides: Any) -> Sampling:
        g = self.cfg.generation
        values = dict(max_new_tokens=g.max_new_tokens or self.cfg.model_pair.max_new_tokens, temperature=g.temperature,
                      top_p=g.top_p, n_samples=g.n_samples, seed=g.seed)
        values.update(overrides)
        return Sampling(**values)

    def generations(self, stage: Any, records: list[Record], sampling: Sampling | None = None,
                    template: str | None = None, label: str = "", batch_size: int | None = None) -> list[dict]:
        """Cached answers of one stage (the model is loaded only on a cache miss); ``batch_size`` answers per
        generate call (default generation.batch_size)."""
        return generate_answers(
            lambda: self.load_stage(stage), records, template or self.cfg.model_pair.template,
            sampling or self.sampling(), fingerprint(self.model_spec(stage)), self.cache_dir,
            batch_size=batch_size or self.cfg.generation.batch_size,
            desc=f"generate [{stage.name}{' ' + label if label else ''}]")

    # ------------------------------------------------------------------ outputs
    def write_json(self, name: str, obj: Any) -> Path:
        path = self.run_dir / name
        atomic_write_json(path, obj)
        return path

    def write_text(self, name: str, text: str) -> Path:
        path = self.run_dir / name
        atomic_write_bytes(path, text.encode())
        return path

    def write_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        """The same table as CSV and markdown in the run folder, and as a W&B table."""
        import csv
        import io

        buf = io.StringIO()
        csv.writer(buf).writerows([columns, *rows])
        self.write_text(f"{name}.csv", buf.getvalue())
        self.write_text(f"{name}.md", markdown_table(columns, rows))
        self.tracker.log_table(name, columns, rows)

    def save_figure(self, name: str, fig) -> Path:
        from ..cache import atomic_path

        path = self.run_dir / f"{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
        self.tracker.log_image(name, path)
        return path


# One colour per stage in every figure (tab10 shades): the paper's sft/rl pair first, then the families' stages.
STAGE_COLORS = {"sft": "#1f77b4", "rl": "#d62728", "base": "#7f7f7f", "instruct": "#2ca02c", "think_sft": "#17becf",
                "think_dpo": "#9467bd", "think": "#ff7f0e", "rlzero_math": "#8c564b",
                # the training arms (smollm2_arms): dpo as the families' DPO stages, grpo as rl; never beside them
                "rft": "#2ca02c", "dpo": "#9467bd", "grpo": "#d62728", "grpo_random": "#ff7f0e",
                "grpo_format": "#8c564b"}
_SPARE = ["#e377c2", "#bcbd22", "#aec7e8", "#ff9896", "#98df8a", "#c5b0d5"]
_SEED = re.compile(r"_s\d+$")  # a seeded arm's stage name, <arm>_s<seed> (rlsft/seeds.py)


def arm_name(stage: str) -> str:
    """The arm a stage name belongs to: ``<arm>`` for a seeded arm's ``<arm>_s<seed>``, else the name itself."""
    return _SEED.sub("", stage)


def _arm(stage: str) -> str:
    """The name a stage's colour and legend place come from: a seeded arm's stage takes its arm's."""
    arm = arm_name(stage)
    return arm if arm in STAGE_COLORS else stage


def stage_color(stage: str) -> str:
    """The colour of a stage, the same in every figure (a seeded arm's stages share their arm's; unknown names get a
    fixed spare colour by their hash)."""
    arm = _arm(stage)
    if arm in STAGE_COLORS:
        return STAGE_COLORS[arm]
    import hashlib

    return _SPARE[int(hashlib.sha1(stage.encode()).hexdigest(), 16) % len(_SPARE)]


def stage_order(stages) -> list[str]:
    """Stages in legend order: the known ones as listed in STAGE_COLORS (sft before rl; a seeded arm's stages at
    their arm's place, by seed), then the rest by name."""
    known = list(STAGE_COLORS)
    return sorted(set(stages), key=lambda s: (known.index(_arm(s)) if _arm(s) in known else len(known), s))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)  # an empty cell (a point value's interval), as in the CSV, not "None"


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)


def precision(ctx: RunContext, stage: Any) -> str:
    """The dtype a stage's model runs in (part of every activation cache key: probe features, block statistics)."""
    spec = ctx.model_spec(stage)
    device = pick_device(spec.get("device") or ctx.cfg.run.device)
    return str(pick_dtype(spec.get("dtype") or ctx.cfg.run.dtype, device))
