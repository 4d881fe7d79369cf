"""The DAPO policy loss on per-token log-probabilities.

    ratio_t   = exp(logp_t - old_logp_t)
    loss_t    = max(-A * ratio_t, -A * clip(ratio_t, 1 - eps_low, 1 + eps_high))  [+ beta * k3(ref || policy)_t]
    token agg = sum_t loss_t * mask_t / sum_t mask_t          (DAPO: every token of the batch weighs the same)
    seq agg   = mean_i (sum_t loss_it mask_it / sum_t mask_it)  (GRPO: every answer weighs the same)

Clipping only bites off-policy: on the first mini-batch of a rollout old_logp = logp (ratio 1), so the update is the
plain policy gradient; from the second mini-batch on the policy has moved and the clip range acts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossParts:
    loss: torch.Tensor  # scalar to backpropagate (already divided by `normaliser`)
    clip_fraction: torch.Tensor  # fraction of scored tokens whose gradient the clip removed (detached)
    kl: torch.Tensor  # mean k3 KL over scored tokens (detached; 0 when beta = 0)
    ratio_mean: torch.Tensor


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, entropy: bool = False):
    """log softmax(logits / T)[target] per position in fp32 (never log_softmax in bf16); with ``entropy``, also the
    policy's entropy per position (detached).

    As z[target] - logsumexp(z): no vocabulary-sized log-softmax is kept for the backward pass, and the entropy
    lse - <softmax(z), z> is a row-wise dot product, so a micro-batch holds few [tokens, vocab] tensors at once.
    """
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    lse = z.logsumexp(-1)
    logp = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    if not entropy:
        return logp
    with torch.no_grad():
        ent = lse - (z.softmax(-1).unsqueeze(-2) @ z.unsqueeze(-1)).reshape(lse.shape)
    return logp, ent


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(policy || ref) per token: exp(ref - logp) - (ref - logp) - 1 (>= 0)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                eps_low: float = 0.2, eps_high: float = 0.28, agg: str = "token", normaliser: float | None = None,
                ref_logp: torch.Tensor | None = None, beta: float = 0.0) -> LossParts:
    """DAPO clipped surrogate on [batch, T] token log-probs; ``advantages`` is [batch] (one per answer).

    ``normaliser``: for token aggregation, the number of scored tokens of the whole mini-batch (so micro-batches
    accumulate to exactly the mini-batch loss); for sequence aggregation, the number of answers. Default: this batch's.
    """
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    adv = advantages.to(logp.dtype).unsqueeze(1)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = torch.maximum(unclipped, clipped)
    kl = torch.zeros((), device=logp.device)
    if beta > 0 and ref_logp is not None:
        kl_t = k3_kl(logp, ref_logp)
        per_token = per_token + beta * kl_t
        kl = (kl_t.detach() * mask).sum() / mask.sum().clamp(min=1)
    if agg == "token":
        loss = (per_token * mask).sum() / (normaliser if normaliser is not None else mask.sum().clamp(min=1))
    elif agg == "sequence":
        per_seq = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1)
        loss = per_seq.sum() / (normaliser if normaliser is not None else len(per_seq))
    else:
        raise ValueError(f"agg must be token or sequence, got {agg!r}")
    with torch.no_grad():
        was_clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
        n = mask.sum().clamp(min=1)
        clip_fraction = (was_clipped.to(mask.dtype) * mask).sum() / n
        ratio_mean = (ratio * mask).sum() / n
    return LossParts(loss, clip_fraction, kl, ratio_mean)
