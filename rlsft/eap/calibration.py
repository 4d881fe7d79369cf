"""Temperature calibration (method.md 2.6, `calibrate=match_sft`): the scalar tau that divides a model's logits so its
mean self-entropy over a set of samples equals a target (the other stage's), so two stages are compared at one loss
level. Dividing by tau > 0 never changes the argmax, so the greedy tokens stay the model's own.
"""

import math

import torch
from scipy.optimize import bisect

from .scores import architecture, per_sample_mean, scored_hidden, scored_logits, scoring_mode, token_losses

BOUNDS = (1e-2, 1e2)


def scored_states(model, batches) -> list[tuple]:
    """One forward per batch of (input_ids, loss_mask, attention_mask): (hidden [n, d], tokens [n], sample [n], batch)
    of the scored rows, kept so each tau costs only the lm_head product."""
    parts = []
    with scoring_mode(model), torch.no_grad():
        for input_ids, loss_mask, attention_mask in batches:
            ids = torch.as_tensor(input_ids, device=model.get_submodule(architecture(model)["embed"]).weight.device)
            lm = torch.as_tensor(loss_mask, device=ids.device).bool()
            am = torch.as_tensor(attention_mask, device=ids.device).long()
            parts.append((*scored_hidden(model, ids, lm & am.bool(), am), len(ids)))
    return parts


def mean_self_entropy(model, parts, tau: float) -> float:
    """Mean over samples of each sample's mean -log softmax(z / tau)[own token] (method.md 2.2 with temperature)."""
    with torch.no_grad():
        per_sample = [per_sample_mean(token_losses(scored_logits(model, h), y, "nll", tau), s, n)
                      for h, y, s, n in parts]
    return float(torch.cat(per_sample).double().mean())


def calibrate_temperature(model, batches, target: float, bounds=BOUNDS, xtol: float = 1e-8) -> float:
    """tau in `bounds` with mean_self_entropy(tau) = target, by bisection on log tau (scipy.optimize.bisect).

    A target outside the range the bounds reach is a ValueError naming the bound that comes closest.
    """
    parts = scored_states(model, batches)
    gap = lambda log_tau: mean_self_entropy(model, parts, math.exp(log_tau)) - target  # noqa: E731
    ends = {tau: gap(math.log(tau)) for tau in bounds}
    if all(g > 0 for g in ends.values()) or all(g < 0 for g in ends.values()):
        closest = min(ends, key=lambda t: abs(ends[t]))
        raise ValueError(f"no temperature in [{bounds[0]:g}, {bounds[1]:g}] gives mean self-entropy {target:.4g}; "
                         f"closest: tau={closest:g} gives {ends[closest] + target:.4g}")
    return math.exp(bisect(gap, *(math.log(t) for t in bounds), xtol=xtol))
