"""Edge patching (method.md 2.7): the loss when every edge outside a kept set is replaced by its baseline.

Target v reads `H_v - sum_{u removed into v} (O_u - B_u)`, with `O_u` from this same, patched, forward (a removed edge
changes everything downstream of it). Same graph and module maps (rlsft.architectures) as `edge_scores`; q, k and v of
a layer are separate targets: each projection reads the attention norm (if the family has one) of its own patched
residual; a fused qkv projection is recomputed from the three. One forward per call,
whatever `keep` is: the hooks keep every source's `O_u - B_u` (fp32) and their running sum, and each target subtracts
either its removed sources or (the running sum) minus its kept ones, whichever reads fewer buffers; the extra cost is
that buffer and those sums (benchmarks/bench_patching.py, SmolLM2 on a loaded 2-core CPU, 8 x 64 tokens, half the
edges kept: 2.0x a plain no-grad forward). With one kept set per row (`keep` [batch, n_src, n_dst]: the faithfulness
curves batch many kept sets of one sample) each target sums its removed sources with one weighted einsum over the
sources before it: about 121 x 30 x d multiply-adds per token for SmolLM2, under 1% of its forward. With a baseline
input that shares its first `prefix` tokens with the input (a counterfactual twin differs from its first changed
operand on), those positions run once, unpatched, and the patched forward starts from their key/value cache (on the
embedded pair's prompts 27 of 62 positions: a 16-row batch in 0.64 of the whole patched forward's time).
"""

from contextlib import contextmanager

import torch

from .graph import Graph, build_graph
from .scores import (architecture, baseline_tensor, check_batch, check_loss, first_input, prefix_cache,
                     sample_losses, scoring_mode)


def check_keep(keep, graph: Graph, batch: int | None = None) -> torch.Tensor:
    """The removed edges [n_src, n_dst] (bool) for a kept set (None = keep all), [batch, n_src, n_dst] for one kept
    set per row, or a ValueError."""
    if keep is None:
        return torch.zeros_like(graph.mask)
    keep = torch.as_tensor(keep)
    shapes = [(graph.n_src, graph.n_dst)] + ([(batch, graph.n_src, graph.n_dst)] if batch is not None else [])
    if keep.dtype != torch.bool or tuple(keep.shape) not in shapes:
        raise ValueError(f"keep must be a bool [{graph.n_src}, {graph.n_dst}] matrix over the graph (or one per "
                         f"row, [batch, {graph.n_src}, {graph.n_dst}]); got {keep.dtype} {tuple(keep.shape)}")
    off = keep.cpu() & ~graph.mask
    if off.any():
        u, v = off.nonzero()[0].tolist()[-2:]
        raise ValueError(f"keep has {int(off.sum())} entries off the graph's mask, e.g. "
                         f"{graph.sources[u]} -> {graph.targets[v]}")
    return graph.mask & ~keep.cpu()


class Patcher:
    """Hooks that patch the removed edges during one forward. `removed` [n_src, n_dst] bool; `baseline` from
    `baseline_tensor`; `real` [batch, seq] bool (padding positions are left as they are)."""

    def __init__(self, model, graph: Graph, removed: torch.Tensor, baseline, real: torch.Tensor):
        self.arch = architecture(model)
        self.graph = graph
        dtype = model.get_submodule(self.arch["embed"]).weight.dtype
        self.dtype = torch.promote_types(dtype, torch.float32)
        self.per_row = None  # [n_src, n_dst, batch] when each row has its own removed set (faithfulness batches)
        if removed.ndim == 3:
            self.per_row = removed.permute(1, 2, 0).to(real.device, self.dtype)
            removed = removed.any(0)
        self.patched_cols = set(removed.any(0).nonzero()[:, 0].tolist())  # targets with a removed edge
        # Per patched target, the cheaper way to its removed sum: the removed sources themselves, or the running sum
        # of every source before it minus the kept ones (few kept at the low end of a faithfulness grid, few removed
        # at the high end: each target reads min(removed, kept) source buffers, not all of them).
        self.plan = {}
        for col in self.patched_cols:
            k = int(graph.mask[:, col].sum())  # the sources before target col: a prefix (sources are in forward order)
            gone = removed[:k, col]
            if self.per_row is not None:
                self.plan[col] = ("rows", k, None)
            elif int(gone.sum()) <= k - int(gone.sum()):
                self.plan[col] = ("removed", k, gone.nonzero()[:, 0].to(real.device))
            else:
                self.plan[col] = ("all_but_kept", k, (~gone).nonzero()[:, 0].to(real.device))
        self.baseline = baseline
        self.real = real[:, :, None]
        self.diff = None  # [n_src, batch, seq, d]: O_u - B_u, zero at padding (sources first: a prefix is contiguous)
        self.total = None  # sum of diff over the sources recorded so far (kept only when some target uses it)
        self.keep_total = any(how == "all_but_kept" for how, _, _ in self.plan.values())
        self.recorded = 0  # how many sources (0, 1, ... in order) have been recorded
        self.resid = {}  # layer -> the residual read on the attention path (for q, k, v)

    def _keep_source(self, index, out):
        out = out[0] if isinstance(out, tuple) else out
        if self.diff is None:
            b, t, d = out.shape
            self.diff = torch.zeros(self.graph.n_src, b, t, d, dtype=self.dtype, device=out.device)
        d = out.detach().to(self.dtype)
        if self.baseline is not None:
            d = d - self.baseline[:, index].to(d)
        self.diff[index] = d.masked_fill(~self.real, 0)
        if index != self.recorded:
            raise RuntimeError(f"patching: source {index} ran out of order (expected {self.recorded})")
        if self.keep_total:
            self.total = self.diff[index].clone() if self.total is None else self.total + self.diff[index]
        self.recorded += 1

    def _patched(self, col, x):
        """x minus the sum of (O_u - B_u) over the sources removed into target `col`; x itself when none is."""
        if col not in self.patched_cols:
            return x
        how, k, rows = self.plan[col]
        if how == "rows":  # each row's own removed sources: [k, batch] weights on [k, batch, seq, d]
            delta = torch.einsum("ub,ubtd->btd", self.per_row[:k, col], self.diff[:k])
        elif how == "removed":
            delta = self.diff[rows].sum(0)
        else:
            if self.recorded != k:
                raise RuntimeError(f"patching: target {self.graph.targets[col]} reads {k} sources, {self.recorded} ran")
            delta = self.total - self.diff[rows].sum(0)
        return (x.to(self.dtype) - delta).to(x.dtype)

    def _hook_attention(self, model, block, layer, handles):
        """q, k, v each read the attention norm (if any) of their own patched residual; a fused qkv projection is
        recomputed slice by slice from the three inputs."""
        a, get = self.arch, block.get_submodule
        cols = [self.graph.targets.index(f"a{layer}.{p}") for p in "qkv"]
        attn_norm = get(a["attn_norm"]) if a["attn_norm"] else None
        read = (lambda x: attn_norm.forward(x)) if attn_norm is not None else (lambda x: x)  # forward: no hooks
        own = lambda c: read(self._patched(c, self.resid[layer]))  # noqa: E731
        handles.append(_pre(attn_norm or get(a["attn"]), lambda x: self.resid.__setitem__(layer, x) or x))
        if a["qkv"]:
            cfg, fused = model.config, get(a["qkv"])
            head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            sizes = [cfg.num_attention_heads * head_dim] + [cfg.num_key_value_heads * head_dim] * 2
            biases = fused.bias.split(sizes) if fused.bias is not None else [None] * 3

            def fused_hook(mod, args, out):
                if not self.patched_cols.intersection(cols):
                    return None
                parts = zip(cols, fused.weight.split(sizes), biases)
                return torch.cat([torch.nn.functional.linear(own(c), w, b) for c, w, b in parts], -1)

            handles.append(fused.register_forward_hook(fused_hook))
        else:
            for p, c in zip("qkv", cols):
                handles.append(_pre(get(a[p]), lambda x, c=c: own(c) if c in self.patched_cols else x))

    @contextmanager
    def attach(self, model):
        a, cols = self.arch, {name: i for i, name in enumerate(self.graph.targets)}
        handles = []

        def source(module, index):
            handles.append(module.register_forward_hook(lambda mod, args, out: self._keep_source(index, out)))

        def target(module, name):
            handles.append(_pre(module, lambda x: self._patched(cols[name], x)))

        try:
            source(model.get_submodule(a["embed"]), 0)
            for layer, block in enumerate(model.get_submodule(a["layers"])):
                get = block.get_submodule
                if self.graph.attn_inputs == "qkv":
                    self._hook_attention(model, block, layer, handles)
                else:
                    target(get(a["attn_norm"] or a["attn"]), f"a{layer}")
                source(get(a["attn_out"]), 1 + 2 * layer)
                target(get(a["mlp_norm"] or a["mlp"]), f"m{layer}")
                source(get(a["mlp_out"]), 2 + 2 * layer)
            target(model.get_submodule(a["final_norm"]), "logits")
            yield self
        finally:
            for h in handles:
                h.remove()


def _pre(module, fn):
    return module.register_forward_pre_hook(first_input(fn), with_kwargs=True)


def patched_losses(model, input_ids, loss_mask, attention_mask=None, graph=None, keep=None, baseline="zero",
                   baseline_acts=None, target="nll", tau=1.0, prefix: int = 0) -> torch.Tensor:
    """Per-sample loss [batch] (fp32, CPU) with every edge outside `keep` replaced by its baseline (method.md 2.7).

    keep: bool [n_src, n_dst] within the graph's mask (None = every edge: the model's own loss), or [batch, n_src,
    n_dst] for one kept set per row (many kept sets of one sample in one forward). baseline: "zero",
    "mean" (baseline_acts [n_src, d] from `mean_source_outputs`) or "input" (baseline_acts [batch, n_src, seq, d],
    the source outputs of a baseline input). target, tau: as in `edge_scores`. Batch as in `edge_scores`.
    prefix: with baseline "input", how many leading positions the baseline input shares with the input (every row
    the same tokens there, none scored). There O_u = B_u, so no patch changes them: they run once, unpatched, and
    only the positions after them run patched, on their key/value cache (`prefix_cache`).
    """
    graph = graph if graph is not None else build_graph(model)
    input_ids, loss_mask, attention_mask = check_batch(model, graph, input_ids, loss_mask, attention_mask)
    check_loss(target, tau)
    removed = check_keep(keep, graph, len(input_ids))
    d = model.get_submodule(architecture(model)["embed"]).weight.shape[1]
    B = baseline_tensor(baseline, baseline_acts, graph, input_ids, d)
    if prefix and baseline != "input":
        raise ValueError(f"a shared prefix needs a baseline input (baseline='input'); got baseline={baseline!r}")
    if not 0 <= prefix < input_ids.shape[1]:
        raise ValueError(f"prefix must be in [0, {input_ids.shape[1]}) positions; got {prefix}")
    with scoring_mode(model), torch.no_grad():
        cache = prefix_cache(model, input_ids, attention_mask, prefix, len(input_ids)) if prefix else None
        if prefix:
            B = B[:, :, prefix:]
        patcher = Patcher(model, graph, removed, B, attention_mask[:, prefix:].bool())
        with patcher.attach(model):
            losses = sample_losses(model, input_ids, loss_mask, attention_mask, target=target, tau=tau, cache=cache)
    return losses.float().cpu()
