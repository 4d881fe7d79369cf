"""patched_losses against independent computations written here with plain forward hooks on tiny fp64 decoders
(Llama, Mistral, Qwen2; GQA): the model's own loss, one or two removed edges, every edge into logits removed."""

import math

import pytest
import torch

from rlsft.eap import build_graph
from rlsft.eap.patching import patched_losses
from rlsft.eap.faithfulness import shared_prefix
from rlsft.eap.scores import mean_source_outputs, source_outputs as score_source_outputs
from test_eap_scores import batch, fp64_exact, perturbed_losses, ref_losses, source_outputs, tiny  # noqa: F401


def close(a, b, rtol=1e-6):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    assert (a - b).abs().max() <= rtol * b.abs().max(), f"{a} vs {b}"


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "olmo2", "gemma3_text", "phi3"])
def test_keep_all_is_the_model_and_one_removed_edge_is_that_target_perturbed(arch):
    model = tiny(arch)
    ids, lm, am = batch()
    graph = build_graph(model)
    with torch.no_grad():
        clean = ref_losses(model, ids, lm, am)
    close(patched_losses(model, ids, lm, am), clean)
    close(patched_losses(model, ids, lm, am, keep=graph.mask.clone(), baseline="mean",
                         baseline_acts=torch.randn(graph.n_src, 32, dtype=torch.float64)), clean)
    outs = source_outputs(model, ids, am)  # clean outputs: a source before v is not changed by patching v
    real = am[:, :, None].double()
    for u, v in [(0, 0), (1, 4), (2, 5), (2, 6), (3, 7), (0, 8), (4, 8)]:  # input->a0.q, a0->a1.q, ..., a1->m1
        assert graph.mask[u, v]
        keep = graph.mask.clone()
        keep[u, v] = False
        expected = perturbed_losses(model, ids, lm, am, graph.targets[v], -outs[u] * real)
        close(patched_losses(model, ids, lm, am, keep=keep), expected)
        assert (expected - clean).abs().max() > 1e-4  # the edge matters, so the check is not vacuous


def test_removed_edges_use_the_patched_forwards_own_outputs():
    """input -> a0.q and a0 -> logits removed: logits must lose a0's output *as changed by* the first removal."""
    model = tiny("llama")
    ids, lm, am = batch()
    graph = build_graph(model)
    keep = graph.mask.clone()
    keep[0, graph.targets.index("a0.q")] = False
    keep[1, graph.targets.index("logits")] = False
    blk = model.model.layers[0]
    emb, resid, a0 = {}, {}, {}
    real = am[:, :, None].double()
    hooks = [
        model.model.embed_tokens.register_forward_hook(lambda m, a, o: emb.update(x=o)),
        blk.input_layernorm.register_forward_pre_hook(lambda m, a: resid.update(x=a[0])),
        blk.self_attn.q_proj.register_forward_pre_hook(
            lambda m, a: (blk.input_layernorm(resid["x"] - emb["x"] * real),)),
        blk.self_attn.o_proj.register_forward_hook(lambda m, a, o: a0.update(x=o)),
        model.model.norm.register_forward_pre_hook(lambda m, a: (a[0] - a0["x"] * real,)),
    ]
    try:
        with torch.no_grad():
            expected = ref_losses(model, ids, lm, am)
    finally:
        for h in hooks:
            h.remove()
    close(patched_losses(model, ids, lm, am, keep=keep), expected)


@pytest.mark.parametrize("arch", ["llama", "olmo2", "phi3"])
def test_sum_over_kept_sources_equals_the_sum_over_removed_ones(arch, monkeypatch):
    """Each target subtracts its removed sources directly or as (all sources before it) - (kept ones), whichever
    reads fewer buffers; forcing the direct sum everywhere must give the same losses for sparse, half and dense
    kept sets (catches a running total that is off by a source, or kept rows taken from the wrong column)."""
    import rlsft.eap.patching as patching

    model = tiny(arch)
    ids, lm, am = batch()
    graph = build_graph(model)
    rng = torch.Generator().manual_seed(0)
    keeps = [graph.mask & (torch.rand(graph.mask.shape, generator=rng) < q) for q in (0.05, 0.5, 0.95)]
    acts = torch.randn(graph.n_src, 32, dtype=torch.float64, generator=rng)
    fast = [patched_losses(model, ids, lm, am, keep=k, baseline="mean", baseline_acts=acts) for k in keeps]

    class Direct(patching.Patcher):
        def __init__(self, *args):
            super().__init__(*args)
            used.update(how for how, _, _ in self.plan.values())
            for col, (_, k, _) in self.plan.items():
                removed = ~keep_now[:k, col] & graph.mask[:k, col]
                self.plan[col] = ("removed", k, removed.nonzero()[:, 0])

    used = set()
    monkeypatch.setattr(patching, "Patcher", Direct)
    for keep, expected in zip(keeps, fast):
        keep_now = keep
        close(patched_losses(model, ids, lm, am, keep=keep, baseline="mean", baseline_acts=acts), expected, 1e-10)
        assert (expected - patched_losses(model, ids, lm, am)).abs().max() > 1e-4  # the removed edges matter
    assert used == {"removed", "all_but_kept"}  # both ways were in use before forcing


def test_removing_every_edge_into_logits_leaves_a_zero_final_residual():
    model = tiny("qwen2")
    ids, lm, am = batch()
    graph = build_graph(model)
    keep = graph.mask.clone()
    keep[:, -1] = False
    h = model.model.norm.register_forward_pre_hook(lambda m, a: (torch.zeros_like(a[0]),))
    try:
        with torch.no_grad():
            expected = ref_losses(model, ids, lm, am)
    finally:
        h.remove()
    close(patched_losses(model, ids, lm, am, keep=keep), expected)
    uniform = torch.full((2,), math.log(50), dtype=torch.float64)
    close(expected, uniform, rtol=1e-9)  # a zero residual gives zero logits: the uniform distribution


def test_mean_baseline_is_the_mean_over_real_positions_and_replaces_the_source():
    model = tiny("mistral")
    ids, lm, am = batch(lengths=(12, 7, 10), prompt=(5, 3, 6))
    graph = build_graph(model)
    B = mean_source_outputs(model, [(ids[:2], am[:2]), (ids[2:], am[2:])], graph)
    outs = source_outputs(model, ids, am)
    real = am.bool()
    expected = torch.stack([o[real].mean(0) for o in outs])
    close(B, expected, rtol=1e-6)
    u, v = 2, graph.targets.index("logits")
    keep = graph.mask.clone()
    keep[u, v] = False
    delta = -(outs[u] - B[u].double()) * am[:, :, None].double()
    close(patched_losses(model, ids, lm, am, keep=keep, baseline="mean", baseline_acts=B),
          perturbed_losses(model, ids, lm, am, "logits", delta))


@pytest.mark.parametrize("pad", ["left", "right"])
def test_padding_and_batch_composition_do_not_change_a_samples_loss(pad):
    model = tiny("llama")
    ids, lm, am = batch(lengths=(12, 7, 10), prompt=(5, 3, 6), pad=pad)
    graph = build_graph(model)
    keep = graph.mask & (torch.rand(graph.mask.shape, generator=torch.Generator().manual_seed(0)) < 0.5)
    B = torch.randn(graph.n_src, 32, dtype=torch.float64)
    L = patched_losses(model, ids, lm, am, keep=keep, baseline="mean", baseline_acts=B)
    for b in range(len(ids)):
        r = am[b].bool()
        close(L[b], patched_losses(model, ids[b : b + 1, r], lm[b : b + 1, r], keep=keep, baseline="mean",
                                   baseline_acts=B)[0])
    close(L[[2, 0]], patched_losses(model, ids[[2, 0]], lm[[2, 0]], am[[2, 0]], keep=keep, baseline="mean",
                                    baseline_acts=B))


def test_bad_input_is_one_clear_error():
    model = tiny("llama")
    ids, lm, am = batch()
    graph = build_graph(model)
    with pytest.raises(ValueError, match=r"keep must be a bool \[5, 9\]"):
        patched_losses(model, ids, lm, am, keep=torch.ones(5, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="off the graph's mask, e.g. a0 -> a0.q"):
        patched_losses(model, ids, lm, am, keep=torch.ones_like(graph.mask))
    with pytest.raises(ValueError, match="baseline must be one of"):
        patched_losses(model, ids, lm, am, baseline="random")
    with pytest.raises(ValueError, match=r"baseline 'mean' needs baseline_acts of shape \(5, 32\)"):
        patched_losses(model, ids, lm, am, baseline="mean")


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_one_kept_set_per_row_equals_each_row_patched_on_its_own(arch):
    """keep [batch, n_src, n_dst] (the faithfulness batches) against one call per row with its [n_src, n_dst] set,
    which takes the removed / running-sum path; a fused qkv (phi3) and a shared padded batch."""
    model = tiny(arch)
    ids, lm, am = batch()
    graph = build_graph(model)
    g = torch.Generator().manual_seed(3)
    keeps = torch.stack([graph.mask & (torch.rand(graph.mask.shape, generator=g) < p) for p in (0.2, 0.7)])
    B = torch.randn(2, graph.n_src, ids.shape[1], 32, generator=g, dtype=torch.float64)
    together = patched_losses(model, ids, lm, am, graph=graph, keep=keeps, baseline="input", baseline_acts=B)
    for b in range(2):
        alone = patched_losses(model, ids[b : b + 1], lm[b : b + 1], am[b : b + 1], graph=graph, keep=keeps[b],
                               baseline="input", baseline_acts=B[b : b + 1])
        close(together[b], alone[0])
    assert (together - patched_losses(model, ids, lm, am, graph=graph)).abs().min() > 1e-4  # the patch mattered


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "olmo2", "gemma3_text", "phi3"])
def test_a_shared_prefix_run_once_from_its_cache_equals_the_whole_patched_forward(arch):
    """prefix=p (positions before the first token where the baseline input differs run once, unpatched, on a
    key/value cache) against the whole sequence patched; rows of one left-padded sample, one kept set per row."""
    model = tiny(arch)
    graph = build_graph(model)
    g = torch.Generator().manual_seed(4)
    T, pad, p = 14, 2, 7  # 2 padding columns, then 5 shared real tokens, then the twin differs
    sample = torch.randint(3, 50, (T - pad,), generator=g)
    twin = sample.clone()
    twin[p - pad :] = torch.randint(3, 50, (T - p,), generator=g)
    ids, base_ids = (torch.cat([torch.zeros(pad, dtype=torch.long), s]).expand(4, -1) for s in (sample, twin))
    am = (torch.arange(T) >= pad).long().expand(4, -1)
    lm = (torch.arange(T) >= 10).expand(4, -1)
    B = score_source_outputs(model, base_ids, am, graph)
    keeps = torch.stack([graph.mask & (torch.rand(graph.mask.shape, generator=g) < q) for q in (0.0, 0.2, 0.6, 0.9)])
    whole = patched_losses(model, ids, lm, am, graph=graph, keep=keeps, baseline="input", baseline_acts=B)
    cached = patched_losses(model, ids, lm, am, graph=graph, keep=keeps, baseline="input", baseline_acts=B, prefix=p)
    close(cached, whole, rtol=1e-9)
    assert (whole - patched_losses(model, ids, lm, am, graph=graph)).abs().min() > 1e-4  # the patches mattered
    assert shared_prefix(ids, base_ids) == [p] * 4


def test_a_shared_prefix_is_refused_where_it_cannot_hold():
    model = tiny("llama")
    graph = build_graph(model)
    ids, lm, am = batch()
    B = torch.zeros(2, graph.n_src, ids.shape[1], 32, dtype=torch.float64)
    with pytest.raises(ValueError, match="a shared prefix needs a baseline input"):
        patched_losses(model, ids, lm, am, graph=graph, prefix=3)
    with pytest.raises(ValueError, match="needs every row to hold the same tokens"):
        patched_losses(model, ids, lm, am, graph=graph, baseline="input", baseline_acts=B, prefix=3)
    same = ids[:1].expand(2, -1)
    with pytest.raises(ValueError, match="a scored token lies within the cached prefix"):
        patched_losses(model, same, lm[:1].expand(2, -1), am[:1].expand(2, -1), graph=graph, baseline="input",
                       baseline_acts=B, prefix=8)
