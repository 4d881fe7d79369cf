"""The arms study (method.md 8; issue 21): ``experiment=eap eap.reference=<stage>`` on a family whose arms were
trained on several seeds (``model_pair.seeds``, rlsft.seeds). Each arm against the reference and against every other
arm, on accuracy (per question correct or not, per seed) and on the primary EAP metric (per question and seed, on the
shared selection), each difference with an interval over seeds and questions (rlsft.hierarchical), "cannot tell"
where it holds 0; beside them the budget table (rlsft.training.budget).

The primary comparison (method.md 2.8) is then the primary metric per arm against the reference over all its seeds,
printed first, its p-values Holm-adjusted among the arms; accuracy against the reference, and every arm against
every other arm (accuracy, the primary metric), are secondary, each table Holm-adjusted over its own rows. Each seed's
stage against the reference (intervals over questions only) stays in the per-stage compare tables.

With ``eap.selection=per_arm`` each arm is compared with the reference on its own questions (those the reference and
every seed of the arm answer correctly) and two arms on the questions both selections hold; an arm (or pair) with
fewer than 2 such questions gets a row that says "cannot tell" and how many it had.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import combinations

import numpy as np

from ..eap import per_sample
from ..eap.family import verdict
from ..errors import RlsftError
from ..hierarchical import SeedInterval, seed_question_interval
from ..stats import holm
from ..training.budget import arm_means, check_arms, match_text, warning_line
from ..training.derived import training_budget
from .common import RunContext, markdown_table

BUDGET = ("kind", "lr", "optimizer_steps", "answer_tokens", "samples", "wall_s")


def compared_arms(ctx: RunContext, stages: dict) -> dict[str, list[str]]:
    """{arm: its compared stages in seed order} for the compared stages (the reference, first in ``stages``, left
    out)."""
    by_arm = ctx.arms()
    out: dict[str, list[str]] = {}
    for arm, group in by_arm.items():
        chosen = [n for n in group if n in list(stages)[1:]]
        if chosen:
            out[arm] = chosen
    return out


def is_study(arms: dict[str, list[str]]) -> bool:
    """An arms study: some compared arm has more than one seed."""
    return any(len(group) > 1 for group in arms.values())


def check_study(cfg, ctx: RunContext, arms: dict[str, list[str]]) -> None:
    """A per-question primary metric, and arms that can be paired by seed (the same seeds, or one seed)."""
    if cfg.eap.primary.metric == "loss_adjusted":
        raise RlsftError("eap.primary.metric=loss_adjusted is a refitted coefficient with no per-question values; the "
                         "arms study reports a per-sample metric or self_entropy per seed and question")
    seeds = {s.name: s.get("seed") for s in ctx.stages()}
    lists = {arm: [seeds[n] for n in group] for arm, group in arms.items() if len(group) > 1}
    if len({tuple(v) for v in lists.values()}) > 1:
        raise RlsftError(f"the compared arms were trained on different seeds ({lists}); compare arms with the same "
                         "seeds (differences are paired by seed)")


@dataclass
class ArmValues:
    """One arm's values per (seed, question) and the reference's on the same questions ``ids`` (in that order)."""
    ids: list
    reference: np.ndarray  # [1, questions]
    arm: np.ndarray  # [seeds, questions]


def accuracy_values(gens: dict, reference: str, arms: dict[str, list[str]]) -> dict[str, ArmValues]:
    """{arm: correct or not} over the questions every stage answered (no selection: accuracy counts them all)."""
    ids = [q for q in gens[reference] if all(q in g for g in gens.values())]

    def rows(names: list[str]) -> np.ndarray:
        return np.array([[float(gens[n][q]["correct"]) for q in ids] for n in names])

    ref = rows([reference])
    return {arm: ArmValues(ids, ref, rows(group)) for arm, group in arms.items()}


def primary_values(scored: dict, metric: str, reference: str, group: list[str], ids: list) -> ArmValues:
    """One arm's primary metric [seeds, selected questions] and the reference's [1, questions], from one alpha's
    scores of the arm's selection ``ids``."""
    def one(name: str) -> np.ndarray:
        if metric == "self_entropy":
            return scored[name]["loss"].astype(float)
        return per_sample(scored[name]["W"], scored["mask"], metric)

    return ArmValues(list(ids), one(reference)[None], np.stack([one(n) for n in group]))


def shared_ids(values: dict[str, ArmValues]) -> bool:
    """Whether every arm was measured on the same questions (one shared selection)."""
    return len({tuple(v.ids) for v in values.values()}) == 1


def against_reference(values: dict[str, ArmValues | None], reference: str, n_boot: int, seed: int) -> list[dict]:
    """Per arm: its value, the reference's on the same questions and their difference, each over seeds and
    questions; the differences' p-values Holm-adjusted over the arms. The reference's own row comes first when
    every arm shares its questions. An arm without values (too few selected questions) says so."""
    measured = {arm: v for arm, v in values.items() if v is not None}
    rows = []
    if shared_ids(measured):
        ref = next(iter(measured.values())).reference
        rows.append({"arm": reference, "value": seed_question_interval(ref, n_boot=n_boot, seed=seed), "diff": None,
                     "reference_value": None})
    for arm, v in values.items():
        if v is None:
            rows.append({"arm": arm, "value": None, "diff": None, "reference_value": None,
                         "verdict": "cannot tell: fewer than 2 selected questions"})
            continue
        rows.append({"arm": arm, "value": seed_question_interval(v.arm, n_boot=n_boot, seed=seed),
                     "reference_value": float(v.reference.mean()),
                     "diff": seed_question_interval(v.arm, v.reference, n_boot=n_boot, seed=seed)})
    _holm([r for r in rows if r["diff"] is not None])
    return rows


def between_arms(values: dict[str, ArmValues | None], arms: list[str], n_boot: int, seed: int) -> list[dict]:
    """Every two arms a, b (in ``arms`` order): a - b over seeds (paired) and the questions both were measured on,
    Holm over the pairs; a pair sharing fewer than 2 questions says "cannot tell"."""
    rows = []
    for a, b in combinations(arms, 2):
        va, vb = values.get(a), values.get(b)
        common = [] if va is None or vb is None else [q for q in va.ids if q in set(vb.ids)]
        if len(common) < 2:
            rows.append({"arm": f"{a} - {b}", "diff": None,
                         "verdict": f"cannot tell: {len(common)} question(s) in both selections"})
            continue
        pa, pb = {q: i for i, q in enumerate(va.ids)}, {q: i for i, q in enumerate(vb.ids)}
        rows.append({"arm": f"{a} - {b}", "diff": seed_question_interval(
            va.arm[:, [pa[q] for q in common]], vb.arm[:, [pb[q] for q in common]], n_boot=n_boot, seed=seed)})
    _holm([r for r in rows if r["diff"] is not None])
    return rows


def _holm(rows: list[dict]) -> None:
    for row, p in zip(rows, holm([r["diff"].p for r in rows])):
        row["p_holm"] = float(p)
        row["verdict"] = verdict({"p_holm": row["p_holm"], "diff": row["diff"].diff}, row["arm"].split(" - ")[0])


def _plain(tables: dict[str, list[dict]]) -> dict:
    """The rows with their intervals as dicts (JSON)."""
    return {m: [{k: asdict(v) if isinstance(v, SeedInterval) else v for k, v in r.items()} for r in rows]
            for m, rows in tables.items()}


def interval_text(i: SeedInterval | None) -> str:
    return "" if i is None else f"{i.diff:.4g} [{i.lo:.4g}, {i.hi:.4g}]"


def interval_cells(i: SeedInterval | None) -> list:
    """diff, lo, hi, p, seeds, questions, se_seeds, se_questions (empty for the reference's own row)."""
    if i is None:
        return [None] * 8
    return [i.diff, i.lo, i.hi, i.p, i.seeds, i.questions, i.se_seeds, i.se_questions]


CELLS = ["diff", "lo", "hi", "p", "seeds", "questions", "se_seeds", "se_questions"]


def reference_table(dataset: str, measure: str, rows: list[dict]) -> tuple[list[str], list[list]]:
    """Each arm's value, the reference's on the same questions and the difference (the reference's own row: value
    only)."""
    columns = ["dataset", "measure", "arm", "value", "value_lo", "value_hi", "reference_value", *CELLS, "p_holm",
               "verdict"]
    return columns, [[dataset, measure, r["arm"], *interval_cells(r["value"])[:3], r["reference_value"],
                      *interval_cells(r["diff"]), r.get("p_holm"), r.get("verdict", "")] for r in rows]


def pairs_table(dataset: str, pairs: dict[str, list[dict]]) -> tuple[list[str], list[list]]:
    """Every arm against every other, per measure."""
    columns = ["dataset", "measure", "arms", *CELLS, "p_holm", "verdict"]
    return columns, [[dataset, measure, r["arm"], *interval_cells(r["diff"]), r.get("p_holm"), r["verdict"]]
                     for measure, rows in pairs.items() for r in rows]


def budget_table(cfg, ctx: RunContext, arms: dict[str, list[str]]) -> tuple[list[str], list[list], str | None]:
    """The training budget of every compared stage (and of the reference arm's), whether each matches the reference
    arm's within 10%, and the warning line when one does not (None when all do)."""
    by_arm, stages = ctx.arms(), {s.name: s for s in ctx.stages()}
    chosen = cfg.model_pair.get("budget_reference")
    names = [n for arm in {**arms, **({chosen: []} if chosen in by_arm else {})} for n in by_arm[arm]]
    budgets = {n: training_budget(ctx.model_spec(stages[n]), ctx.cache_dir) for n in names}
    reference, gaps, arm_gaps = check_arms(budgets, by_arm, chosen)
    columns = ["stage", "arm", "seed", *BUDGET, f"budget_vs_{reference}"]
    cell = lambda b, k: None if b.get(k) is None else round(b[k]) if k in ("wall_s", "answer_tokens") else b[k]
    rows = [[n, stages[n].get("arm") or n, stages[n].get("seed"), *[cell(b, k) for k in BUDGET],
             match_text(gaps.get(n))] for n, b in budgets.items() if b is not None]
    means = arm_means(budgets, by_arm)  # the unit the study compares: an arm's mean over its seeds
    for arm, mean in means.items():
        seeds = sum(1 for n in by_arm[arm] if budgets.get(n))
        kind = next(b.get("kind") for n in by_arm[arm] if (b := budgets.get(n)))
        rows.append([f"{arm} (mean of {seeds} seeds)", arm, None,
                     *[kind if k == "kind" else cell(mean, k) if k in mean else None for k in BUDGET],
                     match_text(arm_gaps.get(arm))])
    return columns, rows, warning_line(gaps, reference, arm_gaps)


def reference_console(rows: list[dict], reference: str, what: str) -> str:
    out = [[r["arm"], "" if r["value"] is None else f"{r['value'].seeds} x {r['value'].questions}",
            interval_text(r["value"]), "" if r["reference_value"] is None else f"{r['reference_value']:.4g}",
            interval_text(r["diff"]), "" if r["diff"] is None else f"{r['diff'].p:.2g} ({r['p_holm']:.2g})",
            r.get("verdict", "")] for r in rows]
    return markdown_table(["arm", "seeds x questions", f"{what} [95% CI]", f"{reference} on them",
                           f"arm - {reference} [95% CI]", "p (Holm)", "verdict"], out)


def pairs_console(pairs: dict[str, list[dict]]) -> str:
    out = [[measure, r["arm"], interval_text(r["diff"]),
            "" if r["diff"] is None else f"{r['diff'].p:.2g} ({r['p_holm']:.2g})", r["verdict"]]
           for measure, rows in pairs.items() for r in rows]
    return markdown_table(["measure", "arms", "difference [95% CI]", "p (Holm)", "verdict"], out)


CAUSAL_CONSOLE = ("faith_auc", "faith_auc_minus_control", "frac80")  # the rest of CROSS: study_faithfulness.csv


def causal_rows(faith: dict[str, dict | None]) -> list[dict]:
    """The causal check per arm (method.md 2.7 over seeds): a row per arm and cross-fitted summary, arm - reference
    with its interval over seeds and questions, Holm over the table's defined tests. An arm without a check (fewer
    than 4 selected questions) or a summary undefined in the resamples (frac80 never reached) says so."""
    rows = []
    for arm, per in faith.items():
        if per is None:
            rows.append({"arm": arm, "summary": "faith_auc", "diff": None,
                         "verdict": "cannot tell: fewer than 4 selected questions, no causal check"})
            continue
        for summary, interval in per.items():
            rows.append({"arm": arm, "summary": summary, "diff": interval} if np.isfinite(interval.p) else
                        {"arm": arm, "summary": summary, "diff": None,
                         "verdict": "cannot tell: undefined in more than a tenth of the resamples"})
    _holm([r for r in rows if r["diff"] is not None])
    return rows


def causal_table(dataset: str, rows: list[dict]) -> tuple[list[str], list[list]]:
    columns = ["dataset", "summary", "arm", *CELLS, "p_holm", "verdict"]
    return columns, [[dataset, r["summary"], r["arm"], *interval_cells(r["diff"]), r.get("p_holm"), r["verdict"]]
                     for r in rows]


def report(cfg, ctx: RunContext, reference: str, arms: dict[str, list[str]], gens: dict,
           primary: dict[str, ArmValues | None] | None, faith: dict[str, dict | None] | None = None) -> str:
    """Write the study's tables (study_primary, study_accuracy, study_arm_pairs, study_budget, with eap.faithfulness
    study_faithfulness, eap_study.json, W&B ``study/...``) and return its console text, the primary comparison
    first."""
    n_boot, seed, metric = cfg.eap.n_boot, cfg.truncation.seed, cfg.eap.primary.metric
    accuracy = accuracy_values(gens, reference, arms)
    rows = {"accuracy": against_reference(accuracy, reference, n_boot, seed)}
    pairs = {"accuracy": between_arms(accuracy, list(arms), n_boot, seed)}
    if primary is not None:
        rows[metric] = against_reference(primary, reference, n_boot, seed)
        pairs[metric] = between_arms(primary, list(arms), n_boot, seed)
    dataset = cfg.dataset.name
    for measure, measure_rows in rows.items():
        ctx.write_table("study_accuracy" if measure == "accuracy" else "study_primary",
                        *reference_table(dataset, measure, measure_rows))
    ctx.write_table("study_arm_pairs", *pairs_table(dataset, pairs))
    columns, budget_rows, warning = budget_table(cfg, ctx, arms)
    ctx.write_table("study_budget", columns, budget_rows)
    causal = None if faith is None else causal_rows(faith)
    if causal is not None:
        ctx.write_table("study_faithfulness", *causal_table(dataset, causal))
        ctx.tracker.summary({f"study/{r['summary']}/{r['arm']}_minus_{reference}": r["diff"].diff
                             for r in causal if r["diff"] is not None})
    ctx.write_json("eap_study.json", {"reference": reference, "arms": arms, "primary_metric": metric,
                                      "against_reference": _plain(rows), "arm_pairs": _plain(pairs),
                                      **({} if causal is None else {"faithfulness": _plain({"rows": causal})["rows"]})})
    ctx.tracker.summary({f"study/{m}/{r['arm']}" + ("" if r["diff"] is None else f"_minus_{reference}"):
                         (r["value"] if r["diff"] is None else r["diff"]).diff
                         for m, rs in rows.items() for r in rs if r["value"] is not None})
    seeds = max(len(g) for g in arms.values())
    head = (f"STUDY (method.md 8): {len(arms)} arms x up to {seeds} seeds against {reference} on {dataset}; every "
            "interval is over seeds and questions (rlsft.hierarchical: seeds, then questions redrawn; Student t, "
            "Satterthwaite df); p-values Holm-adjusted within each table; 'cannot tell' where an interval holds 0.\n")
    if primary is None:
        first = (f"PRIMARY comparison ({metric} at alpha {cfg.eap.primary.alpha:g}): not in this run (that alpha was "
                 "not scored).\n")
    else:
        where = ("the shared selection" if cfg.eap.selection == "shared" else
                 f"each arm's own selection (questions {reference} and every seed of the arm answer correctly)")
        first = (f"PRIMARY comparison per arm: {metric} at alpha {cfg.eap.primary.alpha:g} on {where}, "
                 f"arm - {reference} (Holm over the {len(arms)} arms):\n" + reference_console(rows[metric], reference,
                                                                                             metric))
    if causal is not None:
        shown = [r for r in causal if r["summary"] in CAUSAL_CONSOLE]
        first += (f"Causal check per arm (method.md 2.7, secondary; eap.faithfulness_baseline="
                  f"{cfg.eap.faithfulness_baseline}, alpha {cfg.eap.primary.alpha:g}, each arm's selection): arm - "
                  f"{reference} over seeds and questions, the splits inside (Holm over study_faithfulness.csv):\n"
                  + markdown_table(["summary", "arm", "difference [95% CI]", "p (Holm)", "verdict"],
                                   [[r["summary"], r["arm"], interval_text(r["diff"]), "" if r["diff"] is None else
                                     f"{r['diff'].p:.2g} ({r['p_holm']:.2g})", r["verdict"]] for r in shown]))
    return (head + first + "Accuracy (secondary):\n" + reference_console(rows["accuracy"], reference, "accuracy")
            + "Arm against arm (secondary):\n" + pairs_console(pairs)
            + "Training budgets (method.md 8, matched within 10%):\n" + markdown_table(columns, budget_rows)
            + (warning + "\n" if warning else ""))
