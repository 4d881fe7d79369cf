"""The answer span (method.md 8, eap.positions=answer_span): answers of different shapes to one question are scored
on the same answer digits and the same number of tokens; an answer without one is dropped with its reason counted."""

import json

import numpy as np
import pytest

from rlsft.eap import answer_span, scored_inputs, span_inputs
from rlsft.eap.span import number_tokens
from rlsft.models import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _scored(tok, text, before, prompt=(1, 2, 3)):
    """(scored token texts, their count) of one answer at its span."""
    ids = _ids(tok, text)
    start, end = answer_span(tok, ids, text, before)
    item = span_inputs(list(prompt), ids, start, end)
    scored = item.input_ids[item.loss_mask].tolist()
    return [tok.decode([i]) for i in scored], item.answer_len


@pytest.mark.parametrize("first,second,before,number", [
    ("7", "3 + 4 = 7.", 0, "7"),  # the example: a bare answer and one that copies the question first
    ("The answer is 7.", "3 + 4 = 7.", 2, "7"),
    ("12 + 35 = 47", "The answer is \\boxed{47}.", 3, "47"),
])
def test_two_answers_to_one_question_are_scored_on_aligned_spans(tok, first, second, before, number):
    (a, n_a), (b, n_b) = _scored(tok, first, before), _scored(tok, second, before)
    assert n_a == n_b == before + len(number)  # the same count of scored tokens (digits are single tokens here)
    assert "".join(a[before:]) == "".join(b[before:]) == number  # ... ending on the same answer digits


def test_the_number_is_found_where_the_grader_reads_it(tok):
    text = "14 + 1 = 15."  # 15, not the 1 of the question or of "14"
    ids = _ids(tok, text)
    first, end = number_tokens(tok, ids, text)
    assert tok.decode(ids[first:end]) == "15"
    assert number_tokens(tok, _ids(tok, "I'm ready to help."), "I'm ready to help.") is None
    start, _ = answer_span(tok, _ids(tok, "7"), "7", 2)
    assert start == -2  # fewer tokens before the number than asked: the caller drops it, never scores the prompt


def test_span_inputs_score_the_span_and_nothing_after_it():
    item = span_inputs([1, 2], [10, 11, 12, 13, 14], 1, 3)
    assert item.input_ids.tolist() == [1, 2, 10, 11, 12]  # what follows the span cannot change its loss
    assert item.loss_mask.tolist() == [False, False, False, True, True]
    assert (item.answer_len, item.shorter_than_cut) == (2, False)
    with pytest.raises(ValueError, match="span"):
        span_inputs([1], [10, 11], -1, 2)
    with pytest.raises(ValueError, match="span"):
        span_inputs([1], [10, 11], 1, 3)
    answers = [{"prompt_ids": [1, 2], "output_ids": [10, 11, 12], "span": (1, 2)}]
    assert scored_inputs(answers, None)[0].loss_mask.tolist() == [False, False, False, True]
    assert scored_inputs(answers, 2)[0].loss_mask.tolist() == [False, False, True, True]  # T_cut ignores the span


def test_the_span_filter_counts_each_drop():
    from rlsft.experiments.eap import span_filter

    spans = {"a": {"ok": (4, 7), "none": (2, 3), "early": (0, 2), "mismatch": (3, 6)},
             "b": {"ok": (2, 5), "none": None, "early": (-1, 1), "mismatch": (2, 4)}}
    gens = {stage: {q: {"span": s} for q, s in by_q.items()} for stage, by_q in spans.items()}
    counts = {}
    assert span_filter(gens, ["ok", "none", "early", "mismatch"], counts) == ["ok"]
    assert counts == {"dropped_no_answer_number": 1, "dropped_span_before_answer": 1,
                      "dropped_span_length_mismatch": 1}


def test_a_span_run_reports_one_alpha_and_refuses_another_primary():
    from test_config import composed
    from rlsft.config import validate
    from rlsft.errors import RlsftError
    from rlsft.experiments.eap import scored_alphas

    cfg = composed("experiment=eap", "eap.positions=answer_span")  # the job's eap.alphas [0.1, 0.3, 0.5, 1.0]
    validate(cfg)
    assert scored_alphas(cfg) == [1.0] and scored_alphas(composed("experiment=eap")) == [0.1, 0.3, 0.5, 1.0]
    with pytest.raises(RlsftError, match=r"eap.primary.alpha=0.5: eap.positions=answer_span scores one span"):
        validate(composed("experiment=eap", "eap.positions=answer_span", "eap.primary.alpha=0.5"))


@pytest.mark.parametrize("compare", [[], ["eap.reference=sft", "eap.compare=[rl]"]])
def test_an_answer_span_run_scores_every_stage_on_the_same_tokens(tmp_path, monkeypatch, compare):
    """The eap experiment with eap.positions=answer_span on the tiny pair (sft -> rl, and rl against the reference
    sft), its answers written by hand: one stage copies the question ("3 + 4 = 7"), the other says "The answer is 7.";
    one bare "7" has no tokens before its number and is dropped, counted. Each selected question's two score rows
    cover the same count of tokens: the number's digits and the 2 before them."""
    from test_config import composed
    from rlsft.experiments.common import RunContext
    from rlsft.experiments.eap import run
    from rlsft.templates import encode_prompt
    from rlsft.tracking import Tracker

    cfg = composed("experiment=eap", "model_pair=tiny", "run.device=cpu", "dataset.arithmetic.count=8",
                   "eap.positions=answer_span", "eap.span_before=2", "eap.n_boot=200", "logger=disabled", *compare)
    ctx = RunContext(cfg, tmp_path, str(tmp_path / "cache"), Tracker("disabled", "rlsft", tmp_path, {}))
    tok = build_tiny_tokenizer()

    def written(stage, records, sampling=None):
        out = []
        for i, r in enumerate(records):
            text = f"{r.meta['expr']} = {r.answer}" if stage.name == "sft" else \
                r.answer if i == 0 else f"The answer is {r.answer}."
            out.append({"id": r.id, "prompt_ids": encode_prompt(tok, "chat", r.question), "correct": True,
                        "output_ids": _ids(tok, text), "text": text})
        return out

    monkeypatch.setattr(ctx, "generations", written)
    run(cfg, ctx)
    selection = json.loads((tmp_path / "eap_selection.json").read_text())
    counts = selection["counts"]
    assert counts["dropped_span_before_answer"] == 1 and counts["dropped_no_answer_number"] == 0
    assert counts["n_selected"] == len(selection["ids"]) >= 2
    sft, rl = (np.load(tmp_path / f"eap_scores_{s}_alpha1.npz") for s in ("sft", "rl"))
    assert list(sft["ids"]) == list(rl["ids"]) == selection["ids"]
    np.testing.assert_array_equal(sft["scored_tokens"], rl["scored_tokens"])
    answers = {r.id: r.answer for r in ctx.records()}
    assert [2 + len(answers[q]) for q in selection["ids"]] == sft["scored_tokens"].tolist()
