"""Group sampling: answers with the model's own token ids, scored, and packed into tensors for the loss.

Generation uses an explicit GenerationConfig (top_k off, no repetition penalty, nothing inherited from the model's
defaults) so the sampling distribution is exactly softmax(logits / T) with nucleus ``top_p``: the policy the loss
scores. Each answer keeps its stop token (the model must learn when to stop); ``finish_reason`` is ``eos`` or
``length`` (truncated at ``max_new_tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..generate import eos_ids


@dataclass
class Answer:
    prompt_ids: list[int]
    ids: list[int]  # generated ids, the stop token included when there was one
    finish_reason: str  # eos | length
    text: str = ""
    reward: float = 0.0
    correct: bool = False
    pred: str | None = None
    question_id: str = ""

    @property
    def output_ids(self) -> list[int]:
        """The generated ids without the stop token (what rlsft.generate stores, and what EAP truncates)."""
        return self.ids[:-1] if self.finish_reason == "eos" else self.ids


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, seed: int = 0, batch_size: int = 0,
             shard: tuple[int, int] = (0, 1)) -> list[tuple[list[int], str] | None]:
    """(generated ids incl. stop token, finish reason) per prompt; greedy when temperature == 0.

    ``batch_size`` sequences per generate() call (0 = all at once). Seeded per call, so a rollout is a function of
    (weights, prompts, seed) and a resumed run samples exactly what an uninterrupted one did.
    ``shard=(i, n)``: only the calls k with k % n == i (a data-parallel process's share), None for the other prompts.
    A call's rows, padding and seed do not depend on the shard, so the shards' union is the unsharded rollout.
    """
    from transformers import GenerationConfig

    pad = tokenizer.pad_token_id
    stops = eos_ids(model, tokenizer)
    device = next(model.parameters()).device
    gen = GenerationConfig(max_new_tokens=max_new_tokens, use_cache=True, pad_token_id=pad, eos_token_id=sorted(stops),
                           bos_token_id=tokenizer.bos_token_id, do_sample=temperature > 0,
                           temperature=temperature if temperature > 0 else None, top_p=top_p if temperature > 0 else None,
                           top_k=0 if temperature > 0 else None)
    step = batch_size or len(prompts)
    results = []
    for k, start in enumerate(range(0, len(prompts), step)):
        chunk = prompts[start : start + step]
        if k % shard[1] != shard[0]:
            results += [None] * len(chunk)
            continue
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        if temperature > 0:
            torch.manual_seed(seed + start)
        out = model.generate(input_ids=ids, attention_mask=attn, generation_config=gen)
        for row in out[:, width:].tolist():
            cut = next((i for i, t in enumerate(row) if t in stops), None)
            results.append((row[: cut + 1], "eos") if cut is not None else (row, "length"))
    return results


@dataclass
class Packed:
    """A padded batch: prompt left-padded to P, completion right-padded to C."""

    input_ids: torch.Tensor  # [B, P + C]
    attention_mask: torch.Tensor  # [B, P + C]
    completion_ids: torch.Tensor  # [B, C]
    completion_mask: torch.Tensor  # [B, C] 1 on generated tokens (stop token included)
    advantages: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # [B]


def pack(answers: list[Answer], pad_id: int, advantages: torch.Tensor | None = None, device=None) -> Packed:
    P = max(len(a.prompt_ids) for a in answers)
    C = max(max(len(a.ids) for a in answers), 1)
    B = len(answers)
    input_ids = torch.full((B, P + C), pad_id, dtype=torch.long)
    attention = torch.zeros((B, P + C), dtype=torch.long)
    for i, a in enumerate(answers):
        p, c = len(a.prompt_ids), len(a.ids)
        input_ids[i, P - p : P] = torch.tensor(a.prompt_ids)
        attention[i, P - p : P] = 1
        if c:
            input_ids[i, P : P + c] = torch.tensor(a.ids)
            attention[i, P : P + c] = 1
    packed = Packed(input_ids, attention, input_ids[:, P:].clone(), attention[:, P:].clone(),
                    advantages if advantages is not None else torch.zeros(B))
    if device is not None:
        packed = Packed(*(t.to(device) for t in (packed.input_ids, packed.attention_mask, packed.completion_ids,
                                                 packed.completion_mask, packed.advantages)))
    return packed


def completion_logits(model, batch: Packed) -> torch.Tensor:
    """Logits [B, C, V] predicting each completion token (the model's dtype)."""
    C = batch.completion_ids.shape[1]
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids,
                use_cache=False, logits_to_keep=C + 1)
    return out.logits[:, :-1]  # position t predicts token t+1: the last C+1 positions predict the C answer tokens


def completion_logprobs(model, batch: Packed, temperature: float = 1.0, entropy: bool = False):
    """Per-token log-probs [B, C] of the completion (fp32) and, optionally, the policy's entropy per token."""
    from .loss import token_logprobs

    logits = completion_logits(model, batch)
    if entropy:
        return token_logprobs(logits, batch.completion_ids, temperature, entropy=True)
    return token_logprobs(logits, batch.completion_ids, temperature), None
