"""Atomic training checkpoints: trainable weights (safetensors), optimizer + scheduler + RNG states, and the state.

    <output_dir>/checkpoints/step-000020/
        model.safetensors   trainable parameters (all of them for full fine-tuning, the adapter for LoRA)
        trainer.pt          optimizer, lr scheduler, torch / CUDA / python / numpy RNG states
        state.json          step, recipe hash and recipe, data position, metrics history so far

A folder only appears complete (written to a temporary folder, then renamed), so a job killed while saving resumes
from the previous checkpoint. Resuming checks the recipe hash: a checkpoint of another recipe is refused. Each folder
is sealed with a ``SHA256SUMS`` (rlsft.cache): a damaged checkpoint is moved aside and the one before it used.
``trainer.pt`` holds only tensors and plain Python values (the numpy RNG state is stored as a tensor), so it is read
with ``torch.load(weights_only=True)``: a cache folder that others can write to never runs pickled code.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from ..cache import SEAL, atomic_dir, damage, discard
from ..errors import RlsftError

_NAME = re.compile(r"^step-(\d+)$")


def trainable_state(model) -> dict[str, torch.Tensor]:
    # named_parameters() lists a tied weight once, so safetensors sees no shared storage
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    """RNG states as tensors and plain values only (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def save_checkpoint(folder: Path, step: int, model, optimizer, scheduler, state: dict, keep: int = 1) -> Path:
    from safetensors.torch import save_file

    target = Path(folder) / f"step-{step:06d}"
    with atomic_dir(target, sealed=True) as tmp:
        save_file(trainable_state(model), str(tmp / "model.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
                   tmp / "trainer.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, default=str))
    for old in checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.match(p.name) and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def newest_intact(folder: Path) -> Path | None:
    """The newest checkpoint that passes its seal and loads; damaged ones are moved aside (one warning each)."""
    for path in reversed(checkpoints(folder)):
        why = damage(path) if (path / SEAL).exists() else _unloadable(path)
        if why is None:
            return path
        discard(path, why)
    return None


def _unloadable(path: Path) -> str | None:
    """A load check for a checkpoint written before seals (or with pickled numpy state): what fails, or None."""
    try:
        torch.load(path / "trainer.pt", weights_only=True)
        json.loads((path / "state.json").read_text())
    except Exception as exc:  # any failure to read means the checkpoint cannot be resumed from
        return f"it cannot be read ({type(exc).__name__})"
    return None


def load_checkpoint(path: Path, model, optimizer, scheduler, expected_hash: str, expected_recipe: dict | None = None) -> dict:
    """Restore weights, optimizer, scheduler and RNG from ``path``; return its state (after the recipe check)."""
    from safetensors.torch import load_file

    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    if state.get("recipe_hash") != expected_hash:
        theirs, ours = state.get("recipe") or {}, expected_recipe or {}
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise RlsftError(f"checkpoint {path} was written by a different GRPO recipe (hash {state.get('recipe_hash')} "
                         f"!= {expected_hash}; differs in {diff or 'unknown keys'}); use another output folder or "
                         f"grpo.resume=false")
    weights = load_file(str(path / "model.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    unknown = [n for n in weights if n not in params]
    if missing or unknown:
        raise RlsftError(f"checkpoint {path} does not match the model (missing {missing[:3]}, unexpected {unknown[:3]})")
    with torch.no_grad():
        for n, w in weights.items():
            params[n].copy_(w)
    extra = torch.load(path / "trainer.pt", weights_only=True)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    set_rng_state(extra["rng"])
    return state
