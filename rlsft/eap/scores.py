"""Edge attribution patching scores (method.md 2.4) on native Hugging Face decoders.

For an edge u -> v, `W[u, v] = -<dL/dH_v, O_u>`: the first-order change of the loss when source u's output `O_u` is
removed from target v's input only. One forward and one backward per batch:

  forward   hooks copy every source output into one buffer: `input` (the embedding's output, scaled where the
            family scales it), `a{l}` and `m{l}` (what the block adds to the residual after attention and after the
            MLP: o_proj / the MLP, or the post-norm after them; rlsft.architectures says which per family);
            each target's input gets a private view with a gradient hook, so the hook sees the gradient that flows
            through that target alone (q, k and v share one tensor, so without the views they would see the sum;
            a fused qkv_proj's output gradient is split into its q, k, v slices, each times its own weight rows).
  backward  each target's gradient is caught as it arrives; once a layer's targets are all in, the q/k/v ones are
            pulled back to the residual stream through the attention norm where the family has one (its VJP at the
            saved residual; post-norm q, k, v read the residual itself), masked to the chosen positions and
            multiplied with the stored sources. At most one layer's gradients are held at a time.

Scores are per sample and in fp32: the loss is the sum of per-sample mean losses, so each sample's gradient is its own.
The loss is computed from the model's own logits (final soft-capping included). For a sparse MoE block the gradient is
taken with the routing held where it is (top-k choice is piecewise constant): scores are exact first-order effects
within the current routing, and a removal that would flip an expert choice is not seen.
"""

from contextlib import contextmanager

import torch

from ..architectures import ARCHITECTURES, architecture  # noqa: F401  (ARCHITECTURES re-exported)
from .graph import Graph, build_graph

POSITIONS = ("all", "answer")


TARGETS = ("nll", "margin")


def scored_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The model's logits [n, vocab] for the scored rows `hidden` [n, d], with lm_head itself in fp32 (fp64 stays fp64)
    and the family's final soft-capping (Gemma) applied.

    Casting bf16 logits to fp32 after lm_head is too late: at logit magnitudes of 20-35 the bf16 product already has
    errors of a few percent in dL/dlogits. The fp32 copy of the weight lives for one call.
    """
    arch = architecture(model)
    lm_head = model.get_submodule(arch["lm_head"])
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    bias = getattr(lm_head, "bias", None)
    bias = None if bias is None else bias.to(dtype)
    logits = torch.nn.functional.linear(hidden.to(dtype), lm_head.weight.to(dtype), bias)
    cap = getattr(model.config, arch["logit_softcap"], None) if arch["logit_softcap"] else None
    if cap:  # Gemma's final soft-capping, part of the model's own logits
        logits = cap * torch.tanh(logits / cap)
    return logits


def token_losses(logits: torch.Tensor, tokens: torch.Tensor, target: str = "nll", tau: float = 1.0) -> torch.Tensor:
    """Per-token loss [n] from fp32 `logits` [n, vocab] divided by the temperature `tau` (method.md 2.2, 2.6).

    nll: -log softmax(z)[y]. margin: -(z[y] - logsumexp_{j != y} z[j]), whose gradient does not vanish as p(y) -> 1.
    """
    z = logits / tau
    own = z.gather(-1, tokens[:, None])[:, 0]
    if target == "nll":
        return z.logsumexp(-1) - own
    if target == "margin":
        return z.scatter(-1, tokens[:, None], float("-inf")).logsumexp(-1) - own
    raise ValueError(f"target must be one of {TARGETS}; got {target!r}")


def scored_hidden(model, input_ids, loss_mask, attention_mask, inputs_embeds=None, cache=None):
    """The final hidden states that predict a scored token [n, d], those tokens [n] and their sample index [n].

    Position ids count real tokens, so left padding does not shift a sample's positions. `cache`: the key/value
    cache of the first `cache.get_seq_length()` positions (`prefix_cache`); only the positions after them run here
    (`inputs_embeds`, if given, covers those positions only), and no token among the first ones may be scored.
    """
    arch = architecture(model)
    start = cache.get_seq_length() if cache is not None else 0
    if loss_mask[:, : start + 1].any():
        raise ValueError(f"a scored token lies within the cached prefix ({start} positions): its prediction is not run")
    if inputs_embeds is None:
        inputs_embeds = model.get_submodule(arch["embed"])(input_ids[:, start:])
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, start:]
    hidden = model.get_submodule(arch["body"])(
        inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
        use_cache=cache is not None,
    ).last_hidden_state
    scored = loss_mask[:, 1:][:, start:]  # token t is predicted at position t-1
    return hidden[:, :-1][scored], input_ids[:, 1:][:, start:][scored], scored.nonzero()[:, 0]


def prefix_cache(model, input_ids, attention_mask, prefix: int, batch: int):
    """The key/value cache of the first `prefix` positions of row 0, repeated for `batch` rows (every row must
    hold the same tokens there). Why: the faithfulness curves run hundreds of patched forwards of one sample whose
    baseline input differs from it only after the first operand; no patch changes the positions before that, so
    they run once here, not once per kept set (method.md 2.7)."""
    arch = architecture(model)
    if not (torch.equal(input_ids[:, :prefix], input_ids[:1, :prefix].expand(len(input_ids), -1))
            and torch.equal(attention_mask[:, :prefix], attention_mask[:1, :prefix].expand(len(input_ids), -1))):
        raise ValueError(f"a shared prefix of {prefix} positions needs every row to hold the same tokens there")
    ids, am = input_ids[:1, :prefix], attention_mask[:1, :prefix]
    out = model.get_submodule(arch["body"])(input_ids=ids, attention_mask=am,
                                            position_ids=(am.long().cumsum(-1) - 1).clamp(min=0), use_cache=True)
    cache = out.cache
    cache.batch_repeat_interleave(batch)
    return cache


def per_sample_mean(values, sample, batch: int) -> torch.Tensor:
    """Mean of `values` [n] per sample index in `sample` [n]: [batch]."""
    total = torch.zeros(batch, dtype=values.dtype, device=values.device).index_add(0, sample, values)
    return total / torch.bincount(sample, minlength=batch).to(total)


def sample_losses(model, input_ids, loss_mask, attention_mask, inputs_embeds=None, target="nll", tau=1.0,
                  cache=None):
    """Per-sample loss [batch]: mean over scored tokens t of the token loss (`token_losses`) of token_t.

    Only the positions that predict a scored token go through lm_head (in fp32), so the vocabulary-sized logits exist
    for the scored tokens only. `cache`: as in `scored_hidden`.
    """
    hidden, tokens, sample = scored_hidden(model, input_ids, loss_mask, attention_mask, inputs_embeds, cache)
    logits = scored_logits(model, hidden)
    return per_sample_mean(token_losses(logits, tokens, target, tau), sample, len(input_ids))


def _norm_vjp(norm, x, G):
    """Gradients wrt the residual `x` [batch, seq, d] through `norm`, given gradients `G` [batch, n, seq, d] wrt its
    output (one slice per reader: q, k, v), in G's dtype.

    Autograd's VJP of the norm's own `forward` at `x`, so any norm works (RMSNorm, Gemma's `1 + w` RMSNorm, LayerNorm);
    `forward` is called directly, so no hook on the norm sees this recomputation.
    """
    with torch.enable_grad():
        xs = x.to(G.device, G.dtype)[:, None].expand_as(G).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(norm.forward(xs), xs, G)
    return grad


def first_input(fn):
    """A `with_kwargs` forward pre-hook passing a module's first input (positional or `hidden_states=`) through `fn`."""

    def hook(mod, args, kwargs):
        if args:
            return (fn(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

    return hook


class EdgeRecorder:
    """Hooks that fill `W` [batch, n_src, n_dst] during one forward and one backward of `model`.

    `positions_weight` [batch, seq] selects the positions summed over (1 where counted, 0 elsewhere: padding always 0).
    `baseline` (from `baseline_tensor`, broadcastable to [batch, n_src, seq, d]) is subtracted from each source output
    as it is kept, so W = -<dL/dH_v, O_u - B_u>. `sources` [batch, n_src, seq, d], if given, replaces the sources of
    this forward (EAP-IG: O_u - B_u of the real input while the gradients come from an interpolated one).
    Use `attach(model)` as a context manager; the hooks are gone when it exits, whatever happened.
    """

    def __init__(self, model, graph: Graph, positions_weight: torch.Tensor, chunk_bytes: int = 1 << 28,
                 baseline=None, sources=None):
        self.arch = architecture(model)
        self.graph = graph
        # Scores are accumulated in fp32 (fp64 for an fp64 model, so tests can be tight), never in bf16.
        model_dtype = model.get_submodule(self.arch["embed"]).weight.dtype
        self.dtype = torch.promote_types(model_dtype, torch.float32)
        self.keep = positions_weight.bool()[:, :, None]  # [batch, seq, 1]
        self.keep_all = bool(self.keep.all())  # nothing to mask (no padding, positions="all")
        self.chunk_bytes = chunk_bytes  # cap on the upcast copy of sources made per matmul (bf16 models)
        batch = positions_weight.shape[0]
        self.W = torch.zeros(batch, graph.n_src, graph.n_dst, dtype=self.dtype, device=positions_weight.device)
        self.src = sources  # [batch, n_src, seq, d] in the model's dtype, allocated at the first source
        self.written = [sources is not None] * graph.n_src
        self.baseline = baseline
        self.resid = {}  # layer -> residual stream read by the attention norm (for the q/k/v VJPs)
        self.hooked = set()  # targets whose gradient hook is registered (once per call, see _read)
        self.norm_of = {}  # target column -> the norm its gradient must be pulled back through (q, k, v)
        self.pending = {}  # group -> [batch, n, seq, d] gradients of its targets, until all have arrived
        self.arrived = set()
        # Targets are folded per group (one layer's q, k, v, m; or logits) so the sources are read once per layer.
        self.group_of = {c: n if n == "logits" else int(n.split(".")[0][1:]) for c, n in enumerate(graph.targets)}
        self.groups = {}
        for col, g in self.group_of.items():
            self.groups.setdefault(g, []).append(col)

    # -- forward: keep sources, give each target a private input ---------------------------------------------------
    def _keep_source(self, index, out):
        """Copy a source output into the buffer, once (a checkpointed layer runs its forward again in backward)."""
        if self.written[index]:
            return
        out = out[0] if isinstance(out, tuple) else out
        if self.src is None:
            b, t, d = out.shape
            self.src = torch.empty(b, self.graph.n_src, t, d, dtype=out.dtype, device=self.W.device)
        self.src[:, index] = out.detach().to(self.src.device)
        if self.baseline is not None:
            self.src[:, index] -= self.baseline[:, index].to(self.src)
        if not self.keep_all:
            self.src[:, index].masked_fill_(~self.keep, 0)  # padding may hold inf/nan, and 0 * nan is nan
        self.written[index] = True

    def _read(self, col, x, norm=None):
        """Return a private view of `x` for target `col`; its gradient hook fires with that target's gradient only.

        The hook is registered once, in the forward that builds the graph the backward runs through: with
        non-reentrant checkpointing the first (the recompute would register a second one, which never fires); with
        reentrant checkpointing the recompute (the first forward runs without grad, though a view of a tensor that
        requires grad still says requires_grad there).
        """
        return self._hook_once([col], x, norm, lambda g: self._on_grad(col, g))

    def _read_fused(self, cols, out, weight, sizes, norm=None):
        """A fused projection (Phi-3's qkv_proj, output [q | k | v]): each target's gradient wrt the projection's
        input is its own output slice's gradient times its own weight rows, so q, k and v each see only their path."""

        def split(g):
            for col, g_part, w_part in zip(cols, g.split(sizes, -1), weight.detach().split(sizes, 0)):
                self._on_grad(col, g_part.to(self.dtype) @ w_part.to(g.device, self.dtype))

        return self._hook_once(cols, out, norm, split)

    def _hook_once(self, cols, x, norm, on_grad):
        x = x.view_as(x)
        if torch.is_grad_enabled() and x.requires_grad and cols[0] not in self.hooked:
            self.hooked.update(cols)
            if norm is not None:
                self.norm_of.update(dict.fromkeys(cols, norm))
            x.register_hook(on_grad)
        return x

    # -- backward: pull each gradient back to the residual stream and fold it into W --------------------------------
    def _on_grad(self, col, grad):
        if col in self.arrived:
            raise RuntimeError(f"gradient for target {self.graph.targets[col]} arrived twice")
        self.arrived.add(col)
        group = self.group_of[col]
        cols = self.groups[group]
        if group not in self.pending:
            b, t, d = grad.shape
            self.pending[group] = torch.empty(b, len(cols), t, d, dtype=self.dtype, device=self.W.device)
        G = self.pending[group]
        G[:, cols.index(col)] = grad
        if all(c in self.arrived for c in cols):
            del self.pending[group]
            self._fold(cols, G, self.resid.pop(group, None))

    def _fold(self, cols, G, resid):
        """W[:, u, v] = -sum_{t,d} dL/dH_v * O_u for the group's targets v and every source u before them."""
        via = [i for i, c in enumerate(cols) if c in self.norm_of]  # q, k, v: back through their shared norm
        if via:
            G[:, via] = _norm_vjp(self.norm_of[cols[via[0]]], resid, G[:, via])
        if not self.keep_all:
            G.masked_fill_(~self.keep[:, None], 0)
        batch, n = G.shape[:2]
        G = G.reshape(batch, n, -1).transpose(1, 2)  # [batch, seq*d, n]
        k = max(int(self.graph.mask[:, c].sum()) for c in cols)
        per_source = G.shape[1] * batch * G.element_size()  # bytes of one source's upcast copy
        step = k if self.src.dtype == self.dtype else max(1, self.chunk_bytes // per_source)
        for u in range(0, k, step):
            S = self.src[:, u : u + step].reshape(batch, -1, G.shape[1]).to(self.dtype)  # [batch, c, seq*d]
            self.W[:, u : u + step, cols] = -torch.bmm(S, G)

    # -- hooks ---------------------------------------------------------------------------------------------------------
    def _hook_block(self, model, block, l, handles):
        """Hook one block's two sources and its targets (q, k, v or joint a{l}; m{l}), appending to `handles`."""
        a, get = self.arch, block.get_submodule
        col = {name: i for i, name in enumerate(self.graph.targets)}
        pre = lambda mod, fn: mod.register_forward_pre_hook(first_input(fn), with_kwargs=True)  # noqa: E731
        source = lambda path, i: get(path).register_forward_hook(lambda m, args, out: self._keep_source(i, out))  # noqa
        attn_norm = get(a["attn_norm"]) if a["attn_norm"] else None  # None: q, k, v read the residual itself

        def keep_resid(x):
            self.resid.setdefault(l, x.detach())
            return x

        if self.graph.attn_inputs == "joint":
            handles.append(pre(attn_norm or get(a["attn"]), lambda x: self._read(col[f"a{l}"], x)))
        else:
            names = [col[f"a{l}.{p}"] for p in "qkv"]
            if attn_norm is not None:  # q, k, v read through the shared norm: its VJP at this residual in _fold
                handles.append(pre(attn_norm, keep_resid))
            if a["qkv"]:
                cfg = model.config
                head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
                sizes = [cfg.num_attention_heads * head_dim] + [cfg.num_key_value_heads * head_dim] * 2
                fused = get(a["qkv"])
                hook = lambda m, args, out: self._read_fused(names, out, fused.weight, sizes, attn_norm)  # noqa
                handles.append(fused.register_forward_hook(hook))
            else:
                for p, c in zip("qkv", names):
                    handles.append(pre(get(a[p]), lambda x, c=c: self._read(c, x, attn_norm)))
        handles.append(source(a["attn_out"], 1 + 2 * l))
        mlp_in = get(a["mlp_norm"]) if a["mlp_norm"] else get(a["mlp"])
        handles.append(pre(mlp_in, lambda x: self._read(col[f"m{l}"], x)))
        handles.append(source(a["mlp_out"], 2 + 2 * l))

    @contextmanager
    def attach(self, model):
        """Install the hooks for the duration of the block; they are removed in `finally`."""
        a = self.arch
        logits = self.graph.targets.index("logits")
        handles = []
        try:
            handles.append(model.get_submodule(a["embed"]).register_forward_hook(
                lambda m, args, out: self._keep_source(0, out)))
            for l, block in enumerate(model.get_submodule(a["layers"])):
                self._hook_block(model, block, l, handles)
            handles.append(model.get_submodule(a["final_norm"]).register_forward_pre_hook(
                first_input(lambda x: self._read(logits, x)), with_kwargs=True))
            yield self
        finally:
            for h in handles:
                h.remove()

    def result(self) -> torch.Tensor:
        folded = [c in self.arrived and self.group_of[c] not in self.pending for c in range(self.graph.n_dst)]
        missing = [n for n, ok in zip(self.graph.targets, folded) if not ok]
        if missing:
            raise RuntimeError(f"no gradient reached targets {missing}")
        return (self.W * self.graph.mask.to(self.W.device)).float()


METHODS = ("eap", "eap_ig")
BASELINES = ("zero", "mean", "input")


def check_batch(model, graph, input_ids, loss_mask, attention_mask, scored=True):
    """The batch as tensors on the model's device, or a ValueError saying what is wrong with it."""
    if graph.n_layers != model.config.num_hidden_layers:
        raise ValueError(f"graph has {graph.n_layers} layers; model has {model.config.num_hidden_layers}")
    device = model.get_submodule(architecture(model)["embed"]).weight.device
    input_ids = torch.as_tensor(input_ids, device=device)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, seq]; got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = torch.as_tensor(attention_mask, device=device).long()
    loss_mask = torch.as_tensor(loss_mask, device=device).bool()
    if loss_mask.shape != input_ids.shape or attention_mask.shape != input_ids.shape:
        raise ValueError("input_ids, loss_mask and attention_mask must have the same [batch, seq] shape")
    loss_mask = loss_mask & attention_mask.bool()
    if loss_mask[:, 0].any():
        raise ValueError("loss_mask[:, 0] must be False: the first token has no prediction to score")
    empty = (~loss_mask.any(1)).nonzero()[:, 0].tolist()
    if scored and empty:
        raise ValueError(f"every sample needs a scored token; samples {empty} have none")
    return input_ids, loss_mask, attention_mask


def check_loss(target, tau):
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}; got {target!r}")
    if not tau > 0:
        raise ValueError(f"tau must be > 0; got {tau}")


def baseline_tensor(baseline, baseline_acts, graph, input_ids, d):
    """The baseline outputs B_u (method.md 2.7) broadcastable to [batch, n_src, seq, d], or None for `zero`.

    mean: `baseline_acts` [n_src, d] (from `mean_source_outputs`); input: [batch, n_src, seq, d], the source outputs
    of a baseline input (`source_outputs(..., inputs_embeds=x')`).
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}; got {baseline!r}")
    if baseline == "zero":
        return None
    shape = (graph.n_src, d) if baseline == "mean" else (*input_ids.shape[:1], graph.n_src, input_ids.shape[1], d)
    if baseline_acts is None or tuple(baseline_acts.shape) != shape:
        got = None if baseline_acts is None else tuple(baseline_acts.shape)
        raise ValueError(f"baseline {baseline!r} needs baseline_acts of shape {shape}; got {got}")
    B = torch.as_tensor(baseline_acts, device=input_ids.device)
    return B[None, :, None] if baseline == "mean" else B


@contextmanager
def scoring_mode(model):
    """Eval mode, no weight gradients; the model's modes and requires_grad flags come back whatever happens."""
    modes = {m: m.training for m in model.modules()}
    needs_grad = {p: p.requires_grad for p in model.parameters()}
    try:
        model.eval()
        # HF checkpoints a block only in training mode; flag the blocks themselves (not their dropout-carrying
        # children) so an enabled gradient checkpointing still saves memory while the model computes as in eval.
        for block in model.get_submodule(architecture(model)["layers"]):
            if getattr(block, "gradient_checkpointing", False):
                block.training = True
        for p in needs_grad:
            p.requires_grad_(False)  # activation gradients only: no weight gradients computed or stored
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode
        for p, flag in needs_grad.items():
            p.requires_grad_(flag)


def source_outputs(model, input_ids, attention_mask, graph, inputs_embeds=None) -> torch.Tensor:
    """Every source's output [batch, n_src, seq, d] (model dtype, zero at padding) from one no-grad forward."""
    arch = architecture(model)
    recorder = EdgeRecorder(model, graph, attention_mask)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    with recorder.attach(model), torch.no_grad():
        if inputs_embeds is None:
            inputs_embeds = model.get_submodule(arch["embed"])(input_ids)  # under the hooks: the `input` source
        else:
            recorder._keep_source(0, inputs_embeds)
        model.get_submodule(arch["body"])(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                          position_ids=position_ids, use_cache=False)
    return recorder.src


def mean_source_outputs(model, batches, graph) -> torch.Tensor:
    """The `mean` baseline [n_src, d] (fp32): each source's output averaged over all real positions of `batches`,
    an iterable of (input_ids, attention_mask) [batch, seq]."""
    total, count = 0, 0
    with scoring_mode(model):
        for input_ids, attention_mask in batches:
            no_loss = torch.zeros_like(torch.as_tensor(input_ids))
            ids, _, am = check_batch(model, graph, input_ids, no_loss, attention_mask, scored=False)
            total = total + source_outputs(model, ids, am, graph).float().sum((0, 2))
            count += int(am.sum())
    return (total / count).cpu()


def _score_pass(model, recorder, input_ids, loss_mask, attention_mask, embeds, target, tau):
    """One forward + backward with the recorder's hooks; returns the per-sample losses. `embeds` None: the model's
    own embeddings, computed under the hooks (so the `input` source is kept)."""
    with recorder.attach(model), torch.enable_grad():
        if embeds is None:
            embeds = model.get_submodule(architecture(model)["embed"])(input_ids)
        embeds = embeds.detach().requires_grad_(True)
        losses = sample_losses(model, input_ids, loss_mask, attention_mask, embeds, target, tau)
        losses.sum().backward()
    return losses.detach()


def edge_scores(model, input_ids, loss_mask, attention_mask=None, graph=None, positions="all", return_losses=False,
                target="nll", tau=1.0, method="eap", ig_steps=5, baseline="zero", baseline_acts=None):
    """EAP scores [batch, n_src, n_dst] (fp32, on CPU, zero off the graph's mask) for one batch.

    model: a causal LM of a family in `rlsft.architectures.ARCHITECTURES` (any other: RlsftError naming those).
    input_ids, loss_mask, attention_mask: [batch, seq]. `loss_mask[b, t]` is True where token t of sample b is scored
    (never t = 0, which has no prediction); padding (attention_mask 0, left or right) is never scored or summed.
    positions: "all" sums over every real position (the paper); "answer" only over the positions whose token is scored,
    i.e. where `loss_mask` is True (the answer tokens themselves; the last prompt position, which predicts the first
    answer token, is not included).
    return_losses: also return each sample's loss [batch] (the scores scale with its gradient, so a model that is
    near-certain of its own tokens has small scores whatever its circuits; worth reporting beside them).
    target, tau: the loss (`token_losses`: "nll" or "margin", logits divided by tau).
    method: "eap" scores -<dL/dH_v, O_u - B_u> (2.4; B = 0 for baseline "zero"); "eap_ig" (2.7) uses the mean gradient
    over `ig_steps` inputs on the line from the baseline input x' (zero embeddings for "zero", else the baseline's own
    embedding output B_input) to the real one, and B_u from a forward pass on x' ("mean": the given means); ig_steps
    + 2 passes, the gradients summed into W, so memory is that of one EAP pass.
    baseline, baseline_acts: see `baseline_tensor`.
    """
    arch = architecture(model)
    graph = graph if graph is not None else build_graph(model)
    input_ids, loss_mask, attention_mask = check_batch(model, graph, input_ids, loss_mask, attention_mask)
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}; got {positions!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if method == "eap_ig" and not (isinstance(ig_steps, int) and ig_steps >= 1):
        raise ValueError(f"ig_steps must be an integer >= 1; got {ig_steps!r}")
    check_loss(target, tau)
    embed = model.get_submodule(arch["embed"])
    B = baseline_tensor(baseline, baseline_acts, graph, input_ids, embed.weight.shape[1])
    weight = attention_mask if positions == "all" else loss_mask
    args = (input_ids, loss_mask, attention_mask)
    with scoring_mode(model):
        if method == "eap":
            recorder = EdgeRecorder(model, graph, weight, baseline=B)
            losses = _score_pass(model, recorder, *args, None, target, tau)
            scores = recorder.result()
        else:
            x = embed(input_ids)
            x0 = torch.zeros_like(x) if B is None else B[:, 0].to(x).expand_as(x)
            # O_u - B_u with B_u from a forward on the baseline input itself (method.md 2.7): a model with q/k/v or
            # MLP biases writes nonzero block outputs at a zero input, so B_u = 0 would be wrong there. "mean" keeps
            # its per-source means (no single input writes them).
            D = source_outputs(model, input_ids, attention_mask, graph, x)
            D -= B.to(D) if baseline == "mean" else source_outputs(model, input_ids, attention_mask, graph, x0)
            D.masked_fill_(~attention_mask.bool()[:, None, :, None], 0)
            scores = 0
            for j in range(1, ig_steps + 1):
                recorder = EdgeRecorder(model, graph, weight, sources=D)
                losses = _score_pass(model, recorder, *args, x0 + (j / ig_steps) * (x - x0), target, tau)
                scores = scores + recorder.result() / ig_steps
    scores = scores.float().cpu()
    return (scores, losses.float().cpu()) if return_losses else scores


def estimate_memory(config, seq_len: int, batch: int = 1, dtype=torch.bfloat16) -> int:
    """Rough bytes `edge_scores` needs beyond the weights: kept sources + one forward's saved activations.

    Assumes a fused attention kernel (sdpa/flash: no seq^2 term) and every position scored (logits for all tokens).
    Kept: the (2L+1) source outputs, the L residuals read by the attention norms, one layer's fp32 gradients.
    Forward: per layer the tensors autograd saves for an activation-only backward (q, k, v, attention output, three
    MLP-width tensors, fp32 copies of the two norm inputs), the embeddings, and fp32 logits with their log_softmax.
    """
    b = torch.empty((), dtype=dtype).element_size()
    L, d, ff = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    tokens = batch * seq_len
    kept = (2 * L + 1 + L) * tokens * d * b + 4 * tokens * d * 4 + batch * (2 * L + 1) * (4 * L + 1) * 4
    per_layer = tokens * (b * (2 * d + 2 * kv + 3 * ff) + 4 * 2 * d)
    forward = L * per_layer + 2 * tokens * d * b + 2 * tokens * config.vocab_size * 4
    return int(kept + forward)
