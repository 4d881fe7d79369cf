"""Layer-wise ablation (method.md section 5): intervene on one decoder block during generation, see what breaks.

A block maps the residual stream ``x`` (its input) to ``h = x + attn + mlp`` (its output). The interventions replace
``h`` at every position and every generation step (prompt prefill and each new token):

  ``skip``        ``h <- x``: the block is removed (its whole contribution, attention and MLP, is zeroed). This is
                  "zero ablation of the block's contribution", so no separate mode is needed for that.
  ``zero``        ``h <- 0``: the block's output hidden state is zeroed. In a pre-norm residual model this wipes the
                  residual stream, everything earlier layers wrote included, so expect every layer to look critical.
  ``mean``        ``h <- mean(h)``: the block's output replaced by its dataset mean (over the prompt tokens of the
                  dataset, from a first pass); like ``zero`` it removes all token-specific information at that depth.
  ``mean_delta``  ``h <- x + mean(h - x)``: mean ablation of the block's contribution (the usual interpretability
                  sense of "mean ablation"): the block adds only what it adds on average.
  ``contract``    ``h <- (1 - a) h + a * mean_over_hidden(h)`` with ``a = alpha`` (0.3): the seed's intervention, a
                  contraction of each hidden vector toward its own mean, kept for reproduction.

Beside the accuracy drop, ``block_statistics`` measures how much each block changes the representation (1 - cosine
and linear CKA between its input and output): seed 004 finds the critical layers where that change is largest.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from .architectures import decoder_body, decoder_layers

MODES = ("zero", "mean", "mean_delta", "skip", "contract")


def _block_input(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@contextmanager
def block_hooks(model, fn: Callable, layers=None) -> Iterator[None]:
    """While active, call ``fn(layer, block_input, block_output)`` after each block (or the ``layers`` given).

    When ``fn`` returns a tensor it replaces the block's output hidden state. Hooks are removed on exit, even after
    an error, so the model is left exactly as it was.
    """
    handles = []

    def make(i):
        def hook(module, args, kwargs, output):
            h = output[0] if isinstance(output, tuple) else output
            new = fn(i, _block_input(args, kwargs), h)
            if not isinstance(new, torch.Tensor):  # an observer (returns None or anything else) changes nothing
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    try:
        for i, block in enumerate(decoder_layers(model)):
            if layers is None or i in layers:
                handles.append(block.register_forward_hook(make(i), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class BlockStats:
    """Per-block statistics of one model on one dataset ([L, d] means; [L] representational change)."""

    mean_out: np.ndarray  # mean block output over prompt tokens
    mean_delta: np.ndarray  # mean block contribution (output - input) over prompt tokens
    one_minus_cos: np.ndarray  # mean over tokens (not the first) of 1 - cos(input, output)
    cka: np.ndarray  # linear CKA between input and output over a token subsample (not the first)


def intervention(mode: str, alpha: float = 0.3, stats: BlockStats | None = None, layer: int = 0) -> Callable:
    """``f(x, h) -> new h`` for a mode (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"unknown ablation mode {mode!r}; expected one of {list(MODES)}")
    if mode in ("mean", "mean_delta") and stats is None:
        raise ValueError(f"ablation mode {mode!r} needs the dataset means (block_statistics) of the model")
    if mode == "zero":
        return lambda x, h: torch.zeros_like(h)
    if mode == "skip":
        return lambda x, h: x
    if mode == "contract":
        return lambda x, h: (1 - alpha) * h + alpha * h.mean(-1, keepdim=True)
    vec = torch.as_tensor(stats.mean_out[layer] if mode == "mean" else stats.mean_delta[layer])
    if mode == "mean":
        return lambda x, h: vec.to(h).expand_as(h)
    return lambda x, h: x + vec.to(h)


@contextmanager
def ablate(model, layer: int, mode: str, alpha: float = 0.3, stats: BlockStats | None = None) -> Iterator[None]:
    """Apply one intervention to block ``layer`` while the block is active (generation included)."""
    n_layers = len(decoder_layers(model))
    if not 0 <= layer < n_layers:
        raise ValueError(f"ablation layer {layer} is out of range: the model has {n_layers} blocks (0..{n_layers - 1})")
    f = intervention(mode, alpha, stats, layer)
    with block_hooks(model, lambda i, x, h: f(x, h), layers={layer}):
        yield


# ----------------------------------------------------------------------------------------------- representation
def linear_cka(X: torch.Tensor, Y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) of two [n, d] token matrices, in float64.

    ``||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)``, computed in the n x n Gram form when n < d.
    """
    X = X.double() - X.double().mean(0)
    Y = Y.double() - Y.double().mean(0)
    if X.shape[0] < X.shape[1]:
        K, L = X @ X.T, Y @ Y.T
        num, den = (K * L).sum(), K.norm() * L.norm()
    else:
        num, den = (Y.T @ X).norm() ** 2, (X.T @ X).norm() * (Y.T @ Y).norm()
    return float(num / den) if den > 0 else math.nan


@torch.no_grad()
def block_statistics(model, sequences: list[tuple[list[int], int]], batch_size: int = 8, max_tokens: int = 1024,
                     pad_id: int = 0, seed: int = 0) -> BlockStats:
    """One pass over ``(token ids, prompt length)`` sequences (right padded): block means and change per block.

    Means are over prompt tokens (what every ablated generation reads first). The representational change is over
    all tokens (prompt and answer) but the first of each sequence, CKA on a seeded subsample of at most
    ``max_tokens`` of them: the first token is an attention sink whose massive activation (~100x the median norm
    in SmolLM2's middle layers) would otherwise make linear CKA ~1 for every block.
    """
    layers = decoder_layers(model)
    n_layers, d = len(layers), model.config.hidden_size
    device = next(model.parameters()).device
    starts = np.cumsum([0] + [len(s) for s, _ in sequences])
    candidates = np.setdiff1d(np.arange(starts[-1]), starts[:-1])  # every token but the first of each sequence
    keep = np.zeros(starts[-1], dtype=bool)
    keep[np.random.default_rng(seed).choice(candidates, size=min(max_tokens, len(candidates)), replace=False)] = True
    sum_out = torch.zeros(n_layers, d, dtype=torch.float64)
    sum_delta = torch.zeros(n_layers, d, dtype=torch.float64)
    sum_cos = torch.zeros(n_layers, dtype=torch.float64)
    n_prompt, n_rest = 0, 0
    xs, hs = [[] for _ in range(n_layers)], [[] for _ in range(n_layers)]
    offset = 0
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        width = max(len(s) for s, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        real = torch.zeros((len(chunk), width), dtype=torch.bool)
        rest = torch.zeros((len(chunk), width), dtype=torch.bool)
        prompt = torch.zeros((len(chunk), width), dtype=torch.bool)
        sub = torch.zeros((len(chunk), width), dtype=torch.bool)
        for b, (seq, p) in enumerate(chunk):
            ids[b, : len(seq)] = torch.tensor(seq)
            real[b, : len(seq)] = True
            rest[b, 1 : len(seq)] = True
            prompt[b, :p] = True
            sub[b, : len(seq)] = torch.from_numpy(keep[offset : offset + len(seq)])
            offset += len(seq)

        on_prompt, on_rest, on_sub = prompt.to(device), rest.to(device), sub.to(device)

        def collect(i, x, h):  # sums on the model's device; only the CKA subsample moves to the CPU
            x, h = x.float(), h.float()
            sum_out[i] += h[on_prompt].sum(0).double().cpu()
            sum_delta[i] += (h - x)[on_prompt].sum(0).double().cpu()
            cos = torch.nn.functional.cosine_similarity(x[on_rest], h[on_rest], dim=-1)
            sum_cos[i] += float((1 - cos).double().sum())
            xs[i].append(x[on_sub].cpu())
            hs[i].append(h[on_sub].cpu())

        with block_hooks(model, collect):
            decoder_body(model)(input_ids=ids.to(device), attention_mask=real.long().to(device), use_cache=False)
        n_prompt += int(prompt.sum())
        n_rest += int(rest.sum())
    cka = [linear_cka(torch.cat(xs[i]), torch.cat(hs[i])) for i in range(n_layers)]
    return BlockStats((sum_out / max(n_prompt, 1)).float().numpy(), (sum_delta / max(n_prompt, 1)).float().numpy(),
                      (sum_cos / max(n_rest, 1)).numpy(), np.array(cka))


# ----------------------------------------------------------------------------------------------- caching
STATS_VERSION = 2


def block_stats_key(model_fingerprint: dict, precision: str, gens: list[dict], max_tokens: int, seed: int) -> str:
    import hashlib

    from .cache import stage_key

    samples = hashlib.sha256(repr([(g["id"], g["prompt_ids"], g["output_ids"]) for g in gens]).encode()).hexdigest()
    return stage_key(version=STATS_VERSION, model=model_fingerprint, precision=precision, samples=samples,
                     max_tokens=max_tokens, seed=seed)


def cached_block_statistics(load, gens: list[dict], model_fingerprint: dict, precision: str, cache_dir: str,
                            batch_size: int = 8, max_tokens: int = 1024, seed: int = 0) -> tuple[BlockStats, str]:
    """``block_statistics`` over the baseline answers ``gens`` (prompt + generated ids), through the cache.

    Returns the statistics and their cache key (an ablated generation that uses the means names them by it).
    """
    from .cache import cached_npz, stage_dir

    def compute() -> dict:
        model, tokenizer = load()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        seqs = [(list(g["prompt_ids"]) + list(g["output_ids"]), len(g["prompt_ids"])) for g in gens]
        stats = block_statistics(model, seqs, batch_size, max_tokens, pad, seed)
        return {k: getattr(stats, k) for k in BlockStats.__dataclass_fields__}

    key = block_stats_key(model_fingerprint, precision, gens, max_tokens, seed)
    arrays = cached_npz(stage_dir(cache_dir, "block_stats", key) / "stats.npz", compute, compressed=False)
    return BlockStats(**{k: arrays[k] for k in BlockStats.__dataclass_fields__}), key
