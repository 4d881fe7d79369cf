"""Derived models trained by the sft, rft and dpo arms: ``<cache_dir>/models/<kind>-<key>``, key =
hash(fingerprint(base), recipe), trained on first use under a file lock (as ``rlsft.grpo.derived`` does for GRPO).

The work folder ``<cache_dir>/arms/<kind>-<key>`` holds the trainer's checkpoints, so a killed job resumes (deleted once
the model is saved, unless the spec sets ``keep_checkpoints: true``); the base's
samples (rft, dpo) are cached generations (``rlsft.generate``), shared by both arms when their sampling settings agree,
so RFT and DPO learn from the very same answers. ``arm_budget.json`` beside the weights records what training cost:
examples, answer tokens, optimizer steps, wall time, and for rft/dpo the samples drawn.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from ..cache import atomic_dir, atomic_write_json, default_cache_dir, intact, locked, stage_key
from .config import ARM_VERSION, NON_TRAINING_KEYS, ArmConfig, arm_recipe_dict, as_arm_recipe


def _parts(spec: dict) -> tuple[dict, ArmConfig]:
    from ..grpo.derived import split_spec

    return split_spec(spec, as_arm_recipe)


def arm_key(spec: dict) -> str:
    """Cache key: the base's fingerprint and every recipe key that changes the weights."""
    from ..models import fingerprint

    base, recipe = _parts(spec)
    weights = {k: v for k, v in arm_recipe_dict(recipe).items() if k not in NON_TRAINING_KEYS}
    return f"{recipe.kind}-" + stage_key(version=ARM_VERSION, base=fingerprint(base), recipe=weights)


def base_samples(model, tokenizer, base: dict, questions, recipe: ArmConfig, cache: Path) -> list[dict]:
    """``samples`` answers per question from the base at ``temperature`` (cached, resumable generations)."""
    from ..generate import Sampling, generate_answers
    from ..models import fingerprint

    sampling = Sampling(max_new_tokens=recipe.max_new_tokens, temperature=recipe.temperature, top_p=recipe.top_p,
                        n_samples=recipe.samples, seed=recipe.seed)
    return generate_answers(lambda: (model, tokenizer), questions, recipe.template, sampling, fingerprint(base),
                            str(cache), batch_size=recipe.generation_batch_size, desc=f"{recipe.kind} base samples")


def train_arm(model, tokenizer, base: dict, recipe: ArmConfig, work: Path, cache: Path, device: str,
              callbacks=()) -> tuple[object, dict]:
    """Build the arm's examples from the recipe's training questions and train with TRL; (trainer, budget)."""
    from ..grpo.data import recipe_data
    from . import data, train

    records, held_out = recipe_data(recipe)
    questions = data.distinct_questions(records)
    stop = data.stop_id(model, tokenizer)
    budget: dict = {"kind": recipe.kind, "questions": len(questions), "held_out": len(held_out)}
    t0 = time.time()
    if recipe.kind == "sft":
        examples = data.sft_examples(tokenizer, recipe.template, questions, stop)
    else:
        samples = base_samples(model, tokenizer, base, questions, recipe, cache)
        budget.update(samples=len(samples), samples_correct=sum(s["correct"] for s in samples),
                      sample_tokens=sum(len(s["output_ids"]) for s in samples), sampling_wall_s=time.time() - t0)
        if recipe.kind == "rft":
            examples = data.rft_examples(samples, stop)
        else:
            examples = data.dpo_pairs(samples, stop, recipe.pairs_per_question)
    if recipe.kind == "dpo":
        tokens = sum(len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in examples)
        trainer = train.dpo_trainer(model, tokenizer, examples, recipe, work, device, callbacks)
    else:
        tokens = sum(sum(e["completion_mask"]) for e in examples)
        trainer = train.sft_trainer(model, tokenizer, examples, recipe, work, device, callbacks)
    t1 = time.time()
    budget.update(train.run(trainer))
    budget.update(examples=len(examples), epochs=recipe.epochs, answer_tokens_per_epoch=tokens,
                  answer_tokens=round(tokens * recipe.epochs), train_wall_s=time.time() - t1,
                  wall_s=time.time() - t0)
    return trainer, budget


def load_arm(spec: dict, device: str = "auto", dtype: str | None = None, cache_dir: str | None = None):
    from ..models import load_model, pick_device

    base, recipe = _parts(spec)
    cache = default_cache_dir(cache_dir)
    key = arm_key(spec)
    target = cache / "models" / key
    with locked(target):
        if not intact(target):
            print(f"[rlsft] derived model {key} is not cached: training it now ({recipe.kind}, {recipe.epochs} "
                  f"epochs) into {target}", flush=True)
            model, tok = load_model(base, device=device, dtype=dtype, cache_dir=str(cache))
            save_dtype = next(model.parameters()).dtype
            trainer, budget = train_arm(model.float(), tok, base, recipe, cache / "arms" / key, cache,
                                        pick_device(device))
            with atomic_dir(target, sealed=True) as tmp:
                trainer.model.to(save_dtype).eval().save_pretrained(tmp)
                tok.save_pretrained(tmp)
                atomic_write_json(tmp / "arm_recipe.json", {"base": base, "recipe": arm_recipe_dict(recipe)})
                atomic_write_json(tmp / "arm_budget.json", budget)
                atomic_write_json(tmp / "arm_history.json", trainer.state.log_history)
            print(f"[rlsft] derived model {key} trained in {budget['wall_s']:.0f} s "
                  f"({budget['optimizer_steps']} optimizer steps on {budget['examples']} examples)", flush=True)
            if not spec.get("keep_checkpoints"):
                shutil.rmtree(cache / "arms" / key, ignore_errors=True)  # final: the resume checkpoints are not needed
            del model, trainer
    return load_model({"source": "local", "path": str(target)}, device=device, dtype=dtype)


def arm_fingerprint(spec: dict) -> dict:
    return {"source": "derived", "key": arm_key(spec)}
