"""Batched, cached, resumable generation: every answer keeps the model's own token ids.

Later stages (EAP truncation, probes, GRPO) must never re-tokenise generated text, so each record stores the
prompt ids and generated ids exactly as the model saw and produced them, with the decoded text, the extracted
answer, correctness and the finish reason (``eos`` or ``length``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
from .console import progress

from .cache import ResumableJsonl, locked, stage_dir, stage_key, tidy_on_failure
from .data import Record
from .grading import grade
from .templates import encode_prompt

log = logging.getLogger(__name__)
GENERATION_VERSION = 2  # bump when the stored format or the grading changes (2: unanswered math answers are wrong)


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    n_samples: int = 1
    seed: int = 0


def eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _batch_seed(seed: int, keys: Sequence[str]) -> int:
    return int(hashlib.sha256(f"{seed}|{'|'.join(keys)}".encode()).hexdigest()[:8], 16)


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list[list[int]], sampling: Sampling, seed: int = 0) -> list[dict]:
    """Generate for a batch of prompt id lists (left padded); return output ids (EOS cut) and finish reasons."""
    pad = tokenizer.pad_token_id
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    device = next(model.parameters()).device
    stops = eos_ids(model, tokenizer)
    kwargs: dict[str, Any] = dict(max_new_tokens=sampling.max_new_tokens, pad_token_id=pad, eos_token_id=sorted(stops))
    if sampling.temperature > 0:
        torch.manual_seed(seed)
        kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
    results = []
    for row in out[:, width:].tolist():
        ids, reason = [], "length"
        for t in row:
            if t in stops:
                reason = "eos"
                break
            ids.append(t)
        results.append({"output_ids": ids, "finish_reason": reason})
    return results


def generate_answers(load: Callable[[], tuple[Any, Any]], records: list[Record], template: str, sampling: Sampling,
                     model_fingerprint: dict, cache_dir: str, batch_size: int = 8, desc: str = "generate") -> list[dict]:
    """Answers for every record (``n_samples`` each), from the cache when present, else generated and cached.

    ``load`` is only called when something is left to generate, so a cached run never loads the model.
    A run killed halfway resumes: finished (id, sample) pairs are read back and skipped.
    """
    key = stage_key(version=GENERATION_VERSION, model=model_fingerprint, template=template, sampling=asdict(sampling),
                    records=hashlib.sha256(repr([(r.id, r.question, r.answer) for r in records]).encode()).hexdigest())
    folder = stage_dir(cache_dir, "generations", key)
    store = ResumableJsonl(folder)
    by_id = {r.id: r for r in records}
    with tidy_on_failure(folder), locked(folder / "records"):
        done = {(g["id"], g["sample"]) for g in store.read()}
        todo = [(r, s) for r in records for s in range(sampling.n_samples) if (r.id, s) not in done]
        log.info("%s: %d answers cached, %d to generate (%s)", desc, len(done), len(todo), folder)
        if todo:
            model, tokenizer = load()
            bar = progress(total=len(todo), desc=desc, unit="answer")
            tokens, start = 0, time.time()
            for i in range(0, len(todo), batch_size):
                chunk = todo[i : i + batch_size]
                prompts = [encode_prompt(tokenizer, template, r.question) for r, _ in chunk]
                seed = _batch_seed(sampling.seed, [f"{r.id}#{s}" for r, s in chunk])
                outs = generate_batch(model, tokenizer, prompts, sampling, seed)
                rows = []
                for (rec, s), prompt, out in zip(chunk, prompts, outs):
                    text = tokenizer.decode(out["output_ids"], skip_special_tokens=True)
                    pred, correct = grade(text, rec.answer, rec.meta.get("grader", "math"))
                    rows.append({"id": rec.id, "sample": s, "prompt_ids": prompt, "output_ids": out["output_ids"],
                                 "text": text, "pred": pred, "correct": correct, "gold": rec.answer,
                                 "finish_reason": out["finish_reason"], "seed": seed})
                    tokens += len(out["output_ids"])
                store.append(rows)
                bar.update(len(chunk))
                bar.set_postfix(tok_per_s=f"{tokens / max(time.time() - start, 1e-9):.1f}")
            bar.close()
        store.finish()
        results = store.read()
    order = {(r.id, s): i for i, (r, s) in enumerate((r, s) for r in records for s in range(sampling.n_samples))}
    results = [g for g in results if g["id"] in by_id]
    return sorted(results, key=lambda g: order[(g["id"], g["sample"])])
