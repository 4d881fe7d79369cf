"""Answer extraction and equivalence, by ``math-verify``.

math-verify finds the last ``\\boxed{}`` (else "the answer is ...", else the last number/expression) and tests
mathematical equivalence (numeric tolerance, fractions, percentages, LaTeX via sympy), which is exactly what
method.md section 1 asks for. We only add: parsing the gold answer from each dataset's format, and a plain-text
grader for the factual-recall control task (math-verify is for math).
"""

from __future__ import annotations

import re
import threading

from .errors import RlsftError


# math-verify is imported on first use: rlsft.data and the GRPO trainer import this module, and a bare GPU node
# (benchmarks/gpu_check.py) has torch and transformers but no math-verify.
def parse(*args, **kwargs):
    from math_verify import parse as _parse

    return _parse(*args, **kwargs)


def verify(*args, **kwargs):
    from math_verify import verify as _verify

    return _verify(*args, **kwargs)

GOLD_FORMATS = ("gsm8k", "boxed", "dollar", "plain", "text")


def _timeout() -> int | None:
    # math-verify's timeout uses SIGALRM, which only works in the main thread.
    return 5 if threading.current_thread() is threading.main_thread() else None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces (for MATH solutions)."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None


def gold_answer(raw: str, fmt: str) -> str:
    """The reference answer string of a dataset row, in a form math-verify parses."""
    raw = str(raw)
    if fmt == "gsm8k":
        if "####" not in raw:
            raise RlsftError(f"GSM8K answer has no '####': {raw[:60]!r}")
        return raw.split("####")[-1].strip().replace(",", "")
    if fmt == "boxed":
        inner = last_boxed(raw)
        return (inner if inner is not None else raw).strip()
    if fmt == "dollar":
        return re.sub(r"(?<!\\)\$", "", raw).strip()  # every unescaped $, also between parts
    if fmt in ("plain", "text"):
        return raw.strip()
    raise RlsftError(f"unknown gold answer format {fmt!r}; expected one of {GOLD_FORMATS}")


def parse_gold(gold: str):
    parsed = parse(f"${gold}$", parsing_timeout=_timeout())
    if not parsed:
        parsed = parse(gold, parsing_timeout=_timeout())
    return parsed


def extract_answer(text: str) -> str | None:
    """The model's final answer as a string (math-verify's extraction), or None when nothing parses."""
    parsed = parse(text, parsing_timeout=_timeout())
    return str(parsed[-1]) if parsed else None


def answer_chars(text: str) -> tuple[int, int] | None:
    """Where ``text`` writes the answer the grader reads: the character span [start, end) of the last occurrence of
    ``extract_answer``'s string as a whole number (not inside a longer one), or None when nothing is extracted or the
    extracted string is not written as such (math-verify normalised it, e.g. "1,234" -> "1234").

    Why: EAP's answer span (method.md 8) scores every stage on the same number, found as the grade was."""
    pred = extract_answer(text)
    if not pred:
        return None
    found = list(re.finditer(rf"(?<![\d.]){re.escape(pred)}(?!\d|\.\d)", text))
    return found[-1].span() if found else None


def _compact(s: str) -> str:
    return re.sub(r"\s+|\$|\\[,!;: ]|~", "", s)


def _norm_text(s: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", s.lower()).strip()


# Plain numbers joined by +, -, * (a restated computation such as "6 + 8", not a value). Fractions (1/2) and
# anything with LaTeX or a variable stay answers.
_UNEVALUATED = re.compile(r"^\s*[-+]?\d+(?:\.\d+)?(?:\s*[-+*\u00d7]\s*\d+(?:\.\d+)?)+\s*\.?\s*$")


def unanswered(text: str, extracted: str | None) -> bool:
    """Whether a math answer gives no value: an empty last ``\\boxed{}``, or an extracted "answer" that is an
    unevaluated sum of plain numbers. math-verify falls back from an empty box to the last expression and sympy then
    evaluates the question's own "6 + 8" to 14, so "6 + 8 = \\boxed{}" graded correct and the GRPO reward taught the
    embedded RL stage to restate questions (4 of its 64 answers, measured)."""
    boxed = last_boxed(text)
    return (boxed is not None and not boxed.strip()) or (extracted is not None and bool(_UNEVALUATED.match(extracted)))


def grade(text: str, gold: str, kind: str = "math") -> tuple[str | None, bool]:
    """(extracted answer, correct?) for a generated ``text`` against a gold answer string."""
    if kind == "text":
        boxed = last_boxed(text)
        pred = boxed if boxed is not None else text.strip().splitlines()[0] if text.strip() else ""
        target = _norm_text(gold)
        return pred, bool(target) and re.search(rf"\b{re.escape(target)}\b", _norm_text(pred)) is not None
    pred = parse(text, parsing_timeout=_timeout())
    boxed = last_boxed(text)
    if unanswered(text, str(pred[-1]) if pred else None):
        return (str(pred[-1]) if pred else boxed), False
    if not pred:
        return boxed, boxed is not None and _compact(boxed) == _compact(gold)
    gold_parsed = parse_gold(gold)
    if verify(gold_parsed, pred, timeout_seconds=_timeout()):
        return str(pred[-1]), True
    if "%" in str(pred[-1]):  # "\boxed{50\%}" for a gold of 50 (GSM8K percent questions): same number, with a unit
        bare = parse(f"${str(pred[-1]).replace(chr(92) + '%', '').replace('%', '')}$", parsing_timeout=_timeout())
        if bare and verify(gold_parsed, bare, timeout_seconds=_timeout()):
            return str(pred[-1]), True
    # Free-text answers ("No solution", "$3000 @ 11%") that sympy cannot compare: exact match up to spacing.
    return str(pred[-1]), any(c is not None and _compact(c) == _compact(gold) for c in (str(pred[-1]), boxed))


def numeric_value(s: str | None) -> float | None:
    """A float from an extracted answer (for partial-credit rewards), or None."""
    if s is None:
        return None
    try:
        return float(str(s).replace(",", ""))
    except ValueError:
        pass
    parsed = parse(f"${s}$", parsing_timeout=_timeout())
    for p in parsed:
        try:
            return float(p)
        except (TypeError, ValueError):
            continue
    return None
