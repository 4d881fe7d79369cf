"""GRPOTrainer callbacks (rlsft.grpo.callbacks) on tiny random models: the hooks in order with what each is handed,
keys a callback adds reaching the history, the tracker and the CSV, callback state across a resume, and the EAP drift
(rlsft.experiments.eap_drift) selecting what experiment=eap's own selection step selects on the same answers."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from rlsft.config import Config
from rlsft.data import Record
from rlsft.eap import build_graph, cut_length, edge_scores, per_sample, truncation_inputs
from rlsft.experiments.eap import select
from rlsft.experiments.eap_drift import EAPDrift
from rlsft.grpo import as_recipe
from rlsft.grpo.callbacks import TrainerCallback
from rlsft.grpo.reward import Scored
from rlsft.grpo.trainer import GRPOTrainer
from rlsft.models import build_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _records(n):
    return [Record(f"q{i:02d}", f"What is {i % 5} + {i % 7}?", "7") for i in range(n)]


def _recipe(**kw):
    base = dict(temperature=1.0, max_new_tokens=3, num_generations=4, batch_questions=2, steps=4, lr=3e-3,
                eval_every=2, eval_n=4, save_every=0, micro_batch_size=8, dynamic_sampling=False)
    return as_recipe({**base, **kw})


def _reward(text, rec):  # right or wrong by the parity of the text: mixed groups and answers on a random model
    ok = len(text) % 2 == 0
    return Scored(1.0 if ok else -0.5, ok, None)


class Recorder(TrainerCallback):
    """Every hook call as (hook, trainer.step) and what it was handed (and ``drift``'s selection at each
    evaluation, when given one that runs before it); adds a key at each step end and evaluation."""

    def __init__(self, drift=None):
        self.drift = drift
        self.calls, self.rollouts, self.evaluations = [], [], []

    def on_init_end(self, trainer):
        self.calls.append(("init_end", trainer.step))

    def on_train_begin(self, trainer):
        self.calls.append(("train_begin", trainer.step))

    def on_rollout_end(self, trainer, row, groups, advantages):
        self.calls.append(("rollout_end", trainer.step))
        self.rollouts.append((sum(len(g) for g in groups), len(advantages), "train/reward_mean" in row))

    def on_step_end(self, trainer, row):
        self.calls.append(("step_end", trainer.step))
        row["custom/twice_step"] = 2 * row["step"]

    def on_evaluate(self, trainer, row, answers):
        self.calls.append(("evaluate", trainer.step))
        self.evaluations.append((trainer.step, list(answers), self.drift.selection if self.drift else None))
        row["custom/answers"] = len(answers)

    def on_train_end(self, trainer, summary):
        self.calls.append(("train_end", trainer.step))
        summary["custom/rows"] = len(trainer.history)


class Tracker:
    def __init__(self):
        self.logged = []

    def log(self, row, step):
        self.logged.append((step, dict(row)))


def test_a_callback_sees_every_step_in_order_and_its_keys_are_logged(tmp_path):
    model, tok = build_tiny_model(seed=0)
    recs = _records(16)
    recorder, tracker = Recorder(), Tracker()
    trainer = GRPOTrainer(model, tok, _recipe(), recs[4:], recs[:4], "chat", output_dir=tmp_path, tracker=tracker,
                          reward_fn=_reward, log=lambda s: None, callbacks=[recorder])
    history = trainer.train()
    assert recorder.calls == [("init_end", 0), ("train_begin", 0), ("evaluate", 0),
                              ("rollout_end", 0), ("step_end", 1), ("rollout_end", 1), ("step_end", 2), ("evaluate", 2),
                              ("rollout_end", 2), ("step_end", 3), ("rollout_end", 3), ("step_end", 4), ("evaluate", 4),
                              ("train_end", 4)]
    assert recorder.rollouts == [(8, 8, True)] * 4  # 2 questions x 4 answers, one advantage each, collect's stats
    assert [[a.question_id for a in answers] for _, answers, _ in recorder.evaluations] == [[r.id for r in recs[:4]]] * 3
    assert [row["step"] for row in history] == [0, 1, 2, 3, 4]
    assert [row.get("custom/twice_step") for row in history] == [None, 2, 4, 6, 8]
    assert [row.get("custom/answers") for row in history] == [4, None, 4, None, 4]
    assert [(step, row.get("custom/twice_step")) for step, row in tracker.logged] == [(0, None), (1, 2), (2, 4), (3, 6),
                                                                                      (4, 8)]
    assert "custom/twice_step" in (tmp_path / "grpo_history.csv").read_text().splitlines()[0].split(",")
    # the default callback (the dynamics, method.md 9) runs first and reports first
    assert type(trainer.callbacks[0]).__name__ == "TrainingDynamics" and trainer.callbacks[1] is recorder
    assert list(trainer.summary) == ["entropy_reward_fit", "custom/rows"] and trainer.summary["custom/rows"] == 5
    assert all("dynamics/entropy" in row for row in history[1:])


class Counter(TrainerCallback):
    """Counts the steps it saw; the count is its state."""

    def __init__(self):
        self.count = 0

    def on_step_end(self, trainer, row):
        self.count += 1
        row["custom/count"] = self.count

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def test_callback_state_comes_back_with_a_resume(tmp_path):
    def run(steps):
        model, tok = build_tiny_model(seed=0)
        recs = _records(12)
        trainer = GRPOTrainer(model, tok, _recipe(steps=steps, eval_every=0, save_every=1), recs, [], "chat",
                              output_dir=tmp_path, reward_fn=_reward, log=lambda s: None, callbacks=[Counter()])
        return trainer.train()

    run(2)
    history = run(4)  # a new process: a fresh Counter, resumed from the step-2 checkpoint
    assert [row["custom/count"] for row in history] == [1, 2, 3, 4]


def _generations(answers):
    return {a.question_id: {"correct": a.correct, "prompt_ids": a.prompt_ids, "output_ids": a.output_ids}
            for a in answers}


def test_eap_drift_selects_what_experiment_eap_selects_and_scores_the_current_model():
    """At each evaluation the drift's questions are experiment=eap's selection step (``select``: both correct, the
    length window, ``truncation.n`` drawn) run on the initial model's answers as sft and the current model's as rl;
    the logged current value is the mean of per-sample scores recomputed one answer at a time (no padding)."""
    cfg = OmegaConf.structured(Config)
    cfg.dataset.name, cfg.eap.alphas, cfg.truncation.n = "held_out", [1.0], 3  # eap.require_correct: true
    drift = EAPDrift(cfg.eap, cfg.truncation)
    recorder = Recorder(drift)
    model, tok = build_tiny_model(seed=0)
    recs = _records(48)
    trainer = GRPOTrainer(model, tok, _recipe(steps=2, eval_n=40), recs[40:], recs[:40], "chat", reward_fn=_reward,
                          log=lambda s: None, callbacks=[drift, recorder])
    history = trainer.train()
    sft, rl = SimpleNamespace(name="sft"), SimpleNamespace(name="rl")
    evals = [row for row in history if "eval/accuracy" in row]
    assert [step for step, _, _ in recorder.evaluations] == [row["step"] for row in evals] == [0, 2]
    for row, (step, answers, chosen) in zip(evals, recorder.evaluations):
        gens = {"sft": _generations(drift.initial_answers), "rl": _generations(answers)}
        expected, counts = select(cfg, gens, sft, rl)
        # the correctness filter and the draw of truncation.n both act on these answers
        assert counts["both_correct"] < counts["questions"] and counts["n_balanced"] > len(expected.ids) == 3, counts
        assert chosen.ids == expected.ids and chosen.tbar == expected.tbar, step
        assert (row["eap/n"], row["eap/usable"], row["eap/tbar"]) == (3, counts["n_usable"], expected.tbar)
    assert evals[0]["eap/activation_intensity_diff"] == 0.0  # step 0: the initial model is the current one

    _, answers, chosen = recorder.evaluations[-1]
    current = trainer.current_model()
    graph = build_graph(current)
    cut = cut_length(1.0, chosen.tbar)
    values = []
    for q in chosen.ids:
        a = _generations(answers)[q]
        item = truncation_inputs(a["prompt_ids"], a["output_ids"], cut)
        W = edge_scores(current, item.input_ids[None], item.loss_mask[None],
                        torch.ones(1, len(item.input_ids), dtype=torch.long), graph)
        values.append(per_sample(W, graph.mask, "activation_intensity")[0])
    assert evals[-1]["eap/activation_intensity"] == pytest.approx(float(np.mean(values)), rel=1e-4)


def test_eap_drift_with_too_few_questions_logs_why_and_scores_nothing():
    """Nothing answered correctly under eap.require_correct: each evaluation says why, logs eap/n 0 and no metric."""
    cfg = OmegaConf.structured(Config)
    drift, lines = EAPDrift(cfg.eap, cfg.truncation), []
    model, tok = build_tiny_model(seed=0)
    recs = _records(12)
    history = GRPOTrainer(model, tok, _recipe(steps=2), recs[4:], recs[:4], "chat", log=lines.append,
                          reward_fn=lambda text, rec: Scored(-0.5, False, None), callbacks=[drift]).train()
    evals = [row for row in history if "eval/accuracy" in row]
    assert [(row["eap/n"], row["eap/usable"]) for row in evals] == [(0, 0), (0, 0)]
    assert not any(k.endswith("_diff") for row in evals for k in row)
    assert sum("no EAP drift: 0 question(s) answered by both models correctly (eap.require_correct)" in line
               for line in lines) == 2
