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
from ..models import fingerprint, pick_device, pick_dtype
from ..probe import cached_features, first_layer_reaching, probe_layers, score_interval
from .common import RunContext, markdown_table


def precision(ctx: RunContext, stage) -> str:
    """The dtype a stage's model runs in (part of every activation cache key)."""
    spec = ctx.model_spec(stage)
    device = pick_device(spec.get("device") or ctx.cfg.run.device)
    return str(pick_dtype(spec.get("dtype") or ctx.cfg.run.dtype, device))


def question_groups(records, group_by: str) -> dict[str, str]:
    """What a CV fold keeps together: the question itself, or its template (harder: unseen templates)."""
    if group_by == "question":
        return {r.id: r.id for r in records}
    missing = [r.id for r in records if "template" not in r.meta]
    if missing:
        raise RlsftError(f"probe.group_by=template needs template ids (dataset=templates); {missing[0]!r} has none")
    return {r.id: str(r.meta["template"]) for r in records}


def _curve(result, attr: str, control: bool = False) -> list[tuple[float, float, float]]:
    layers = result.control if control else result.layers
    return [score_interval(getattr(s, attr), result.test_fraction) for s in layers]


def report(stage: str, pos: str, res, skipped: int, threshold: float) -> tuple[list, list, dict]:
    """Rows of ``probe_layers``, the row of ``probe_summary`` and the json entry of one (stage, position)."""
    picks = Counter(res.selected_layer.tolist())
    bacc, auc = _curve(res, "balanced_accuracy"), _curve(res, "auroc")
    none = [(np.nan,) * 3] * len(bacc)
    cb = _curve(res, "balanced_accuracy", True) if res.control else none
    ca = _curve(res, "auroc", True) if res.control else none
    rows = [[stage, pos, l, res.n, res.n_positive, skipped, res.majority_rate, *bacc[l], *auc[l], cb[l][0], ca[l][0],
             float(np.nanmean(res.layers[l].inner)), picks.get(l, 0)] for l in range(len(bacc))]
    sel = res.summary()
    top = picks.most_common(1)[0][0]
    first = first_layer_reaching(res, threshold)
    summary = [stage, pos, res.n, res.n_positive, skipped, res.majority_rate, top, sel["balanced_accuracy"]["mean"],
               *sel["balanced_accuracy"]["ci95"], sel["auroc"]["mean"], *sel["auroc"]["ci95"],
               "none" if first is None else first]
    entry = {"n": res.n, "n_correct": res.n_positive, "skipped": skipped, "groups": res.n_groups,
             "majority_rate": res.majority_rate, "selected_layer": top,
             "selected_layer_counts": {str(k): v for k, v in sorted(picks.items())}, "selected": sel,
             "first_layer_reaching_threshold": first, "threshold": threshold,
             "balanced_accuracy": [c[0] for c in bacc], "auroc": [c[0] for c in auc],
             "control_balanced_accuracy": [c[0] for c in cb], "control_auroc": [c[0] for c in ca]}
    return rows, summary, entry


def run(cfg, ctx: RunContext) -> dict:
    pc = cfg.probe
    records = ctx.records()
    groups = question_groups(records, pc.group_by)
    positions = list(pc.positions)
    sampling = ctx.sampling()
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
            y = np.array([label[q] for q in f.ids], dtype=int)
            try:
                res = probe_layers(f.X, y, np.array([groups[q] for q in f.ids]), pc.folds, pc.inner_folds,
                                   pc.repeats, list(pc.Cs), pc.seed, pc.shuffle_control, pc.n_jobs,
                                   what=f" [{stage.name}/{pos}: {len(f.skipped)} answers without this position]")
            except RlsftError as exc:
                # One position a stage cannot be probed at (e.g. a model that never writes \boxed{}) does not
                # sink the others; it is reported in the summary, and the run fails only if nothing was probed.
                print(f"warning: {exc}", file=sys.stderr)
                unavailable.append(str(exc))
                summary_rows.append([stage.name, pos, len(f.ids), int(y.sum()), len(f.skipped), *["n/a"] * 9])
                results[stage.name][pos] = {"error": str(exc), "n": len(f.ids), "skipped": len(f.skipped)}
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
    layer_cols = ["stage", "position", "layer", "n", "n_correct", "skipped", "majority_rate", "bal_acc", "bal_acc_lo",
                  "bal_acc_hi", "auroc", "auroc_lo", "auroc_hi", "control_bal_acc", "control_auroc",
                  "inner_auroc", "times_selected"]
    # picked_*: the layer each training fold picks by its inner CV (most often picked shown), scored on the held-out
    # fold it did not see; averaging those is the honest "best layer" number (the curve's maximum is optimistic).
    summary_cols = ["stage", "position", "n", "n_correct", "skipped", "majority_rate", "picked_layer",
                    "picked_bal_acc", "picked_bal_acc_lo", "picked_bal_acc_hi", "picked_auroc", "picked_auroc_lo",
                    "picked_auroc_hi", f"first_layer_bal_acc>={pc.threshold}"]
    ctx.write_table("probe_layers", layer_cols, layer_rows)
    ctx.write_table("probe_summary", summary_cols, summary_rows)
    ctx.save_figure("probe_curves", figure(curves, positions, [s.name for s in ctx.stages()]))
    ctx.write_json("probe.json", results)
    print(markdown_table(summary_cols, summary_rows))
    return results


def figure(curves: dict, positions: list[str], stages: list[str]):
    """Balanced accuracy and AUROC by layer, one column per position: stages solid (95% band), controls dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, len(positions), figsize=(4.5 * len(positions), 6.5), squeeze=False, sharey="row")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, pos in enumerate(positions):
        for row, (attr, name) in enumerate([("balanced_accuracy", "balanced accuracy"), ("auroc", "AUROC")]):
            ax = axes[row, j]
            for k, stage in enumerate(stages):
                if (stage, pos) not in curves:
                    continue
                res, c = curves[(stage, pos)], colors[k % len(colors)]
                m, lo, hi = (np.array(v) for v in zip(*_curve(res, attr)))
                x = np.arange(len(m))
                ax.plot(x, m, color=c, label=f"{stage}")
                ax.fill_between(x, lo, hi, color=c, alpha=0.2)
                if res.control:
                    ax.plot(x, [v[0] for v in _curve(res, attr, True)], color=c, ls="--", lw=1,
                            label=f"{stage} shuffled labels")
                if row == 0:
                    ax.axhline(res.majority_rate, color=c, ls=":", lw=1, label=f"{stage} majority-class rate")
            if not any((stage, pos) in curves for stage in stages):
                ax.text(0.5, 0.5, "not probed (see probe_summary)", transform=ax.transAxes, ha="center")
            ax.axhline(0.5, color="grey", lw=0.8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("layer (decoder block output)")
            ax.set_ylabel(name)
            if row == 0:
                ax.set_title(pos)
    handles = {}
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=3, fontsize=7, frameon=False)
    return fig
