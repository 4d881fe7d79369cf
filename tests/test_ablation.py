"""Layer-wise ablation (method.md 5): each mode changes exactly its layer, hooks leave no trace, CKA and intervals
against independent computations, and an end-to-end run on the tiny pair."""

import copy
import json

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import launch
from rlsft.ablation import MODES, ablate, block_hooks, block_statistics, decoder_layers, linear_cka
from rlsft.experiments.ablation import compare, default_layers
from rlsft.generate import Sampling, generate_batch
from rlsft.models import build_tiny_model
from rlsft.stats import bootstrap_ci, wilson_ci

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    model, tok = build_tiny_model(layers=4, hidden=32, heads=4, kv_heads=2, seed=3)
    return model.double().eval(), tok


def _ids(tok):
    return torch.tensor([tok("What is 12 + 7? The answer is")["input_ids"]])


def _run(model, ids):
    """Every block's (input, output) and the logits of one forward."""
    seen = {}
    with block_hooks(model, lambda i, x, h: seen.__setitem__(i, (x.clone(), h.clone()))):
        logits = model(input_ids=ids, use_cache=False).logits
    return seen, logits


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_changes_exactly_its_layer(tiny, mode):
    model, tok = tiny
    ids, layer = _ids(tok), 2
    base, base_logits = _run(model, ids)
    st = block_statistics(model, [(ids[0].tolist(), ids.shape[1])])
    with ablate(model, layer, mode, alpha=0.3, stats=st):
        seen, logits = _run(model, ids)
    for i in range(layer):  # earlier blocks untouched
        assert torch.equal(seen[i][1], base[i][1])
    x, h = base[layer]  # the block's input is unchanged, so its own output h is what the hook replaces
    expected = {
        "zero": torch.zeros_like(h),
        "mean": torch.as_tensor(st.mean_out[layer]).to(h).expand_as(h),
        "mean_delta": x + torch.as_tensor(st.mean_delta[layer]).to(h),
        "skip": x,
        "contract": 0.7 * h + 0.3 * h.mean(-1, keepdim=True),
    }[mode]
    torch.testing.assert_close(seen[layer][0], x)
    torch.testing.assert_close(seen[layer][1], expected)
    torch.testing.assert_close(seen[layer + 1][0], expected)  # the next block reads the ablated state
    assert not torch.allclose(logits, base_logits)


def test_skip_equals_the_model_without_that_block(tiny):
    """Independent check, in a forward and in batched, left-padded generation with a KV cache."""
    model, tok = tiny
    layer = 1
    removed = copy.deepcopy(model)
    blocks = [b for i, b in enumerate(decoder_layers(removed)) if i != layer]
    for i, b in enumerate(blocks):
        b.self_attn.layer_idx = i
    removed.model.layers = torch.nn.ModuleList(blocks)
    removed.config.num_hidden_layers -= 1
    ids = _ids(tok)
    with ablate(model, layer, "skip"):
        torch.testing.assert_close(model(input_ids=ids, use_cache=False).logits,
                                   removed(input_ids=ids, use_cache=False).logits)
        prompts = [tok("What is 3 + 4?")["input_ids"], tok("Tom has 3 apples and buys 5 more.")["input_ids"]]
        ours = generate_batch(model, tok, prompts, Sampling(max_new_tokens=6))
    theirs = generate_batch(removed, tok, prompts, Sampling(max_new_tokens=6))
    assert ours == theirs


def test_hooks_are_removed_afterwards(tiny):
    model, tok = tiny
    ids = _ids(tok)
    with torch.no_grad():
        before = model(input_ids=ids, use_cache=False).logits
    for mode in ("zero", "skip", "contract"):
        with ablate(model, 0, mode):
            pass
    with pytest.raises(ValueError):
        with ablate(model, 3, "zero"):
            raise ValueError("boom")  # an error inside still removes the hook
    assert all(not b._forward_hooks for b in decoder_layers(model))
    torch.testing.assert_close(model(input_ids=ids, use_cache=False).logits, before, rtol=0, atol=0)


def test_errors(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="unknown ablation mode 'drop'"):
        with ablate(model, 0, "drop"):
            pass
    with pytest.raises(ValueError, match="layer 4 is out of range: the model has 4 blocks"):
        with ablate(model, 4, "skip"):
            pass
    with pytest.raises(ValueError, match="out of range"):
        with ablate(model, -1, "skip"):
            pass
    with pytest.raises(ValueError, match="needs the dataset means"):
        with ablate(model, 0, "mean"):
            pass


def test_block_statistics_against_hidden_states(tiny):
    """Means over prompt tokens and 1 - cos from HF's own hidden_states, with right padding in the batch."""
    model, tok = tiny
    a, b = tok("What is 12 + 7?")["input_ids"], tok("Tom has 3 apples and buys 5 more apples.")["input_ids"]
    seqs = [(a, 4), (b, 6)]
    st = block_statistics(model, seqs, batch_size=2, max_tokens=10_000)
    with torch.no_grad():
        hs = [model(input_ids=torch.tensor([s]), output_hidden_states=True).hidden_states for s, _ in seqs]
    for layer in range(3):  # hidden_states[l + 1] is block l's output (the last one has the final norm applied)
        out = torch.cat([h[layer + 1][0, :p] for h, (_, p) in zip(hs, seqs)])
        np.testing.assert_allclose(st.mean_out[layer], out.mean(0).numpy(), rtol=1e-5, atol=1e-6)
        delta = torch.cat([(h[layer + 1] - h[layer])[0, :p] for h, (_, p) in zip(hs, seqs)])
        np.testing.assert_allclose(st.mean_delta[layer], delta.mean(0).numpy(), rtol=1e-5, atol=1e-6)
        x = torch.cat([h[layer][0, 1:] for h in hs])  # the first token (attention sink) is left out
        y = torch.cat([h[layer + 1][0, 1:] for h in hs])
        cos = torch.nn.functional.cosine_similarity(x, y, dim=-1)
        assert st.one_minus_cos[layer] == pytest.approx(float((1 - cos).mean()), rel=1e-6)
        assert st.cka[layer] == pytest.approx(linear_cka(x, y), rel=1e-6)


def _cka_hsic(X, Y):
    """CKA as normalised HSIC with an explicit centring matrix (Kornblith et al. 2019, eq. 1-3)."""
    n = len(X)
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T
    hsic = lambda A, B: np.trace(A @ H @ B @ H)  # noqa: E731
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


@pytest.mark.parametrize("n, d", [(20, 50), (60, 8)])  # both the Gram and the feature-space branch
def test_linear_cka(n, d):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d))
    Y = X @ rng.normal(size=(d, d)) + 0.5 * rng.normal(size=(n, d))
    assert linear_cka(torch.tensor(X), torch.tensor(Y)) == pytest.approx(_cka_hsic(X, Y), rel=1e-9)
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    assert linear_cka(torch.tensor(X), torch.tensor(3 * X @ Q + 1)) == pytest.approx(1.0)  # invariances


def test_wilson_against_scipy():
    for k, n in [(0, 10), (3, 10), (10, 10), (47, 120)]:
        ci = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert wilson_ci(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_bootstrap_against_scipy():
    x = np.random.default_rng(1).normal(0.2, 1.0, 400)
    ours = bootstrap_ci(x, n_boot=4000, seed=0)
    ref = stats.bootstrap((x,), np.mean, n_resamples=4000, method="percentile", random_state=0).confidence_interval
    assert ours == pytest.approx((ref.low, ref.high), abs=0.02)
    assert ours[0] < x.mean() < ours[1]


def test_default_layers():
    assert default_layers(30, 1) == list(range(30))
    assert default_layers(30, 2) == [*range(0, 30, 2), 29]
    assert default_layers(28, 3) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]
    assert default_layers(2, 2) == [0, 1]


def test_compare_drop_and_flips():
    base = [{"id": f"q{i}", "correct": c} for i, c in enumerate([1, 1, 1, 1, 0, 0])]
    abl = [{"id": f"q{i}", "correct": c, "finish_reason": "eos"} for i, c in enumerate([1, 0, 0, 1, 1, 0])][::-1]
    m = compare(base, abl, n_boot=500, seed=0)
    assert m["base_acc"] == pytest.approx(4 / 6) and m["ablated_acc"] == pytest.approx(3 / 6)
    assert m["drop"] == pytest.approx(1 / 6)
    assert (m["flips"], m["base_correct"], m["flip_rate"]) == (2, 4, 0.5)
    assert m["flip_ci95"] == pytest.approx(list(wilson_ci(2, 4)))
    assert m["drop_ci95"][0] <= m["drop"] <= m["drop_ci95"][1]


@pytest.mark.slow  # a whole tiny run in a subprocess: outside the default suite's 6 minutes, run by CI with -m slow
def test_end_to_end_tiny(tmp_path):
    env = {"RLSFT_CACHE_DIR": str(tmp_path / "cache")}
    run_dir = tmp_path / "run"
    args = ["experiment=ablation", "model_pair=tiny", "dataset.n=4", "ablation.control.n=3",
            "generation.max_new_tokens=6", "ablation.modes=[skip,mean]", "logger=disabled"]
    out = launch(*args, f"hydra.run.dir={run_dir}", env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    saved = json.loads((run_dir / "ablation.json").read_text())
    for stage in ("sft", "rl"):
        for mode in ("skip", "mean"):
            for ds, n in (("arithmetic", 4), ("factual", 3)):
                layers = saved[stage]["modes"][mode][ds]["layers"]
                assert [m["layer"] for m in layers] == [0, 1] and all(m["n"] == n for m in layers)
        assert len(saved[stage]["representation"]["factual"]["cka"]) == 2
    assert (run_dir / "ablation_layers.png").exists()
    # every ablated generation is cached: 2 stages x 2 datasets x (1 baseline + 2 modes x 2 layers)
    assert len(list((tmp_path / "cache" / "generations").iterdir())) == 2 * 2 * 5
    bad = launch(*args, "ablation.layers=[5]", f"hydra.run.dir={tmp_path / 'bad'}", env=env)
    assert bad.returncode == 2 and "ablation.layers [5] out of range" in bad.stderr
