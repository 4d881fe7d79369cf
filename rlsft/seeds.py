"""A family's training seeds (method.md 8: >= 3 training seeds per arm, and every difference between arms reported
over seeds and questions, rlsft.hierarchical).

``model_pair.seeds: [0, 1, 2]`` turns each derived stage (``source: derived``) into one stage per seed, in its place:
named ``<name>_s<seed>``, with ``arm: <name>`` and ``seed: <seed>``, and its recipe's ``seed`` set to it (the recipe's
seed is part of the derived model's cache key: one trained model per seed). Other stages (the base) stay one stage,
and every seed's recipe keeps the base spec it was written with: the seeds share the base. Stages may also be written
one per seed by hand, each with its ``arm`` and ``seed``.

Wherever a run takes stage names (``eap.reference``, ``eap.compare``), an arm's name stands for all its seeds.
Stages are plain dicts here (``OmegaConf.to_container`` of the pair's stages).
"""

from __future__ import annotations

from .errors import RlsftError


def expand_seeds(stages: list[dict], seeds: list[int]) -> list[dict]:
    """The stages with every derived one replaced by one stage per seed (unchanged when ``seeds`` is empty)."""
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise RlsftError(f"model_pair.seeds must be distinct seeds >= 0, got {list(seeds)}")
    out = []
    for stage in stages:
        if not seeds or stage["model"].get("source") != "derived":
            out.append(stage)
            continue
        if stage.get("seed") is not None:
            raise RlsftError(f"stage {stage['name']!r} sets its own seed; with model_pair.seeds every derived stage "
                             "is trained once per seed (leave `seed` unset, or model_pair.seeds empty)")
        for seed in seeds:
            model = {**stage["model"], "recipe": seeded_recipe(stage["model"]["recipe"], seed)}
            out.append({**stage, "name": f"{stage['name']}_s{seed}", "arm": stage["name"], "seed": seed,
                        "model": model})
    check_arms(out)
    return out


def seeded_recipe(recipe, seed: int) -> dict:
    """A derived model's recipe (a preset name or a section) with its training seed set."""
    return recipe_with(recipe, seed=seed)


def recipe_with(recipe, **keys) -> dict:
    """A derived model's recipe (a preset name or a section) with ``keys`` set on top (e.g. seed, lr)."""
    return {"preset": recipe, **keys} if isinstance(recipe, str) else {**recipe, **keys}


def arm_of(stage: dict) -> str:
    """The arm a stage is one seed of: its ``arm``, else its own name."""
    return stage.get("arm") or stage["name"]


def arms(stages: list[dict]) -> dict[str, list[str]]:
    """{arm: its stage names, in seed order}, arms in the order they first appear."""
    out: dict[str, list[dict]] = {}
    for stage in stages:
        out.setdefault(arm_of(stage), []).append(stage)
    return {arm: [s["name"] for s in sorted(group, key=lambda s: s.get("seed") or 0)] for arm, group in out.items()}


def check_arms(stages: list[dict]) -> None:
    """Names unique, one stage per (arm, seed), and no stage named like another stage's arm."""
    names = [s["name"] for s in stages]
    if len(set(names)) != len(names):
        raise RlsftError(f"model_pair.stages has repeated names (seeds expanded): {names}")
    for arm, group in arms(stages).items():
        seeds = [next(s.get("seed") for s in stages if s["name"] == n) for n in group]
        if len(group) > 1 and (None in seeds or len(set(seeds)) != len(seeds)):
            raise RlsftError(f"arm {arm!r} has stages {group} with seeds {seeds}: each of its stages needs its own "
                             "seed")
        if arm not in group and arm in names:
            raise RlsftError(f"stage name {arm!r} is also the arm of stages {group}: rename one")


def stage_names(by_arm: dict[str, list[str]], names: list[str]) -> list[str]:
    """``names`` with each arm's name replaced by its stages' names (``by_arm``: ``arms(stages)``); other names are
    kept, for the caller to name the unknown ones."""
    known = {n for group in by_arm.values() for n in group}
    return [n for name in names for n in ([name] if name in known else by_arm.get(name, [name]))]
