"""Which questions enter EAP, and how each becomes a scored input (method.md 2.1-2.2).

Lengths are counts of generated token ids, each model with its own tokenizer. Inputs to `select_samples` are the
questions both models answered correctly (Q); the same selection serves every alpha.
"""

import hashlib
import random
from dataclasses import dataclass, field

import torch


@dataclass
class Selection:
    """Selected question ids (sorted) and what each step left: `n_correct` -> `n_in_window` -> `n_balanced` -> `n`."""

    ids: list
    tbar: float  # min(mean SFT length, mean RL length) over all of Q, before filtering
    t_min: float
    t_max: float
    n_correct: int
    n_in_window: int  # pair mean length t in [t_min, t_max]
    n_balanced: int  # ... and |T_sft - T_rl| / t <= delta
    params: dict = field(default_factory=dict)


def _check(name, value, ok, rule):
    if not ok:
        raise ValueError(f"{name} must be {rule}; got {name}={value!r}")


def select_samples(sft_lengths: dict, rl_lengths: dict, beta: float = 0.5, gamma: float = 1.5, delta: float = 0.5,
                   n: int = 100, seed: int = 0) -> Selection:
    """Keep questions whose pair mean length t = (T_sft+T_rl)/2 lies in [beta*Tbar, gamma*Tbar] and whose lengths
    differ by at most delta*t; draw `n` of them with `random.Random(seed)` from the ids sorted by str when more remain.
    """
    _check("beta", beta, beta >= 0, ">= 0")
    _check("gamma", gamma, gamma > beta, f"> beta ({beta})")
    _check("delta", delta, 0 < delta <= 1, "in (0, 1]")
    _check("n", n, isinstance(n, int) and n >= 2, "an integer >= 2")
    _check("sft_lengths", f"{len(sft_lengths)} questions", len(sft_lengths) > 0, "non-empty")
    if set(sft_lengths) != set(rl_lengths):
        only = sorted(set(sft_lengths) ^ set(rl_lengths), key=str)[:5]
        raise ValueError(f"sft_lengths and rl_lengths must hold the same question ids; e.g. {only} are in only one")
    bad = [q for q in sft_lengths if min(sft_lengths[q], rl_lengths[q]) < 1]
    _check("lengths", f"0 or less for {sorted(bad, key=str)[:5]}", not bad, ">= 1 generated token")

    ids = sorted(sft_lengths, key=str)
    tbar = min(sum(sft_lengths[q] for q in ids) / len(ids), sum(rl_lengths[q] for q in ids) / len(ids))
    t_min, t_max = beta * tbar, gamma * tbar
    mean = {q: (sft_lengths[q] + rl_lengths[q]) / 2 for q in ids}
    in_window = [q for q in ids if t_min <= mean[q] <= t_max]
    balanced = [q for q in in_window if abs(sft_lengths[q] - rl_lengths[q]) / mean[q] <= delta]
    chosen = balanced if len(balanced) <= n else sorted(random.Random(seed).sample(balanced, n), key=str)
    params = dict(beta=beta, gamma=gamma, delta=delta, n=n, seed=seed)
    return Selection(chosen, tbar, t_min, t_max, len(ids), len(in_window), len(balanced), params)


def select_shared(lengths: dict, beta: float = 0.5, gamma: float = 1.5, delta: float = 0.5, n: int = 100,
                  seed: int = 0) -> Selection:
    """method.md 2.1 for several models on one shared selection (eap.reference with eap.compare).

    ``lengths`` is {model: {question id: answer length}} over the same questions. Tbar = min over models of the mean
    length; a question's t = its mean length over the models must lie in [beta*Tbar, gamma*Tbar], and the spread
    (longest - shortest) / t must be at most delta. With two models this is ``select_samples``' rule exactly.
    """
    names = list(lengths)
    _check("lengths", f"{len(names)} models", len(names) >= 2, "at least two models")
    first = lengths[names[0]]
    for name in names[1:]:
        if set(lengths[name]) != set(first):
            only = sorted(set(first) ^ set(lengths[name]), key=str)[:5]
            raise ValueError(f"every model's lengths must hold the same question ids; e.g. {only} differ ({name})")
    if len(names) == 2:
        return select_samples(first, lengths[names[1]], beta, gamma, delta, n, seed)
    per_q = {q: [lengths[m][q] for m in names] for q in first}
    # the pairwise rule's checks, on the shortest and longest answer of each question
    select_samples({q: min(v) for q, v in per_q.items()}, {q: max(v) for q, v in per_q.items()}, beta, gamma, delta,
                   n, seed)
    ids = sorted(first, key=str)
    tbar = min(sum(lengths[m][q] for q in ids) / len(ids) for m in names)
    t_min, t_max = beta * tbar, gamma * tbar
    mean = {q: sum(v) / len(v) for q, v in per_q.items()}
    in_window = [q for q in ids if t_min <= mean[q] <= t_max]
    balanced = [q for q in in_window if (max(per_q[q]) - min(per_q[q])) / mean[q] <= delta]
    chosen = balanced if len(balanced) <= n else sorted(random.Random(seed).sample(balanced, n), key=str)
    params = dict(beta=beta, gamma=gamma, delta=delta, n=n, seed=seed)
    return Selection(chosen, tbar, t_min, t_max, len(ids), len(in_window), len(balanced), params)


def cut_length(alpha: float, tbar: float) -> int:
    """T_cut = max(int(alpha * Tbar), 1): how many generated tokens both models are scored on."""
    _check("alpha", alpha, 0 < alpha <= 1, "in (0, 1]")
    _check("tbar", tbar, tbar > 0, "> 0")
    return max(int(alpha * tbar), 1)


@dataclass
class TruncatedInput:
    input_ids: torch.Tensor  # [prompt + answer up to the last scored token] long
    loss_mask: torch.Tensor  # bool, True on the scored answer tokens
    answer_len: int  # scored answer tokens: min(cut_len, len(output_ids)), or the span's length
    shorter_than_cut: bool  # the whole answer was shorter than cut_len (it is used whole; count these)


def truncation_inputs(prompt_ids, output_ids, cut_len: int) -> TruncatedInput:
    """Prompt ids + the first `cut_len` generated ids (the model's own ids, never re-tokenised); loss on the answer."""
    _check("cut_len", cut_len, cut_len >= 1, ">= 1")
    scored = span_inputs(prompt_ids, output_ids, 0, min(cut_len, len(output_ids)))
    scored.shorter_than_cut = len(output_ids) < cut_len
    return scored


def span_inputs(prompt_ids, output_ids, start: int, end: int) -> TruncatedInput:
    """Prompt ids + the generated ids up to `end`; loss on generated tokens [start, end) (the answer span of
    method.md 8, rlsft.eap.span; tokens after the span cannot change the loss of a causal model)."""
    prompt_ids, output_ids = list(prompt_ids), list(output_ids)
    _check("prompt_ids", "empty", len(prompt_ids) > 0, "non-empty (the first answer token needs a prediction)")
    _check("output_ids", "empty", len(output_ids) > 0, "non-empty")
    _check("span", (start, end), 0 <= start < end <= len(output_ids), f"inside the {len(output_ids)} answer tokens")
    ids = torch.tensor(prompt_ids + output_ids[:end], dtype=torch.long)
    mask = torch.zeros(len(ids), dtype=torch.bool)
    mask[len(prompt_ids) + start :] = True
    return TruncatedInput(ids, mask, end - start, False)


def scored_inputs(answers: list[dict], cut_len: int | None) -> list[TruncatedInput]:
    """Each answer ({prompt_ids, output_ids[, span]}) as it is scored: its first `cut_len` tokens, or with cut_len
    None (eap.positions=answer_span) its own span."""
    if cut_len is None:
        return [span_inputs(a["prompt_ids"], a["output_ids"], *a["span"]) for a in answers]
    return [truncation_inputs(a["prompt_ids"], a["output_ids"], cut_len) for a in answers]


def samples_hash(answers: list[dict]) -> str:
    """What a cache key holds of the scored answers: ids, prompt and answer token ids, and the span when one is set
    (without one, the hash every cache before the span was keyed by)."""
    rows = [(a["id"], a["prompt_ids"], a["output_ids"], *([tuple(a["span"])] if "span" in a else [])) for a in answers]
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def summed_positions(positions: str) -> str:
    """edge_scores' `positions` for an eap.positions value: answer_span sums over its span, which is the loss mask."""
    return "all" if positions == "all" else "answer"


def collate(items: list[TruncatedInput], pad_id: int | None = 0, side: str = "left"):
    """Pad to one batch: (input_ids, loss_mask, attention_mask), each [batch, max_len].

    The pad id never matters (padding is masked out); None (a tokenizer without a pad token) pads with 0.
    """
    _check("side", side, side in ("left", "right"), "'left' or 'right'")
    _check("items", "empty", len(items) > 0, "non-empty")
    pad_id = 0 if pad_id is None else pad_id
    T = max(len(it.input_ids) for it in items)
    ids = torch.full((len(items), T), pad_id, dtype=torch.long)
    loss_mask = torch.zeros(len(items), T, dtype=torch.bool)
    attention_mask = torch.zeros(len(items), T, dtype=torch.long)
    for b, it in enumerate(items):
        s = slice(T - len(it.input_ids), T) if side == "left" else slice(0, len(it.input_ids))
        ids[b, s], loss_mask[b, s], attention_mask[b, s] = it.input_ids, it.loss_mask, 1
    return ids, loss_mask, attention_mask
