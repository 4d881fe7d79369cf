"""The supervised and preference arms on TRL (``SFTTrainer``, ``DPOTrainer``), wrapped in the recipe contract.

TRL is what researchers use and trust for these objectives; we only hand it token ids (``rlsft.arms.data``) and its
``TrainingArguments`` from a recipe. Determinism: the HF Trainer seeds torch, the data order and the LR schedule from
``recipe.seed``, so a rerun on the same machine gives the same weights (checked by the resume test); on CUDA, kernels
that are not deterministic (atomics in some backward passes) can make reruns differ in the last bits.
Resume: a checkpoint every ``save_every`` optimizer steps under the work folder; a killed run continues from the newest
one (weights, optimizer, scheduler, RNG states and the position in the epoch), reaching the same weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .config import ArmConfig


def _common_args(recipe: ArmConfig, output_dir: Path, device: str) -> dict[str, Any]:
    return dict(
        output_dir=str(output_dir), per_device_train_batch_size=recipe.batch_size, gradient_accumulation_steps=1,
        num_train_epochs=recipe.epochs, max_steps=recipe.steps or -1, learning_rate=recipe.lr,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=recipe.warmup_steps, weight_decay=recipe.weight_decay, max_grad_norm=recipe.max_grad_norm,
        seed=recipe.seed, data_seed=recipe.seed, logging_steps=1, report_to=[], disable_tqdm=True,
        save_strategy="steps" if recipe.save_every else "no", save_steps=recipe.save_every or 1, save_total_limit=1,
        use_cpu=device == "cpu", bf16=device.startswith("cuda"), dataloader_num_workers=0, max_length=None,
        dataloader_drop_last=recipe.full_batches,
    )


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest complete HF Trainer checkpoint (``checkpoint-N`` with its trainer state written), or None."""
    folder = Path(output_dir)
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()
             and (p / "trainer_state.json").is_file()] if folder.is_dir() else []
    return str(max(found, key=lambda p: int(p.name.split("-")[-1]))) if found else None


def sft_trainer(model, tokenizer, examples: list[dict], recipe: ArmConfig, output_dir: Path, device: str = "cpu",
                callbacks: Sequence = ()):
    """TRL's SFTTrainer on ``{input_ids, completion_mask}`` examples: loss on completion tokens only (mean per token)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**_common_args(recipe, output_dir, device), completion_only_loss=True, packing=False)
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tokenizer,
                      callbacks=list(callbacks))


def dpo_trainer(model, tokenizer, pairs: list[dict], recipe: ArmConfig, output_dir: Path, device: str = "cpu",
                callbacks: Sequence = ()):
    """TRL's DPOTrainer (sigmoid loss, ``beta``) with the model as it is now (the base) as the fixed reference.

    The reference log-probs are computed once before training (``precompute_ref_log_probs``): the reference never
    changes, and a resumed run recomputes them from the same base.
    """
    from datasets import Dataset
    from trl import DPOConfig

    args = DPOConfig(**_common_args(recipe, output_dir, device), beta=recipe.beta, loss_type=["sigmoid"],
                     precompute_ref_log_probs=True)
    return _TokenizedDPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs),
                                processing_class=tokenizer, callbacks=list(callbacks))


def _dpo_class():
    from trl import DPOTrainer

    class TokenizedDPOTrainer(DPOTrainer):
        """DPOTrainer on pairs that are already token ids. Why our own subclass: TRL's DPO has no switch to skip
        its text preparation (SFT's ``is_processed``), and decoding the base's samples to text and re-encoding them
        can give other ids than the ones the base generated."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    return TokenizedDPOTrainer


def _TokenizedDPOTrainer(**kwargs):
    return _dpo_class()(**kwargs)


def run(trainer) -> dict:
    """Train (resuming from the newest checkpoint in the output folder) and return the trainer's step count."""
    trainer.train(resume_from_checkpoint=last_checkpoint(Path(trainer.args.output_dir)))
    return {"optimizer_steps": trainer.state.global_step,
            "loss_first": next((h["loss"] for h in trainer.state.log_history if "loss" in h), None),
            "loss_last": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None)}
