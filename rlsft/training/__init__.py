"""Every way rlsft trains a derived model, in one registry (method.md 3 and 8).

A derived model ``{source: derived, base: <spec>, recipe: <recipe>}`` is the base trained by its recipe's kind:
``kind: sft | rft | dpo | grpo | grpo_random | grpo_format`` (a recipe naming no kind, or a GRPO preset, is ``grpo``; an arm
preset in ``rlsft/presets/arms/`` sets its own). ``rlsft.training.derived`` caches every kind the same way
(``<cache_dir>/models/<kind>-<key>``, the budget beside the weights); the engines stay where they are
(``rlsft.grpo``: the GRPO loop; ``rlsft.arms``: sft / rft / dpo on TRL) and know nothing of this package.

A new kind is one module defining a ``TrainingKind`` (rlsft.training.kind) and one entry in
``rlsft.training.registry.KIND_MODULES``.
Importing the package registers the ``derived`` model source.
"""

from __future__ import annotations

from ..models import register_source
from .kind import Trained, TrainingKind
from .registry import KINDS, check_recipe, kind_of, parse_recipe, training_kind

__all__ = ["KINDS", "Trained", "TrainingKind", "check_recipe", "kind_of", "parse_recipe", "training_kind"]


def _load_derived(spec, device="auto", dtype=None, cache_dir=None):
    from .derived import load_derived

    return load_derived(spec, device=device, dtype=dtype, cache_dir=cache_dir)


def _fingerprint_derived(spec):
    from .derived import derived_fingerprint

    return derived_fingerprint(spec)


register_source("derived", _load_derived, fingerprint=_fingerprint_derived)
