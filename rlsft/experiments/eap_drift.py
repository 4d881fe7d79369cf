"""The EAP drift of a GRPO run (method.md 3): at each evaluation, the EAP metrics of the current model minus those of
the initial model, averaged over the alphas; a GRPOTrainer callback (rlsft.grpo.callbacks) that experiment=grpo passes.

It reads the eap experiment's own settings and runs the eap experiment's own code (rlsft.experiments.eap), with the
initial model in the place of ``sft`` and the current one in the place of ``rl``:
- selection (method.md 2.1, ``paired_questions`` + ``length_filter``): both models' greedy answers to the held-out
  questions, answered correctly by both when ``eap.require_correct``, inside the length window ``truncation.beta``,
  ``gamma``, ``delta``; at most ``truncation.n`` of them, drawn with ``truncation.seed``. The current model's answers
  change as it learns, so the selection is made afresh at each evaluation (at step 0 both models are the same one);
- per alpha of ``eap.alphas`` (none: ``truncation.alpha``), T_cut = ``cut_length(alpha, Tbar)`` and the per-sample
  scores (``model_scores``: eap.attn_inputs, positions, target, method, ig_steps, batch_size); per model the stage
  mean of every metric of the registry (rlsft.eap.METRICS) and the pooled complexity (``eap.bins`` bins, each model
  on its own range);
- with ``eap.faithfulness``, frac80 (method.md 2.7) of each model as a cheap trace over training: one cross-fitted
  split, the mean-positional baseline, no random control, on ``eap.faithfulness_points`` kept shares ranked by
  ``eap.faithfulness_ranking`` (the eap experiment's check is the one with splits, control and intervals).

Logged at each evaluation: ``eap/<metric>_diff`` and ``eap/<metric>`` (the current model's), ``eap/tbar``, ``eap/n``
(questions scored; 0 when fewer than two are selected, the reason in the log) and ``eap/usable`` (questions left
before the length window). The initial model's answers are kept in the checkpoints, so a resumed run selects from
the same ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import torch

from ..eap import METRICS, build_graph, collate, cut_length, edge_scores, information_complexity_pooled, per_sample, \
    truncation_inputs
from ..errors import RlsftError
from ..grpo.callbacks import TrainerCallback
from ..grpo.rollout import Answer
from .eap import length_filter, model_scores, paired_questions

EAP_METRICS = (*METRICS, "information_complexity_pooled")  # every evaluation
FAITHFULNESS_METRICS = ("frac80",)  # with eap.faithfulness


def _generations(answers: list[Answer]) -> dict:
    """{question id: generation} in the shape of the eap experiment's cached generations."""
    return {a.question_id: {"id": a.question_id, "correct": a.correct, "prompt_ids": a.prompt_ids,
                            "output_ids": a.output_ids} for a in answers}


class EAPDrift(TrainerCallback):
    """``EAPDrift(cfg.eap, cfg.truncation)``, the eap experiment's sections (EAPConfig, TruncationConfig)."""

    needs_initial_model = True

    def __init__(self, eap, truncation):
        self.eap, self.truncation = eap, truncation
        self.alphas = list(eap.alphas) or [truncation.alpha]
        self.settings = {"attn_inputs": eap.attn_inputs, "positions": eap.positions, "target": eap.target,
                         "method": eap.method, "ig_steps": eap.ig_steps}
        seed = eap.faithfulness_seed
        self.split_seed = truncation.seed if seed is None else seed
        self.initial_answers: list[Answer] | None = None
        self.selection = None  # the last evaluation's (rlsft.eap.Selection), None when it selected too few
        self._initial_numbers: dict = {}  # (T_cut, selected ids) -> the initial model's numbers

    # ------------------------------------------------------------------ hooks
    def on_evaluate(self, trainer, row: dict, answers: list[Answer]) -> None:
        initial = self._initial_answers(trainer, answers)
        gens = {"initial": _generations(initial), "current": _generations(answers)}
        usable, counts = paired_questions(gens, self.eap.require_correct)
        self.selection = None
        try:
            if len(usable) < 2:
                raise RlsftError(f"{len(usable)} question(s) answered by both models"
                                 + (" correctly (eap.require_correct)" if self.eap.require_correct else ""))
            self.selection, _ = length_filter(self.truncation, gens, usable, counts)
        except RlsftError as exc:
            trainer.log(f"[grpo] step {trainer.step}: no EAP drift: {exc}")
            row.update({"eap/n": 0, "eap/usable": len(usable)})
            return
        row.update(self._drift(trainer, gens, self.selection))
        row["eap/usable"] = len(usable)

    def state_dict(self) -> dict:
        return {} if self.initial_answers is None else {"initial_answers": [asdict(a) for a in self.initial_answers]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("initial_answers") is not None:
            self.initial_answers = [Answer(**a) for a in state["initial_answers"]]

    # ------------------------------------------------------------------ the drift
    def _initial_answers(self, trainer, current: list[Answer]) -> list[Answer]:
        """The initial model's greedy answers to the held-out questions: at step 0 the current ones (the same
        model), else answered once (again when the held-out questions changed since they were saved)."""
        ids = [r.id for r in trainer.eval_records]
        if self.initial_answers is None or [a.question_id for a in self.initial_answers] != ids:
            if trainer.step == 0:
                self.initial_answers = current
            else:
                with trainer.initial_model() as model:
                    self.initial_answers = trainer.greedy(model, trainer.eval_records)
        return self.initial_answers

    def _drift(self, trainer, gens: dict, selection) -> dict:
        """Mean over alphas of metric(current) - metric(initial), each model on its own answers cut at T_cut."""
        names = EAP_METRICS + (FAITHFULNESS_METRICS if self.eap.faithfulness else ())
        diffs: dict = {m: [] for m in names}
        values: dict = {m: [] for m in names}
        for alpha in self.alphas:
            cut = cut_length(alpha, selection.tbar)
            current = self._numbers(trainer, trainer.current_model(), [gens["current"][q] for q in selection.ids],
                                    cut, "current")
            key = (cut, tuple(selection.ids))
            if key not in self._initial_numbers:
                if trainer.step == 0:  # the model has not moved yet: the initial model's numbers are these
                    self._initial_numbers[key] = current
                else:
                    with trainer.initial_model() as model:
                        self._initial_numbers[key] = self._numbers(
                            trainer, model, [gens["initial"][q] for q in selection.ids], cut, "initial")
            for m in names:
                diffs[m].append(current[m] - self._initial_numbers[key][m])
                values[m].append(current[m])
        row = {f"eap/{m}_diff": sum(v) / len(v) for m, v in diffs.items()}
        row.update({f"eap/{m}": sum(v) / len(v) for m, v in values.items()})
        row.update({"eap/tbar": selection.tbar, "eap/n": len(selection.ids)})
        return row

    def _numbers(self, trainer, model, answers: list[dict], cut: int, name: str) -> dict:
        """One model's stage means of the registry's metrics, its pooled complexity and (faithfulness) frac80."""
        pad_id = trainer.tokenizer.pad_token_id
        scores = model_scores(model, pad_id, answers, cut, self.settings, self.eap.batch_size, name)
        W, mask = scores["W"], scores["mask"]
        out = {m: float(np.nanmean(per_sample(W, mask, m))) for m in METRICS}
        out["information_complexity_pooled"] = information_complexity_pooled(W, mask, bins=self.eap.bins)
        if self.eap.faithfulness:
            out["frac80"] = self._frac80(model, pad_id, answers, cut)
        return out

    def _frac80(self, model, pad_id, answers: list[dict], cut: int) -> float:
        """frac80 of one cross-fitted split: edges ranked on one half of the questions against the mean-positional
        baseline, the pruned kept sets judged on the other half."""
        from ..eap.faithfulness import (baseline_outputs, cross_curve, faithfulness_losses, mean_positional,
                                        patch_evaluator, share_grid)
        from ..eap.faithfulness_stats import curve_summaries

        if len(answers) < 4:  # two halves of at least two questions
            return math.nan
        e, bs = self.eap, self.eap.batch_size
        graph = build_graph(model, e.attn_inputs)
        ids, loss_mask, attn = collate([truncation_inputs(a["prompt_ids"], a["output_ids"], cut) for a in answers],
                                       pad_id)
        B = mean_positional(baseline_outputs(model, graph, ids, attn, bs), attn)
        ranked = torch.cat([edge_scores(model, ids[i : i + bs], loss_mask[i : i + bs], attn[i : i + bs], graph,
                                        e.positions, target=e.target, baseline="input", baseline_acts=B[i : i + bs])
                            for i in range(0, len(ids), bs)])
        evaluate = patch_evaluator(model, graph, ids, loss_mask, attn, B, bs, target=e.target)
        res = faithfulness_losses(ranked.numpy(), graph, evaluate, share_grid(e.faithfulness_points), n_splits=1,
                                  draws=0, ranking=e.faithfulness_ranking, seed=self.split_seed, within=False)
        return float(curve_summaries(res["shares"], cross_curve(res))["frac80"])
