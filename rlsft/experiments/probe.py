"""Layer-wise linear probes of answer correctness (method.md section 4), per stage and position.

Each stage answers every question (cached greedy generations); its hidden states at each position (cached features)
are probed layer by layer with question-grouped nested CV (``rlsft.probe``). Outputs: ``probe_layers`` (every layer:
balanced accuracy and AUROC with corrected 95% intervals, shuffled-label control, majority-class rate),
``probe_summary`` (layer picked inside the training folds and its held-out score, first layer reaching
``probe.threshold``) and the figure ``probe_curves``.
"""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np

from ..errors import RlsftError
from ..models import fingerprint
from ..probe import ProbeInputError, cached_features, first_layer_reaching, probe_layers, score_interval
from .common import RunContext, markdown_table, precision, stage_color

READS_INTERNALS = True  # hidden states of every block
DATA_PARALLEL = False


def check(cfg) -> None:
    """Nothing beyond rlsft.config.validate's checks of the sections it reads."""


def tags(cfg) -> list[str]:
    """No W&B tags beyond the pair's and the dataset's."""
    return []


def question_groups(records, group_by: str) -> dict[str, str]:
    """What a CV fold keeps together: the question, or its template (``auto``: the template when every question has
    one, method.md 4: template identity tracks difficulty, and a sample-wise shuffled control cannot see that leak).

    A question is its text: a dataset that asks the same question twice (1-digit arithmetic does) keeps the copies
    in one fold, or the probe would recognise the copy's features (same prompt, same greedy answer, same label).
    """
    has_template = all("template" in r.meta for r in records)
    if group_by == "auto":
        group_by = "template" if has_template and records else "question"
    if group_by == "question":
        return {r.id: r.question.strip() for r in records}
    if not has_template:
        missing = next(r.id for r in records if "template" not in r.meta)
        raise RlsftError(f"probe.group_by=template needs template ids (dataset=templates); {missing!r} has none")
    return {r.id: str(r.meta["template"]) for r in records}


def template_features(records, ids: list[str]) -> np.ndarray | None:
    """One-hot template id of each sample [n, k] (the template-only baseline probe), or None without templates."""
    meta = {r.id: r.meta.get("template") for r in records}
    if any(meta.get(q) is None for q in ids):
        return None
    names = sorted({str(meta[q]) for q in ids})
    return np.array([[str(meta[q]) == t for t in names] for q in ids], dtype=np.float32)


def _curve(result, attr: str, control: bool = False) -> list[tuple[float, float, float]]:
    layers = result.control if control else result.layers
    return [score_interval(getattr(s, attr), result.test_fraction) for s in layers]


LAYER_COLS = ["stage", "position", "layer", "n", "n_correct", "skipped", "majority_rate", "bal_acc", "bal_acc_lo",
              "bal_acc_hi", "auroc", "auroc_lo", "auroc_hi", "shuffled_bal_acc", "shuffled_bal_acc_lo",
              "shuffled_bal_acc_hi", "shuffled_auroc", "shuffled_auroc_lo", "shuffled_auroc_hi", "inner_auroc",
              "inner_bal_acc", "times_selected"]


def summary_columns(threshold: float) -> list[str]:
    """picked_*: the layer each training fold picks by its inner CV (most often picked shown), scored on the held-out
    fold it did not see (the curve's maximum is optimistic); template_*: the template-only baseline probe."""
    return ["stage", "position", "n", "n_correct", "skipped", "majority_rate", "picked_layer", "picked_bal_acc",
            "picked_bal_acc_lo", "picked_bal_acc_hi", "picked_auroc", "picked_auroc_lo", "picked_auroc_hi",
            f"first_layer_bal_acc>={threshold}", "template_bal_acc", "template_bal_acc_lo", "template_bal_acc_hi",
            "template_auroc"]


def report(stage: str, pos: str, res, skipped: int, threshold: float) -> tuple[list, list, dict]:
    """Rows of ``probe_layers``, the row of ``probe_summary`` and the json entry of one (stage, position)."""
    picks = Counter(res.selected_layer.tolist())
    bacc, auc = _curve(res, "balanced_accuracy"), _curve(res, "auroc")
    none = [("n/a",) * 3] * len(bacc)
    cb = _curve(res, "balanced_accuracy", True) if res.control else none
    ca = _curve(res, "auroc", True) if res.control else none
    rows = [[stage, pos, l, res.n, res.n_positive, skipped, res.majority_rate, *bacc[l], *auc[l], *cb[l], *ca[l],
             float(np.nanmean(res.layers[l].inner)), float(np.nanmean(res.layers[l].inner_balanced_accuracy)),
             picks.get(l, 0)] for l in range(len(bacc))]
    sel = res.summary()
    base = res.summary(res.baseline) if res.baseline is not None else None
    top = picks.most_common(1)[0][0]
    first = first_layer_reaching(res, threshold)
    summary = [stage, pos, res.n, res.n_positive, skipped, res.majority_rate, top, sel["balanced_accuracy"]["mean"],
               *sel["balanced_accuracy"]["ci95"], sel["auroc"]["mean"], *sel["auroc"]["ci95"],
               "none" if first is None else first,
               *([base["balanced_accuracy"]["mean"], *base["balanced_accuracy"]["ci95"], base["auroc"]["mean"]]
                 if base else ["n/a"] * 4)]
    entry = {"n": res.n, "n_correct": res.n_positive, "skipped": skipped, "groups": res.n_groups,
             "majority_rate": res.majority_rate, "selected_layer": top,
             "selected_layer_counts": {str(k): v for k, v in sorted(picks.items())}, "selected": sel,
             "first_layer_reaching_threshold": first, "threshold": threshold, "template_baseline": base,
             "balanced_accuracy": [c[0] for c in bacc], "auroc": [c[0] for c in auc],
             "shuffled_balanced_accuracy": [list(c) for c in cb], "shuffled_auroc": [list(c) for c in ca]}
    return rows, summary, entry


def probe_position(stage: str, pos: str, feats, label: dict, groups: dict, baseline, pc):
    """ProbeResult of one (stage, position), or the reason it could not be probed (one line)."""
    y = np.array([label[q] for q in feats.ids], dtype=int)
    if not feats.ids:
        return None, (f"probe [{stage}/{pos}]: position unavailable: none of the {len(feats.skipped)} answers has it"
                      + (" (no \\boxed{)" if pos.startswith("before_answer") else ""))
    try:
        return probe_layers(feats.X, y, np.array([groups[q] for q in feats.ids]), pc.folds, pc.inner_folds,
                            pc.repeats, list(pc.Cs), pc.seed, pc.shuffle_control, pc.n_jobs,
                            what=f" [{stage}/{pos}: {len(feats.skipped)} answers without this position]",
                            baseline=baseline, control_permutations=pc.control_permutations), None
    except ProbeInputError as exc:
        return None, str(exc)


def run(cfg, ctx: RunContext) -> dict:
    pc = cfg.probe
    records = ctx.records()
    groups = question_groups(records, pc.group_by)
    positions = list(pc.positions)
    sampling = ctx.sampling()
    summary_cols = summary_columns(pc.threshold)
    layer_rows, summary_rows, results, curves, unavailable = [], [], {}, {}, []
    for stage in ctx.stages():
        gens = [g for g in ctx.generations(stage, records, sampling) if g["sample"] == 0]
        label = {g["id"]: int(bool(g["correct"])) for g in gens}
        feats = cached_features(lambda: ctx.load_stage(stage), gens, positions, fingerprint(ctx.model_spec(stage)),
                                precision(ctx, stage), ctx.cache_dir, pc.batch_size)
        ctx.release(stage)
        results[stage.name] = {}
        for pos in positions:
            f = feats[pos]
            res, why = probe_position(stage.name, pos, f, label, groups, template_features(records, f.ids), pc)
            if res is None:
                # One position a stage cannot be probed at (e.g. a model that never writes \boxed{}) does not
                # sink the others; it is reported in the summary, and the run fails only if nothing was probed.
                print(f"warning: {why}", file=sys.stderr)
                unavailable.append(why)
                n_correct = sum(label[q] for q in f.ids)
                summary_rows.append([stage.name, pos, len(f.ids), n_correct, len(f.skipped),
                                     *["n/a"] * (len(summary_cols) - 5)])
                results[stage.name][pos] = {"error": why, "n": len(f.ids), "skipped": len(f.skipped)}
                continue
            curves[(stage.name, pos)] = res
            rows, summary, results[stage.name][pos] = report(stage.name, pos, res, len(f.skipped), pc.threshold)
            layer_rows += rows
            summary_rows.append(summary)
            sel = results[stage.name][pos]["selected"]
            ctx.tracker.log({f"{stage.name}/{pos}/selected_balanced_accuracy": sel["balanced_accuracy"]["mean"],
                             f"{stage.name}/{pos}/selected_auroc": sel["auroc"]["mean"]})
    if not curves:
        raise RlsftError("probe: no stage could be probed at any position:\n  " + "\n  ".join(unavailable))
    ctx.write_table("probe_layers", LAYER_COLS, layer_rows)
    ctx.write_table("probe_summary", summary_cols, summary_rows)
    ctx.save_figure("probe_curves", figure(curves, positions, [s.name for s in ctx.stages()]))
    ctx.write_json("probe.json", results)
    print(markdown_table(summary_cols, summary_rows))
    return results


def figure(curves: dict, positions: list[str], stages: list[str]):
    """Balanced accuracy and AUROC by layer, one column per position: stages solid (95% band), shuffled-label
    controls dashed (hatched band), the template-only baseline dotted. No majority-class rate: both metrics are at
    0.5 by chance whatever the class balance (the rate is in the tables)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    # A position no stage could be probed at (the default pair never writes \boxed{}) gets no empty panel: a note.
    missing = [p for p in positions if not any((stage, p) in curves for stage in stages)]
    positions = [p for p in positions if p not in missing]
    fig, axes = plt.subplots(2, len(positions), figsize=(4.5 * len(positions), 6.5), squeeze=False, sharey="row")
    for j, pos in enumerate(positions):
        for row, (attr, name) in enumerate([("balanced_accuracy", "balanced accuracy"), ("auroc", "AUROC")]):
            ax = axes[row, j]
            for k, stage in enumerate(stages):
                if (stage, pos) not in curves:
                    continue
                res, c = curves[(stage, pos)], stage_color(stage)
                m, lo, hi = (np.array(v) for v in zip(*_curve(res, attr)))
                x = np.arange(len(m))
                ax.plot(x, m, color=c, label=f"{stage}")
                ax.fill_between(x, lo, hi, color=c, alpha=0.2)
                if res.control:  # with its own interval: one permutation's curve wanders around chance
                    cm, clo, chi = (np.array(v) for v in zip(*_curve(res, attr, True)))
                    ax.plot(x, cm, color=c, ls="--", lw=1, label=f"{stage} shuffled labels (95% band)")
                    ax.fill_between(x, clo, chi, color=c, alpha=0.07, hatch="//", lw=0)
                if res.baseline is not None:
                    base = score_interval(getattr(res.baseline, attr), res.test_fraction)[0]
                    ax.axhline(base, color=c, ls=":", lw=1.2, label=f"{stage} template-only baseline")
            ax.axhline(0.5, color="grey", lw=0.8, label="chance")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("layer (decoder block output)")
            ax.set_ylabel(name)
            if row == 0:
                ax.set_title(pos)
    handles = {}
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.tight_layout(rect=(0, 0.08, 1, 0.97 if missing else 1))
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=3, fontsize=7, frameon=False)
    if missing:  # above the panels: the legend fills the bottom
        fig.text(0.5, 0.995, f"not probed: {', '.join(missing)} (see probe_summary)", fontsize=7, color="grey",
                 ha="center", va="top")
    return fig
