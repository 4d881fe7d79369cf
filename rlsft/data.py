"""Datasets as records ``{id, question, answer, meta}``: hub ids, local JSONL/Parquet, and synthetic sets.

``answer`` is always the gold answer string ready for ``rlsft.grading.grade`` (already cut out of GSM8K's
``#### N`` or MATH's ``\\boxed{}``); ``meta['grader']`` says whether it is graded as math or as text.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RlsftError
from .grading import gold_answer


@dataclass
class Record:
    id: str
    question: str
    answer: str
    meta: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- files and hub
def read_rows(path: str | Path) -> list[dict]:
    """Rows of a JSONL, JSON (list) or Parquet file; a malformed JSONL line is named by its number."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RlsftError(f"data file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RlsftError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(rows, list):
            raise RlsftError(f"{path}: expected a JSON list of rows")
        return rows
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RlsftError(f"{path}:{lineno}: malformed JSON line ({exc.msg})") from None
            if not isinstance(row, dict):
                raise RlsftError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def hub_rows(hub_id: str, config_name: str | None, split: str) -> list[dict]:
    from .hub import offline

    cut_off = offline()  # decided before the hub client's retries start
    try:
        import datasets

        ds = datasets.load_dataset(hub_id, config_name, split=split)
    except Exception as exc:  # datasets raises many types for "offline / not found"
        why = f"{type(exc).__name__}; {cut_off}" if cut_off else type(exc).__name__
        raise RlsftError(
            f"dataset {hub_id!r} (split {split!r}) could not be loaded from the hub or its cache "
            f"({why}); pass dataset.path=/path/to/file.jsonl to use a local copy") from None
    return list(ds)


def rows_to_records(rows: list[dict], cfg: Any, origin: str) -> list[Record]:
    qf, af, idf = cfg.question_field, cfg.answer_field, cfg.id_field
    records = []
    for i, row in enumerate(rows):
        for f in (qf, af):
            if f not in row or row[f] in (None, ""):
                raise RlsftError(f"{origin}: row {i + 1} has no field {f!r} (fields: {sorted(row)})")
        rid = str(row[idf]) if idf and idf in row else f"{cfg.name}-{i}"
        gold = gold_answer(row[af], cfg.answer_format)
        meta = {k: v for k, v in row.items() if k not in (qf, af) and isinstance(v, (str, int, float, bool))}
        meta["grader"] = "text" if cfg.answer_format == "text" else "math"
        records.append(Record(rid, str(row[qf]), gold, meta))
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        raise RlsftError(f"{origin}: question ids are not unique (id_field={idf!r})")
    return records


# ----------------------------------------------------------------------------------------------- synthetic sets
_WORD_ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cards", "shells"]
_NAMES = ["Tom", "Sara", "Ali", "Mia", "Ben", "Lena", "Omar", "Kate"]


def arithmetic_twins(question: str, value: int, lo: int, hi: int, rng: random.Random, n: int = 8) -> list[str]:
    """Corrupted twins of an arithmetic question (method.md 2.7's counterfactual baseline): every operand redrawn
    with the same number of digits, so the text keeps its shape (and, for digit-wise tokenizers, its token length),
    operations and words unchanged, and a different non-negative answer. Candidates in order: the caller takes the
    first whose tokenised prompt has the original's length. A separate generator, so the questions stay as they were.
    """
    import re

    parts = re.split(r"(\d+)", question)
    twins = []
    for _ in range(50 * n):
        if len(twins) == n:
            break
        new = [str(rng.randint(lo if len(p) > 1 else 0, hi if len(p) > 1 else 9)) if p.isdigit() else p
               for p in parts]
        new = [q if not p.isdigit() or len(q) == len(p) else p for p, q in zip(parts, new)]
        text = "".join(new)
        expr = text[len("What is ") : -1] if text.startswith("What is ") else None
        answer = _twin_answer(text, expr)
        if answer is not None and answer >= 0 and answer != value and text not in twins:
            twins.append(text)
    return twins


def _twin_answer(text: str, expr: str | None) -> int | None:
    """The answer of a redrawn question: the bare expression evaluated, or the word story replayed."""
    import re

    if expr is not None:
        if not re.fullmatch(r"[\d\s+\-*()]+", expr):
            return None
        return int(eval(expr))  # noqa: S307 - digits, spaces, + - * and parentheses only (checked above)
    numbers = [int(x) for x in re.findall(r"\d+", text)]
    value = numbers[0]
    steps = re.findall(r"gets (\d+) more|gives away (\d+)|multiplied by (\d+)", text)
    for add, sub, mul in steps:
        value = value + int(add) if add else value - int(sub) if sub else value * int(mul)
        if value < 0:
            return None
    return value


def arithmetic_records(n: int, digits: int = 2, n_ops: int = 1, style: str = "bare", seed: int = 0,
                       ops: str = "+-", unique: bool = False) -> list[Record]:
    """Synthetic integer arithmetic with exact answers; difficulty from digits, number of operations, style.

    ``style='bare'``: "What is 23 + 45 - 7?"; ``style='word'``: a one-sentence-per-operation word problem.
    Subtractions never go below zero, so every answer is a non-negative integer. Deterministic per seed.
    ``unique``: draws repeating an earlier question are skipped until ``n`` distinct questions are drawn.
    """
    if n < 1 or digits < 1 or n_ops < 1:
        raise RlsftError(f"arithmetic: n, digits and n_ops must be >= 1 (got n={n}, digits={digits}, n_ops={n_ops})")
    if style not in ("bare", "word"):
        raise RlsftError(f"arithmetic: style must be 'bare' or 'word', got {style!r}")
    if not ops or set(ops) - set("+-*"):
        raise RlsftError(f"arithmetic: ops must be made of '+', '-', '*', got {ops!r}")
    rng = random.Random(seed)
    lo, hi = 10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1
    records, seen = [], set()
    for i in range(100 * n):
        if len(records) == n:
            break
        value = rng.randint(lo, hi)
        terms, expr = [value], str(value)
        name, item = rng.choice(_NAMES), rng.choice(_WORD_ITEMS)
        story = [f"{name} has {value} {item}."]
        for _ in range(n_ops):
            op = rng.choice(ops)
            x = rng.randint(lo, hi) if op != "*" else rng.randint(2, 9)
            if op == "-" and x > value:
                op = "+"
            value = value + x if op == "+" else value - x if op == "-" else value * x
            # Operations apply left to right; parenthesise so the written expression means the same.
            expr = f"({expr}) * {x}" if op == "*" and ("+" in expr or "-" in expr) else f"{expr} {op} {x}"
            terms.append(x)
            story.append({"+": f"{name} gets {x} more.", "-": f"{name} gives away {x}.",
                          "*": f"Then the number of {item} is multiplied by {x}."}[op])
        question = f"What is {expr}?" if style == "bare" else " ".join(story) + f" How many {item} does {name} have now?"
        if unique and question in seen:
            continue
        seen.add(question)
        records.append(Record(f"arith-{seed}-{i}", question, str(value),
                              {"grader": "math", "digits": digits, "n_ops": n_ops, "style": style, "expr": expr,
                               "twins": arithmetic_twins(question, value, lo, hi, random.Random(f"{seed}-twin-{i}"))}))
    if len(records) < n:
        raise RlsftError(f"arithmetic: only {len(records)} distinct questions found for count={n} (unique=true); "
                         f"lower count or raise digits / n_ops")
    return records


def _templates():
    """The six GSM8K-style probe templates (method.md section 4; GSM8K test ids of the seed in the keys)."""
    return {
        922: lambda r: (lambda a, s: (f"Martha has been collecting shells since she turned {a} years old, every month "
                                      f"she collects one shell. By her {a + s}th birthday, how many shells will Martha "
                                      f"have collected?", 12 * s))(r.randint(3, 9), r.randint(2, 9)),
        884: lambda r: (lambda t, a, b, c: (f"Argo has {t} toys. He gives {a} toys to Alyssa, {b} to Bonnie, and {c} to "
                                            f"Nicky. How many toys does Argo have now?", t - a - b - c))(
            r.randint(150, 400), r.randint(10, 45), r.randint(10, 45), r.randint(10, 45)),
        584: lambda r: (lambda d, p, b: (f"Pete's contacts come {2 * d} in 1 box and will last him {d} days. Each box "
                                         f"costs ${p}. If he buys {b} boxes, how much does he spend in dollars?", p * b))(
            r.randint(10, 60), r.randint(20, 120), r.randint(2, 6)),
        270: lambda r: (lambda f, m: (f"Mary buys 3 bags of M&Ms. The first bag has {2 * f} M&Ms in it. The second bag "
                                      f"has {m} more M&Ms than the first, and the third bag has a hole in it, so it only "
                                      f"has half the number of M&Ms that the first bag had. How many M&Ms did Mary get "
                                      f"total?", 2 * f + 2 * f + m + f))(r.randint(20, 200), r.randint(5, 40)),
        785: lambda r: (lambda t, q: (f"Carrie was given {5 * t} twenties and {4 * q} quarters by her aunt to use for "
                                      f"lunch. If she spent all the quarters and 3/5 of the twenties, calculate the total "
                                      f"amount of money she paid for the lunch in dollars.", 3 * t * 20 + q))(
            r.randint(1, 6), r.randint(5, 60)),
        942: lambda r: (lambda v, h, hrs, parts: (f"Patty's Plumbing charges ${v} to visit a house to make a repair, "
                                                  f"plus ${h} per hour for labor, plus parts. One job took {hrs} hours and "
                                                  f"used ${parts} in parts. How much did Patty charge?",
                                                  v + h * hrs + parts))(
            r.randint(20, 80), r.randint(15, 60), r.randint(1, 6), r.randint(10, 120)),
    }


def template_records(n_per_template: int = 1000, seed: int = 0, template_ids: list[int] | None = None) -> list[Record]:
    """GSM8K-style questions from six templates with random numbers and integer answers."""
    templates = _templates()
    chosen = template_ids or list(templates)
    unknown = [t for t in chosen if t not in templates]
    if unknown:
        raise RlsftError(f"unknown probe template ids {unknown}; available: {list(templates)}")
    records = []
    for tid in chosen:
        rng = random.Random(f"{seed}-{tid}")
        for i in range(n_per_template):
            question, answer = templates[tid](rng)
            records.append(Record(f"tmpl{tid}-{i}", question, str(answer), {"grader": "math", "template": tid}))
    return records


_FACTS = [
    ("What is the capital of France?", "Paris"), ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Italy?", "Rome"), ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Spain?", "Madrid"), ("What is the capital of Egypt?", "Cairo"),
    ("What is the capital of Canada?", "Ottawa"), ("What is the capital of Russia?", "Moscow"),
    ("What is the capital of China?", "Beijing"), ("What is the capital of Greece?", "Athens"),
    ("What is the capital of Portugal?", "Lisbon"), ("What is the capital of Austria?", "Vienna"),
    ("What is the capital of Norway?", "Oslo"), ("What is the capital of Sweden?", "Stockholm"),
    ("What is the capital of Kenya?", "Nairobi"), ("What is the capital of Peru?", "Lima"),
    ("What is the capital of Ireland?", "Dublin"), ("What is the capital of Poland?", "Warsaw"),
    ("What is the capital of Thailand?", "Bangkok"), ("What is the capital of Argentina?", "Buenos Aires"),
    ("What is the chemical symbol for gold?", "Au"), ("What is the chemical symbol for iron?", "Fe"),
    ("What is the chemical symbol for sodium?", "Na"), ("What is the chemical symbol for silver?", "Ag"),
    ("What is the chemical symbol for oxygen?", "O"), ("What is the chemical symbol for helium?", "He"),
    ("Which planet is closest to the Sun?", "Mercury"), ("Which planet is known as the Red Planet?", "Mars"),
    ("What is the largest planet in the Solar System?", "Jupiter"), ("Which planet has the most famous rings?", "Saturn"),
    ("Who wrote Romeo and Juliet?", "Shakespeare"), ("Who painted the Mona Lisa?", "Leonardo da Vinci"),
    ("Who developed the theory of relativity?", "Einstein"), ("Who wrote the Odyssey?", "Homer"),
    ("What is the largest ocean on Earth?", "Pacific"), ("What is the longest river in Africa?", "Nile"),
    ("On which continent is Brazil?", "South America"), ("What language is mainly spoken in Brazil?", "Portuguese"),
    ("What gas do plants absorb from the air?", "carbon dioxide"), ("What is the freezing point of water in Celsius?", "0"),
    ("What color is the sky on a clear day?", "blue"), ("What is the opposite of hot?", "cold"),
    ("Which animal is known as the king of the jungle?", "lion"), ("What is the largest mammal?", "blue whale"),
    ("How many days are in a week?", "7"), ("How many continents are there?", "7"),
    ("What is the currency of Japan?", "yen"), ("What is the currency of the United Kingdom?", "pound"),
    ("In which country are the pyramids of Giza?", "Egypt"), ("In which city is the Eiffel Tower?", "Paris"),
]


def factual_records(n: int | None = None, seed: int = 0) -> list[Record]:
    """Short factual-recall questions: the ablation's control task (recall, no multi-step reasoning)."""
    records = [Record(f"fact-{i}", q, a, {"grader": "text"}) for i, (q, a) in enumerate(_FACTS)]
    return subset(records, n, seed)


# ----------------------------------------------------------------------------------------------- distinct questions
def normalise_question(text: str) -> str:
    """The form two questions are compared in: case and runs of white space do not make a new question."""
    return " ".join(str(text).split()).casefold()


def distinct_records(records: list[Record]) -> tuple[list[Record], int]:
    """(the first record of each normalised question text, how many repeats were dropped).

    An evaluated set must not ask a question twice: a repeat counts twice in an interval and lands in both halves of
    a split (method.md 2.8)."""
    seen: dict[str, Record] = {}
    for r in records:
        seen.setdefault(normalise_question(r.question), r)
    return list(seen.values()), len(records) - len(seen)


# ----------------------------------------------------------------------------------------------- entry point
def subset(records: list[Record], n: int | None, seed: int) -> list[Record]:
    """Deterministic subset of ``n`` records (in their original order) drawn with ``seed``."""
    if n is None or n >= len(records):
        return records
    if n < 1:
        raise RlsftError(f"dataset.n must be >= 1, got {n}")
    keep = sorted(random.Random(seed).sample(range(len(records)), n))
    return [records[i] for i in keep]


def dataset_section(section: Any, where: str):
    """A DatasetConfig from a (partial) dict or DictConfig, unknown keys rejected by name."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from .config import DatasetConfig

    try:
        return OmegaConf.merge(OmegaConf.structured(DatasetConfig), section)
    except OmegaConfBaseException as exc:
        raise RlsftError(f"{where}: {str(exc).splitlines()[0]}") from None


def without_questions_of(records: list[Record], sections: list, name: str) -> list[Record]:
    """``records`` less those asking a question of any dataset section in ``sections`` (``dataset.exclude``): a
    held-out set stays disjoint from a training set however many questions it grows to."""
    asked: set[str] = set()
    for i, section in enumerate(sections):
        other = dataset_section(section, f"dataset {name!r}: exclude[{i}]")
        asked |= {normalise_question(r.question) for r in load_records(other)}
    return leave_out(records, asked, f"dataset {name!r}: every question is also in dataset.exclude ({len(records)} "
                     "records)", f"[dataset] {name}: {{dropped}} of {len(records)} questions are also in "
                     "dataset.exclude: left out")


def leave_out(records: list[Record], asked: set[str], none_left: str, note: str) -> list[Record]:
    """``records`` less those asking a question in ``asked`` (normalised texts): the error ``none_left`` when none is
    left, ``note`` (its ``{dropped}`` filled in) printed once per process when some went."""
    from .console import say_once

    kept = [r for r in records if normalise_question(r.question) not in asked]
    if not kept:
        raise RlsftError(none_left)
    if len(kept) < len(records):
        say_once(note.format(dropped=len(records) - len(kept)))
    return kept


def load_records(cfg: Any) -> list[Record]:
    """Records of the dataset config ``cfg`` (see conf/dataset/*.yaml)."""
    source = cfg.source
    if source == "arithmetic":
        a = cfg.arithmetic
        records = arithmetic_records(a.count, a.digits, a.n_ops, a.style, cfg.seed, a.ops, a.unique)
    elif source == "templates":
        records = template_records(cfg.per_template, cfg.seed)
    elif source == "factual":
        records = factual_records()
    elif source in ("hub", "local", "auto"):
        path = cfg.path
        if not path:
            raise RlsftError(f"dataset {cfg.name!r} has no path (a hub id or a local file)")
        local = Path(str(path)).expanduser()
        if source == "local" or (source == "auto" and (local.exists() or str(path).startswith((".", "/", "~")))):
            records = rows_to_records(read_rows(local), cfg, str(local))
        else:
            records = rows_to_records(hub_rows(path, cfg.config_name, cfg.split), cfg, f"{path}[{cfg.split}]")
    else:
        raise RlsftError(f"unknown dataset source {source!r}; expected hub, local, auto, arithmetic, templates, factual")
    if getattr(cfg, "exclude", None):
        records = without_questions_of(records, cfg.exclude, cfg.name)
    records = subset(records, cfg.n, cfg.seed)
    if not records:
        raise RlsftError(f"dataset {cfg.name!r} is empty")
    return records
