"""edge_scores against central finite differences on tiny random decoders, edge by edge.

The reference perturbs target v's input only: a pre-hook on q_proj (k_proj, v_proj) replaces its input by
input_layernorm(resid + s*eps*O_u); for m{l} the input of post_attention_layernorm, for logits the input of the final
norm, for joint a{l} the input of input_layernorm. O_u comes from a clean run; the loss from the model's own logits.
"""

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from transformers.models.llama import modeling_llama
from transformers.models.llama.modeling_llama import repeat_kv
from transformers.models.mistral import modeling_mistral
from transformers.models.qwen2 import modeling_qwen2

from rlsft.eap import build_graph, edge_scores, estimate_memory, make_graph
from rlsft.eap.scores import EdgeRecorder

ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}


def _norm_forward(self, x):
    """RMSNorm as in HF but in fp64 when the input is fp64 (HF computes it in fp32, which limits the tests)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    h = x.to(dtype)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
    return self.weight * h.to(x.dtype)


def _eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """HF's eager attention with the softmax in fp64 for an fp64 model (HF's is fp32)."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = torch.softmax(weights, -1, dtype=torch.promote_types(query.dtype, torch.float32)).to(query.dtype)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


@pytest.fixture(autouse=True)
def fp64_exact(monkeypatch):
    """Make an fp64 model compute in fp64 throughout, so finite differences can be checked tightly."""
    for module in (modeling_llama, modeling_mistral, modeling_qwen2):
        monkeypatch.setattr(module, "eager_attention_forward", _eager_attention)
    for cls in (modeling_llama.LlamaRMSNorm, modeling_mistral.MistralRMSNorm, modeling_qwen2.Qwen2RMSNorm):
        monkeypatch.setattr(cls, "forward", _norm_forward)


def tiny(arch="llama", dtype=torch.float64, seed=0):
    """2 layers, hidden 32, 4 heads, 2 kv heads (GQA), vocab 50; weights large enough that the model is not linear."""
    config_cls, model_cls = ARCHS[arch]
    config = config_cls(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(config).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))  # non-unit norm weights, so a wrong norm VJP shows
            else:
                p.normal_(0, 0.3)
    return model.eval()


def batch(seed=1, lengths=(12, 9), prompt=(5, 4), pad="left"):
    """Two samples of different length, padded; loss_mask on each answer (the tokens after the prompt)."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    am = torch.zeros(len(lengths), T, dtype=torch.long)
    lm = torch.zeros(len(lengths), T, dtype=torch.bool)
    for b, (n, p) in enumerate(zip(lengths, prompt)):
        s = slice(T - n, T) if pad == "left" else slice(0, n)
        ids[b, s] = torch.randint(1, 50, (n,), generator=g)
        am[b, s] = 1
        lm[b, s] = torch.arange(n) >= p
    return ids, lm, am


def ref_losses(model, ids, lm, am):
    """Per-sample mean NLL of the scored tokens, from the full model output (independent of rlsft)."""
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=am, position_ids=pos).logits[:, :-1].double()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
    m = lm[:, 1:].double()
    return -(logp * m).sum(1) / m.sum(1)


def source_outputs(model, ids, am):
    """Clean-run outputs of every source, in graph order."""
    layers = model.model.layers
    mods = [model.model.embed_tokens] + [m for blk in layers for m in (blk.self_attn.o_proj, blk.mlp)]
    outs, handles = [], []
    for m in mods:
        handles.append(m.register_forward_hook(lambda mod, a, o: outs.append(o.detach())))
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=am, position_ids=pos)
    for h in handles:
        h.remove()
    return outs


def perturbed_losses(model, ids, lm, am, target, delta):
    """Losses with `delta` added to the residual as read by `target` only."""
    blk = lambda l: model.model.layers[int(l)]  # noqa: E731
    handles = []
    if target == "logits":
        handles.append(model.model.norm.register_forward_pre_hook(lambda m, a: (a[0] + delta,)))
    elif target.startswith("m"):
        norm = blk(target[1:]).post_attention_layernorm
        handles.append(norm.register_forward_pre_hook(lambda m, a: (a[0] + delta,)))
    elif "." not in target:  # joint a{l}: the attention block's whole input, not the residual skip
        norm = blk(target[1:]).input_layernorm
        handles.append(norm.register_forward_pre_hook(lambda m, a: (a[0] + delta,)))
    else:
        layer, proj = target[1:].split(".")
        b = blk(layer)
        resid = {}
        handles.append(b.input_layernorm.register_forward_pre_hook(lambda m, a: resid.update(x=a[0])))
        proj_mod = getattr(b.self_attn, f"{proj}_proj")
        handles.append(proj_mod.register_forward_pre_hook(lambda m, a: (b.input_layernorm(resid["x"] + delta),)))
    try:
        with torch.no_grad():
            return ref_losses(model, ids, lm, am)
    finally:
        for h in handles:
            h.remove()


def finite_difference_scores(model, ids, lm, am, graph, positions="all", eps=1e-5):
    weight = (am.bool() if positions == "all" else lm & am.bool()).double()[:, :, None]
    outs = source_outputs(model, ids, am)
    W = torch.zeros(len(ids), graph.n_src, graph.n_dst, dtype=torch.float64)
    for u, v in graph.mask.nonzero().tolist():
        O = outs[u] * weight
        minus = perturbed_losses(model, ids, lm, am, graph.targets[v], -eps * O)
        plus = perturbed_losses(model, ids, lm, am, graph.targets[v], eps * O)
        W[:, u, v] = (minus - plus) / (2 * eps)
    return W


def assert_close(a, b, rtol=1e-5):
    a, b = a.double(), b.double()
    scale = b.abs().max()
    assert (a - b).abs().max() <= rtol * scale, f"max err {(a - b).abs().max():.3e} vs scale {scale:.3e}"


@pytest.mark.parametrize("positions", ["all", "answer"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_matches_finite_differences_on_every_edge(arch, positions):
    model = tiny(arch)
    ids, lm, am = batch()
    graph = build_graph(model)
    W = edge_scores(model, ids, lm, am, positions=positions)
    assert W.dtype == torch.float32 and W.shape == (2, graph.n_src, graph.n_dst)
    W_fd = finite_difference_scores(model, ids, lm, am, graph, positions)
    assert_close(W, W_fd)
    assert (W[:, ~graph.mask] == 0).all()
    assert (W[:, graph.mask] != 0).float().mean() > 0.9  # the check is not vacuous


def test_joint_matches_finite_differences_and_sum_of_qkv():
    model = tiny("qwen2")
    ids, lm, am = batch()
    joint = build_graph(model, attn_inputs="joint")
    Wj = edge_scores(model, ids, lm, am, graph=joint)
    assert_close(Wj, finite_difference_scores(model, ids, lm, am, joint))
    W = edge_scores(model, ids, lm, am)
    qkv = build_graph(model)
    for v, name in enumerate(joint.targets):
        parts = [f"{name}.q", f"{name}.k", f"{name}.v"] if name[0] == "a" else [name]
        cols = [qkv.targets.index(n) for n in parts]
        assert_close(Wj[:, :, v], W[:, :, cols].sum(-1), rtol=1e-6)


@pytest.mark.parametrize("pad", ["left", "right"])
def test_batched_with_padding_equals_one_sample_at_a_time(pad):
    model = tiny("llama")
    ids, lm, am = batch(lengths=(12, 7, 10), prompt=(5, 3, 6), pad=pad)
    W = edge_scores(model, ids, lm, am)
    for b in range(len(ids)):
        keep = am[b].bool()
        Wb = edge_scores(model, ids[b : b + 1, keep], lm[b : b + 1, keep])
        assert_close(W[b : b + 1], Wb, rtol=1e-6)


def test_returned_losses_are_the_models_own_mean_nll_and_scores_unchanged():
    model = tiny("qwen2")
    ids, lm, am = batch(lengths=(12, 7, 10), prompt=(5, 3, 6), pad="left")
    W, losses = edge_scores(model, ids, lm, am, return_losses=True)
    with torch.no_grad():
        expected = ref_losses(model, ids, lm, am)
    assert losses.dtype == torch.float32 and losses.shape == (3,)
    assert_close(losses, expected, rtol=1e-6)
    assert torch.equal(W, edge_scores(model, ids, lm, am))


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated")
@pytest.mark.parametrize("attn_inputs", ["qkv", "joint"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_scores(reentrant, attn_inputs):
    model = tiny("mistral")
    ids, lm, am = batch()
    graph = build_graph(model, attn_inputs)
    W = edge_scores(model, ids, lm, am, graph=graph)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    calls = []
    # a pre-hook: non-reentrant recomputation stops early, inside the MLP, once it has every saved tensor
    h = model.model.layers[0].mlp.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        Wc = edge_scores(model, ids, lm, am, graph=graph)
    finally:
        h.remove()
    assert len(calls) == 2, "the checkpointed block was not recomputed, so checkpointing was not exercised"
    assert_close(Wc, W, rtol=1e-9)
    assert not model.training


def test_bf16_model_scores_in_fp32_and_chunking_does_not_matter():
    model = tiny("llama", dtype=torch.float32)
    ids, lm, am = batch()
    W32 = edge_scores(model, ids, lm, am)
    model = model.to(torch.bfloat16)
    W16 = edge_scores(model, ids, lm, am)
    assert W16.dtype == torch.float32
    graph = build_graph(model)
    a, b = W16[:, graph.mask], W32[:, graph.mask]
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.95
    # one source per matmul (chunk_bytes=1) gives the same scores as the default chunking
    rec = EdgeRecorder(model, graph, am, chunk_bytes=1)
    with rec.attach(model), torch.enable_grad():
        pos = (am.cumsum(-1) - 1).clamp(min=0)
        for p in model.parameters():
            p.requires_grad_(False)
        emb = model.model.embed_tokens(ids).requires_grad_(True)
        logits = model(inputs_embeds=emb, attention_mask=am, position_ids=pos).logits[:, :-1].float()
        nll = -torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
        m = lm[:, 1:].float()
        ((nll * m).sum(1) / m.sum(1)).sum().backward()
    assert torch.allclose(rec.result(), W16, rtol=1e-4, atol=1e-6 * W16.abs().max())


def test_hooks_leave_logits_bit_identical():
    model = tiny("llama", dtype=torch.float32)
    ids, lm, am = batch()
    before = model(input_ids=ids, attention_mask=am).logits
    rec = EdgeRecorder(model, build_graph(model), am)
    with rec.attach(model):
        during = model(input_ids=ids, attention_mask=am).logits
    after = model(input_ids=ids, attention_mask=am).logits
    assert torch.equal(before, during) and torch.equal(before, after)


def all_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_hooks_removed_and_state_restored_after_exception():
    model = tiny("llama")
    model.train()
    ids, lm, am = batch()
    flags = [p.requires_grad for p in model.parameters()]
    n_hooks = all_hooks(model)

    def boom(*args):
        raise RuntimeError("boom")

    h = model.model.layers[1].mlp.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        edge_scores(model, ids, lm, am)
    h.remove()
    assert all_hooks(model) == n_hooks
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    edge_scores(model, ids, lm, am)  # and it still works
    assert all_hooks(model) == n_hooks and all(m.training for m in model.modules())


def test_unsupported_architecture_is_refused():
    config = GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    model = GPT2LMHeadModel(config)
    ids, lm, am = batch()
    with pytest.raises(ValueError, match="edge_scores supports llama, mistral, qwen2; got gpt2"):
        edge_scores(model, ids, lm, am)


def test_input_validation():
    model = tiny("llama")
    ids, lm, am = batch()
    with pytest.raises(ValueError, match="positions"):
        edge_scores(model, ids, lm, am, positions="prompt")
    bad = lm.clone()
    bad[:, 0] = True
    am1 = torch.ones_like(am)
    with pytest.raises(ValueError, match="first token"):
        edge_scores(model, ids, bad, am1)
    none = lm.clone()
    none[1] = False
    with pytest.raises(ValueError, match="samples \\[1\\]"):
        edge_scores(model, ids, none, am)
    with pytest.raises(ValueError, match="layers"):
        edge_scores(model, ids, lm, am, graph=make_graph(3))


def test_estimate_memory_grows_with_length():
    config = tiny("qwen2").config
    small, large = (estimate_memory(config, n, 1, torch.bfloat16) for n in (128, 1024))
    assert 0 < small < large
