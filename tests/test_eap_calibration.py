"""Temperature calibration against a brute-force computation with the model's own forward, and the lm_head-scaling
experiment of issue 10: a model whose logits are multiplied by c scores differently until it is calibrated."""

import math

import numpy as np
import pytest
import torch

from rlsft.eap import build_graph, edge_scores
from rlsft.eap.calibration import calibrate_temperature
from test_eap_scores import fp64_exact, tiny  # noqa: F401  (fp64_exact: autouse fixture)


def greedy_batch(model, n=3, prompt=5, answer=6, seed=0):
    """Prompts of random tokens and the model's own greedy answers (so each own token is the argmax)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (n, prompt), generator=g)
    with torch.no_grad():
        for _ in range(answer):
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1:].argmax(-1)], 1)
    lm = torch.zeros_like(ids, dtype=torch.bool)
    lm[:, prompt:] = True
    return ids, lm, torch.ones_like(ids)


def plain_entropy(model, ids, lm, tau):
    """Mean over samples of the mean -log softmax(logits / tau)[own token], from the model's full output."""
    with torch.no_grad():
        z = model(input_ids=ids).logits[:, :-1].double() / tau
    nll = -torch.log_softmax(z, -1).gather(-1, ids[:, 1:, None])[..., 0]
    m = lm[:, 1:].double()
    return float(((nll * m).sum(1) / m.sum(1)).mean())


def test_calibrated_tau_matches_a_brute_force_grid():
    model = tiny("llama")
    ids, lm, am = greedy_batch(model)
    target = plain_entropy(model, ids, lm, 0.37)
    tau = calibrate_temperature(model, [(ids[:2], lm[:2], am[:2]), (ids[2:], lm[2:], am[2:])], target)
    grid = np.exp(np.linspace(math.log(0.1), math.log(1.0), 201))
    gaps = [abs(plain_entropy(model, ids, lm, t) - target) for t in grid[::10]]  # coarse, then fine around it
    best = grid[::10][int(np.argmin(gaps))]
    fine = grid[(grid > best / 1.13) & (grid < best * 1.13)]
    best = fine[int(np.argmin([abs(plain_entropy(model, ids, lm, t) - target) for t in fine]))]
    assert abs(math.log(tau / best)) <= math.log(grid[1] / grid[0])  # within one grid step
    assert abs(tau - 0.37) < 1e-5 and abs(plain_entropy(model, ids, lm, tau) - target) < 1e-8


def test_unreachable_target_names_the_closest_tau():
    model = tiny("llama")
    ids, lm, am = greedy_batch(model)
    with pytest.raises(ValueError, match=r"closest: tau=100 gives 3\.8"):  # below log(50) = 3.91, the ceiling
        calibrate_temperature(model, [(ids, lm, am)], 10.0)
    with pytest.raises(ValueError, match=r"closest: tau=0.01"):
        calibrate_temperature(model, [(ids, lm, am)], -1.0)


def test_lm_head_scaling_changes_intensity_until_calibrated():
    """Issue 10's experiment: lm_head times c in {1, 8, 64} (same activations, same greedy tokens). Uncalibrated,
    mean |W| moves with c; calibrated to the c=1 model's self-entropy, tau = c and the intensity is c=1's."""
    base = tiny("llama")
    ids, lm, am = greedy_batch(base)
    graph = build_graph(base)
    W1, loss1 = edge_scores(base, ids, lm, am, return_losses=True)
    intensity = {}
    for c in (1, 8, 64):
        model = tiny("llama")
        with torch.no_grad():
            model.lm_head.weight.mul_(c)
        tau = calibrate_temperature(model, [(ids, lm, am)], float(loss1.double().mean()))
        raw = edge_scores(model, ids, lm, am)[:, graph.mask].abs().mean().item()
        cal = edge_scores(model, ids, lm, am, tau=tau)[:, graph.mask].abs().mean().item()
        intensity[c] = (raw, cal, tau)
    print({c: tuple(f"{x:.4g}" for x in v) for c, v in intensity.items()})  # (raw, calibrated, tau)
    ref = W1[:, graph.mask].abs().mean().item()
    for c, (raw, cal, tau) in intensity.items():
        assert abs(tau - c) < 1e-5 * c and abs(cal - ref) < 1e-5 * ref
    assert abs(intensity[8][0] - ref) > 0.1 * ref and abs(intensity[64][0] - ref) > 0.1 * ref
