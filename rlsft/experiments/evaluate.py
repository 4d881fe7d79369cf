"""Accuracy of every stage of a pair on a dataset (the paper's Appendix C table), with truncated answers."""

from __future__ import annotations

from scipy.stats import binomtest

from .common import RunContext, markdown_table


def run(cfg, ctx: RunContext) -> dict:
    records = ctx.records()
    sampling = ctx.sampling()
    columns = ["stage", "model", "dataset", "n", "correct", "accuracy", "ci_low", "ci_high", "truncated"]
    rows, results = [], {}
    for stage in ctx.stages():
        answers = ctx.generations(stage, records, sampling)
        n = len(answers)
        correct = sum(a["correct"] for a in answers)
        truncated = sum(a["finish_reason"] == "length" for a in answers)
        ci = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
        model = stage.model.path or stage.model.package or stage.model.source
        rows.append([stage.name, model, cfg.dataset.name, n, correct, correct / n, ci.low, ci.high, truncated])
        results[stage.name] = {"accuracy": correct / n, "n": n, "correct": correct, "truncated": truncated,
                               "ci95": [ci.low, ci.high]}
        ctx.tracker.log({f"{stage.name}/accuracy": correct / n, f"{stage.name}/truncated": truncated})
        ctx.release(stage)
    ctx.write_table("accuracy", columns, rows)
    ctx.write_json("accuracy.json", results)
    print(markdown_table(columns, rows))
    return results
