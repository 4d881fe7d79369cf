"""Where the update meets the circuit (method.md 9): the share of a stage's weight update (mass sum |delta| and
changed-element count) inside the decoder blocks that carry the top EAP mass, against those blocks' share of all
parameters. A share of the update above the parameter share means the update concentrates where the behaviour runs.
"""

from __future__ import annotations

import math
import re

import numpy as np


def block_eap_mass(W: np.ndarray, mask: np.ndarray, sources, targets, n_layers: int) -> np.ndarray:
    """EAP mass per decoder block [L]: mean over samples of sum |W| of the edges touching the block, each edge's
    |W| split evenly between its two ends (the embedding and the logits own no block). W: [S, n_src, n_dst]."""
    absw = np.abs(np.asarray(W, dtype=np.float64)).mean(0) * np.asarray(mask)  # [n_src, n_dst]
    mass = np.zeros(n_layers)

    def layer(node: str):
        m = re.match(r"[am](\d+)", node)
        return int(m.group(1)) if m else None

    for i, s in enumerate(sources):
        for j, t in enumerate(targets):
            for end in (layer(str(s)), layer(str(t))):
                if end is not None:
                    mass[end] += absw[i, j] / 2
    return mass


def top_blocks(mass: np.ndarray, share: float = 0.25) -> list[int]:
    """The ceil(share * L) blocks with the largest EAP mass."""
    return sorted(np.argsort(-mass)[: max(1, math.ceil(share * len(mass)))].tolist())


def update_meets_circuit(block_stats: dict[str, dict], blocks: list[int]) -> dict[str, float]:
    """Shares inside ``blocks`` of the update's mass, of its changed elements and of the parameters, over the decoder
    blocks only (block_stats: lenses.aggregate(rows, "block"))."""
    inside = {f"block {b}" for b in blocks}
    decoder = {g: s for g, s in block_stats.items() if g.startswith("block ")}

    def share(key: str) -> float:
        total = sum(s[key] for s in decoder.values())
        return sum(s[key] for g, s in decoder.items() if g in inside) / total if total else float("nan")

    return {"blocks": list(blocks), "mass_share": share("mass"), "changed_share": share("changed"),
            "param_share": share("numel")}
