"""Cached, resumable generation on a tiny model: ids kept, batch-size invariance, resume after a crash."""

import pytest
import torch

from rlsft.data import arithmetic_records
from rlsft.generate import Sampling, generate_answers
from rlsft.models import build_tiny_model, fingerprint

SPEC = {"source": "tiny", "tiny": {"arch": "llama", "layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "seed": 0}}


@pytest.fixture(scope="module")
def tiny():
    model, tok = build_tiny_model(seed=0)
    tok.padding_side = "left"
    return model.eval(), tok


def run(tiny, records, cache, sampling=Sampling(12), batch_size=4, load=None):
    return generate_answers(load or (lambda: tiny), records, "chat", sampling, fingerprint(SPEC), str(cache),
                            batch_size=batch_size)


def test_records_keep_the_models_own_ids(tiny, tmp_path):
    model, tok = tiny
    recs = arithmetic_records(3, seed=0)
    out = run(tiny, recs, tmp_path)
    for r, g in zip(recs, out):
        assert g["id"] == r.id and g["gold"] == r.answer
        assert g["prompt_ids"] == tok.apply_chat_template(
            [{"role": "user", "content": r.question + "\nPlease reason step by step, and put your final answer "
              "within \\boxed{}."}], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        full = torch.tensor([g["prompt_ids"] + g["output_ids"]])
        # Greedy decoding: every generated id is the argmax of the model's own next-token distribution.
        logits = model(full).logits[0, len(g["prompt_ids"]) - 1 : -1]
        assert logits.argmax(-1).tolist() == g["output_ids"]
        assert g["finish_reason"] in ("eos", "length")
        assert (len(g["output_ids"]) == 12) == (g["finish_reason"] == "length")


def test_batch_size_does_not_change_greedy_answers(tiny, tmp_path):
    recs = arithmetic_records(6, digits=3, n_ops=2, seed=1)  # prompts of different lengths: left padding matters
    one = run(tiny, recs, tmp_path / "a", batch_size=1)
    six = run(tiny, recs, tmp_path / "b", batch_size=6)
    assert [g["output_ids"] for g in one] == [g["output_ids"] for g in six]


def test_cache_hit_never_loads_the_model(tiny, tmp_path):
    recs = arithmetic_records(4, seed=2)
    first = run(tiny, recs, tmp_path)

    def no_load():
        raise AssertionError("the model was loaded although everything was cached")

    assert run(tiny, recs, tmp_path, load=no_load) == first


def test_resume_after_crash_generates_only_what_is_missing(tiny, tmp_path):
    model, tok = tiny
    recs = arithmetic_records(8, seed=3)
    calls = []

    class Crashing(torch.nn.Module):
        """Wraps the model; dies on its third generate call, like a killed job."""

        def __init__(self):
            super().__init__()
            self.inner = model
            self.generation_config = model.generation_config

        def generate(self, **kw):
            calls.append(kw["input_ids"].shape[0])
            if len(calls) == 3:
                raise KeyboardInterrupt
            return model.generate(**kw)

    with pytest.raises(KeyboardInterrupt):
        run(tiny, recs, tmp_path, batch_size=2, load=lambda: (Crashing(), tok))
    assert calls == [2, 2, 2]
    calls.clear()
    resumed = run(tiny, recs, tmp_path, batch_size=2, load=lambda: (Crashing(), tok))
    assert calls == [2, 2]  # the two batches finished before the crash are not redone
    fresh = run(tiny, recs, tmp_path / "fresh", batch_size=2)
    assert [g["output_ids"] for g in resumed] == [g["output_ids"] for g in fresh]


def test_sampling_n_answers_per_question_is_seeded(tiny, tmp_path):
    recs = arithmetic_records(2, seed=4)
    s = Sampling(10, temperature=1.0, top_p=0.95, n_samples=3, seed=7)
    a = run(tiny, recs, tmp_path / "a", sampling=s)
    b = run(tiny, recs, tmp_path / "b", sampling=s)
    assert [(g["id"], g["sample"]) for g in a] == [(r.id, k) for r in recs for k in range(3)]
    assert [g["output_ids"] for g in a] == [g["output_ids"] for g in b]
    assert len({tuple(g["output_ids"]) for g in a}) > 1
