"""The offline training arms' engine (method.md section 8: sft / rft / dpo recipes, their examples, TRL trainers) and
reasoning vectors (method.md section 7).

The arms are trained as kinds of the one training registry (rlsft.training.offline); this package knows nothing of it.
Importing the package registers the ``vector`` model source (``rlsft.arms.vector``).
"""

from __future__ import annotations

from ..models import register_source


def _load_vector(spec, device="auto", dtype=None, cache_dir=None):
    from .vector import load_vector

    return load_vector(spec, device=device, dtype=dtype, cache_dir=cache_dir)


def _fingerprint_vector(spec):
    from .vector import vector_fingerprint

    return vector_fingerprint(spec)


register_source("vector", _load_vector, fingerprint=_fingerprint_vector)
