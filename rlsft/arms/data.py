"""What each arm trains on, as token ids: SFT reference answers, RFT's correct base samples, DPO's base pairs.

Every example is ``prompt_ids`` (exactly the ids generation reads: ``templates.encode_prompt``) plus completion ids
ending in the stop token, so training and inference see the same context. Base samples keep the model's own ids
(decoding and re-encoding them can give other ids).
"""

from __future__ import annotations

from ..data import Record, distinct_records
from ..errors import RlsftError
from ..templates import encode_prompt


def distinct_questions(records: list[Record]) -> list[Record]:
    """The first record of each question text: synthetic sets repeat questions, and each arm sees each once per epoch."""
    return distinct_records(records)[0]


def reference_answer(record: Record) -> str:
    """The answer in the format the base (SmolLM2-135M-Instruct under ``chat_brief``) already writes, so the sft arm
    learns the arithmetic and not a new format (method.md 8, one answer format): "3 + 4 = 7", unboxed, no full stop.

    Synthetic arithmetic carries its expression (``meta['expr']``); other datasets only have the gold answer:
    "The answer is 42." (the base's other form).
    """
    expr = record.meta.get("expr")
    return f"{expr} = {record.answer}" if expr else f"The answer is {record.answer}."


def stop_id(model, tokenizer) -> int:
    """The token that ends an answer (the one generation stops on; the tokenizer's eos when it is among them)."""
    from ..generate import eos_ids

    stops = eos_ids(model, tokenizer)
    if tokenizer.eos_token_id in stops:
        return tokenizer.eos_token_id
    return min(stops)


def sft_examples(tokenizer, template: str, records: list[Record], stop: int) -> list[dict]:
    """``{input_ids, completion_mask}`` per record: prompt, then the reference answer and the stop token (mask 1)."""
    out = []
    for r in records:
        prompt = encode_prompt(tokenizer, template, r.question)
        answer = tokenizer(reference_answer(r), add_special_tokens=False)["input_ids"] + [stop]
        out.append({"input_ids": prompt + answer, "completion_mask": [0] * len(prompt) + [1] * len(answer)})
    return out


def completion_ids(sample: dict, stop: int) -> list[int]:
    """A generated answer's ids with its stop token put back (rlsft.generate stores them without it)."""
    return list(sample["output_ids"]) + ([stop] if sample["finish_reason"] == "eos" else [])


def rft_examples(samples: list[dict], stop: int) -> list[dict]:
    """The correct samples, each an SFT example; none correct is bad input, with the counts named."""
    kept = [s for s in samples if s["correct"]]
    if not kept:
        questions = len({s["id"] for s in samples})
        raise RlsftError(f"rft: no correct sample to fine-tune on (0 of {len(samples)} samples correct, {questions} "
                         f"questions); raise samples or temperature, or train on easier questions")
    out = []
    for s in kept:
        answer = completion_ids(s, stop)
        out.append({"input_ids": list(s["prompt_ids"]) + answer,
                    "completion_mask": [0] * len(s["prompt_ids"]) + [1] * len(answer)})
    return out


def dpo_pairs(samples: list[dict], stop: int, pairs_per_question: int = 1) -> list[dict]:
    """``{prompt_ids, chosen_ids, rejected_ids}``: per question, its i-th correct with its i-th incorrect sample
    (in sample order, at most ``pairs_per_question``). No question with both is bad input, with the counts named."""
    by_q: dict[str, list[dict]] = {}
    for s in samples:
        by_q.setdefault(s["id"], []).append(s)
    pairs = []
    for group in by_q.values():
        right = [s for s in group if s["correct"]]
        wrong = [s for s in group if not s["correct"]]
        for w, l in list(zip(right, wrong))[:pairs_per_question]:
            pairs.append({"prompt_ids": list(w["prompt_ids"]), "chosen_ids": completion_ids(w, stop),
                          "rejected_ids": completion_ids(l, stop)})
    if not pairs:
        all_right = sum(all(s["correct"] for s in g) for g in by_q.values())
        all_wrong = sum(not any(s["correct"] for s in g) for g in by_q.values())
        correct = sum(s["correct"] for s in samples)
        raise RlsftError(f"dpo: no question has both a correct and an incorrect sample to pair ({len(by_q)} questions: "
                         f"{all_right} all correct, {all_wrong} all wrong; {correct} of {len(samples)} samples "
                         f"correct); raise samples or change the temperature")
    return pairs
