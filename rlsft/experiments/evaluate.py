"""Accuracy of every stage of a pair on a dataset (the paper's Appendix C table), with truncated answers.

Stages that are derived models (GRPO or an arm of method.md 8) also get their training budget (rlsft.training.derived):
learning rate, optimizer steps, trained answer tokens, sampled answers and wall time, so arms are compared at a stated
cost, and whether each matches the reference arm's (``model_pair.budget_reference``) within 10%, with a one-line
warning when one does not (rlsft.training.budget).
"""

from __future__ import annotations

from scipy.stats import binomtest

from ..training.budget import check_arms, match_text, warning_line
from ..training.derived import training_budget
from .common import RunContext, markdown_table

BUDGET = ("lr", "optimizer_steps", "answer_tokens", "samples", "wall_s")
READS_INTERNALS = False
DATA_PARALLEL = False


def check(cfg) -> None:
    """Nothing beyond rlsft.config.validate's checks of the sections it reads."""


def tags(cfg) -> list[str]:
    """No W&B tags beyond the pair's and the dataset's."""
    return []


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
        budget = training_budget(ctx.model_spec(stage), ctx.cache_dir)
        if budget is not None:
            results[stage.name]["budget"] = budget
        ctx.tracker.log({f"{stage.name}/accuracy": correct / n, f"{stage.name}/truncated": truncated})
        ctx.release(stage)
    warning = None
    if any("budget" in r for r in results.values()):
        arms = ctx.arms()
        arm_of = {stage: arm for arm, stages in arms.items() for stage in stages}
        reference, gaps, arm_gaps = check_arms({s: r.get("budget") for s, r in results.items()}, arms,
                                               cfg.model_pair.get("budget_reference"))
        columns += [f"train_{k}" for k in BUDGET] + [f"budget_vs_{reference}", f"arm_budget_vs_{reference}"]
        for row, (stage, r) in zip(rows, results.items()):
            b = r.get("budget")  # None: not a trained stage (blank); a field a budget lacks: n/a
            row += ["" if b is None else "n/a" if b.get(k) is None else round(b[k]) if k == "wall_s" else b[k]
                    for k in BUDGET] + [match_text(gaps.get(stage)), match_text(arm_gaps.get(arm_of.get(stage)))]
        warning = warning_line(gaps, reference, arm_gaps)
    ctx.write_table("accuracy", columns, rows)
    ctx.write_json("accuracy.json", results)
    print(markdown_table(columns, rows) + (warning + "\n" if warning else ""))
    return results
