"""Dataset loaders: local files, bad rows, deterministic subsets, the synthetic generators."""

import json
import re
from types import SimpleNamespace as NS

import pytest

from rlsft.data import (arithmetic_records, factual_records, load_records, normalise_question, read_rows, subset,
                        template_records)
from rlsft.errors import RlsftError


def ds(**kw):
    base = dict(name="t", source="local", path=None, config_name=None, split="test", question_field="question",
                answer_field="answer", id_field="idx", answer_format="gsm8k", n=None, seed=0, per_template=5,
                arithmetic=NS(count=20, digits=2, n_ops=2, style="bare", ops="+-*"))
    base.update(kw)
    return NS(**base)


def test_gsm8k_local_file(shared_data):
    recs = load_records(ds(path=str(shared_data / "gsm8k/test.jsonl")))
    assert len(recs) == 1319 and recs[0].id == "0" and recs[0].answer == "18"


def test_math500_and_college_math(shared_data):
    m = load_records(ds(path=str(shared_data / "math500/test.jsonl"), question_field="problem",
                        answer_field="solution", id_field="unique_id", answer_format="boxed"))
    assert m[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    c = load_records(ds(path=str(shared_data / "college_math/test.jsonl"), id_field=None, answer_format="dollar"))
    assert c[0].answer == "10-4 n" and len({r.id for r in c}) == len(c)


def test_subset_is_deterministic_and_ordered(shared_data):
    cfg = ds(path=str(shared_data / "gsm8k/test.jsonl"), n=50, seed=3)
    a, b = load_records(cfg), load_records(cfg)
    assert [r.id for r in a] == [r.id for r in b]
    assert [int(r.id) for r in a] == sorted(int(r.id) for r in a)
    assert [r.id for r in load_records(ds(path=cfg.path, n=50, seed=4))] != [r.id for r in a]


def test_malformed_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "#### 1", "idx": 0}) + "\n{not json\n")
    with pytest.raises(RlsftError, match=r"bad.jsonl:2: malformed JSON"):
        read_rows(path)


def test_missing_field_and_missing_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"question": "q", "idx": 0}) + "\n")
    with pytest.raises(RlsftError, match="row 1 has no field 'answer'"):
        load_records(ds(path=str(path)))
    with pytest.raises(RlsftError, match="data file not found"):
        load_records(ds(path=str(tmp_path / "nope.jsonl")))


def test_unreachable_hub_dataset_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(RlsftError, match="could not be loaded from the hub"):
        load_records(ds(source="hub", path="nobody/no-such-dataset"))


def test_arithmetic_answers_are_exact():
    recs = arithmetic_records(200, digits=2, n_ops=2, style="bare", seed=1, ops="+-*")
    for r in recs:
        expr = re.match(r"What is (.*)\?", r.question).group(1)
        assert set(expr) <= set("0123456789+-*() ")
        value = eval(expr)  # Python's own precedence: the written question must mean its answer
        assert str(value) == r.answer and value >= 0
    assert [r.question for r in recs] == [r.question for r in arithmetic_records(200, 2, 2, "bare", 1, "+-*")]


def test_arithmetic_word_style_and_bad_knobs():
    r = arithmetic_records(3, digits=1, n_ops=1, style="word", seed=0)[0]
    assert "How many" in r.question
    with pytest.raises(RlsftError, match="style"):
        arithmetic_records(3, style="poem")
    with pytest.raises(RlsftError, match="n_ops"):
        arithmetic_records(3, n_ops=0)


def test_templates_and_factual():
    recs = template_records(10, seed=0)
    assert len(recs) == 60 and len({r.meta["template"] for r in recs}) == 6
    assert all(int(r.answer) >= 0 for r in recs)
    argo = [r for r in recs if r.meta["template"] == 884][0]
    nums = [int(x) for x in re.findall(r"\d+", argo.question)]
    assert int(argo.answer) == nums[0] - nums[1] - nums[2] - nums[3]
    facts = factual_records()
    assert len(facts) >= 40 and all(f.meta["grader"] == "text" for f in facts)
    assert subset(facts, 5, 0) == subset(facts, 5, 0)


def test_arithmetic_twins_keep_the_shape_change_the_answer_and_leave_the_questions_as_they_were():
    """Counterfactual twins (method.md 2.7): same text with every number redrawn at its digit count, a different
    non-negative answer (recomputed here from the text); the records themselves are those drawn before twins existed."""
    import re

    bare, word = arithmetic_records(4, 1, 1, "bare", 0), arithmetic_records(2, 2, 2, "word", 1)
    assert [r.question for r in bare] == ["What is 6 + 8?", "What is 7 - 5?", "What is 9 - 2?", "What is 1 - 1?"]
    assert word[0].question.startswith("Sara has 27 coins. Sara gets 73 more. Sara gives away 70.")
    for r in bare + word + arithmetic_records(6, 2, 2, "bare", 3, "+-*"):
        assert r.meta["twins"]
        for twin in r.meta["twins"]:
            assert re.sub(r"\d", "0", twin) == re.sub(r"\d", "0", r.question)  # digit counts and words kept
            if r.meta["style"] == "bare":
                answer = eval(twin[len("What is "):-1])  # noqa: S307 - generated arithmetic only
            else:
                answer = int(re.search(r"has (\d+)", twin).group(1))
                for op, x in re.findall(r"(gets|gives away|multiplied by) (\d+)", twin):
                    answer = answer + int(x) if op == "gets" else answer - int(x) if op == "gives away" else \
                        answer * int(x)
            assert answer >= 0 and str(answer) != r.answer


def test_two_digit_questions_are_distinct_and_their_twins_keep_the_prompt_length():
    """The arms' 2-digit set (conf/dataset/arith2_heldout.yaml): distinct questions with both operands of two digits,
    and counterfactual twins (method.md 2.7) whose prompts tokenise to the question's length under a tokenizer that
    writes digits one per token, as SmolLM2's does (the twin the faithfulness baseline takes)."""
    from rlsft.models import build_tiny_tokenizer
    from rlsft.templates import encode_prompt

    tok = build_tiny_tokenizer()
    recs = arithmetic_records(400, digits=2, n_ops=1, style="bare", seed=0, ops="+-", unique=True)
    assert len({r.question for r in recs}) == 400
    for r in recs:
        assert [len(x) for x in re.findall(r"\d+", r.question)] == [2, 2]
        length = len(encode_prompt(tok, "chat_brief", r.question))
        assert r.meta["twins"] and all(len(encode_prompt(tok, "chat_brief", t)) == length for t in r.meta["twins"])
        assert all([len(x) for x in re.findall(r"\d+", t)] == [2, 2] for t in r.meta["twins"])


def _arith(seed: int, count: int, **extra):
    from omegaconf import OmegaConf

    from rlsft.config import DatasetConfig

    section = {"name": f"arith-{seed}", "source": "arithmetic", "seed": seed,
               "arithmetic": {"count": count, "digits": 2, "unique": True}, **extra}
    return OmegaConf.merge(OmegaConf.structured(DatasetConfig), section)


def test_exclude_keeps_a_held_out_set_disjoint_from_a_training_set_at_any_size(capsys):
    train = {"name": "train", "source": "arithmetic", "seed": 1, "arithmetic": {"count": 80, "digits": 2, "unique": True}}
    asked = {r.question for r in load_records(_arith(1, 80))}
    every = load_records(_arith(0, 2000))
    held = load_records(_arith(0, 2000, exclude=[train]))
    shared = [r for r in every if r.question in asked]
    assert shared, "the two seeds' draws share questions, or the test shows nothing"
    # exactly the shared questions go, the rest keep their order and ids; n is drawn after the exclusion
    assert [r.id for r in held] == [r.id for r in every if r.question not in asked]
    assert f"{len(shared)} of 2000 questions are also in dataset.exclude" in capsys.readouterr().out
    drawn = load_records(_arith(0, 2000, exclude=[train], n=500))
    assert len(drawn) == 500 and not {r.question for r in drawn} & asked


def test_exclude_errors_name_the_dataset():
    with pytest.raises(RlsftError, match="every question is also in dataset.exclude"):
        load_records(_arith(0, 50, exclude=[{"name": "same", "source": "arithmetic", "seed": 0,
                                             "arithmetic": {"count": 50, "digits": 2, "unique": True}}]))
    with pytest.raises(RlsftError, match=r"dataset 'arith-0': exclude\[0\]"):
        load_records(_arith(0, 50, exclude=[{"name": "bad", "sorce": "arithmetic"}]))


def test_a_left_out_note_is_printed_once_however_often_a_family_splits_the_same_recipe(capsys):
    """Every stage of a family reads its recipe's split (18 stages of smollm2_arms printed the same line 18 times):
    one fact, one line; another count is another fact."""
    from rlsft.data import leave_out

    records = arithmetic_records(20, 1, 1, "bare", 0)
    asked = {normalise_question(records[0].question)}
    for _ in range(3):
        leave_out(records, asked, "none left", "[training data] {dropped} left out")
    more = asked | {normalise_question(records[1].question)}
    leave_out(records, more, "none left", "[training data] {dropped} left out")
    assert capsys.readouterr().out.splitlines() == ["[training data] 1 left out", "[training data] 2 left out"]
