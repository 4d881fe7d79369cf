"""Train/eval overlap (method.md 2.8): how many evaluated questions a derived stage was trained on.

A stage trained on a question it is then evaluated on answers it from memory, so a run prints, for every derived stage
(any kind of ``rlsft.training``, and a ``vector`` stage through its components), how many of the evaluated
questions are in its training pool, compared by normalised question text (``rlsft.data.normalise_question``). Other
sources (hub, local, gguf, tiny) were trained elsewhere: their pool is unknown and they are not listed.
"""

from __future__ import annotations

from typing import Any

from .data import Record, normalise_question
from .errors import RlsftError


def training_pool(spec: dict) -> list[Record] | None:
    """The records a stage's weights were trained on (derived and vector stages), None when rlsft did not train it."""
    from .models import spec_dict

    spec = spec_dict(spec)
    if spec.get("source") == "vector":
        parts = [training_pool(spec[k]) for k in ("target", "plus", "minus") if spec.get(k)]
        known = [p for p in parts if p is not None]
        return [r for p in known for r in p] if known else None
    if spec.get("source") != "derived":
        return None
    from .grpo.data import recipe_data
    from .training.derived import split_spec

    _, _, recipe = split_spec(spec)
    pool = recipe_data(recipe)[0]  # what every training kind trains on, by the same function
    base = training_pool(spec["base"]) if spec.get("base") else None
    return pool + (base or [])


def overlap_count(pool: list[Record], evaluated: list[Record]) -> int:
    """Evaluated questions (distinct, normalised) that the training pool also asks."""
    trained = {normalise_question(r.question) for r in pool}
    return len({normalise_question(r.question) for r in evaluated} & trained)


def stage_overlaps(stages: dict[str, dict], evaluated: list[Record]) -> dict[str, dict[str, Any]]:
    """{stage: {overlap, pool, evaluated}} for each stage rlsft trained; {stage: {error}} when its pool won't load."""
    out: dict[str, dict[str, Any]] = {}
    for name, spec in stages.items():
        try:
            pool = training_pool(spec)
        except RlsftError as exc:  # e.g. a hub training set while offline: say so, the run goes on
            out[name] = {"error": str(exc)}
            continue
        if pool is not None:
            n_eval = len({normalise_question(r.question) for r in evaluated})
            out[name] = {"overlap": overlap_count(pool, evaluated), "pool": len(pool), "evaluated": n_eval}
    return out


def overlap_lines(dataset: str, overlaps: dict[str, dict[str, Any]]) -> list[str]:
    """One console line per derived stage."""
    lines = []
    for name, o in overlaps.items():
        if "error" in o:
            lines.append(f"[train/eval overlap] {name}: unknown ({o['error']})")
        else:
            lines.append(f"[train/eval overlap] {name}: {o['overlap']} of the {o['evaluated']} distinct questions of "
                         f"{dataset} are in its training pool ({o['pool']} records)"
                         + ("" if o["overlap"] == 0 else ": it may answer them from memory"))
    return lines
