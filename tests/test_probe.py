"""Layer-wise probes (method.md 4): positions from stored ids, features against HF's own hidden states, ids aligned
when answers lack the position, the nested grouped CV on planted signals, intervals against scipy, end to end."""

import json

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import labelled_dataset, launch
from rlsft.data import Record
from rlsft.errors import RlsftError
from rlsft.experiments.probe import (LAYER_COLS, figure, probe_position, question_groups, report,
                                    template_features)
from rlsft.models import build_tiny_model, build_tiny_tokenizer
from rlsft.probe import (Features, LayerScores, ProbeInputError, ProbeResult, auroc, boxed_brace_index,
                         cached_features, check_classes, extract_features, first_layer_reaching, outer_splits,
                         probe_layers, score_interval, shuffled_labels)
from rlsft.stats import cv_interval

torch.set_num_threads(1)
ALL = ["before_answer", "before_answer_no_prompt", "question_end", "answer_mean"]


@pytest.fixture(scope="module")
def tiny():
    model, tok = build_tiny_model(layers=3, hidden=32, heads=4, kv_heads=2, seed=5)
    return model.double().eval(), tok


def test_boxed_brace_index():
    tok = build_tiny_tokenizer()
    text = "so 6 * 8 = 48 so \\boxed{12} is wrong, the answer is \\boxed{48}."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    i = boxed_brace_index(tok, ids)
    assert tok.decode(ids[: i + 1]).count("\\boxed{") == 2 and tok.decode(ids[:i]).count("\\boxed{") == 1
    assert "{" in tok.decode([ids[i]])
    assert boxed_brace_index(tok, tok("the answer is 48", add_special_tokens=False)["input_ids"]) is None
    assert boxed_brace_index(tok, []) is None


def _gens(tok):
    """Answers in no particular id order; some lack \\boxed{ (unparseable) and one is empty."""
    texts = {"q7": "6 * 8 = 48 so \\boxed{48}", "q2": "no idea, maybe 5", "q9": "x \\boxed{3} then \\boxed{9}.",
             "q1": "", "q4": "The answer is \\boxed{12}"}
    questions = ["What is 6 * 8?", "Tom has 3 apples.", "What is 12 + 7? Compute it.", "What is 1 + 2?", "Sara had"]
    gens = []
    for (qid, text), q in zip(texts.items(), questions):
        prompt = tok(q)["input_ids"]
        if qid == "q4":
            prompt = [tok.bos_token_id] + prompt  # a prompt that starts with BOS: the no-prompt re-read keeps it
        gens.append({"id": qid, "prompt_ids": prompt, "output_ids": tok(text, add_special_tokens=False)["input_ids"]})
    return gens


def test_features_match_hidden_states_and_stay_aligned(tiny):
    model, tok = tiny
    gens = _gens(tok)
    feats = extract_features(model, tok, gens, ALL, batch_size=2)
    assert feats["before_answer"].ids == ["q7", "q9", "q4"] and feats["before_answer"].skipped == ["q2", "q1"]
    assert feats["before_answer_no_prompt"].ids == ["q7", "q9", "q4"]
    assert feats["question_end"].ids == ["q7", "q2", "q9", "q1", "q4"] and feats["question_end"].skipped == []
    assert feats["answer_mean"].skipped == ["q1"]
    # batch composition does not matter (right padding under a causal mask)
    for pos, f in extract_features(model, tok, gens, ALL, batch_size=1).items():
        assert f.ids == feats[pos].ids
        np.testing.assert_allclose(f.X, feats[pos].X, rtol=1e-6, atol=1e-8)
    by_id = {g["id"]: g for g in gens}
    norm = model.model.norm
    for pos, f in feats.items():
        for row, qid in enumerate(f.ids):  # row i of X belongs to ids[i]: compare with a fresh single forward
            g = by_id[qid]
            prompt, out = g["prompt_ids"], g["output_ids"]
            if pos == "before_answer_no_prompt":
                seq = ([tok.bos_token_id] if prompt[0] == tok.bos_token_id else []) + out
                idx = [len(seq) - len(out) + boxed_brace_index(tok, out)]
            else:
                seq = prompt + out
                idx = {"before_answer": [len(prompt) + (boxed_brace_index(tok, out) or 0)],
                       "question_end": [len(prompt) - 1],
                       "answer_mean": list(range(len(prompt), len(seq)))}[pos]
            with torch.no_grad():
                hs = model(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states
            for layer in range(2):  # hidden_states[l + 1] = block l's output
                np.testing.assert_allclose(f.X[row, layer], hs[layer + 1][0, idx].mean(0).numpy(), rtol=1e-5,
                                           atol=1e-6)
            if pos != "answer_mean":  # the last entry of hidden_states has the final norm applied
                last = norm(torch.tensor(f.X[row, 2], dtype=torch.float64)).detach().numpy()
                np.testing.assert_allclose(last, hs[3][0, idx[0]].numpy(), rtol=1e-4, atol=1e-5)


def test_cached_features_roundtrip(tiny, tmp_path):
    model, tok = tiny
    gens = _gens(tok)
    loads = []

    def load():
        loads.append(1)
        return model, tok

    fp = {"tiny": "seed5"}
    first = cached_features(load, gens, ["question_end", "before_answer"], fp, "float64", str(tmp_path))
    again = cached_features(load, gens, ["before_answer", "question_end"], fp, "float64", str(tmp_path))
    assert len(loads) == 1
    direct = extract_features(model, tok, gens, ["question_end", "before_answer"])
    for pos in ("question_end", "before_answer"):
        assert again[pos].ids == first[pos].ids == direct[pos].ids
        assert again[pos].skipped == direct[pos].skipped
        np.testing.assert_allclose(again[pos].X, direct[pos].X, rtol=2e-3, atol=1e-3)  # stored as fp16
    files = list((tmp_path / "features").glob("*/features.npz"))
    assert len(files) == 2 and all(np.load(f)["X"].dtype == np.float16 for f in files)
    cached_features(load, gens[:3], ["question_end"], fp, "float64", str(tmp_path))  # other samples: a new key
    assert len(loads) == 2


def _planted(seed=0, n_questions=60, per_question=3, layers=5, d=48):
    """Layer 3: a linear signal; layer 0: the question's identity (memorisable only when a question's samples sit on
    both sides of a split); other layers: noise. Labels are fixed per question."""
    rng = np.random.default_rng(seed)
    yq = rng.permutation(np.arange(n_questions) % 2)
    groups = np.repeat(np.arange(n_questions), per_question)
    y = yq[groups]
    X = rng.normal(size=(len(y), layers, d))
    X[:, 0] = rng.normal(size=(n_questions, d))[groups] * 3 + 0.1 * rng.normal(size=(len(y), d))
    X[:, 3, :2] += 1.5 * (2 * y[:, None] - 1)
    return X, y, groups


def test_probe_finds_the_planted_layer_only():
    X, y, groups = _planted()
    res = probe_layers(X, y, groups, folds=3, inner_folds=3, repeats=2, Cs=[0.01, 1.0, 100.0], seed=0)
    bacc = [float(np.mean(s.balanced_accuracy)) for s in res.layers]
    auc = [float(np.mean(s.auroc)) for s in res.layers]
    assert bacc[3] > 0.9 and auc[3] > 0.95
    for layer in (0, 1, 2, 4):  # chance, including the question-identity layer (grouped folds: nothing to memorise)
        assert 0.3 < bacc[layer] < 0.7, (layer, bacc)
    assert all(0.3 < np.mean(s.balanced_accuracy) < 0.7 for s in res.control)  # shuffled labels: chance everywhere
    assert (res.selected_layer == 3).all()  # picked on the training folds
    summary = res.summary()
    lo, hi = summary["balanced_accuracy"]["ci95"]
    assert lo <= summary["balanced_accuracy"]["mean"] <= hi and hi <= 1
    assert res.majority_rate == 0.5 and res.n == 180 and res.n_groups == 60


def test_grouping_prevents_memorising_questions():
    X, y, groups = _planted()
    X1 = X[:, :1]
    grouped = probe_layers(X1, y, groups, folds=3, inner_folds=3, repeats=1, Cs=[1.0], shuffle_control=False)
    ungrouped = probe_layers(X1, y, np.arange(len(y)), folds=3, inner_folds=3, repeats=1, Cs=[1.0],
                             shuffle_control=False)
    assert np.mean(grouped.layers[0].balanced_accuracy) < 0.7 < np.mean(ungrouped.layers[0].balanced_accuracy)


def test_outer_splits_keep_questions_together():
    X, y, groups = _planted()
    splits = outer_splits(y, groups, folds=5, repeats=2, seed=0)
    assert len(splits) == 10
    for tr, te in splits:
        assert not set(groups[tr]) & set(groups[te])
        assert set(y[te]) == {0, 1}
    for r in range(2):  # each repeat covers every sample once
        assert sorted(np.concatenate([te for _, te in splits[5 * r : 5 * r + 5]]).tolist()) == list(range(len(y)))


def test_too_few_of_a_class_is_a_clear_error():
    y = np.array([1, 1] + [0] * 38)
    with pytest.raises(ProbeInputError, match=r"only 2 group\(s\) with a correct answer .*needs at least 5 per class"):
        check_classes(y, np.arange(40), folds=5, inner_folds=3)
    with pytest.raises(ProbeInputError, match="with a wrong answer"):
        probe_layers(np.zeros((10, 2, 3)), np.ones(10), np.arange(10), folds=3, inner_folds=2)
    with pytest.raises(ProbeInputError, match=r"only 4 group\(s\) with a wrong answer"):  # grouped by 4 templates
        check_classes(np.arange(40) % 2, np.arange(40) // 10, folds=5, inner_folds=3)
    check_classes(np.arange(40) % 2, np.arange(40), folds=5, inner_folds=3)  # enough: no error


def test_auroc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    for score in (rng.normal(size=200) + y, rng.integers(0, 4, 200).astype(float)):  # continuous, and heavy ties
        assert auroc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert np.isnan(auroc(np.ones(5, dtype=int), np.arange(5.0)))


def test_cv_interval_against_scipy():
    scores = np.array([0.71, 0.64, 0.69, 0.75, 0.62, 0.7, 0.66, 0.73, 0.68, 0.6])
    mean, lo, hi = cv_interval(scores, test_fraction=0.2)
    scale = np.sqrt((1 / 10 + 0.2 / 0.8) * scores.var(ddof=1))
    e_lo, e_hi = stats.t.interval(0.95, 9, loc=scores.mean(), scale=scale)
    assert (mean, lo, hi) == pytest.approx((scores.mean(), e_lo, e_hi), rel=1e-12)
    # it is wider than the naive t-interval of the fold scores, which ignores their overlap
    n_lo, _ = stats.t.interval(0.95, 9, loc=scores.mean(), scale=stats.sem(scores))
    assert lo < n_lo


@pytest.mark.slow  # the default-logger run of tests/test_sweeps.py covers it in the default suite
def test_end_to_end_tiny(tmp_path):
    data = labelled_dataset(tmp_path / "questions.jsonl", tmp_path / "scratch")
    run_dir = tmp_path / "run"
    cmd = ["experiment=probe", "model_pair=tiny", "dataset.source=local",
           f"dataset.path={data}", "dataset.answer_format=text", "dataset.name=tinytext",
           "probe.positions=[question_end,answer_mean,before_answer]", "probe.folds=3", "probe.inner_folds=2",
           "probe.repeats=1", "probe.Cs=[0.1,10]", "probe.n_jobs=1", "generation.max_new_tokens=6",
           "logger=disabled", f"hydra.run.dir={run_dir}"]
    out = launch(*cmd, env={"RLSFT_CACHE_DIR": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr[-3000:]
    saved = json.loads((run_dir / "probe.json").read_text())
    for stage in ("sft", "rl"):
        for pos in ("question_end", "answer_mean"):
            r = saved[stage][pos]
            assert r["n"] == 24 and 3 <= r["n_correct"] <= 21 and len(r["balanced_accuracy"]) == 2
            assert 0 <= r["selected_layer"] < 2 and len(r["shuffled_auroc"]) == 2
        # the random models never write \boxed{}: that position is reported as unavailable, not filled in
        assert saved[stage]["before_answer"]["skipped"] == 24 and "error" in saved[stage]["before_answer"]
    assert "warning: probe [sft/before_answer]: position unavailable: none of the 24 answers has it" in out.stderr
    for name in ("probe_layers.csv", "probe_summary.md", "probe_curves.png"):
        assert (run_dir / name).exists()


def test_shuffled_control_sits_at_chance_within_its_interval():
    """No signal anywhere (features independent of labels, 8 of 60 in the minority, as in a stage that is right
    almost always): per seed the shuffled-label control's curve wanders off 0.5 by several points, and its own
    interval (reported beside it) must hold 0.5 on at least 90% of (seed, layer) cells."""
    held, cells, means = 0, 0, []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(60, 2, 16)) * (np.exp(-np.arange(16) / 4) + 0.1)
        y = np.zeros(60, dtype=int)
        y[rng.choice(60, 8, replace=False)] = 1
        res = probe_layers(X, y, np.arange(60), folds=4, inner_folds=2, repeats=2, Cs=[1.0], seed=seed)
        rows, _, entry = report("rl", "question_end", res, 0, 0.7)
        col = {c: i for i, c in enumerate(LAYER_COLS)}
        for row in rows:
            held += row[col["shuffled_bal_acc_lo"]] <= 0.5 <= row[col["shuffled_bal_acc_hi"]]
            cells += 1
            means.append(row[col["shuffled_bal_acc"]])
        assert entry["shuffled_balanced_accuracy"][0][1] <= entry["shuffled_balanced_accuracy"][0][0]
        # one name for the shuffled-label curves in the CSV, the json and the figure's legend (issue 23)
        assert not [k for k in [*LAYER_COLS, *entry] if k.startswith("control")]
    assert held / cells >= 0.9, (held, cells)
    assert abs(np.mean(means) - 0.5) < 0.05  # no bias on average over seeds


def _scores(outer, inner_bacc):
    F = 4
    return LayerScores(np.full(F, outer), np.full(F, outer), np.full(F, inner_bacc), np.ones(F), np.full(F, inner_bacc))


def test_first_layer_reaching_reads_the_inner_folds():
    """Outer (test) folds reach 0.7 at layer 0, the validation folds only at layer 2: the threshold layer is 2."""
    layers = [_scores(0.75, 0.6), _scores(0.8, 0.65), _scores(0.72, 0.71)]
    res = ProbeResult(layers, None, None, np.zeros(4, dtype=int), layers[0], 0.5, 40, 20, 40, 0.25)
    assert first_layer_reaching(res, 0.7) == 2
    assert first_layer_reaching(res, 0.9) is None


def _records(templates=True):
    questions = ["What is 1 + 5?", "What is 2 + 2?", "What is 1 + 5?", "What is 3 - 1?"]
    return [Record(f"q{i}", q, "0", {"template": i % 2} if templates else {}) for i, q in enumerate(questions)]


def test_groups_default_to_templates_and_keep_repeated_questions_together():
    recs = _records()
    assert question_groups(recs, "auto") == {"q0": "0", "q1": "1", "q2": "0", "q3": "1"}
    by_question = question_groups(_records(templates=False), "auto")
    assert by_question["q0"] == by_question["q2"] != by_question["q1"]  # the same question asked twice: one group
    with pytest.raises(RlsftError, match="needs template ids"):
        question_groups(_records(templates=False), "template")
    np.testing.assert_array_equal(template_features(recs, ["q1", "q0", "q3"]), [[0, 1], [1, 0], [0, 1]])
    assert template_features(_records(templates=False), ["q0"]) is None


def test_template_baseline_probe():
    """Correctness set by the template alone: the template-only baseline finds it when folds mix templates, and is at
    chance when folds keep templates apart (nothing about an unseen template to learn)."""
    rng = np.random.default_rng(0)
    template = np.repeat(np.arange(10), 12)
    y = (template % 2 == 0).astype(int)
    onehot = np.eye(10)[template]
    X = rng.normal(size=(len(y), 1, 4))
    mixed = probe_layers(X, y, np.arange(len(y)), folds=3, inner_folds=2, repeats=1, Cs=[1.0],
                         shuffle_control=False, baseline=onehot)
    apart = probe_layers(X, y, template, folds=3, inner_folds=2, repeats=1, Cs=[1.0], shuffle_control=False,
                         baseline=onehot)
    assert np.mean(mixed.baseline.balanced_accuracy) > 0.95
    assert np.mean(apart.baseline.balanced_accuracy) < 0.65


def test_unavailable_position_says_so():
    from types import SimpleNamespace

    empty = Features([], np.zeros((0, 2, 4)), ["q1", "q2", "q3"])
    res, why = probe_position("sft", "before_answer", empty, {}, {}, None, SimpleNamespace())
    assert res is None and why == ("probe [sft/before_answer]: position unavailable: none of the 3 answers has it "
                                   "(no \\boxed{)")


def test_figure_draws_no_majority_rate_on_the_balanced_accuracy_axis():
    X, y, groups = _planted(n_questions=30)
    y[:60] = 1  # 60 + 15 of 90 correct: a majority rate far from 0.5
    res = probe_layers(X[:, :2], y, groups, folds=3, inner_folds=2, repeats=1, Cs=[1.0], shuffle_control=False)
    assert abs(res.majority_rate - 0.5) > 0.05
    fig = figure({("rl", "question_end"): res}, ["question_end"], ["rl"])
    for ax in fig.axes[:2]:
        flat = [line.get_ydata() for line in ax.get_lines() if len(set(np.ravel(line.get_ydata()))) == 1]
        assert all(abs(float(np.ravel(v)[0]) - res.majority_rate) > 1e-9 for v in flat)


def _rl_like(seed: int, n: int = 80, wrong_questions: int = 7):
    """Data like the RL stage's: repeated questions (1-digit arithmetic draws repeat), one greedy label per question,
    few wrong, and features that do carry the label (the real probe reads it), identical within a question."""
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 55, size=n)  # about a quarter of the draws repeat a question
    uniq = np.unique(q)
    wrong = rng.choice(uniq, size=wrong_questions, replace=False)
    y = (~np.isin(q, wrong)).astype(int)
    per_question = rng.normal(size=(uniq.max() + 1, 2, 12))
    X = per_question[q] + 1.5 * y[:, None, None] * np.array([0.0, 1.0])[None, :, None]  # layer 1 knows the label
    return X, y, q


def test_shuffled_labels_keep_class_counts_group_sizes_and_one_label_per_question():
    X, y, q = _rl_like(0)
    y_perm = shuffled_labels(y, q, np.random.default_rng(0))
    assert y_perm.sum() == y.sum() and not np.array_equal(y_perm, y)
    assert all(len(set(y_perm[q == g].tolist())) == 1 for g in np.unique(q))
    mixed = np.array([0, 1, 0, 1, 1, 1])  # a group with both labels: sample-wise shuffle, counts kept
    assert shuffled_labels(mixed, np.array([0, 0, 1, 1, 2, 2]), np.random.default_rng(1)).sum() == 4


@pytest.mark.slow
def test_control_on_rl_like_grouped_data_sits_at_chance_within_its_interval():
    """Coverage over simulated RL-like datasets (few wrong answers, question-grouped folds, signal in layer 1): the
    shuffled control's interval holds 0.5 in at least 85% of (dataset, layer) cells and its mean sits at 0.5,
    while the real probe finds layer 1."""
    held, cells, means, real = 0, 0, [], []
    for seed in range(16):
        X, y, q = _rl_like(seed)
        res = probe_layers(X, y, q, folds=4, inner_folds=2, repeats=1, Cs=[1.0], seed=seed)
        real.append(np.mean(res.layers[1].balanced_accuracy))
        for s in res.control:
            _, lo, hi = score_interval(s.balanced_accuracy, res.test_fraction)
            held += lo <= 0.5 <= hi
            cells += 1
            means.append(np.mean(s.balanced_accuracy))
    assert np.mean(real) > 0.7
    assert held / cells >= 0.85, (held, cells)
    se = np.std(means) / np.sqrt(len(means))
    assert abs(np.mean(means) - 0.5) < max(0.04, 3 * se), (np.mean(means), se)


def test_curves_figure_has_no_empty_panel_for_a_position_never_probed():
    from rlsft.experiments.probe import figure

    X, y, q = _rl_like(1, n=40, wrong_questions=6)
    res = probe_layers(X, y, q, folds=3, inner_folds=2, repeats=1, Cs=[1.0], shuffle_control=False)
    fig = figure({("rl", "question_end"): res}, ["before_answer", "question_end"], ["sft", "rl"])
    assert [ax.get_title() for ax in fig.axes[:1]] == ["question_end"] and len(fig.axes) == 2
    assert any("not probed: before_answer" in t.get_text() for t in fig.texts)
