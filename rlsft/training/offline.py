"""The ``sft``, ``rft`` and ``dpo`` training kinds (method.md 8), trained with TRL (rlsft.arms.train).

The base's samples (rft, dpo) are cached generations (rlsft.generate), shared by both kinds when their sampling
settings agree, so RFT and DPO learn from the very same answers. The budget records what training cost: examples,
trained answer tokens (counted as rlsft.training.budget says), optimizer steps, wall time, and for rft/dpo the
samples drawn.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from ..cache import stage_key
from ..errors import RlsftError
from .budget import batch_for_tokens, seen_tokens
from .kind import Trained, TrainingKind

log = logging.getLogger(__name__)


def base_samples(model, tokenizer, base: dict, questions, recipe, cache: Path) -> list[dict]:
    """``samples`` answers per question from the base at ``temperature`` (cached, resumable generations)."""
    from ..generate import Sampling, generate_answers
    from ..models import fingerprint

    sampling = Sampling(max_new_tokens=recipe.max_new_tokens, temperature=recipe.temperature, top_p=recipe.top_p,
                        n_samples=recipe.samples, seed=recipe.seed)
    return generate_answers(lambda: (model, tokenizer), questions, recipe.template, sampling, fingerprint(base),
                            str(cache), batch_size=recipe.generation_batch_size, desc=f"{recipe.kind} base samples")


def train_arm(model, tokenizer, base: dict, recipe, work: Path, cache: Path, device: str,
              callbacks=()) -> tuple[object, dict]:
    """Build the arm's examples from the recipe's training questions and train with TRL; (trainer, budget)."""
    from ..arms import data, train
    from ..grpo.data import recipe_data

    records, held_out = recipe_data(recipe)
    questions = data.distinct_questions(records)
    stop = data.stop_id(model, tokenizer)
    budget: dict = {"kind": recipe.kind, "questions": len(questions), "held_out": len(held_out), "samples": 0}
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
    if not examples:
        raise RlsftError(f"{recipe.kind} recipe: the training questions gave no examples")
    if recipe.kind == "dpo":
        tokens = [len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in examples]  # both answers (budget.py)
    else:
        tokens = [sum(e["completion_mask"]) for e in examples]
    if recipe.answer_tokens:
        batch = batch_for_tokens(tokens, recipe.steps, recipe.answer_tokens)
        if batch > len(examples):  # train what there is: the budget table then shows the shortfall, no crash
            log.warning("%s recipe: answer_tokens %d needs %d examples a step but the training questions gave %d: "
                        "training on %d a step, short of the target", recipe.kind, recipe.answer_tokens, batch,
                        len(examples), len(examples))
            batch = len(examples)
        recipe = replace(recipe, batch_size=batch)
        budget.update(answer_tokens_target=recipe.answer_tokens, batch_size=batch)
    if recipe.full_batches and recipe.batch_size > len(examples):
        raise RlsftError(f"{recipe.kind} recipe: full_batches with batch_size {recipe.batch_size} needs at least that "
                         f"many examples; the training questions gave {len(examples)}")
    if recipe.kind == "dpo":
        trainer = train.dpo_trainer(model, tokenizer, examples, recipe, work, device, callbacks)
    else:
        trainer = train.sft_trainer(model, tokenizer, examples, recipe, work, device, callbacks)
    t1 = time.time()
    budget.update(train.run(trainer))
    seen, answer_tokens = seen_tokens(tokens, recipe.batch_size, budget["optimizer_steps"], recipe.full_batches)
    budget.update(examples=len(examples), epochs=seen / len(examples), answer_tokens_per_epoch=sum(tokens),
                  examples_seen=seen, answer_tokens=answer_tokens, train_wall_s=time.time() - t1,
                  wall_s=time.time() - t0)
    return trainer, budget


def train_offline(model, tokenizer, base: dict, recipe, work: Path, cache: Path, device: str) -> Trained:
    """TRL trains in fp32 (the base as loaded may be bf16); the model is saved in the dtype it was loaded in."""
    from ..arms.config import arm_recipe_dict

    save_dtype = next(model.parameters()).dtype
    trainer, budget = train_arm(model.float(), tokenizer, base, recipe, work, cache, device)
    files = {"arm_recipe.json": {"base": base, "recipe": arm_recipe_dict(recipe)},
             "arm_history.json": trainer.state.log_history}
    return Trained(trainer.model.to(save_dtype).eval(), files, budget,
                   f"{budget['optimizer_steps']} optimizer steps on {budget['examples']} examples")


def offline_key(base_fingerprint: dict, recipe) -> str:
    """Every recipe key that changes the weights, and the base."""
    from ..arms.config import ARM_VERSION, NON_TRAINING_KEYS, arm_recipe_dict

    weights = {k: v for k, v in arm_recipe_dict(recipe).items() if k not in NON_TRAINING_KEYS}
    for key in ("full_batches", "answer_tokens"):  # keyed only when set: models trained before they existed stay cached
        if not weights[key]:
            del weights[key]
    return stage_key(version=ARM_VERSION, base=base_fingerprint, recipe=weights)


def saved_budget(folder: Path) -> dict | None:
    """The budget of an arm saved before ``budget.json`` (its ``arm_budget.json``; sft samples nothing)."""
    path = folder / "arm_budget.json"
    return {"samples": 0, **json.loads(path.read_text())} if path.is_file() else None


def _kind(name: str) -> TrainingKind:
    from ..arms.config import as_arm_recipe

    return TrainingKind(name=name, recipe=as_arm_recipe, key=offline_key, train=train_offline,
                        describe=_describe, budget=saved_budget)


def _describe(recipe) -> str:
    return f"{recipe.kind}, " + (f"{recipe.steps} optimizer steps" if recipe.steps else f"{recipe.epochs} epochs")


KINDS = {name: _kind(name) for name in ("sft", "rft", "dpo")}
