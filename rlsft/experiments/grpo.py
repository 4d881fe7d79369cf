"""Temperature-controlled GRPO (method.md 3): train the pair's first stage with the ``grpo`` recipe.

Every ``eval_every`` steps: greedy held-out accuracy and the EAP drift, the EAP metrics of the current model minus
the initial model's with the eap experiment's settings and selection (rlsft.experiments.eap_drift); every step the
policy dynamics of method.md 9 (W&B + ``grpo_history.json/.csv`` in the run folder). The run folder gets the
single-run figure; in a multirun (``-m grpo.temperature=0.6,1.0``) each job also redraws the sweep's figure with
every job finished so far.
Checkpoints go to ``<run_dir>/checkpoints``: a requeued job resumes from the newest. Runs data-parallel under
``accelerate launch`` (rlsft.parallel; the main process writes every file); ``result.json`` says how many processes.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..grpo import as_recipe
from ..grpo.config import recipe_dict, recipe_hash
from ..grpo.data import recipe_data
from ..errors import RlsftError
from ..grpo.plots import plot_multirun, plot_runs
from ..grpo.trainer import GRPOTrainer
from .common import RunContext
from .eap_drift import EAP_METRICS, FAITHFULNESS_METRICS, EAPDrift

READS_INTERNALS = False
DATA_PARALLEL = True


def check(cfg) -> None:
    """The eap settings the EAP drift cannot honour: it compares one model with its own initial weights."""
    if cfg.eap.calibrate != "none":
        raise RlsftError(f"eap.calibrate={cfg.eap.calibrate} matches an rl stage to an sft stage; the GRPO EAP drift "
                         f"compares the model with its initial weights: leave eap.calibrate=none")
    if cfg.eap.shared_range:
        raise RlsftError("eap.shared_range=true is a pair setting of experiment=eap; the GRPO EAP drift scores each "
                         "model's pooled complexity on its own range: leave eap.shared_range=false")


def tags(cfg) -> list[str]:
    """No W&B tags beyond the pair's and the dataset's."""
    return []


def _summary(history: list[dict]) -> dict:
    evals = [row for row in history if "eval/accuracy" in row]
    out: dict = {"steps": history[-1]["step"] if history else 0}
    if evals:
        out.update({"accuracy_initial": evals[0]["eval/accuracy"], "accuracy_final": evals[-1]["eval/accuracy"],
                    "answer_len_initial": evals[0]["eval/answer_len"], "answer_len_final": evals[-1]["eval/answer_len"],
                    "truncated_initial": evals[0]["eval/truncated"], "truncated_final": evals[-1]["eval/truncated"]})
        for m in EAP_METRICS + FAITHFULNESS_METRICS:
            if f"eap/{m}_diff" in evals[-1]:
                out[f"eap_{m}_diff_final"] = evals[-1][f"eap/{m}_diff"]
    return out


def run(cfg, ctx: RunContext) -> dict:
    recipe = as_recipe(cfg.grpo)
    stage = ctx.stages()[0]
    template = recipe.template or cfg.model_pair.template
    train, held_out = recipe_data(recipe, cfg.dataset)
    model, tokenizer = ctx.load_stage(stage)
    ctx.release(stage)  # the trainer changes the weights: no other stage of this run may reuse the cached model
    procs = ctx.processes
    if procs.main:
        ctx.write_json("grpo_recipe.json", {"base": ctx.model_spec(stage), "template": template, "recipe_hash":
                                            recipe_hash(recipe), "recipe": recipe_dict(recipe),
                                            "n_train": len(train), "n_eval": len(held_out)})
        print(f"[grpo] {stage.name} of {cfg.model_pair.name}: {len(train)} training questions, {len(held_out)} held "
              f"out, answers sampled at temperature {recipe.temperature}, loss scores tokens at "
              + (f"that temperature (logits / {recipe.temperature})" if recipe.loss_temperature else "T=1 (raw logits)")
              + (f"; {procs.count} data-parallel processes" if procs.count > 1 else ""))
    start = time.time()
    trainer = GRPOTrainer(model, tokenizer, recipe, train, held_out, template, output_dir=ctx.run_dir,
                          tracker=ctx.tracker, callbacks=[EAPDrift(cfg.eap, cfg.truncation)], processes=procs)
    history = trainer.train()
    result = {**_summary(history), "train_seconds": time.time() - start, "temperature": recipe.temperature,
              "num_processes": procs.count, **trainer.summary}  # entropy_reward_fit: R = -a exp(H) + b (dynamics)
    if not procs.main:
        return result

    fig = plot_runs([(f"T={recipe.temperature}", history)], title=f"GRPO {cfg.model_pair.name}/{stage.name}")
    ctx.save_figure("grpo_curves", fig)
    if recipe.save_final:
        trainer.final_model().save_pretrained(ctx.run_dir / "model")
        tokenizer.save_pretrained(ctx.run_dir / "model")
        result["model_dir"] = str(ctx.run_dir / "model")
    from ..run import sweep_info

    multirun, sweep_dir, _ = sweep_info()
    if multirun and sweep_dir:
        result["sweep_figure"] = str(plot_multirun(Path(ctx.run_dir).parent))
    ctx.tracker.summary(result)
    return result
