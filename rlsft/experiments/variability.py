"""Token variability by accuracy bin (method.md section 6), per stage.

Each question is answered ``variability.n_samples`` times at ``variability.temperature`` (seed
``variability.seed``; cached). Outputs: ``variability_bins`` (per stage and bin: questions, mean CV with a 95%
t-interval, share of answers cut by the token limit), ``variability_questions`` (one row per question) and the bar
chart ``variability_cv``.
"""

from __future__ import annotations

import math

import numpy as np

from ..variability import BIN_LABELS, bin_summary, question_stats
from .common import RunContext, markdown_table


def run(cfg, ctx: RunContext) -> dict:
    vc = cfg.variability
    records = ctx.records()
    sampling = ctx.sampling(n_samples=vc.n_samples, temperature=vc.temperature, seed=vc.seed)
    bin_cols = ["stage", "bin", "questions", "with_cv", "mean_cv", "ci_low", "ci_high", "answers", "truncated_share"]
    q_cols = ["stage", "id", "n", "accuracy", "cv", "mean_tokens", "truncated", "bin"]
    bin_rows, q_rows, results = [], [], {}
    for stage in ctx.stages():
        gens = ctx.generations(stage, records, sampling)
        ctx.release(stage)
        rows = question_stats(gens, vc.exclude_truncated)
        bins = bin_summary(rows)
        q_rows += [[stage.name, r.id, r.n, r.accuracy, r.cv, r.mean_tokens, r.truncated, BIN_LABELS[r.bin]]
                   for r in rows]
        bin_rows += [[stage.name, *(b[c] for c in bin_cols[1:])] for b in bins]
        truncated = sum(g["finish_reason"] == "length" for g in gens)
        results[stage.name] = {"bins": bins, "questions": len(rows), "answers": len(gens),
                               "truncated_share": truncated / len(gens),
                               "mean_accuracy": float(np.mean([r.accuracy for r in rows]))}
        ctx.tracker.log({f"{stage.name}/truncated_share": truncated / len(gens)})
    ctx.write_table("variability_bins", bin_cols, bin_rows)
    ctx.write_table("variability_questions", q_cols, q_rows)
    ctx.save_figure("variability_cv", figure(results))
    ctx.write_json("variability.json", {"sampling": {"n_samples": vc.n_samples, "temperature": vc.temperature,
                                                     "top_p": sampling.top_p, "seed": vc.seed,
                                                     "max_new_tokens": sampling.max_new_tokens,
                                                     "exclude_truncated": vc.exclude_truncated},
                                        "stages": results})
    print(markdown_table(bin_cols, bin_rows))
    return results


def figure(results: dict):
    """Mean CV per accuracy bin, one bar per stage, 95% t-interval whiskers, truncated share written on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(results)
    width = 0.8 / len(stages)
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, stage in enumerate(stages):
        bins = results[stage]["bins"]
        x = np.arange(len(bins)) + (k - (len(stages) - 1) / 2) * width
        mean = np.array([b["mean_cv"] for b in bins], dtype=float)
        err = np.array([[m - b["ci_low"], b["ci_high"] - m] for m, b in zip(mean, bins)], dtype=float).T
        ax.bar(x, np.nan_to_num(mean), width, yerr=np.nan_to_num(err), capsize=3, label=stage)
        for xi, m, b in zip(x, mean, bins):
            if b["answers"] and not math.isnan(m):
                top = b["ci_high"] if not math.isnan(b["ci_high"]) else m
                ax.text(xi, top, f"n={b['questions']}\ncut {b['truncated_share']:.0%}", ha="center", va="bottom",
                        fontsize=6)
    ax.set_xticks(np.arange(len(BIN_LABELS)), BIN_LABELS)
    ax.set_xlabel("question accuracy over samples")
    ax.set_ylabel("CV of output token count")
    ax.legend()
    fig.tight_layout()
    return fig
