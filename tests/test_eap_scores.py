"""edge_scores against central finite differences on tiny random decoders of every registered family, edge by edge.

The reference perturbs target v's input only, written here from each family's block layout (FAMILIES, independent of
rlsft's registry): for q (k, v) the projection's input becomes attn_norm(resid + s*eps*O_u) (resid + s*eps*O_u
where q/k/v read the raw residual; only q's slice of a fused qkv_proj), for m{l} the MLP path's input, for logits the
final norm's input, for joint a{l} the attention path's input. O_u comes from a clean run (the test checks that the
sources it reads sum to the residual stream); the loss from the model's own logits.
"""

import importlib
from contextlib import contextmanager

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from rlsft.architectures import ARCHITECTURES
from rlsft.eap import build_graph, edge_scores, estimate_memory, make_graph
from rlsft.eap.scores import EdgeRecorder, mean_source_outputs, sample_losses
from rlsft.eap.scores import source_outputs as source_outputs_engine
from rlsft.errors import RlsftError

# How each family's block reads and writes the residual stream. attn_norm: the norm between the residual and q, k, v
# (None: they read the residual itself); attn_in: what reads the residual on the attention path; writes: the modules
# whose outputs are added to the residual; mlp_in: what reads the residual on the MLP path; fused: one qkv_proj.
PRE = dict(attn_norm="input_layernorm", attn_in="input_layernorm", writes=("self_attn.o_proj", "mlp"),
           mlp_in="post_attention_layernorm", fused=False)
POST = dict(attn_norm=None, attn_in="self_attn", writes=("post_attention_layernorm", "post_feedforward_layernorm"),
            mlp_in="mlp", fused=False)
SANDWICH = dict(PRE, writes=("post_attention_layernorm", "post_feedforward_layernorm"),
                mlp_in="pre_feedforward_layernorm")
SLIDING = ["sliding_attention", "full_attention"]
# Per family: its layout and the options switched on in its own config class (tied embeddings as the family ships them).
FAMILIES = {
    "llama": (PRE, {}),
    "mistral": (PRE, dict(sliding_window=4)),
    "qwen2": (PRE, {}),
    "qwen3": (PRE, dict(use_sliding_window=True, sliding_window=4, max_window_layers=1, tie_word_embeddings=True)),
    "qwen3_moe": (PRE, dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, norm_topk_prob=True)),
    "olmo2": (POST, {}),
    "olmo3": (POST, dict(sliding_window=4, layer_types=SLIDING)),
    "gemma3_text": (SANDWICH, dict(sliding_window=4, layer_types=SLIDING, final_logit_softcapping=2.0,
                                   query_pre_attn_scalar=8, tie_word_embeddings=True)),
    "phi3": (dict(PRE, fused=True), dict(sliding_window=4)),
}
MODELING = [importlib.import_module(f"transformers.models.{m}.modeling_{m}")
            for m in ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "olmo2", "olmo3", "gemma3", "phi3")]


def _norm_forward(self, x):
    """RMSNorm as in HF (Gemma's with 1 + w) but in fp64 when the input is fp64 (HF computes it in fp32)."""
    h = x.to(torch.promote_types(x.dtype, torch.float32))
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + getattr(self, "variance_epsilon", getattr(self, "eps", 0)))
    w = 1 + self.weight if type(self).__name__.startswith("Gemma") else self.weight
    return (w * h).to(x.dtype)


def _eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, **kwargs):
    """HF's eager attention with the softmax in fp64 for an fp64 model (HF's is fp32)."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    weights = torch.matmul(query, key.transpose(2, 3)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    if softcap is not None:
        weights = softcap * torch.tanh(weights / softcap)
    if attention_mask is not None:
        weights = weights + attention_mask[:, :, :, : key.shape[-2]]
    weights = torch.softmax(weights, -1, dtype=torch.promote_types(query.dtype, torch.float32)).to(query.dtype)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _router_forward(self, hidden_states):
    """Qwen3-MoE's top-k router with its softmax in fp64 for an fp64 model (HF's is fp32)."""
    logits = torch.nn.functional.linear(hidden_states.reshape(-1, self.hidden_dim), self.weight)
    probs = torch.softmax(logits, -1, dtype=torch.promote_types(logits.dtype, torch.float32))
    top, index = torch.topk(probs, self.top_k, dim=-1)
    if self.norm_topk_prob:
        top = top / top.sum(-1, keepdim=True)
    return logits, top.to(logits.dtype), index


@pytest.fixture(autouse=True)
def fp64_exact(monkeypatch):
    """Make an fp64 model compute in fp64 throughout, so finite differences can be checked tightly."""
    for module in MODELING:
        monkeypatch.setattr(module, "eager_attention_forward", _eager_attention)
        for name, obj in vars(module).items():
            if name.endswith("RMSNorm") and isinstance(obj, type):
                monkeypatch.setattr(obj, "forward", _norm_forward)
    monkeypatch.setattr(MODELING[4].Qwen3MoeTopKRouter, "forward", _router_forward)


def test_every_registered_family_has_a_reference_layout():
    assert set(FAMILIES) == set(ARCHITECTURES)


def tiny(arch="llama", dtype=torch.float64, seed=0):
    """2 layers, hidden 32, 4 heads, 2 kv heads (GQA), vocab 50; weights large enough that the model is not linear."""
    options = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8, max_position_embeddings=64, tie_word_embeddings=False,
                   pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = AutoConfig.for_model(arch, **{**options, **FAMILIES[arch][1]})
    config._attn_implementation = "eager"
    config._experts_implementation = "eager"  # the grouped-mm kernel has no fp64
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(dtype)
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


def ref_losses(model, ids, lm, am, target="nll", tau=1.0):
    """Per-sample mean loss of the scored tokens, from the full model output (independent of rlsft).

    nll: -log softmax(z / tau)[y]; margin: -(z[y] - log sum_{j != y} exp z[j]) / tau, the sum over j written out.
    """
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    z = model(input_ids=ids, attention_mask=am, position_ids=pos).logits[:, :-1].double() / tau
    own = z.gather(-1, ids[:, 1:, None])[..., 0]
    if target == "nll":
        loss = -torch.log_softmax(z, -1).gather(-1, ids[:, 1:, None])[..., 0]
    else:
        others = torch.ones_like(z).scatter(-1, ids[:, 1:, None], 0.0)
        loss = -(own - torch.log((z.exp() * others).sum(-1)))
    m = lm[:, 1:].double()
    return (loss * m).sum(1) / m.sum(1)


def pre_hook(module, fn):
    """Pass a module's first input (positional or hidden_states=) through fn."""

    def hook(mod, args, kwargs):
        if args:
            return (fn(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

    return module.register_forward_pre_hook(hook, with_kwargs=True)


def source_outputs(model, ids, am, with_residual=False):
    """Clean-run outputs of every source, in graph order (and the residual stream the final norm reads)."""
    layout = FAMILIES[model.config.model_type][0]
    mods = [model.model.embed_tokens] + [blk.get_submodule(w) for blk in model.model.layers for w in layout["writes"]]
    outs, handles, resid = [], [], {}
    for m in mods:
        handles.append(m.register_forward_hook(lambda mod, a, o: outs.append(o.detach())))
    handles.append(pre_hook(model.model.norm, lambda x: resid.setdefault("x", x)))
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=am, position_ids=pos)
    for h in handles:
        h.remove()
    return (outs, resid["x"]) if with_residual else outs


def perturbed_losses(model, ids, lm, am, node, delta, **loss):
    """Losses with `delta` added to the residual as read by `node` only."""
    layout = FAMILIES[model.config.model_type][0]
    add = lambda x: x + delta  # noqa: E731
    if node == "logits":
        handles = [pre_hook(model.model.norm, add)]
    elif node.startswith("m"):
        handles = [pre_hook(model.model.layers[int(node[1:])].get_submodule(layout["mlp_in"]), add)]
    elif "." not in node:  # joint a{l}: the attention path's whole input, not the residual skip
        handles = [pre_hook(model.model.layers[int(node[1:])].get_submodule(layout["attn_in"]), add)]
    else:
        layer, proj = node[1:].split(".")
        handles = perturb_projection(model, model.model.layers[int(layer)], proj, layout, delta)
    try:
        with torch.no_grad():
            return ref_losses(model, ids, lm, am, **loss)
    finally:
        for h in handles:
            h.remove()


def perturb_projection(model, block, proj, layout, delta):
    """Hooks that make one of q, k, v read resid + delta (through the attention norm where the family has one)."""
    norm = block.get_submodule(layout["attn_norm"]) if layout["attn_norm"] else None
    resid = {}
    handles = [pre_hook(norm, lambda x: resid.setdefault("x", x))] if norm is not None else []
    read = lambda x: norm.forward(resid["x"] + delta) if norm is not None else x + delta  # noqa: E731
    if not layout["fused"]:
        return handles + [pre_hook(block.self_attn.get_submodule(f"{proj}_proj"), read)]
    cfg, attn = model.config, block.self_attn
    sizes = [cfg.num_attention_heads * attn.head_dim] + [cfg.num_key_value_heads * attn.head_dim] * 2
    start = sum(sizes[: "qkv".index(proj)])
    part = slice(start, start + sizes["qkv".index(proj)])

    def only_this_slice(mod, args, out):
        out = out.clone()
        out[..., part] = torch.nn.functional.linear(read(args[0]), mod.weight[part])
        return out

    return handles + [attn.qkv_proj.register_forward_hook(only_this_slice)]


def finite_difference_scores(model, ids, lm, am, graph, positions="all", eps=1e-5, **loss):
    """W[:, u, v] = (L(-eps O_u) - L(+eps O_u)) / 2 eps at target v; one forward per target and sign, every source
    u of v perturbed in its own copy of the batch."""
    weight = (am.bool() if positions == "all" else lm & am.bool()).double()[:, :, None]
    outs = source_outputs(model, ids, am)
    W = torch.zeros(len(ids), graph.n_src, graph.n_dst, dtype=torch.float64)
    for v, target in enumerate(graph.targets):
        us = graph.mask[:, v].nonzero()[:, 0].tolist()
        O = torch.cat([outs[u] * weight for u in us])  # copy c of the batch carries source us[c]
        copies = [x.repeat(len(us), 1) for x in (ids, lm, am)]
        minus = perturbed_losses(model, *copies, target, -eps * O, **loss)
        plus = perturbed_losses(model, *copies, target, eps * O, **loss)
        W[:, us, v] = ((minus - plus) / (2 * eps)).view(len(us), len(ids)).T
    return W


def assert_close(a, b, rtol=1e-5):
    a, b = a.double(), b.double()
    scale = b.abs().max()
    assert (a - b).abs().max() <= rtol * scale, f"max err {(a - b).abs().max():.3e} vs scale {scale:.3e}"


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_reference_sources_sum_to_the_residual_stream(arch):
    """The reference's sources are exactly what the blocks add: embedding + every write = the final norm's input."""
    model = tiny(arch)
    ids, lm, am = batch()
    outs, resid = source_outputs(model, ids, am, with_residual=True)
    assert len(outs) == 2 * model.config.num_hidden_layers + 1
    assert torch.allclose(sum(outs), resid, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("positions", ["all", "answer"])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
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


@pytest.mark.parametrize("target,tau", [("nll", 0.3), ("margin", 2.5)])
def test_margin_target_and_temperature_match_finite_differences(target, tau):
    model = tiny("mistral")
    ids, lm, am = batch()
    graph = build_graph(model)
    W, losses = edge_scores(model, ids, lm, am, target=target, tau=tau, return_losses=True)
    with torch.no_grad():
        assert_close(losses, ref_losses(model, ids, lm, am, target, tau), rtol=1e-6)
    assert_close(W, finite_difference_scores(model, ids, lm, am, graph, target=target, tau=tau))
    assert not torch.allclose(W, edge_scores(model, ids, lm, am), rtol=1e-2)  # the option changes the scores


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


@pytest.mark.filterwarnings("error::FutureWarning")  # the current transformers names, not deprecated ones
@pytest.mark.parametrize("arch, attn_inputs", [("mistral", "qkv"), ("mistral", "joint"), ("olmo2", "joint"),
                                                ("phi3", "qkv")])  # pre-norm, post-norm, fused qkv
@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_scores(reentrant, arch, attn_inputs):
    model = tiny(arch)
    ids, lm, am = batch()
    graph = build_graph(model, attn_inputs)
    W = edge_scores(model, ids, lm, am, graph=graph)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
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


def bf16_reference(model, ids, lm, am):
    """Losses and logits-column scores of a bf16 model with lm_head in fp64, written out here: the final norm's input
    and the sources from a plain forward, then autograd through the bf16 final norm and an fp64 lm_head."""
    captured = {}
    h = model.model.norm.register_forward_pre_hook(lambda m, a: captured.update(x=a[0].detach()))
    try:
        outs = source_outputs(model, ids, am)
    finally:
        h.remove()
    x = captured["x"].requires_grad_(True)
    with torch.enable_grad():
        hidden = model.model.norm(x)[:, :-1]
        logits = hidden.double() @ model.lm_head.weight.double().T
        nll = torch.logsumexp(logits, -1) - logits.gather(-1, ids[:, 1:, None])[..., 0]
        m = lm[:, 1:].double()
        losses = (nll * m).sum(1) / m.sum(1)
        losses.sum().backward()
    g = x.grad.double() * am[:, :, None]
    return losses.detach(), torch.stack([-(g * o.double()).sum((1, 2)) for o in outs], 1)


def test_bf16_model_runs_lm_head_in_fp32():
    """Catches lm_head run in bf16 (logits cast after it): at logit magnitudes ~20-30 that errs by percents."""
    model = tiny("llama", dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(8)  # logits of magnitude ~20-30, as in real models
    model = model.to(torch.bfloat16)
    ids, lm, am = batch()
    W, losses = edge_scores(model, ids, lm, am, return_losses=True)
    ref_loss, ref_W = bf16_reference(model, ids, lm, am)
    assert W.dtype == torch.float32
    assert_close(losses, ref_loss, rtol=1e-4)
    assert_close(W[:, :, -1], ref_W, rtol=2e-3)


def test_chunking_does_not_matter():
    model = tiny("llama", dtype=torch.float32).to(torch.bfloat16)
    ids, lm, am = batch()
    W16 = edge_scores(model, ids, lm, am)
    graph = build_graph(model)
    # one source per matmul (chunk_bytes=1) gives the same scores as the default chunking
    rec = EdgeRecorder(model, graph, am, chunk_bytes=1)
    with rec.attach(model), torch.enable_grad():
        for p in model.parameters():
            p.requires_grad_(False)
        emb = model.model.embed_tokens(ids).requires_grad_(True)
        sample_losses(model, ids, lm.bool(), am, inputs_embeds=emb).sum().backward()
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
    with pytest.raises(RlsftError, match=f"'gpt2' is not supported; supported: {', '.join(ARCHITECTURES)}$"):
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
    with pytest.raises(ValueError, match="target must be one of"):
        edge_scores(model, ids, lm, am, target="kl")
    with pytest.raises(ValueError, match="tau must be > 0"):
        edge_scores(model, ids, lm, am, tau=0.0)


def test_estimate_memory_grows_with_length():
    config = tiny("qwen2").config
    small, large = (estimate_memory(config, n, 1, torch.bfloat16) for n in (128, 1024))
    assert 0 < small < large


# -- EAP-IG (method.md 2.7) -------------------------------------------------------------------------------------------
def ig_reference(model, ids, lm, am, B, m, nodes=("m0", "logits")):
    """W^IG[:, u, v] for targets `nodes`, written out: gradients of each target's private input (a clone that feeds its
    norm only) at x_j = x' + (j/m)(x - x'), x' = B[input], averaged over j, against O_u - B_u of the real input."""
    outs = source_outputs(model, ids, am)
    real = am[:, :, None].double()
    x = model.model.embed_tokens(ids).detach()
    norms = {"logits": model.model.norm}
    norms.update({f"m{i}": b.post_attention_layernorm for i, b in enumerate(model.model.layers)})
    grads = {n: 0 for n in nodes}
    for j in range(1, m + 1):
        taken = {}

        def take(name):
            def hook(mod, args):
                taken[name] = args[0].clone()
                taken[name].retain_grad()
                return (taken[name],)

            return hook

        hooks = [norms[n].register_forward_pre_hook(take(n)) for n in nodes]
        try:
            with torch.enable_grad():
                emb = (B[0] + (j / m) * (x - B[0])).requires_grad_(True)
                pos = (am.cumsum(-1) - 1).clamp(min=0)
                z = model(inputs_embeds=emb, attention_mask=am, position_ids=pos).logits[:, :-1].double()
                nll = -torch.log_softmax(z, -1).gather(-1, ids[:, 1:, None])[..., 0]
                mm = lm[:, 1:].double()
                ((nll * mm).sum(1) / mm.sum(1)).sum().backward()
        finally:
            for h in hooks:
                h.remove()
        for n in nodes:
            grads[n] = grads[n] + taken[n].grad / m
    return {n: torch.stack([-((o - b) * real * grads[n]).sum((1, 2)) for o, b in zip(outs, B)], 1) for n in nodes}


def test_eap_ig_matches_a_written_out_integral_and_one_step_is_eap():
    model = tiny("qwen2")
    ids, lm, am = batch()
    graph = build_graph(model)
    B = mean_source_outputs(model, [(ids, am)], graph).double()
    W = edge_scores(model, ids, lm, am, method="eap_ig", ig_steps=3, baseline="mean", baseline_acts=B)
    ref = ig_reference(model, ids, lm, am, B, 3)
    for name, Wref in ref.items():
        v = graph.targets.index(name)
        k = graph.n_preceding(name)
        assert_close(W[:, :k, v], Wref[:, :k], rtol=1e-6)
    for baseline, acts in [("mean", B),
                           ("input", source_outputs_engine(model, ids, am, graph, torch.zeros(2, 12, 32).double()))]:
        one = edge_scores(model, ids, lm, am, method="eap_ig", ig_steps=1, baseline=baseline, baseline_acts=acts)
        eap = edge_scores(model, ids, lm, am, method="eap", baseline=baseline, baseline_acts=acts)
        assert_close(one, eap, rtol=1e-6)
    assert not torch.allclose(W, edge_scores(model, ids, lm, am, baseline="mean", baseline_acts=B), rtol=1e-2)


@contextmanager
def embedded(model, x):
    """The model run on embeddings `x` [batch, seq, d] whatever ids it is given (the embedding's output replaced)."""
    handle = model.model.embed_tokens.register_forward_hook(lambda mod, args, out: x.to(out))
    try:
        yield
    finally:
        handle.remove()


def test_eap_ig_zero_baseline_runs_the_zero_input_and_matches_finite_differences_on_the_path():
    """Qwen2 has q/k/v biases, so at a zero input its attention blocks write nonzero outputs: B_u must come from that
    forward. Each edge's W^IG against central differences of the loss at every point of the path, with target v's
    input shifted by +-eps (O_u - B_u), averaged over the path (written here with plain hooks)."""
    model = tiny("qwen2")
    ids, lm, am = batch()
    graph = build_graph(model)
    m, eps = 3, 1e-5
    W = edge_scores(model, ids, lm, am, method="eap_ig", ig_steps=m)
    x = model.model.embed_tokens(ids).detach()
    outs = source_outputs(model, ids, am)
    with embedded(model, torch.zeros_like(x)):
        base = source_outputs(model, ids, am)
    assert base[1].abs().max() > 1e-2  # a0 writes at a zero input: B = 0 would be wrong
    real = am[:, :, None].double()
    for u, v in [(1, 3), (0, 7), (2, 6), (3, graph.n_dst - 1), (1, graph.n_dst - 1)]:  # a0->m0, in->m1, m0->a1.v, ...
        assert graph.mask[u, v]
        D = (outs[u] - base[u]) * real
        fd = 0
        for j in range(1, m + 1):
            with embedded(model, (j / m) * x):
                up = perturbed_losses(model, ids, lm, am, graph.targets[v], eps * D)
                down = perturbed_losses(model, ids, lm, am, graph.targets[v], -eps * D)
            fd = fd + (up - down) / (2 * eps) / m
        assert_close(W[:, u, v], -fd, rtol=1e-6)


def test_eap_ig_converges_as_steps_grow_and_is_batch_independent():
    model = tiny("llama")
    ids, lm, am = batch(lengths=(12, 7, 10), prompt=(5, 3, 6))
    graph = build_graph(model)
    B = mean_source_outputs(model, [(ids, am)], graph)
    sums = {m: edge_scores(model, ids, lm, am, method="eap_ig", ig_steps=m, baseline="mean", baseline_acts=B)[:, :, -1]
            .sum(1) for m in (1, 2, 4, 16)}
    print({m: [round(x, 5) for x in s.tolist()] for m, s in sums.items()})  # sum over edges into logits, per sample
    err = {m: (sums[m] - sums[16]).abs().max().item() for m in (1, 2, 4)}
    print(err)
    assert err[4] < err[2] < err[1] and err[4] < 0.25 * err[1]
    W = edge_scores(model, ids, lm, am, method="eap_ig", ig_steps=2, baseline="mean", baseline_acts=B)
    for b in range(len(ids)):
        r = am[b].bool()
        Wb = edge_scores(model, ids[b : b + 1, r], lm[b : b + 1, r], method="eap_ig", ig_steps=2, baseline="mean",
                         baseline_acts=B)
        assert_close(W[b : b + 1], Wb, rtol=1e-6)


def test_eap_ig_bad_input():
    model = tiny("llama")
    ids, lm, am = batch()
    for kwargs, message in [(dict(method="eap_ig", ig_steps=0), "ig_steps must be an integer >= 1; got 0"),
                            (dict(method="ig"), "method must be one of"),
                            (dict(baseline="corrupt"), "baseline must be one of"),
                            (dict(baseline="input", baseline_acts=torch.zeros(5, 32)), "needs baseline_acts of shape")]:
        with pytest.raises(ValueError, match=message):
            edge_scores(model, ids, lm, am, **kwargs)
