"""The answer span of method.md 8 (``eap.positions=answer_span``): each stage is scored on the tokens that write its
answer number plus a fixed number of tokens before them, so answers of different shapes ("7", "3 + 4 = 7.") are
scored on the same digits and the same count of tokens, where the first T_cut tokens (2.1) would score the copied
question in one and the answer in the other.

Tokens are the generated ids (never re-tokenised); the number is found where the grader reads it
(``rlsft.grading.answer_chars``).
"""

from __future__ import annotations

from ..grading import answer_chars


def token_ends(tokenizer, output_ids: list[int]) -> list[int]:
    """The character end of each generated token in the decoded answer (decoded as generation decoded it)."""
    return [len(tokenizer.decode(output_ids[: i + 1], skip_special_tokens=True)) for i in range(len(output_ids))]


def number_tokens(tokenizer, output_ids: list[int], text: str) -> tuple[int, int] | None:
    """[first, end) of the generated tokens that write the answer number of ``text`` (the decoded ``output_ids``);
    None when the grader reads no number written in the text, or the tokens found do not decode to it."""
    chars = answer_chars(text)
    if chars is None:
        return None
    ends = token_ends(tokenizer, list(output_ids))
    first = next((i for i, e in enumerate(ends) if e > chars[0]), None)
    end = next((i + 1 for i, e in enumerate(ends) if e >= chars[1]), None)
    if first is None or end is None:
        return None
    number = text[chars[0] : chars[1]]
    written = tokenizer.decode(list(output_ids)[first:end], skip_special_tokens=True)
    return (first, end) if number in written else None


def answer_span(tokenizer, output_ids: list[int], text: str, before: int) -> tuple[int, int] | None:
    """[start, end) of the scored span: the answer number's tokens and the ``before`` generated tokens before them.
    ``start`` is negative when fewer than ``before`` tokens precede the number (the caller drops such an answer:
    a span never reaches into the prompt); None when the number is not found (``number_tokens``)."""
    number = number_tokens(tokenizer, output_ids, text)
    return None if number is None else (number[0] - before, number[1])
