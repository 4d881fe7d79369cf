"""The ``derived`` model source: ``{source: derived, base: <spec>, recipe: <grpo section>}`` is the base model
trained by the recipe, cached under ``<cache_dir>/models/grpo-<key>`` with key = hash(fingerprint(base), recipe).

Absent from the cache, it is trained on the spot (a log line says so) under a file lock, so two jobs asking for the
same derived model train it once: the second waits and loads the first one's result. A job killed mid-training
leaves checkpoints under ``<cache_dir>/grpo/<key>`` and the next one resumes from them; once the model is saved they
are deleted (optimizer state alone is twice the model), unless the spec sets ``keep_checkpoints: true``. The saved
folder is sealed (rlsft.cache): a damaged one is moved aside and trained again.
"""

from __future__ import annotations

import shutil
import time

from ..cache import atomic_dir, atomic_write_json, default_cache_dir, intact, locked, stage_key
from ..errors import RlsftError
from .config import GRPO_VERSION, NON_TRAINING_KEYS, GRPOConfig, as_recipe, recipe_dict


def split_spec(spec: dict, to_recipe=as_recipe):
    """(base spec, recipe) of a derived model spec; ``to_recipe`` validates the recipe (GRPO's or an arm's)."""
    from ..models import spec_dict

    if not spec.get("base"):
        raise RlsftError("a derived model spec needs `base` (the spec of the model to train) and `recipe`")
    recipe = to_recipe(spec.get("recipe"))
    if recipe.template is None:
        recipe.template = "chat"
    return spec_dict(spec["base"]), recipe


def _parts(spec: dict) -> tuple[dict, GRPOConfig]:
    return split_spec(spec)


def derived_key(spec: dict) -> str:
    """Cache key: the base's fingerprint and every recipe key that changes the weights (``steps`` included)."""
    from ..arms import arm_of
    from ..models import fingerprint

    if arm_of(spec.get("recipe")) != "grpo":  # sft / rft / dpo recipes: rlsft.arms
        from ..arms.derived import arm_key

        return arm_key(spec)
    base, recipe = _parts(spec)
    d = recipe_dict(recipe)
    weights = {k: v for k, v in d.items() if k not in NON_TRAINING_KEYS or k == "steps"}
    return stage_key(version=GRPO_VERSION, base=fingerprint(base), recipe=weights)


def load_derived(spec: dict, device: str = "auto", dtype: str | None = None, cache_dir: str | None = None):
    from ..models import load_model
    from .data import recipe_data
    from .trainer import GRPOTrainer
    from ..arms import arm_of

    if arm_of(spec.get("recipe")) != "grpo":  # sft / rft / dpo recipes: rlsft.arms
        from ..arms.derived import load_arm

        return load_arm(spec, device=device, dtype=dtype, cache_dir=cache_dir)
    base, recipe = _parts(spec)
    cache = default_cache_dir(cache_dir)
    key = derived_key(spec)
    target = cache / "models" / f"grpo-{key}"
    trained_s = None
    with locked(target):
        if not intact(target):
            work = cache / "grpo" / key
            print(f"[rlsft] derived model grpo-{key} is not cached: training it now with GRPO "
                  f"({recipe.steps} steps, T={recipe.temperature}) into {target}", flush=True)
            start = time.time()
            model, tok = load_model(base, device=device, dtype=dtype, cache_dir=str(cache))
            train, held_out = recipe_data(recipe)
            trainer = GRPOTrainer(model, tok, recipe, train, held_out, recipe.template, output_dir=work)
            history = trainer.train()
            final = trainer.final_model()
            with atomic_dir(target, sealed=True) as tmp:
                final.save_pretrained(tmp)
                tok.save_pretrained(tmp)
                atomic_write_json(tmp / "grpo_recipe.json", {"base": base, "recipe": recipe_dict(recipe)})
                atomic_write_json(tmp / "grpo_history.json", history)
            trained_s = time.time() - start
            print(f"[rlsft] derived model grpo-{key} trained in {trained_s:.0f} s", flush=True)
            if not spec.get("keep_checkpoints"):
                shutil.rmtree(work, ignore_errors=True)  # the model is final: nothing is left to resume
            del model, final, trainer
    model, tok = load_model({"source": "local", "path": str(target)}, device=device, dtype=dtype)
    model.rlsft_trained_s = trained_s  # read by RunContext.load_stage: "trained", not "loaded", in its log line
    return model, tok


def derived_fingerprint(spec: dict) -> dict:
    """What determines a derived model's outputs, for stage cache keys (the recipe resolved, presets included)."""
    return {"source": "derived", "key": derived_key(spec)}
