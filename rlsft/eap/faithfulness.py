"""Faithfulness curves (method.md 2.7): how large a share of the edges must be kept for the model to keep its behaviour.

For a kept set K (every other edge patched to its baseline), `f(K) = (L_none - L_K) / (L_none - L_clean)` with the
losses averaged over samples before the ratio. Kept sets are pruned to the edges on a path input -> logits
(`kept_edges`), and the x axis is the kept share after pruning. Three curves per stage, all on one grid:

  cross    cross-fitted: over S random halvings, each half is ranked on the other half's scores; the curve is the
           mean over splits (concentration *and* consistency across questions);
  control  random edges (same kept counts, pruned the same way), mean over draws per sample; it does not depend on
           the split, so it is computed once per sample;
  within   each sample ranked on its own W_k (concentration inside one question).

Cost: the patched forwards. Identical (sample, kept set) pairs are evaluated once (neighbouring splits often rank the
same top edges), and each forward batches rows of one sample with different kept sets (`patched_losses` takes one kept
set per row). The statistics are in rlsft.eap.faithfulness_stats.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .graph import Graph
from .patching import patched_losses

LEVEL = 0.8
RANKINGS = ("abs_mean", "mean_abs")


def share_grid(n_points: int = 20) -> np.ndarray:
    """Kept shares 1/n, 2/n, ..., 1 (f at share 0 is 0 by definition and needs no forward)."""
    if n_points < 2:
        raise ValueError(f"a share grid needs >= 2 points; got {n_points}")
    return np.arange(1, n_points + 1) / n_points


def _block_of(graph: Graph) -> np.ndarray:
    """For each target, the source index of the block it feeds (-1 for logits): a{l}.q/k/v -> a{l}, m{l} -> m{l}."""
    return np.array([-1 if t == "logits" else graph.sources.index(t.split(".")[0]) for t in graph.targets])


_BLOCKS: dict = {}


def _blocks(graph: Graph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the first target of each group, the block (source index) each group feeds (-1: logits), each target's group),
    once per graph shape. A block's read targets are adjacent columns (q, k, v; or the MLP input): one group."""
    key = (graph.n_layers, graph.attn_inputs)
    if key not in _BLOCKS:
        block = _block_of(graph)
        new_group = np.r_[True, block[1:] != block[:-1]]
        starts = np.flatnonzero(new_group)
        _BLOCKS[key] = starts, block[starts], np.cumsum(new_group) - 1
    return _BLOCKS[key]


def _bits(rows: np.ndarray) -> list[int]:
    """Each row of a bool matrix as a Python int bit set (bit i = column i)."""
    packed = np.packbits(rows, axis=1, bitorder="little")
    words = np.ascontiguousarray(np.pad(packed, ((0, 0), (0, -packed.shape[1] % 8)))).view("<u8")  # 64-bit words
    if words.shape[1] == 1:
        return words[:, 0].tolist()
    return [sum(w << (64 * i) for i, w in enumerate(row)) for row in words.tolist()]


def _unbits(x: int, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(x.to_bytes((n + 7) // 8, "little"), np.uint8), bitorder="little")[:n] \
        .astype(bool)


def prune_edges(keep: np.ndarray, graph: Graph) -> np.ndarray:
    """The edges of `keep` [n_src, n_dst] (bool) that lie on a path input -> logits through kept edges.

    A block is reached when any of its read edges (q, k, v or the MLP input) comes from a reached source; it is
    useful when one of its kept out-edges goes to a useful target (logits, or a read of a useful block). Both
    passes run on bit sets over [n_src, n_groups] (the plasmode prunes ~10^5 kept sets: 0.05 ms each, not 0.65).
    """
    starts, owner, group = _blocks(graph)
    reads = np.logical_or.reduceat(keep, starts, axis=1)  # [n_src, n_groups]: source -> any read of that group
    by_group, by_source = _bits(reads.T), _bits(reads)
    reached = 1  # the input
    for g, u in enumerate(owner):  # groups in forward order: a block reads only earlier sources
        if u >= 0 and by_group[g] & reached:
            reached |= 1 << int(u)
    useful = sum(1 << int(g) for g in np.flatnonzero(owner == -1))
    for g in range(len(owner) - 1, -1, -1):  # backwards: a block's out-edges go to later targets only
        u = owner[g]
        if u >= 0 and by_source[u] & useful:
            useful |= 1 << g
    useful_t = _unbits(useful, len(owner))[group]
    return keep & _unbits(reached, graph.n_src)[:, None] & useful_t[None, :]


def _order(ranking, mask: np.ndarray) -> np.ndarray:
    """Real edges' flat indices, highest ranking first (ties: first in row-major order)."""
    flat = np.flatnonzero(mask)
    values = np.asarray(ranking, float).reshape(-1)[flat]
    return flat[np.argsort(-values, kind="stable")]


def _top(order: np.ndarray, m: int, shape) -> np.ndarray:
    keep = np.zeros(int(np.prod(shape)), bool)
    keep[order[:m]] = True
    return keep.reshape(shape)


def kept_edges(ranking, graph: Graph, k: int, prune: bool = True) -> torch.Tensor:
    """The kept set bool [n_src, n_dst]: the `k` highest-ranked real edges (ties in row-major order), then (prune)
    only those on a path input -> logits through kept edges (method.md 2.7)."""
    mask = graph.mask.numpy()
    keep = _top(_order(torch.as_tensor(ranking).numpy(), mask), int(k), mask.shape)
    return torch.from_numpy(prune_edges(keep, graph) if prune else keep)


def kept_at_count(order: np.ndarray, graph: Graph, count: int) -> np.ndarray:
    """The pruned kept set of the smallest top-m (by `order`) whose pruned size reaches `count` edges.

    Pruning is monotone in the kept set, so the pruned size is non-decreasing in m: bisection over m.
    """
    shape = tuple(graph.mask.shape)
    lo, hi = min(max(1, count), len(order)), len(order)  # pruned size <= m; the full set keeps every edge
    while lo < hi:
        mid = (lo + hi) // 2
        if prune_edges(_top(order, mid, shape), graph).sum() >= count:
            hi = mid
        else:
            lo = mid + 1
    return prune_edges(_top(order, lo, shape), graph)


def rank_scores(W: np.ndarray, how: str = "abs_mean") -> np.ndarray:
    """The ranking [n_src, n_dst] from scores W [n, n_src, n_dst]: |mean_k W_k| (default; an edge whose sign flips
    between questions cancels) or mean_k |W_k|."""
    if how == "abs_mean":
        return np.abs(W.mean(0))
    if how == "mean_abs":
        return np.abs(W).mean(0)
    raise ValueError(f"ranking must be one of {RANKINGS}; got {how!r}")


def split_halves(n: int, n_splits: int, seed: int = 0) -> np.ndarray:
    """[n_splits, n] in {0, 1}: balanced random halvings (each sample is ranked on the other half, once per split)."""
    if n < 4:
        raise ValueError(f"faithfulness needs at least 4 samples (two per half, ranked on the other); got {n}")
    if n_splits < 1:
        raise ValueError(f"faithfulness needs >= 1 split; got {n_splits}")
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(np.arange(n) % 2) for _ in range(n_splits)])


class Plan:
    """The kept sets each curve needs, per sample and share, and their losses once evaluated.

    W [n, n_src, n_dst]; halves [S, n]; `evaluate(pairs)` takes [(sample, kept bool [n_src, n_dst]), ...] and returns
    their losses (one patched forward per pair; the empty and the full set are the ends of the curve).
    """

    def __init__(self, W, graph: Graph, halves, evaluate, draws: int = 5, ranking: str = "abs_mean", seed: int = 0,
                 within: bool = True):
        self.W, self.graph, self.halves, self.evaluate = np.asarray(W, float), graph, np.asarray(halves), evaluate
        self.n, self.E = len(self.W), graph.n_edges
        self.draws, self.within = draws, within
        mask = graph.mask.numpy()
        self.cross_orders = [[_order(rank_scores(self.W[h != side], ranking), mask) for side in (0, 1)]
                             for h in self.halves]
        rng = np.random.default_rng([seed, 7])  # the control's draws do not depend on the split seed
        self.control_orders = [[_order(rng.random(mask.shape), mask) for _ in range(draws)] for _ in range(self.n)]
        self.within_orders = [_order(rank_scores(self.W[k : k + 1], ranking), mask) for k in range(self.n)]
        full, empty = mask.copy(), np.zeros_like(mask)
        ends = self.evaluate([(k, m) for k in range(self.n) for m in (full, empty)])
        self.clean, self.none = ends[0::2], ends[1::2]
        self.shares, self.cross, self.control, self.inside, self.counts = [], [], [], [], []

    def add(self, shares) -> None:
        """Evaluate every curve at these kept shares (deduplicated per sample)."""
        shares = [float(q) for q in shares if not any(abs(q - s) < 1e-12 for s in self.shares)]
        if not shares:
            return
        jobs, keys = {}, []  # (sample, mask bytes) -> (sample, mask); keys in the order of the results below
        for q in shares:
            c = max(1, math.ceil(q * self.E - 1e-9))
            keys.append(self._plan_share(c, jobs))
        losses = dict(zip(jobs, self.evaluate(list(jobs.values())))) if jobs else {}
        for q, (cross, control, inside, counts) in zip(shares, keys):
            self.shares.append(q)
            self.cross.append([[losses[key] for key in row] for row in cross])  # [S, n]
            self.control.append([np.mean([losses[key] for key in row]) if row else np.nan for row in control])
            self.inside.append([losses[key] for key in inside] if self.within else [np.nan] * self.n)
            self.counts.append(counts)

    def _plan_share(self, count: int, jobs: dict):
        def want(k, keep):
            key = (k, keep.tobytes())
            jobs.setdefault(key, (k, keep))
            return key

        sizes = []
        cross = []
        for h, orders in zip(self.halves, self.cross_orders):
            sets = [kept_at_count(o, self.graph, count) for o in orders]
            sizes += [int(s.sum()) for s in sets]
            cross.append([want(k, sets[h[k]]) for k in range(self.n)])
        control = [[want(k, kept_at_count(o, self.graph, count)) for o in self.control_orders[k]]
                   for k in range(self.n)]
        inside = [want(k, kept_at_count(self.within_orders[k], self.graph, count)) for k in range(self.n)] \
            if self.within else []
        return cross, control, inside, sizes

    def result(self) -> dict:
        """Per-sample losses on the sorted shares: clean, none [n]; cross [S, X, n]; control, within [X, n]; the
        cross-fitted kept sets' pruned sizes [X, 2S] (at or just above ceil(share * E))."""
        order = np.argsort(self.shares)
        return dict(shares=np.asarray(self.shares)[order], clean=np.asarray(self.clean), none=np.asarray(self.none),
                    cross=np.asarray(self.cross)[order].transpose(1, 0, 2), control=np.asarray(self.control)[order],
                    within=np.asarray(self.inside)[order], sizes=np.asarray(self.counts)[order], n_edges=self.E)


def crossing(shares, f, level: float = LEVEL) -> tuple[float, float] | None:
    """The grid interval (x_lo, x_hi) where the running maximum of `f` (f(0) = 0 prepended) first reaches `level`."""
    x = np.concatenate([[0.0], shares])
    env = np.maximum.accumulate(np.concatenate([[0.0], f]))
    above = np.flatnonzero(env >= level)
    if len(above) == 0 or above[0] == 0:
        return None
    return float(x[above[0] - 1]), float(x[above[0]])


def faithfulness_losses(W, graph: Graph, evaluate, grid, n_splits: int = 10, draws: int = 5,
                        ranking: str = "abs_mean", seed: int = 0, tol: float = 0.01, within: bool = True,
                        level: float = LEVEL) -> dict:
    """Per-sample losses of the three curves on `grid` plus a bisection to `tol` (share of E) around the
    cross-fitted curve's crossing of `level` (method.md 2.7). See `Plan` for W and evaluate; `seed` draws the
    splits (the control's draws are fixed: they do not depend on it)."""
    halves = split_halves(len(W), n_splits, seed)
    plan = Plan(W, graph, halves, evaluate, draws, ranking, seed=0, within=within)
    plan.add(grid)
    for _ in range(20):
        res = plan.result()
        f = cross_curve(res)
        bracket = crossing(res["shares"], f, level)
        if bracket is None or bracket[1] - bracket[0] <= tol:
            break
        plan.add([(bracket[0] + bracket[1]) / 2])
    return plan.result() | {"halves": halves}


def cross_curve(res: dict) -> np.ndarray:
    """The cross-fitted curve [X]: mean over splits of each split's f (ratio of sample means)."""
    none, clean = res["none"].mean(), res["clean"].mean()
    return ((none - res["cross"].mean(-1)) / (none - clean)).mean(0)


def shared_prefix(input_ids, baseline_ids) -> list[int]:
    """Per row, how many leading positions the baseline input holds the same token as the input (its length if
    all): up to there O_u = B_u, so a patched forward may start there (`patched_losses(prefix=)`)."""
    same = torch.as_tensor(input_ids) == torch.as_tensor(baseline_ids)
    return same.int().cumprod(1).sum(1).tolist()


def patch_evaluator(model, graph: Graph, input_ids, loss_mask, attention_mask, baseline_acts=None,
                    batch_size: int = 8, on_rows=None, shared=None, **loss):
    """`evaluate(pairs)` for `Plan` on a model: each pair's patched loss, the rows of one sample batched together
    (its padding columns cut away). baseline_acts [n, n_src, seq, d] per sample (a counterfactual, resampled or
    mean-positional baseline; None: zero); shared: per sample, the leading positions its baseline input shares with
    it (`shared_prefix`; None: none), which run once per batch on a key/value cache, not once per row; a batch then
    takes more rows, as many tokens as `batch_size` full rows. `on_rows(k)` after each batch of k patched forwards
    (progress); loss: target, tau for `patched_losses`."""
    input_ids, loss_mask, attention_mask = (torch.as_tensor(t) for t in (input_ids, loss_mask, attention_mask))
    if shared is not None and baseline_acts is None:
        raise ValueError("a shared prefix needs a baseline input's activations (baseline_acts)")

    def evaluate(pairs) -> np.ndarray:
        out = np.empty(len(pairs))
        by_sample: dict[int, list[int]] = {}
        for i, (k, _) in enumerate(pairs):
            by_sample.setdefault(int(k), []).append(i)
        for k, items in sorted(by_sample.items()):
            real = attention_mask[k].bool().nonzero()[:, 0]
            cols = slice(int(real[0]), int(real[-1]) + 1)
            first_scored = int(loss_mask[k, cols].nonzero()[0, 0]) if loss_mask[k, cols].any() else 0
            prefix = max(0, min(shared[k] - cols.start, first_scored - 1)) if shared is not None else 0
            length = cols.stop - cols.start
            rows_per_batch = max(batch_size, batch_size * length // max(1, length - prefix))
            for start in range(0, len(items), rows_per_batch):
                chunk = items[start : start + rows_per_batch]
                rows = torch.full((len(chunk),), k)
                keep = torch.from_numpy(np.stack([pairs[i][1] for i in chunk]))
                patch = dict(baseline="zero") if baseline_acts is None else \
                    dict(baseline="input", baseline_acts=baseline_acts[rows][:, :, cols], prefix=prefix)
                out[chunk] = patched_losses(model, input_ids[rows][:, cols], loss_mask[rows][:, cols],
                                            attention_mask[rows][:, cols], graph=graph, keep=keep, **patch,
                                            **loss).double().numpy()
                if on_rows is not None:
                    on_rows(len(chunk))
        return out

    return evaluate


def baseline_outputs(model, graph: Graph, input_ids, attention_mask, batch_size: int = 8) -> torch.Tensor:
    """Every source's output [n, n_src, seq, d] (fp32, zero at padding) on baseline inputs (the corrupted twins):
    B_u for a counterfactual or resampled baseline."""
    from .scores import check_batch, scoring_mode, source_outputs

    out = []
    with scoring_mode(model):
        for i in range(0, len(input_ids), batch_size):
            ids, am = input_ids[i : i + batch_size], attention_mask[i : i + batch_size]
            ids, _, am = check_batch(model, graph, ids, torch.zeros_like(torch.as_tensor(ids)), am, scored=False)
            out.append(source_outputs(model, ids, am, graph).float().cpu())
    return torch.cat(out)


def mean_positional(acts: torch.Tensor, attention_mask) -> torch.Tensor:
    """The mean-positional baseline [n, n_src, seq, d]: at each position, counted from a sample's first real token,
    the mean of the sources' outputs over every sample that reaches that position (acts [n, n_src, seq, d] from
    `baseline_outputs` of the samples themselves, left or right padded)."""
    am = torch.as_tensor(attention_mask).bool()
    n, _, T, _ = acts.shape
    start = am.float().argmax(1)  # first real position of each sample
    total = torch.zeros_like(acts[0])
    count = torch.zeros(T)
    for k in range(n):
        length = int(am[k].sum())
        total[:, :length] += acts[k, :, start[k] : start[k] + length]
        count[:length] += 1
    mean = total / count.clamp(min=1)[None, :, None]
    out = torch.zeros_like(acts)
    for k in range(n):
        length = int(am[k].sum())
        out[k, :, start[k] : start[k] + length] = mean[:, :length]
    return out
