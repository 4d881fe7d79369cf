"""GRPO dynamics (method.md 9) against an independent per-answer computation on tiny models, and the entropy-reward
fit against planted parameters and sklearn's R^2."""

import copy
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score

from rlsft.grpo.dynamics import Dynamics, fit_entropy_reward
from rlsft.grpo.rollout import Answer
from rlsft.models import build_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _answers(tok):
    prompts = [tok("what is 1 + 2")["input_ids"], tok("hi")["input_ids"], tok("a b c d")["input_ids"]]
    outs = [[5, 9, 11, tok.eos_token_id], [7], [3, 4, 12, 13, 14]]
    return [Answer(p, ids, "eos" if ids[-1] == tok.eos_token_id else "length", question_id=str(i))
            for i, (p, ids) in enumerate(zip(prompts, outs))]


def test_dynamics_match_an_unpadded_per_answer_loop():
    model, tok = build_tiny_model(seed=0)
    init, _ = build_tiny_model(seed=1)
    model.eval()
    T = 0.7
    answers = _answers(tok)
    adv = torch.tensor([1.5, -0.5, -1.0])

    @contextmanager
    def initial():
        yield init

    dyn = Dynamics(init, initial, T, tok.pad_token_id, micro_batch_size=2)  # bf16 snapshot of the *initial* weights
    out = dyn.observe(model, answers, adv)
    ent, logp, kl, a_tok = [], [], [], []
    with torch.no_grad():
        for a, A in zip(answers, adv.tolist()):
            ids = torch.tensor([a.prompt_ids + a.ids])
            P = len(a.prompt_ids)
            lq, l0 = model(input_ids=ids).logits[0].double(), init(input_ids=ids).logits[0].double()
            for t, y in enumerate(a.ids):
                q = torch.softmax(lq[P + t - 1] / T, -1)
                p0 = torch.softmax(l0[P + t - 1] / T, -1)
                ent.append(float(-(q * q.log()).sum()))
                logp.append(float(q[y].log()))
                kl.append(float((p0 * (p0.log() - q.log())).sum()))
                a_tok.append(A)
    assert out["dynamics/entropy"] == pytest.approx(np.mean(ent), rel=1e-4)
    assert out["dynamics/kl_initial"] == pytest.approx(np.mean(kl), rel=1e-3)
    assert out["dynamics/cov_logp_adv"] == pytest.approx(np.cov(logp, a_tok, bias=True)[0, 1], rel=1e-4, abs=1e-7)
    thr = np.quantile(ent, 0.8)
    assert out["dynamics/high_entropy_threshold"] == pytest.approx(thr, rel=1e-4)
    assert out["dynamics/high_entropy_share"] == pytest.approx(np.mean(np.array(ent) > thr))
    # update sparsity so far, planted: 100 elements moved, 50 moved below bf16 resolution (unchanged at bf16)
    moved = copy.deepcopy(init)
    with torch.no_grad():
        w = moved.model.layers[0].mlp.up_proj.weight.view(-1)
        w[:100] += 1.0
        w[100:150] = (w[100:150].to(torch.bfloat16).float() * (1 + 2.0**-12))
    snap = copy.deepcopy(init)
    with torch.no_grad():
        sw = snap.model.layers[0].mlp.up_proj.weight.view(-1)
        sw[100:150] = sw[100:150].to(torch.bfloat16).float()
    total = sum(p.numel() for p in moved.parameters())
    assert Dynamics(snap, initial, T, tok.pad_token_id).unchanged(moved) == pytest.approx(1 - 100 / total)
    assert Dynamics(model, initial, T, tok.pad_token_id).unchanged(model) == 1.0


def test_entropy_reward_fit_recovers_planted_parameters():
    rng = np.random.default_rng(0)
    H = np.linspace(1.5, 0.2, 40)
    R = -0.3 * np.exp(H) + 1.2 + rng.normal(0, 0.01, H.size)
    fit = fit_entropy_reward([{"dynamics/entropy": float(h), "train/reward_mean": float(r)} for h, r in zip(H, R)])
    assert fit["a"] == pytest.approx(0.3, rel=0.05) and fit["b"] == pytest.approx(1.2, rel=0.02)
    assert fit["r2"] == pytest.approx(r2_score(R, -fit["a"] * np.exp(H) + fit["b"]), abs=1e-9)
    few = fit_entropy_reward([{"dynamics/entropy": 1.0, "train/reward_mean": 0.5}] * 3)
    assert few["a"] is None and few["why"].startswith("cannot tell")


def test_trainer_logs_dynamics_and_fits_at_the_end():
    from test_grpo_trainer import _train

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        trainer = _train(tmp, 4)
    keys = ("dynamics/entropy", "dynamics/cov_logp_adv", "dynamics/high_entropy_share", "dynamics/kl_initial",
            "dynamics/unchanged")
    assert all(all(k in row for k in keys) for row in trainer.history)
    assert trainer.history[0]["dynamics/kl_initial"] == pytest.approx(0.0, abs=1e-6)  # pi_0 before any update
    assert trainer.history[0]["dynamics/unchanged"] == 1.0 and trainer.history[-1]["dynamics/unchanged"] < 1.0
    assert trainer.history[-1]["dynamics/kl_initial"] > 0
    assert set(trainer.summary["entropy_reward_fit"]) >= {"a", "b", "r2", "steps"}
    assert trainer.summary["entropy_reward_fit"]["steps"] == 4
