"""Edge attribution patching scores (method.md 2.4) on native Hugging Face decoders.

For an edge u -> v, `W[u, v] = -<dL/dH_v, O_u>`: the first-order change of the loss when source u's output `O_u` is
removed from target v's input only. One forward and one backward per batch:

  forward   hooks copy every source output (`input`, `a{l}` = o_proj output, `m{l}` = MLP output) into one buffer;
            each target's input gets a private view with a gradient hook, so the hook sees the gradient that flows
            through that target alone (q, k and v share one tensor, so without the views they would see the sum).
  backward  each target's gradient is caught as it arrives; once a layer's targets are all in, the q/k/v ones are
            pulled back to the residual stream through the shared input_layernorm (its VJP at the saved residual),
            masked to the chosen positions and multiplied with the stored sources. At most one layer's gradients
            are held at a time.

Scores are per sample and in fp32: the loss is the sum of per-sample mean losses, so each sample's gradient is its own.
"""

from contextlib import contextmanager

import torch

from ..architectures import ARCHITECTURES, architecture  # noqa: F401  (ARCHITECTURES re-exported)
from .graph import Graph, build_graph

POSITIONS = ("all", "answer")


def sample_losses(model, input_ids, loss_mask, attention_mask, inputs_embeds=None) -> torch.Tensor:
    """Per-sample loss [batch]: mean over scored tokens t of -log p(token_t | tokens_<t), log_softmax in fp32.

    Only the positions that predict a scored token go through lm_head, so the vocabulary-sized logits exist for the
    scored tokens only. Position ids count real tokens, so left padding does not shift a sample's positions.
    """
    arch = architecture(model)
    body, lm_head = model.get_submodule(arch["body"]), model.get_submodule(arch["lm_head"])
    if inputs_embeds is None:
        inputs_embeds = model.get_submodule(arch["embed"])(input_ids)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    hidden = body(
        inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    scored = loss_mask[:, 1:]  # token t is predicted at position t-1
    logits = lm_head(hidden[:, :-1][scored])
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 (fp64 stays fp64)
    cap = getattr(model.config, arch["logit_softcap"], None) if arch["logit_softcap"] else None
    if cap:  # Gemma's final soft-capping, part of the model's own logits
        logits = cap * torch.tanh(logits / cap)
    nll = -logits.log_softmax(-1).gather(-1, input_ids[:, 1:][scored][:, None])[:, 0]
    sample = scored.nonzero()[:, 0]
    total = torch.zeros(len(input_ids), dtype=nll.dtype, device=nll.device).index_add(0, sample, nll)
    return total / scored.sum(1).to(total)


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


def _first_input(fn):
    """A `with_kwargs` forward pre-hook passing a module's first input (positional or `hidden_states=`) through `fn`."""

    def hook(mod, args, kwargs):
        if args:
            return (fn(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

    return hook


class EdgeRecorder:
    """Hooks that fill `W` [batch, n_src, n_dst] during one forward and one backward of `model`.

    `positions_weight` [batch, seq] selects the positions summed over (1 where counted, 0 elsewhere: padding always 0).
    Use `attach(model)` as a context manager; the hooks are gone when it exits, whatever happened.
    """

    def __init__(self, model, graph: Graph, positions_weight: torch.Tensor, chunk_bytes: int = 1 << 28):
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
        self.src = None  # [batch, n_src, seq, d] in the model's dtype, allocated at the first source
        self.written = [False] * graph.n_src
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
        pre = lambda mod, fn: mod.register_forward_pre_hook(_first_input(fn), with_kwargs=True)  # noqa: E731
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
                _first_input(lambda x: self._read(logits, x)), with_kwargs=True))
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


def edge_scores(model, input_ids, loss_mask, attention_mask=None, graph=None, positions="all", return_losses=False):
    """EAP scores [batch, n_src, n_dst] (fp32, on CPU, zero off the graph's mask) for one batch.

    input_ids, loss_mask, attention_mask: [batch, seq]. `loss_mask[b, t]` is True where token t of sample b is scored
    (never t = 0, which has no prediction); padding (attention_mask 0, left or right) is never scored or summed.
    positions: "all" sums over every real position (the paper); "answer" only over the positions whose token is scored,
    i.e. where `loss_mask` is True (the answer tokens themselves; the last prompt position, which predicts the first
    answer token, is not included).
    return_losses: also return each sample's loss [batch] (the scores scale with its gradient, so a model that is
    near-certain of its own tokens has small scores whatever its circuits; worth reporting beside them).
    """
    arch = architecture(model)
    graph = graph if graph is not None else build_graph(model)
    if graph.n_layers != model.config.num_hidden_layers:
        raise ValueError(f"graph has {graph.n_layers} layers; model has {model.config.num_hidden_layers}")
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}; got {positions!r}")
    device = model.get_submodule(arch["embed"]).weight.device
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
    if empty:
        raise ValueError(f"every sample needs a scored token; samples {empty} have none")

    weight = attention_mask if positions == "all" else loss_mask
    recorder = EdgeRecorder(model, graph, weight)
    modes = {m: m.training for m in model.modules()}
    needs_grad = {p: p.requires_grad for p in model.parameters()}
    try:
        model.eval()
        # HF checkpoints a block only in training mode; flag the blocks themselves (not their dropout-carrying
        # children) so an enabled gradient checkpointing still saves memory while the model computes as in eval.
        for block in model.get_submodule(arch["layers"]):
            if getattr(block, "gradient_checkpointing", False):
                block.training = True
        for p in needs_grad:
            p.requires_grad_(False)  # activation gradients only: no weight gradients computed or stored
        with recorder.attach(model), torch.enable_grad():
            embeds = model.get_submodule(arch["embed"])(input_ids).detach().requires_grad_(True)
            losses = sample_losses(model, input_ids, loss_mask, attention_mask, inputs_embeds=embeds)
            losses.sum().backward()
        scores = recorder.result().cpu()
        return (scores, losses.detach().float().cpu()) if return_losses else scores
    finally:
        for m, mode in modes.items():
            m.training = mode
        for p, flag in needs_grad.items():
            p.requires_grad_(flag)


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
