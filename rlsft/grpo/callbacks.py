"""What a trainer reports while it learns: callbacks in the shape of ``transformers.TrainerCallback``.

``GRPOTrainer(callbacks=[...])`` calls each hook of each callback in list order, after its default callbacks
(``rlsft.grpo.dynamics.TrainingDynamics``, method.md 9), as transformers' ``Trainer`` adds ``callbacks`` to its
defaults. A hook that gets a ``row`` (the dict the trainer is about to log for this step: W&B, ``grpo_history``)
may add keys to it; ``summary`` is the run's end-of-training dict (experiment=grpo puts it in ``result.json``).

Why our own base class, with transformers' hook names but not its signatures: transformers' hooks receive
``(args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs)``, objects of its ``Trainer``
loop, which GRPOTrainer is not (rlsft/grpo/README.md says why the loop is our own); faking them would hand a
callback settings it cannot act on, and a subclass of ``transformers.TrainerCallback`` given to a TRL trainer would
be called with arguments it does not read. Our hooks receive the trainer (its ``model``, ``step``, ``recipe``,
``history``, ``initial_model()``) and the row. The hook names and their order are transformers'
(``on_init_end`` -> ``on_train_begin`` -> per step ``on_step_end`` then ``on_evaluate`` -> ``on_train_end``), plus one
a rollout trainer has and transformers' does not: ``on_rollout_end``, between sampling and the update.
"""

from __future__ import annotations


class TrainerCallback:
    """Base class: every hook does nothing; override the ones you need."""

    # True: the trainer keeps a frozen copy of the initial weights for ``trainer.initial_model()`` (full fine-tuning;
    # with LoRA the initial model is the base with its adapter off, at no cost).
    needs_initial_model = False

    def on_init_end(self, trainer) -> None:
        """At the end of the trainer's ``__init__``: the model holds the initial weights (before any resume)."""

    def on_train_begin(self, trainer) -> None:
        """At the start of ``train``, after a resume (``trainer.history`` then holds the earlier steps)."""

    def on_rollout_end(self, trainer, row: dict, groups: list, advantages) -> None:
        """After sampling, before the update, with the model in eval mode under the trainer's autocast (as it sampled):
        the step's kept groups of answers (``list[list[Answer]]``, empty when no group was informative) and their
        advantages (flat, one per answer; None when there are no groups)."""

    def on_step_end(self, trainer, row: dict) -> None:
        """After the step's update (``trainer.step`` counts it), before its evaluation and before the row is logged."""

    def on_evaluate(self, trainer, row: dict, answers: list) -> None:
        """After the held-out evaluation (step 0, every ``eval_every`` steps, the last step): ``answers`` are the
        current model's greedy answers (``list[Answer]``) to ``trainer.eval_records``, in order."""

    def on_train_end(self, trainer, summary: dict) -> None:
        """After the last step: add run-level results to ``summary``."""

    def state_dict(self) -> dict:
        """What a resumed run needs back (JSON-ready), saved in every checkpoint's ``state.json``."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned (called on resume, before ``on_train_begin``)."""
