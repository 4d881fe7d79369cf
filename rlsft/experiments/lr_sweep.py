"""A learning-rate sweep for one arm of a family (method.md 8; issue 21): where an arm does not learn at the shared
learning rate, each rate of ``lr_sweep.lrs`` (and the arm's own) trains the arm's recipe for one seed, and each model
answers a validation split; the best rate by validation accuracy is printed, to be set in the family config.

The validation split leaves out every question the run evaluates (``dataset``) and every question of the arm's
training pool, so the pick is not made on the questions the comparison is later scored on. Each trained model is a
derived model like the arm's, cached under its own key (the lr is part of the recipe), so a sweep resumes where it
stopped and the picked rate's model is the one the family's runs then load.
"""

from __future__ import annotations

import math

from omegaconf import OmegaConf

from ..data import distinct_records, load_records, normalise_question
from ..errors import RlsftError
from ..overlap import training_pool
from ..seeds import recipe_with
from ..stats import wilson_ci
from ..training.derived import split_spec, training_budget
from .common import RunContext, markdown_table

READS_INTERNALS = False
DATA_PARALLEL = False
MIN_VALIDATION = 20  # questions: fewer cannot separate two rates


def check(cfg) -> None:
    s = cfg.lr_sweep
    if not s.arm:
        raise RlsftError("experiment=lr_sweep needs lr_sweep.arm: the arm (a derived stage of model_pair) to sweep")
    if not s.lrs or any(lr <= 0 for lr in s.lrs):
        raise RlsftError(f"lr_sweep.lrs must be a non-empty list of learning rates > 0, got {list(s.lrs)}")


def tags(cfg) -> list[str]:
    return [f"lr_sweep={cfg.lr_sweep.arm}"]


def swept_stage(ctx: RunContext, arm: str, seed: int | None):
    """The derived stage of ``arm`` trained with ``seed`` (None: the arm's first seed)."""
    stages = {s.name: s for s in ctx.stages()}
    group = ctx.arms().get(arm)
    derived = [n for g in ctx.arms().values() for n in g if ctx.model_spec(stages[n]).get("source") == "derived"]
    if not group or ctx.model_spec(stages[group[0]]).get("source") != "derived":
        arms = sorted({stages[n].get("arm") or n for n in derived})
        raise RlsftError(f"lr_sweep.arm={arm!r} is not a trained arm of model_pair {ctx.cfg.model_pair.name!r} "
                         f"(trained arms: {arms})")
    chosen = [n for n in group if seed is None or stages[n].get("seed") == seed]
    if not chosen:
        raise RlsftError(f"arm {arm!r} has no stage of seed {seed} (its stages: {group}); set lr_sweep.seed to one "
                         "of model_pair.seeds")
    return stages[chosen[0]]


def with_lr(stage, lr: float):
    """A copy of a derived stage whose recipe trains at ``lr`` (its own cache key), named ``<stage>_lr<lr>``."""
    from ..config import StageConfig

    spec = OmegaConf.to_container(stage, resolve=True)
    spec["model"]["recipe"] = recipe_with(spec["model"]["recipe"], lr=lr)
    spec["name"] = f"{stage.name}_lr{lr:g}"
    return OmegaConf.merge(OmegaConf.structured(StageConfig), spec)


def validation_records(ctx: RunContext, stage) -> list:
    """The validation split's distinct questions minus the evaluated ones and the arm's training pool."""
    v = ctx.cfg.lr_sweep.validation
    records, _ = distinct_records(load_records(v))
    evaluated = {normalise_question(r.question) for r in ctx.records()}
    pool = {normalise_question(r.question) for r in training_pool(ctx.model_spec(stage)) or []}
    asked = [normalise_question(r.question) for r in records]
    kept = [r for r, q in zip(records, asked) if q not in evaluated and q not in pool]
    print(f"[lr_sweep] validation split {v.name}: {len(records)} distinct questions; "
          f"{sum(q in evaluated for q in asked)} also in {ctx.cfg.dataset.name} and "
          f"{sum(q in pool for q in asked)} in {stage.name}'s training pool left out: {len(kept)} kept", flush=True)
    if len(kept) < MIN_VALIDATION:
        raise RlsftError(f"the validation split {v.name} keeps {len(kept)} questions (< {MIN_VALIDATION}) once the "
                         f"evaluated and training questions are left out; use more (lr_sweep.validation)")
    return kept


def pick(rows: list[dict], shared: float) -> dict:
    """The best rate by validation accuracy; a tie goes to the rate nearest the arm's own (fewer changes)."""
    return max(rows, key=lambda r: (r["correct"], -abs(math.log(r["lr"] / shared))))


def base_row(ctx: RunContext, stage, records: list) -> dict:
    """The validation accuracy of the model the arm trains from (its recipe's base), the level "learns" is judged by."""
    from ..config import StageConfig

    base = OmegaConf.merge(OmegaConf.structured(StageConfig),
                           {"name": f"{stage.name}_base", "model": ctx.model_spec(stage)["base"]})
    answers = ctx.generations(base, records, ctx.sampling(), label="base")
    ctx.release(base)
    return accuracy(answers)


def accuracy(answers: list[dict]) -> dict:
    """n, correct, accuracy with its Wilson interval, and each answer's correctness (for the paired test)."""
    correct = sum(a["correct"] for a in answers)
    lo, hi = wilson_ci(correct, len(answers))
    return {"n": len(answers), "correct": correct, "accuracy": correct / len(answers), "ci_low": lo, "ci_high": hi,
            "flags": [bool(a["correct"]) for a in answers]}


def paired_gain(picked: list[bool], base: list[bool]) -> dict:
    """Accuracy of the picked rate minus the base's on the same questions, with the exact McNemar p-value (a
    two-sided binomial test on the questions only one of them answers): paired, so sharper than two intervals."""
    from scipy.stats import binomtest

    only_picked = sum(p and not b for p, b in zip(picked, base))
    only_base = sum(b and not p for p, b in zip(picked, base))
    n = only_picked + only_base
    return {"diff": (only_picked - only_base) / len(base), "only_picked": only_picked, "only_base": only_base,
            "p": float(binomtest(only_picked, n, 0.5).pvalue) if n else 1.0}


def run(cfg, ctx: RunContext) -> dict:
    s = cfg.lr_sweep
    seed = s.seed if s.seed is not None else (cfg.model_pair.seeds[0] if cfg.model_pair.get("seeds") else None)
    stage = swept_stage(ctx, s.arm, seed)
    shared = split_spec(ctx.model_spec(stage))[2].lr
    records = validation_records(ctx, stage)
    rows, flags = [], {}
    for lr in sorted({*s.lrs, shared}):
        variant = stage if math.isclose(lr, shared) else with_lr(stage, lr)
        answers = ctx.generations(variant, records, ctx.sampling(), label=f"lr {lr:g}")
        scored = accuracy(answers)
        flags[lr] = scored.pop("flags")
        budget = training_budget(ctx.model_spec(variant), ctx.cache_dir) or {}
        rows.append({"lr": lr, "stage": variant.name, **scored,
                     "truncated": sum(a["finish_reason"] == "length" for a in answers),
                     "optimizer_steps": budget.get("optimizer_steps"), "answer_tokens": budget.get("answer_tokens"),
                     "own": math.isclose(lr, shared)})
        ctx.tracker.log({f"lr_sweep/{s.arm}/lr{lr:g}/accuracy": scored["accuracy"]})
        ctx.release(variant)
    base = base_row(ctx, stage, records)
    best = pick(rows, shared)
    apart = [r for r in rows if r is not best and r["ci_high"] >= best["ci_low"]]
    gain = paired_gain(flags[best["lr"]], base.pop("flags"))
    learns = gain["diff"] > 0 and gain["p"] < 0.05
    columns = list(rows[0])
    ctx.write_table("lr_sweep", columns, [[r[c] for c in columns] for r in rows])
    result = {"arm": s.arm, "seed": seed, "validation": s.validation.name, "n": len(records), "own_lr": shared,
              "picked_lr": best["lr"], "rows": rows, "not_separated_from": [r["lr"] for r in apart], "base": base,
              "picked_minus_base": gain, "picked_beats_base": learns}
    ctx.write_json("lr_sweep.json", result)
    ctx.tracker.summary({f"lr_sweep/{s.arm}/picked_lr": best["lr"]})
    figure(ctx, rows, s.arm, shared, base)
    recipe = ctx.model_spec(stage)["recipe"]
    preset = recipe if isinstance(recipe, str) else recipe.get("preset", "<recipe>")
    print(markdown_table(columns, [[r[c] for c in columns] for r in rows])
          + f"[lr_sweep] the arm's base before training: {base['accuracy']:.3f} [{base['ci_low']:.3f}, "
            f"{base['ci_high']:.3f}]; the pick minus the base, paired on the same questions: {gain['diff']:+.3f} "
            f"(McNemar exact p = {gain['p']:.2g})" + ("" if learns else f": cannot tell that {s.arm} learns at any "
                                                                          "of these rates") + "\n"
          + f"[lr_sweep] {s.arm} (seed {seed}): picked lr {best['lr']:g} by validation accuracy "
            f"{best['accuracy']:.3f} [{best['ci_low']:.3f}, {best['ci_high']:.3f}] on {len(records)} questions"
          + ("" if not apart else f"; its interval overlaps lr {', '.join(format(r['lr'], 'g') for r in apart)}: "
                                  "the sweep cannot tell those apart")
          + (f". Its own rate {shared:g} is the pick: keep it.\n" if best["own"] else
             f". To use it: recipe {{preset: {preset}, lr: {best['lr']:g}}} for {s.arm} in the family config "
             "(the budget table then shows its lr differs).\n"))
    return result


def figure(ctx: RunContext, rows: list[dict], arm: str, shared: float, base: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    x = [r["lr"] for r in rows]
    y = [r["accuracy"] for r in rows]
    err = [[max(r["accuracy"] - r["ci_low"], 0.0) for r in rows],  # Wilson's bounds can miss 0 or 1 by rounding
           [max(r["ci_high"] - r["accuracy"], 0.0) for r in rows]]
    ax.errorbar(x, y, yerr=err, fmt="o-", capsize=3)
    ax.axvline(shared, color="grey", lw=0.8, ls="--", label=f"the arm's own lr ({shared:g})")
    ax.axhspan(base["ci_low"], base["ci_high"], color="tab:orange", alpha=0.2, lw=0,
               label=f"its base before training ({base['accuracy']:.2f}, 95% band)")
    ax.set(xscale="log", xlabel="learning rate", ylabel="validation accuracy (Wilson 95%)",
           title=f"lr sweep: {arm}, n = {rows[0]['n']} validation questions", ylim=(0, 1))
    ax.set_xticks(x, [f"{lr:g}" for lr in x])  # the swept rates only: log minor ticks' labels ran into each other
    ax.minorticks_off()
    ax.legend(loc="upper left", frameon=False)
    fig.tight_layout()
    ctx.save_figure("lr_sweep_accuracy", fig)
    plt.close(fig)
