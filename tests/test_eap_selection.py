"""Sample selection (method.md 2.1) on hand-built lengths, and the truncated inputs."""

import pytest
import torch

from rlsft.eap import collate, cut_length, select_samples, truncation_inputs


def test_tbar_is_min_of_means_before_filtering():
    sft = {"a": 100, "b": 200, "c": 300}
    rl = {"a": 150, "b": 250, "c": 350}
    s = select_samples(sft, rl)
    assert s.tbar == 200 and (s.t_min, s.t_max) == (100, 300)


def test_length_window():
    # tbar = 100; window [50, 150] on the pair mean
    sft = {"short": 40, "low_edge": 50, "mid": 100, "high_edge": 150, "long": 160, "pad": 100}
    rl = dict(sft)
    s = select_samples(sft, rl)
    assert s.tbar == 100
    assert s.ids == ["high_edge", "low_edge", "mid", "pad"]
    assert (s.n_correct, s.n_in_window, s.n_balanced) == (6, 4, 4)


def test_balance_filter():
    # pair means all 100 (tbar 100); |T_sft - T_rl| / t: 0.5 kept (boundary), 0.6 dropped
    sft = {"same": 100, "edge": 75, "far": 70}
    rl = {"same": 100, "edge": 125, "far": 130}
    s = select_samples(sft, rl, delta=0.5)
    assert s.ids == ["edge", "same"]
    assert (s.n_in_window, s.n_balanced) == (3, 2)
    assert select_samples(sft, rl, delta=0.1).ids == ["same"]


def test_draw_n_is_deterministic_and_sorted():
    sft = {f"q{i}": 100 for i in range(50)}
    rl = dict(sft)
    a = select_samples(sft, rl, n=10, seed=3)
    b = select_samples(dict(reversed(list(sft.items()))), rl, n=10, seed=3)
    assert a.ids == b.ids and len(a.ids) == 10 and a.ids == sorted(a.ids)
    assert select_samples(sft, rl, n=10, seed=4).ids != a.ids
    assert len(select_samples(sft, rl, n=100).ids) == 50


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(beta=1.5, gamma=1.5), "gamma must be > beta .*gamma=1.5"),
        (dict(beta=2.0, gamma=1.5), "gamma must be > beta"),
        (dict(delta=0), "delta must be in \\(0, 1\\]; got delta=0"),
        (dict(delta=1.5), "delta=1.5"),
        (dict(n=1), "n must be an integer >= 2; got n=1"),
        (dict(beta=-0.1), "beta must be >= 0"),
    ],
)
def test_parameter_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_samples({"a": 10}, {"a": 10}, **kwargs)


def test_input_errors():
    with pytest.raises(ValueError, match="sft_lengths must be non-empty"):
        select_samples({}, {})
    with pytest.raises(ValueError, match="same question ids"):
        select_samples({"a": 1}, {"b": 1})
    with pytest.raises(ValueError, match="lengths must be >= 1"):
        select_samples({"a": 0}, {"a": 3})


def test_cut_length():
    assert cut_length(0.1, 250) == 25
    assert cut_length(0.03, 20) == 1  # int(0.6) = 0 -> at least one token
    assert cut_length(1.0, 7.9) == 7
    for alpha in (0, -0.1, 1.01):
        with pytest.raises(ValueError, match=f"alpha must be in \\(0, 1\\]; got alpha={alpha}"):
            cut_length(alpha, 100)


def test_truncation_inputs_and_collate():
    t = truncation_inputs([1, 2, 3], [4, 5, 6, 7], cut_len=2)
    assert t.input_ids.tolist() == [1, 2, 3, 4, 5]
    assert t.loss_mask.tolist() == [False, False, False, True, True]
    assert (t.answer_len, t.shorter_than_cut) == (2, False)
    short = truncation_inputs([1], [9, 8], cut_len=5)
    assert short.input_ids.tolist() == [1, 9, 8] and short.shorter_than_cut and short.answer_len == 2
    assert not truncation_inputs([1], [9, 8], cut_len=2).shorter_than_cut
    with pytest.raises(ValueError, match="prompt_ids"):
        truncation_inputs([], [1], 1)
    with pytest.raises(ValueError, match="cut_len"):
        truncation_inputs([1], [1], 0)
    ids, lm, am = collate([t, short], pad_id=0, side="left")
    assert ids.tolist() == [[1, 2, 3, 4, 5], [0, 0, 1, 9, 8]]
    assert lm.tolist()[1] == [False, False, False, True, True] and am.tolist()[1] == [0, 0, 1, 1, 1]
    ids, lm, am = collate([t, short], pad_id=None, side="right")
    assert ids.tolist()[1] == [1, 9, 8, 0, 0] and am.dtype == torch.long


def test_shared_selection_of_several_models_by_hand():
    from rlsft.eap.selection import select_shared

    a = {"q1": 10, "q2": 10, "q3": 2, "q4": 10}
    b = {"q1": 10, "q2": 14, "q3": 2, "q4": 30}
    c = {"q1": 12, "q2": 10, "q3": 3, "q4": 10}
    # Tbar = min(32/4, 56/4, 35/4) = 8, window [4, 12]; t = 32/3, 34/3, 7/3, 50/3; spread/t = 0.1875, 0.353
    sel = select_shared({"a": a, "b": b, "c": c}, beta=0.5, gamma=1.5, delta=0.5)
    assert (sel.ids, sel.tbar, sel.n_correct, sel.n_in_window, sel.n_balanced) == (["q1", "q2"], 8.0, 4, 2, 2)
    assert select_shared({"a": a, "b": b, "c": c}, delta=0.3).ids == ["q1"]
    two = select_shared({"a": a, "b": b}, beta=0.2, gamma=2.5, delta=0.9, n=2, seed=1)
    ref = select_samples(a, b, beta=0.2, gamma=2.5, delta=0.9, n=2, seed=1)
    assert (two.ids, two.tbar, two.n_balanced) == (ref.ids, ref.tbar, ref.n_balanced)
    with pytest.raises(ValueError, match=r"same question ids.*\['q4'\].*\(c\)"):
        select_shared({"a": a, "b": b, "c": {k: v for k, v in c.items() if k != "q4"}})
