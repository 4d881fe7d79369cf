"""The EAP graph of a decoder (method.md 2.3): which residual-stream writers (sources) feed which readers (targets).

Nodes are whole blocks, not heads: a source writes to the residual stream, a target reads from it. Rows of every score
matrix are sources in the order below, columns are targets, and `mask[u, v]` is True exactly on the real edges.
"""

from dataclasses import dataclass

import torch

ATTN_INPUTS = ("qkv", "joint")


@dataclass(frozen=True)
class Graph:
    """Node names and the edge mask of an `n_layers`-layer decoder.

    sources: `input`, then `a{l}`, `m{l}` per layer (n_src = 2L+1).
    targets: per layer `a{l}.q`, `a{l}.k`, `a{l}.v` (or one `a{l}` when attn_inputs="joint"), `m{l}`; then `logits`.
    mask: bool [n_src, n_dst], True on real edges.
    """

    n_layers: int
    attn_inputs: str
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    mask: torch.Tensor

    @property
    def n_src(self) -> int:
        return len(self.sources)

    @property
    def n_dst(self) -> int:
        return len(self.targets)

    @property
    def n_edges(self) -> int:
        """4L^2+3L+1 for qkv, 2L^2+3L+1 for joint."""
        return int(self.mask.sum())

    def n_preceding(self, target: str) -> int:
        """How many sources (a prefix of `sources`) write before `target` reads: its row count in the mask."""
        return int(self.mask[:, self.targets.index(target)].sum())


def make_graph(n_layers: int, attn_inputs: str = "qkv") -> Graph:
    """Build the graph for `n_layers` layers; see Graph."""
    if attn_inputs not in ATTN_INPUTS:
        raise ValueError(f"attn_inputs must be one of {ATTN_INPUTS}; got {attn_inputs!r}")
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1; got {n_layers}")
    sources = ["input"]
    targets = []
    n_before = []  # number of sources written before each target reads the residual stream
    for l in range(n_layers):
        attn_targets = [f"a{l}.q", f"a{l}.k", f"a{l}.v"] if attn_inputs == "qkv" else [f"a{l}"]
        targets += attn_targets
        n_before += [len(sources)] * len(attn_targets)  # input, a0, m0, ..., m{l-1}
        sources.append(f"a{l}")
        targets.append(f"m{l}")
        n_before.append(len(sources))  # ... plus a{l}
        sources.append(f"m{l}")
    targets.append("logits")
    n_before.append(len(sources))  # every source

    mask = torch.zeros(len(sources), len(targets), dtype=torch.bool)
    for v, k in enumerate(n_before):
        mask[:k, v] = True
    return Graph(n_layers, attn_inputs, tuple(sources), tuple(targets), mask)


def build_graph(model, attn_inputs: str = "qkv") -> Graph:
    """The graph of a Hugging Face decoder (its layer count from `model.config.num_hidden_layers`)."""
    return make_graph(model.config.num_hidden_layers, attn_inputs)

