"""Grading on real rows of the shared benchmarks (gold vs itself, altered golds, answer forms)."""

from types import SimpleNamespace as NS

import pytest

from rlsft.data import read_rows, rows_to_records, subset
from rlsft.grading import answer_chars, gold_answer, grade, last_boxed, numeric_value

CONFIGS = {
    "gsm8k": ("gsm8k/test.jsonl", NS(name="gsm8k", question_field="question", answer_field="answer",
                                       id_field="idx", answer_format="gsm8k")),
    "math500": ("math500/test.jsonl", NS(name="math500", question_field="problem", answer_field="answer",
                                           id_field="unique_id", answer_format="plain")),
    "math500_solution": ("math500/test.jsonl", NS(name="math500", question_field="problem", answer_field="solution",
                                                    id_field="unique_id", answer_format="boxed")),
    "college_math": ("college_math/test.jsonl", NS(name="college_math", question_field="question",
                                                     answer_field="answer", id_field=None, answer_format="dollar")),
}


# College Math's free-text answers make sympy slow (seconds each): a fixed sample of it keeps the suite fast.
LIMIT = {"college_math": 400}


# College Math (sympy on free text, about a minute for its sample) runs with -m slow in CI, outside the default suite.
@pytest.fixture(scope="module", params=[pytest.param(k, marks=pytest.mark.slow) if k == "college_math" else k
                                        for k in CONFIGS])
def records(request, shared_data):
    path, cfg = CONFIGS[request.param]
    recs = rows_to_records(read_rows(shared_data / path), cfg, path)
    return subset(recs, LIMIT.get(request.param), seed=0)


def test_every_gold_answer_graded_against_itself_is_correct(records):
    wrong = [r.answer for r in records if not grade(f"So the final answer is $\\boxed{{{r.answer}}}$.", r.answer)[1]]
    assert wrong == []


def test_altered_numeric_answers_are_wrong(records):
    numeric = [r for r in records if numeric_value(r.answer) is not None][:150]
    assert len(numeric) > 40
    for r in numeric:
        altered = numeric_value(r.answer) + 7
        assert not grade(f"The answer is \\boxed{{{altered:g}}}", r.answer)[1], r.answer


def test_gsm8k_gold_is_cut_after_hashes(shared_data):
    row = read_rows(shared_data / "gsm8k/test.jsonl")[0]
    assert gold_answer(row["answer"], "gsm8k") == "18"
    assert gold_answer("so 1,234 in all\n#### 1,234", "gsm8k") == "1234"


@pytest.mark.parametrize("text,gold,ok", [
    ("The answer is 1,234.", "1234", True),
    ("so we get \\boxed{\\frac{1}{2}}", "0.5", True),
    ("The answer is \\boxed{0.5}", "\\frac{1}{2}", True),
    ("That is 50%", "50", True),
    ("\\boxed{50\\%}", "50", True),
    ("She makes $18 every day. The answer is 18", "18", True),
    ("The answer is 17", "18", False),
    ("I do not know", "18", False),
    ("\\boxed{10-4n}", "10-4 n", True),
    ("\\boxed{x^2+1}", "x^2+2", False),
])
def test_answer_forms(text, gold, ok):
    assert grade(text, gold)[1] is ok


def test_text_grader_for_factual_answers():
    assert grade("The capital of France is Paris.", "Paris", "text")[1]
    assert grade("\\boxed{Leonardo da Vinci}", "Leonardo da Vinci", "text")[1]
    assert not grade("It is Lyon.", "Paris", "text")[1]
    assert not grade("Parisian food", "Paris", "text")[1]


def test_last_boxed_handles_nested_braces():
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{a}{b}}") == "\\frac{a}{b}"
    assert last_boxed("no box") is None


@pytest.mark.parametrize("text, gold, correct", [
    ("6 + 8 = \\boxed{}", "14", False),  # empty box: math-verify fell back to the restated question
    ("5 - 0 is a mathematical operation that is equivalent to 5 - 0.", "5", False),
    ("\\boxed{6+8}", "14", False),
    ("6 + 8 = 14.", "14", True),
    ("3 - 5 = -2", "-2", True),
    ("\\boxed{\\frac{1}{2}}", "1/2", True),
    ("x = 1/2", "0.5", True),
    ("\\boxed{3+2i}", "3+2i", True),
])
def test_a_restated_question_is_not_an_answer(text, gold, correct):
    """Correctness judged by hand: restating the computation (or boxing nothing) gives no value."""
    assert grade(text, gold)[1] is correct


def test_the_grpo_reward_gives_a_restated_question_no_partial_credit():
    from rlsft.grpo.reward import answer_reward

    assert answer_reward("6 + 8 = \\boxed{}", "14").reward == -0.5
    assert answer_reward("6 + 8 = 10", "14").reward == pytest.approx(min(2.5, -0.5 + 3.5 * (1 - 4 / 14)))  # a near miss still earns credit


@pytest.mark.parametrize("text,written", [
    ("6 + 8 = 14", "14"), ("6 + 8 = \\boxed{14}.", "14"), ("The answer is 9.", "9"), ("14 + 1 = 15.", "15"),
    ("x = 0.50", "0.50"), ("7", "7"), ("I'm ready to help. What's your question?", None),
    ("The answer is 1,234.", None),  # math-verify reads 1234, which the text does not write
])
def test_answer_chars_point_at_the_number_the_grader_reads(text, written):
    """The answer span (method.md 8) starts from here: the last place the extracted answer is written as a whole
    number ("14" in "14 + 1 = 15." is not the answer 15, nor is the 1 of 15 the answer 1)."""
    span = answer_chars(text)
    if written is None:
        assert span is None
    else:
        assert text[span[0] : span[1]] == written == grade(text, written)[0]
    assert answer_chars("15 - 4 = 1") == (9, 10) and answer_chars("3 + 4 = 7 and 17") == (14, 16)
