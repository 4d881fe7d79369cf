"""Faithfulness (method.md 2.7): kept sets and their pruning against a path search written with networkx, a planted
model where three edges carry the whole loss, the summaries against hand computations, and the intervals' coverage
in a simulation that redraws the questions and re-ranks the edges (the step a fixed-ranking bootstrap misses)."""

import math

import networkx as nx
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from rlsft.eap import build_graph, edge_scores
from rlsft.eap.faithfulness import (Plan, cross_curve, faithfulness_losses, kept_at_count, kept_edges,
                                    patch_evaluator, prune_edges, share_grid, shared_prefix, split_halves)
from rlsft.eap.faithfulness_stats import curve_summaries, seed_differences, summarize
from rlsft.eap.graph import make_graph
from rlsft.eap.scores import source_outputs
from test_eap_scores import batch, fp64_exact, tiny  # noqa: F401


def edges(graph, *names):
    keep = torch.zeros_like(graph.mask)
    for name in names:
        u, v = name.split("->")
        keep[graph.sources.index(u), graph.targets.index(v)] = True
    assert (keep <= graph.mask).all()
    return keep


def on_a_path(keep, graph):
    """Independent pruning: an edge u -> v stays iff input reaches u and v reaches logits in the graph whose arcs are
    the kept edges plus each read target -> the block it feeds (a{l}.q/k/v -> a{l}, m{l} -> m{l})."""
    g = nx.DiGraph()
    g.add_nodes_from([("s", s) for s in graph.sources] + [("t", t) for t in graph.targets])
    for u, v in keep.nonzero().tolist():
        g.add_edge(("s", graph.sources[u]), ("t", graph.targets[v]))
    for t in graph.targets:
        if t != "logits":
            g.add_edge(("t", t), ("s", t.split(".")[0]))
    out = torch.zeros_like(keep)
    for u, v in keep.nonzero().tolist():
        out[u, v] = nx.has_path(g, ("s", "input"), ("s", graph.sources[u])) and \
            nx.has_path(g, ("t", graph.targets[v]), ("t", "logits"))
    return out


def test_pruning_hand_built_cases():
    graph = make_graph(2)
    prune = lambda *names: edges(graph, *names) & torch.from_numpy(  # noqa: E731
        prune_edges(edges(graph, *names).numpy(), graph))
    assert not prune("input->a0.q").any()  # a0 is reached, but nothing carries it on: dangling
    chain = ("input->a0.q", "a0->m0", "m0->a1.k", "a1->logits")
    assert torch.equal(prune(*chain), edges(graph, *chain))  # a chain to the logits is kept whole
    assert torch.equal(prune(*chain, "input->m1"), edges(graph, *chain))  # m1 writes to nothing kept: removed
    assert torch.equal(prune(*chain, "m1->logits"), edges(graph, *chain))  # m1 is never reached: removed
    assert torch.equal(prune("input->a1.q", "a1->logits"), edges(graph, "input->a1.q", "a1->logits"))  # q alone reaches
    assert not prune("a0->logits").any()  # a0 read nothing
    rng = np.random.default_rng(0)
    for attn in ("qkv", "joint"):
        g3 = make_graph(3, attn)
        for p in (0.05, 0.1, 0.2, 0.4):
            for _ in range(20):
                keep = torch.from_numpy(rng.random(tuple(g3.mask.shape)) < p) & g3.mask
                assert torch.equal(torch.from_numpy(prune_edges(keep.numpy(), g3)), on_a_path(keep, g3))
    g33 = make_graph(33)  # 67 sources and 67 read groups: the bit sets span two 64-bit words
    for p in (0.002, 0.01, 0.05):
        keep = torch.from_numpy(rng.random(tuple(g33.mask.shape)) < p) & g33.mask
        assert torch.equal(torch.from_numpy(prune_edges(keep.numpy(), g33)), on_a_path(keep, g33))


def test_kept_edges_takes_the_top_k_with_row_major_ties_then_prunes():
    graph = make_graph(2)
    flat = graph.mask.nonzero().tolist()
    tied = torch.ones(graph.mask.shape)
    keep = kept_edges(tied, graph, 5, prune=False)
    assert sorted(keep.nonzero().tolist()) == flat[:5]  # ties: first in row-major order
    ranking = torch.rand(graph.mask.shape, generator=torch.Generator().manual_seed(0))
    ranking[~graph.mask] = 10.0  # off-mask entries are never edges, however large
    for k in (1, 4, 12, graph.n_edges):
        top = sorted(np.argsort(-ranking[graph.mask].numpy(), kind="stable")[:k])
        raw = kept_edges(ranking, graph, k, prune=False)
        assert int(raw.sum()) == k and [flat.index(e) for e in sorted(raw.nonzero().tolist())] == top
        assert torch.equal(kept_edges(ranking, graph, k), on_a_path(raw, graph))
    order = np.flatnonzero(graph.mask.numpy())[np.argsort(-ranking[graph.mask].numpy(), kind="stable")]
    for count in (1, 3, 7, 15):  # the smallest top-m whose pruned size reaches the count
        keep = kept_at_count(order, graph, count)
        m = next(m for m in range(1, graph.n_edges + 1) if kept_edges(ranking, graph, m).sum() >= count)
        assert np.array_equal(keep, kept_edges(ranking, graph, m).numpy())


def test_curve_summaries_against_hand_computations():
    x = np.array([0.25, 0.5, 0.75, 1.0])
    s = curve_summaries(x, np.array([0.5, 0.9, 0.7, 1.0]))
    assert s["auc"] == pytest.approx(0.0625 + 0.175 + 0.2 + 0.2125)
    assert s["frac80"] == pytest.approx(0.25 + 0.75 * 0.25)  # 0.5 -> 0.9 between 0.25 and 0.5
    assert s["f_0.1"] == pytest.approx(0.2) and s["f_0.5"] == pytest.approx(0.9)
    s = curve_summaries(x, np.array([-3.0, 0.85, 0.2, 1.0]))  # clipped to -1; envelope, not the last crossing
    assert s["auc"] == pytest.approx(-0.125 + (-1 + 0.85) / 8 + (0.85 + 0.2) / 8 + 1.2 / 8)
    assert s["frac80"] == pytest.approx(0.25 + 0.25 * (0.8 - 0) / 0.85)
    assert math.isnan(curve_summaries(x, np.array([0.1, 0.2, 0.3, 0.7]))["frac80"])
    both = curve_summaries(x, np.array([[0.5, 0.9, 0.7, 1.0], [0.1, 0.2, 0.3, 0.7]]))
    assert both["auc"][0] == pytest.approx(0.65) and math.isnan(both["frac80"][1])


def planted(layers=5, active=2):
    """A tiny fp64 Llama (as tests' `tiny`, deeper) with every attention output and every MLP but `active` zeroed:
    only input -> logits, input -> m{active} and m{active} -> logits carry the loss, whatever the baseline."""
    config = tiny("llama").config
    config.num_hidden_layers = layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(torch.float64)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.3 * torch.randn_like(p)) if "norm" in name else p.normal_(0, 0.3)
        for i, block in enumerate(model.model.layers):
            block.self_attn.o_proj.weight.zero_()
            if i != active:
                block.mlp.down_proj.weight.zero_()
    return model.eval()


def test_planted_edges_reach_full_faithfulness_and_the_random_control_does_not():
    model = planted()
    ids, lm, am = batch(lengths=(12, 7, 10, 9, 11, 8), prompt=(5, 3, 6, 4, 5, 3))
    twin, _, _ = batch(seed=5, lengths=(12, 7, 10, 9, 11, 8), prompt=(5, 3, 6, 4, 5, 3))  # corrupted twins
    graph = build_graph(model)
    B = source_outputs(model, twin, am, graph)
    W = edge_scores(model, ids, lm, am, graph=graph, baseline="input", baseline_acts=B).numpy()
    rows, planned = [], []
    patched = patch_evaluator(model, graph, ids, lm, am, baseline_acts=B, batch_size=8, on_rows=rows.append)

    def evaluate(pairs):
        planned.append(len(pairs))
        return patched(pairs)

    E = graph.n_edges
    res = faithfulness_losses(W, graph, evaluate, [3 / E, 0.5, 1.0], n_splits=3, draws=5, tol=1.0)
    assert sum(rows) == sum(planned) and max(rows) <= 8  # progress: every patched forward, batch by batch
    assert res["sizes"][0].min() == 3 and res["sizes"][0].max() == 3  # pruning keeps all three
    f = cross_curve(res)
    none, clean = res["none"].mean(), res["clean"].mean()
    control = (none - res["control"].mean(1)) / (none - clean)
    within = (none - res["within"].mean(1)) / (none - clean)
    print("cross", f, "control", control, "within", within)
    assert f[0] >= 0.99 and within[0] >= 0.99
    assert control[0] < 0.3  # 3 random edges (pruned to a path) of 111
    assert f[-1] == pytest.approx(1.0)


def test_each_half_is_ranked_on_the_other_half_only():
    graph = make_graph(2)
    rng = np.random.default_rng(0)
    W = rng.standard_normal((6, graph.n_src, graph.n_dst)) * graph.mask.numpy()
    seen = []

    def evaluate(pairs):
        seen.extend(pairs)
        return np.array([float(k) + keep.sum() for k, keep in pairs])

    halves = split_halves(6, 2, seed=0)
    plan = Plan(W, graph, halves, evaluate, draws=2, within=False)
    plan.add([0.3])
    count = math.ceil(0.3 * graph.n_edges)
    for s, h in enumerate(halves):
        for side in (0, 1):
            order = np.flatnonzero(graph.mask.numpy())
            values = np.abs(W[h != side].mean(0))[graph.mask.numpy()]
            keep = kept_at_count(order[np.argsort(-values, kind="stable")], graph, count)
            for k in np.flatnonzero(h == side):
                assert any(j == k and np.array_equal(m, keep) for j, m in seen)
    assert len({(k, m.tobytes()) for k, m in seen}) == len(seen)  # each (sample, kept set) evaluated once


# -- coverage: an additive population where the ranking step is part of what is redrawn -----------------------------
GRAPH = make_graph(2)
MASK = GRAPH.mask.numpy()


def population(rng, E):
    """Per-edge mean effects (heavy-tailed, a few carry most of the loss) for one stage."""
    return rng.pareto(1.5, E) + 0.05


def draw(rng, mu, n, shared=None):
    """n questions: effects c_k = mu * (1 + noise), scores W_k = c_k + noise (what ranks is not exactly what acts)."""
    E = len(mu)
    base = rng.standard_normal((n, E)) if shared is None else shared
    c = mu * np.exp(0.6 * base - 0.18)
    W = np.zeros((n,) + MASK.shape)
    W[:, MASK] = c + 0.5 * mu.mean() * rng.standard_normal((n, E))
    C = np.zeros((n,) + MASK.shape)
    C[:, MASK] = c
    return W, C, 3.0 + c.sum(1)


def additive(C, none):
    def evaluate(pairs):
        return np.array([none[k] - C[k][keep].sum() for k, keep in pairs])

    return evaluate


def true_curve(rng, mu, n, shares, reps=300):
    """E over rankings learnt from n/2 questions of f_pop(pruned top set), f_pop(K) = sum_K mu / sum mu."""
    M = np.zeros(MASK.shape)
    M[MASK] = mu
    f = np.zeros(len(shares))
    for _ in range(reps):
        W, _, _ = draw(rng, mu, n // 2)
        values = np.abs(W.mean(0))[MASK]
        order = np.flatnonzero(MASK)[np.argsort(-values, kind="stable")]
        for i, q in enumerate(shares):
            f[i] += M[kept_at_count(order, GRAPH, max(1, math.ceil(q * MASK.sum() - 1e-9)))].sum() / mu.sum()
    return f / reps


@pytest.mark.slow
@pytest.mark.parametrize("n", [12])
def test_cross_fitted_intervals_cover_with_the_ranking_redrawn(n):
    """The truth is the population curve expected from a ranking learnt on n/2 questions; each simulated data set
    redraws the questions (scores and effects), ranks, prunes and cross-fits as the engine does. About 5 minutes."""
    rng = np.random.default_rng(n)
    E = int(MASK.sum())
    mu = {"sft": population(rng, E), "rl": population(rng, E)}
    shares = share_grid(20)
    truth = {s: curve_summaries(shares, true_curve(rng, mu[s], n, shares)) for s in mu}
    keys = ("auc", "frac80", "f_0.1", "f_0.2")
    names = {"auc": "faith_auc", "frac80": "frac80", "f_0.1": "f_0.1", "f_0.2": "f_0.2"}
    hits, reps = {}, 50
    for rep in range(reps):
        shared = rng.standard_normal((n, E))  # the same questions for both stages: paired
        res = {}
        for s in mu:
            W, C, none = draw(rng, mu[s], n, shared)
            res[s] = faithfulness_losses(W, GRAPH, additive(C, none), shares, n_splits=10, draws=2, seed=rep,
                                         within=False, tol=1.0)
        out = summarize(res, n_boot=400, seed=rep)
        for k in keys:
            for s in mu:
                lo, hi = out[s][f"{names[k]}_ci"]
                hits[(s, k)] = hits.get((s, k), 0) + bool(lo <= truth[s][k] <= hi)
            lo, hi = out["rl-sft"][names[k]]["ci"]
            hits[("diff", k)] = hits.get(("diff", k), 0) + bool(lo <= truth["rl"][k] - truth["sft"][k] <= hi)
    coverage = {f"{a}/{b}": v / reps for (a, b), v in hits.items()}
    print(n, coverage)
    # faith_auc of each stage and every RL - SFT difference cover (measured 0.92-0.98 at n = 12, 50 replications).
    held = {k: v for k, v in coverage.items() if k.endswith("/auc") or k.startswith("diff/")}
    assert min(held.values()) >= 0.85, coverage
    # Known shortfall (issue 19, open): one stage's frac80 and f_0.2 intervals covered 0.80-0.82 here, with or without
    # the n / (n - 1) variance correction, so the cause is a bias, not the width; README says so. Below 0.75 is a
    # new failure.
    assert min(coverage.values()) >= 0.75, coverage


def _simulated(rng, mus, n, shares, rep, shared=None):
    """faithfulness_losses of stages with per-edge means ``mus`` on n questions (the same ones when ``shared``)."""
    shared = rng.standard_normal((n, len(mus[0]))) if shared is None else shared
    out = []
    for mu in mus:
        W, C, none = draw(rng, mu, n, shared)
        out.append(faithfulness_losses(W, GRAPH, additive(C, none), shares, n_splits=10, draws=2, seed=rep,
                                       within=False, tol=1.0))
    return out


def test_one_seed_gives_the_stage_difference_interval_of_summarize():
    """seed_differences is summarize's rl - sft interval when the arm has one seed (a second implementation of the
    same question bootstrap and split variance), and every summary is the mean of the seeds' differences."""
    rng = np.random.default_rng(3)
    E, shares = int(MASK.sum()), share_grid(20)
    ref, arm, arm2 = _simulated(rng, [population(rng, E) for _ in range(3)], 12, shares, rep=0)
    one = seed_differences(ref, [arm], n_boot=300, seed=5)
    single = summarize({"sft": ref, "rl": arm}, n_boot=300, seed=5)["rl-sft"]
    for k, got in one.items():
        if math.isnan(single[k]["ci"][0]):
            assert math.isnan(got.lo)
            continue
        assert got.diff == pytest.approx(single[k]["diff"]) and got.seeds == 1 and got.se_seeds == 0
        assert [got.lo, got.hi] == pytest.approx(single[k]["ci"], rel=1e-9) and got.p == pytest.approx(single[k]["p"])
    two = seed_differences(ref, [arm, arm2], n_boot=300, seed=5)
    other = summarize({"sft": ref, "rl": arm2}, n_boot=300, seed=5)["rl-sft"]
    assert two["faith_auc"].diff == pytest.approx((single["faith_auc"]["diff"] + other["faith_auc"]["diff"]) / 2)
    assert two["faith_auc"].seeds == 2 and two["faith_auc"].se_seeds > 0


@pytest.mark.slow
def test_an_arms_interval_over_seeds_covers_with_the_seeds_and_the_ranking_redrawn():
    """method.md 8 with 2.7: an arm of 3 seeds, each seed its own population of edge effects (the arm's, perturbed
    per edge), against a reference on the same 12 questions. The truth is the arm's faith_auc expected over the seed
    population minus the reference's, each from rankings learnt on n/2 questions. The interval must cover it with the
    seeds, the questions and the rankings redrawn; the question-only interval (v_s dropped) is printed beside it.
    Measured: 0.95 (question-only 0.875) over 40 replications; 6 minutes on a loaded 2-core machine."""
    n, S, reps = 12, 3, 40
    rng = np.random.default_rng(11)
    E, shares = int(MASK.sum()), share_grid(20)
    mu_ref, mu_arm = population(rng, E), population(rng, E)
    seed_mu = lambda: mu_arm * np.exp(0.8 * rng.standard_normal(E) - 0.32)
    auc = lambda mu, r: curve_summaries(shares, true_curve(rng, mu, n, shares, reps=r))["auc"]
    truth = float(np.mean([auc(seed_mu(), 20) for _ in range(60)]) - auc(mu_ref, 300))
    hits = {"seeds and questions": 0, "questions only": 0}
    for rep in range(reps):
        ref, *arm = _simulated(rng, [mu_ref] + [seed_mu() for _ in range(S)], n, shares, rep)
        got = seed_differences(ref, arm, n_boot=300, seed=rep)["faith_auc"]
        hits["seeds and questions"] += got.lo <= truth <= got.hi
        half = 2.201 * got.se_questions  # t(11): the interval a seed-blind analysis would give
        hits["questions only"] += got.diff - half <= truth <= got.diff + half
    coverage = {k: v / reps for k, v in hits.items()}
    print("coverage", coverage, "truth", truth)
    assert coverage["seeds and questions"] >= 0.85, coverage


def test_the_control_check_names_the_shares_where_the_ranking_does_not_win():
    """The full set gives f = 1 for any ranking (curve and control meet there), so it is not a loss; any other share
    at or below the control is named."""
    from rlsft.experiments.eap_causal import shares_not_above_control

    r = {"shares": [0.01, 0.05, 0.3, 0.6, 1.0], "curve": [0.0, 0.2, 0.5, 0.9, 1.0],
         "control": [0.1, 0.0, 0.1, 0.3, 1.0]}
    assert shares_not_above_control(r) == []  # 0.01 is below 0.05: not judged
    r["curve"][2] = 0.1
    assert shares_not_above_control(r) == [0.3]


def test_the_evaluator_with_shared_prefixes_returns_the_losses_of_whole_patched_forwards():
    """`patch_evaluator(shared=)` (each sample's prefix shared with its twin runs once on a cache; batches take more
    rows) against the same pairs patched over the whole sequence; samples of different lengths and prefixes."""
    model = tiny("qwen2")  # q/k/v biases: B_u != 0 at the baseline input
    graph = build_graph(model)
    ids, lm, am = batch(lengths=(12, 7, 10), prompt=(6, 4, 7))
    twin = ids.clone()
    g = torch.Generator().manual_seed(2)
    starts = (am == 0).sum(1)
    for k, keep_first in enumerate((4, 1, 5)):  # the twin redraws every token from there
        s = int(starts[k]) + keep_first
        shift = torch.randint(1, 47, (ids.shape[1] - s,), generator=g)
        twin[k, s:] = (ids[k, s:] - 3 + shift) % 47 + 3  # a token in 3..49, never the sample's own
    B = source_outputs(model, twin, am, graph)
    shared = shared_prefix(ids, twin)
    assert shared == [int(starts[k]) + j for k, j in enumerate((4, 1, 5))]
    pairs = [(k, (graph.mask & (torch.rand(graph.mask.shape, generator=g) < q)).numpy())
             for q in (0.1, 0.5, 0.9) for k in (2, 0, 1)]
    rows = []
    cached = patch_evaluator(model, graph, ids, lm, am, B, batch_size=2, shared=shared, on_rows=rows.append)(pairs)
    whole = patch_evaluator(model, graph, ids, lm, am, B, batch_size=2)(pairs)
    np.testing.assert_allclose(cached, whole, rtol=1e-9)
    assert sum(rows) == len(pairs) and max(rows) == 3  # sample 2 (10 tokens, 5 shared): 2 x 10 // 5 rows a batch


@pytest.mark.slow
def test_the_split_seed_moves_every_summary_by_less_than_half_its_interval_on_smollm2():
    """method.md 2.7 (issue 19): the embedded SFT model's correct answers to 8 arithmetic questions, counterfactual
    twins, 10 splits at seeds 0, 1 and 2 (benchmarks/faithfulness_seeds.py, one memo of patched losses): every
    cross-fitted summary moves between seeds by less than the smallest of its intervals' half-widths."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "faithfulness_seeds.py"
    spec = importlib.util.spec_from_file_location("faithfulness_seeds", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from rlsft.models import load_model

    model, tok = load_model(bench.SMOLLM2, device="cpu", dtype="float32")
    out = bench.seed_summaries(model, tok, n=8, points=10, splits=10, draws=1, seeds=[0, 1, 2], within=False,
                               log=print)
    moved = bench.moves(out)
    print(moved)
    assert len(moved) == 7 and max(moved.values()) < 1.0, moved
