"""Token variability by accuracy bin (method.md section 6), per stage.

Each question is answered ``variability.n_samples`` times at ``variability.temperature`` (seed
``variability.seed``; cached). Outputs: ``variability_bins`` (per stage, binning method and bin: questions, mean CV with
a 95% interval, the CV within correct answers for the split-half method, share of answers cut by the token limit),
``variability_questions`` (one row per question) and the bar chart ``variability_cv`` (one panel per method).
"""

from __future__ import annotations

import math

import numpy as np

from ..variability import BIN_LABELS, METHODS, bin_summary, question_stats
from .common import RunContext, markdown_table, stage_color

BIN_COLS = ["stage", "method", "bin", "questions", "with_cv", "mean_cv", "ci_low", "ci_high", "mean_cv_correct",
            "ci_low_correct", "ci_high_correct", "answers", "truncated_share"]
Q_COLS = ["stage", "id", "n", "accuracy", "cv", "mean_tokens", "truncated", "bin", "bin_split", "cv_split",
          "cv_correct_split"]
READS_INTERNALS = False
DATA_PARALLEL = False


def check(cfg) -> None:
    """Nothing beyond rlsft.config.validate's checks of the sections it reads."""


def tags(cfg) -> list[str]:
    """No W&B tags beyond the pair's and the dataset's."""
    return []


def missing(value):
    """A value a table can show: "n/a" for none (a bin without two questions has no interval), else the value."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _json(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def run(cfg, ctx: RunContext) -> dict:
    vc = cfg.variability
    records = ctx.records()
    sampling = ctx.sampling(n_samples=vc.n_samples, temperature=vc.temperature, seed=vc.seed)
    bin_rows, q_rows, results = [], [], {}
    for stage in ctx.stages():
        gens = ctx.generations(stage, records, sampling)
        ctx.release(stage)
        rows = question_stats(gens, vc.exclude_truncated)
        bins = {m: [{k: _json(v) for k, v in b.items()} for b in bin_summary(rows, m)] for m in METHODS}
        q_rows += [[stage.name, r.id, r.n, r.accuracy, missing(r.cv), missing(r.mean_tokens), r.truncated,
                    BIN_LABELS[r.bin], BIN_LABELS[r.bin_split], missing(r.cv_split), missing(r.cv_correct_split)]
                   for r in rows]
        bin_rows += [[stage.name, *(missing(b[c]) for c in BIN_COLS[1:])] for m in METHODS for b in bins[m]]
        truncated = sum(g["finish_reason"] == "length" for g in gens)
        results[stage.name] = {"bins": bins["paper"], "bins_split": bins["split"], "questions": len(rows),
                               "answers": len(gens), "truncated_share": truncated / len(gens),
                               "mean_accuracy": float(np.mean([r.accuracy for r in rows]))}
        ctx.tracker.log({f"{stage.name}/truncated_share": truncated / len(gens)})
    ctx.write_table("variability_bins", BIN_COLS, bin_rows)
    ctx.write_table("variability_questions", Q_COLS, q_rows)
    ctx.save_figure("variability_cv", figure(results))
    ctx.write_json("variability.json", {"sampling": {"n_samples": vc.n_samples, "temperature": vc.temperature,
                                                     "top_p": sampling.top_p, "seed": vc.seed,
                                                     "max_new_tokens": sampling.max_new_tokens,
                                                     "exclude_truncated": vc.exclude_truncated},
                                        "stages": results})
    print(markdown_table(BIN_COLS, bin_rows))
    return results


def _cv_top(results: dict) -> float:
    """The y-axis top: 1.5x the largest bin mean. An n = 2 bin's interval ([0, 4.06] on the default run) would
    otherwise set the scale and squash every other bar; a whisker past the top is cut and its end written."""
    means = [b["mean_cv"] for r in results.values() for key in ("bins", "bins_split") for b in r.get(key, [])
             if b["mean_cv"] is not None]
    return 1.5 * max(means) if means and max(means) > 0 else 1.0


def _bars(ax, results: dict, key: str, title: str, top: float) -> None:
    stages = list(results)
    width = 0.8 / len(stages)
    for k, stage in enumerate(stages):
        bins = results[stage][key]
        x = np.arange(len(bins)) + (k - (len(stages) - 1) / 2) * width
        mean = np.array([np.nan if b["mean_cv"] is None else b["mean_cv"] for b in bins], dtype=float)
        # whiskers only where there is an interval (two or more questions); none is drawn as none, not as 0
        err = np.array([[m - b["ci_low"], b["ci_high"] - m] if b["ci_low"] is not None else [np.nan, np.nan]
                        for m, b in zip(mean, bins)], dtype=float).T
        ax.bar(x, np.nan_to_num(mean), width, yerr=err, capsize=3, label=stage, color=stage_color(stage))
        if key == "bins_split":
            correct = [np.nan if b["mean_cv_correct"] is None else b["mean_cv_correct"] for b in bins]
            ax.plot(x, correct, "o", mfc="none", color="k", ms=4, label="within correct answers" if k == 0 else None)
        for xi, m, b in zip(x, mean, bins):
            if b["answers"] and not math.isnan(m):
                end = b["ci_high"] if b["ci_high"] is not None else m
                past = end > top  # whisker cut at the top: say where it ends
                note = f"n={b['questions']}\ncut {b['truncated_share']:.0%}" + (f"\nCI to {end:.2f}" if past else "")
                ax.text(xi, min(end, 0.8 * top), note, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(np.arange(len(BIN_LABELS)), BIN_LABELS)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("CV of output token count")
    ax.legend(fontsize=7)


def figure(results: dict):
    """Mean CV per accuracy bin, one bar per stage, 95% interval whiskers, truncated share written on top; left the
    paper's binning (same samples), right the split halves (bin on one half, CV on the other)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    top = _cv_top(results)
    _bars(axes[0], results, "bins", "paper: bin and CV from the same samples", top)
    _bars(axes[1], results, "bins_split", "split halves: bin on one half, CV on the other", top)
    for ax in axes:
        ax.set_xlabel("question accuracy over samples")
        ax.set_ylim(0, top)
    fig.tight_layout()
    return fig
