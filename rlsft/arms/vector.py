"""The ``vector`` model source (method.md section 7, reasoning vectors of seed 002):

    {source: vector, target: <spec>, plus: <spec>, minus: <spec>, scale: s}  ->  theta_target + s * (theta_plus - theta_minus)

e.g. the GRPO-minus-base vector added to the SFT arm. The three models must have the same parameter names and
shapes (same architecture and initialisation family); otherwise the stage is refused with the first mismatch named.
The arithmetic runs in fp32 and the result takes the target's dtype and tokenizer. Nothing is cached: it is three
loads and one pass over the weights, and the inputs are cached models already.
"""

from __future__ import annotations

import torch

from ..errors import RlsftError


def _specs(spec: dict) -> tuple[dict, dict, dict, float]:
    from ..models import spec_dict

    missing = [k for k in ("target", "plus", "minus") if not spec.get(k)]
    if missing:
        raise RlsftError(f"a vector model spec needs `target`, `plus` and `minus` model specs (missing: {missing})")
    return spec_dict(spec["target"]), spec_dict(spec["plus"]), spec_dict(spec["minus"]), float(spec.get("scale", 1.0))


def first_mismatch(named: dict[str, dict[str, torch.Size]]) -> str | None:
    """A line naming the first parameter whose name or shape differs between the models ({model: {name: shape}})."""
    (first, ref), *others = named.items()
    for other, params in others:
        for name in sorted(set(ref) | set(params)):
            if name not in params or name not in ref:
                has, lacks = (first, other) if name in ref else (other, first)
                return f"parameter {name!r} is in {has} but not in {lacks}"
            if ref[name] != params[name]:
                return f"parameter {name!r} has shape {tuple(ref[name])} in {first} but {tuple(params[name])} in {other}"
    return None


@torch.no_grad()
def add_vector(target, plus, minus, scale: float):
    """``target`` in place: theta_target + scale * (theta_plus - theta_minus), over every named parameter."""
    models = {"target": target, "plus": plus, "minus": minus}
    named = {k: {n: p.shape for n, p in m.named_parameters()} for k, m in models.items()}
    problem = first_mismatch(named)
    if problem:
        raise RlsftError(f"vector stage: the models are not compatible: {problem}")
    p_plus, p_minus = dict(plus.named_parameters()), dict(minus.named_parameters())
    for name, p in target.named_parameters():  # named_parameters lists a tied weight once: it is moved once
        delta = p_plus[name].float().to(p.device) - p_minus[name].float().to(p.device)
        p.copy_((p.float() + scale * delta).to(p.dtype))
    return target


def load_vector(spec: dict, device: str = "auto", dtype: str | None = None, cache_dir: str | None = None):
    from ..models import load_model

    target_spec, plus_spec, minus_spec, scale = _specs(spec)
    target, tok = load_model(target_spec, device=device, dtype=dtype, cache_dir=cache_dir)
    plus, _ = load_model(plus_spec, device="cpu", dtype="float32", cache_dir=cache_dir)
    minus, _ = load_model(minus_spec, device="cpu", dtype="float32", cache_dir=cache_dir)
    add_vector(target, plus, minus, scale)
    del plus, minus
    return target, tok


def vector_fingerprint(spec: dict) -> dict:
    from ..models import fingerprint

    target, plus, minus, scale = _specs(spec)
    return {"source": "vector", "target": fingerprint(target), "plus": fingerprint(plus),
            "minus": fingerprint(minus), "scale": scale}
