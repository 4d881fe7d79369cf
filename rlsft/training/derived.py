"""The ``derived`` model source: ``{source: derived, base: <spec>, recipe: <recipe>}`` is the base trained by the
recipe's kind (rlsft.training), cached under ``<cache_dir>/models/<kind>-<key>`` with key = hash(fingerprint(base),
what in the recipe changes the weights), and ``budget.json`` beside the weights.

Absent from the cache, it is trained on the spot (a log line says so) under a file lock, so two jobs asking for the
same derived model train it once: the second waits and loads the first one's result. A job killed mid-training
leaves checkpoints under ``<cache_dir>/training/<kind>-<key>`` and the next one resumes from them; once the model is
saved they are deleted (optimizer state alone is twice the model), unless the spec sets ``keep_checkpoints: true``.
The saved folder is sealed (rlsft.cache): a damaged one is moved aside and trained again.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..cache import atomic_write_json, cached, default_cache_dir
from ..errors import RlsftError
from ..models import fingerprint, load_model, pick_device, spec_dict
from .kind import TrainingKind
from .registry import parse_recipe


def split_spec(spec: dict) -> tuple[dict, TrainingKind, object]:
    """(base spec, kind, validated recipe) of a derived model spec."""
    if not spec.get("base"):
        raise RlsftError("a derived model spec needs `base` (the spec of the model to train) and `recipe`")
    kind, recipe = parse_recipe(spec.get("recipe"))
    if recipe.template is None:
        recipe.template = "chat"
    return spec_dict(spec["base"]), kind, recipe


def folder_name(spec: dict) -> str:
    """``<kind>-<key>``: the derived model's folder under ``models/`` (and its work folder under ``training/``)."""
    return _name(*split_spec(spec))


def _name(base: dict, kind: TrainingKind, recipe) -> str:
    return f"{kind.name}-{kind.key(fingerprint(base), recipe)}"


def derived_fingerprint(spec: dict) -> dict:
    """What determines a derived model's outputs, for stage cache keys (the recipe resolved, presets included).

    A GRPO model is fingerprinted by its hash alone, as before the kinds shared one registry, so the stage caches
    built on it (generations, EAP scores) keep their keys."""
    name = folder_name(spec)
    return {"source": "derived", "key": name.removeprefix("grpo-")}


def load_derived(spec: dict, device: str = "auto", dtype: str | None = None, cache_dir: str | None = None):
    base, kind, recipe = split_spec(spec)  # the recipe read and validated once (presets are files)
    cache = default_cache_dir(cache_dir)
    name = _name(base, kind, recipe)
    target = cache / "models" / name
    work = cache / "training" / name
    trained_s = None

    def train(tmp: Path) -> None:
        nonlocal trained_s
        print(f"[rlsft] derived model {name} is not cached: training it now ({kind.describe(recipe)}) into "
              f"{target}", flush=True)
        start = time.time()
        model, tok = load_model(base, device=device, dtype=dtype, cache_dir=str(cache))
        trained = kind.train(model, tok, base, recipe, work, cache, pick_device(device))
        trained_s = time.time() - start
        trained.model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        for file, obj in trained.files.items():
            atomic_write_json(tmp / file, obj)
        atomic_write_json(tmp / "budget.json", {**trained.budget, "lr": recipe.lr})
        print(f"[rlsft] derived model {name} trained in {trained_s:.0f} s ({trained.summary})", flush=True)

    # The folder is loaded after the lock is released, as any local model is (its files are read lazily).
    cached(target, train, lambda path: None, folder=True)
    if trained_s is not None and not spec.get("keep_checkpoints"):
        shutil.rmtree(work, ignore_errors=True)  # the model is final: nothing is left to resume
    model, tok = load_model({"source": "local", "path": str(target)}, device=device, dtype=dtype)
    model.rlsft_trained_s = trained_s  # read by RunContext.load_stage: "trained", not "loaded", in its log line
    return model, tok


def training_budget(spec: dict, cache_dir: str | None = None) -> dict | None:
    """The recorded budget of a derived model that is cached; None for other sources or an untrained model.

    Fields every kind has: kind, answer_tokens (trained answer tokens, all epochs or steps, counted as
    rlsft.training.budget says), optimizer_steps, samples (answers sampled from a model to build the training data; 0
    for sft), wall_s (training wall time on the machine that trained it), lr (the recipe's learning rate), lr_swept
    (the recipe says its lr came from experiment=lr_sweep)."""
    if spec.get("source") != "derived":
        return None
    base, kind, recipe = split_spec(spec)
    folder = default_cache_dir(cache_dir) / "models" / _name(base, kind, recipe)
    if (folder / "budget.json").is_file():
        budget = json.loads((folder / "budget.json").read_text())
    elif folder.is_dir():
        budget = kind.budget(folder)  # saved before budget.json existed: from the kind's own files
    else:
        return None
    if budget is None:
        return None
    return {"lr": recipe.lr, **budget, "lr_swept": bool(getattr(recipe, "lr_swept", False))}  # lr: saved before
    # budgets recorded it; lr_swept: the family's say, so it is read from the recipe, never from the saved budget
