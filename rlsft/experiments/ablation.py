"""Layer-wise ablation (method.md section 5): accuracy drop and flips per intervened block, math vs a factual control.

For each stage, dataset (``dataset`` and ``ablation.control``), mode and block: answers generated with that one
block intervened (cached, the key names layer and mode), compared question by question with the baseline answers:
accuracy drop with a paired bootstrap 95% CI, the share of baseline-correct answers that flip with a Wilson
interval. Beside it, how much each block changes the representation (1 - cosine, linear CKA of input vs output).
Outputs: table ``ablation``, figure ``ablation_layers``, ``ablation.json`` (with the top layers and the rank
correlation between drop and representational change).
"""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np
from scipy.stats import spearmanr

from ..ablation import ablate, cached_block_statistics
from ..errors import RlsftError
from ..generate import generate_answers
from ..models import fingerprint
from ..stats import bootstrap_ci, wilson_ci
from .common import RunContext, markdown_table, precision, stage_color

ABLATION_VERSION = 1
READS_INTERNALS = True  # hooks on the model's blocks
DATA_PARALLEL = False


def check(cfg) -> None:
    control = cfg.ablation.control
    if control is not None and control.name == cfg.dataset.name:
        raise RlsftError(f"ablation: dataset and ablation.control are the same dataset ({cfg.dataset.name!r})")


def tags(cfg) -> list[str]:
    """No W&B tags beyond the pair's and the dataset's."""
    return []


def ablated_generations(ctx: RunContext, stage, records, sampling, layer: int, mode: str, stats, stats_key: str,
                        dataset: str = ""):
    """Answers with block ``layer`` intervened; cached like any generation, under a key naming the intervention."""
    ac = ctx.cfg.ablation
    what = {"layer": layer, "mode": mode, "version": ABLATION_VERSION}
    if mode == "contract":
        what["alpha"] = ac.alpha
    if mode in ("mean", "mean_delta"):
        what["means"] = stats_key
    hooks = ExitStack()

    def load():
        model, tokenizer = ctx.load_stage(stage)
        try:
            hooks.enter_context(ablate(model, layer, mode, ac.alpha, stats))
        except ValueError as exc:  # the engine's word for input it cannot take: one line for the user
            raise RlsftError(f"ablation: {exc}") from exc
        return model, tokenizer

    with hooks:  # the hook is removed as soon as this intervention's answers are done
        return generate_answers(load, records, ctx.cfg.model_pair.template, sampling,
                                {**fingerprint(ctx.model_spec(stage)), "ablation": what}, ctx.cache_dir,
                                batch_size=ctx.cfg.generation.batch_size,
                                desc=f"ablate [{stage.name} {dataset} {mode} L{layer}]".replace("  ", " "))


def default_layers(n_layers: int, step: int) -> list[int]:
    """Every ``step``-th block from the first, and always the last one."""
    return sorted(set(range(0, n_layers, step)) | {n_layers - 1})


def compare(base: list[dict], ablated: list[dict], n_boot: int, seed: int) -> dict:
    """Accuracy drop (paired bootstrap CI over questions) and flip rate of baseline-correct answers (Wilson CI)."""
    b = np.array([bool(g["correct"]) for g in base])
    by_id = {g["id"]: bool(g["correct"]) for g in ablated}
    a = np.array([by_id[g["id"]] for g in base])
    flips, kept = int((b & ~a).sum()), int(b.sum())
    lo, hi = bootstrap_ci(b.astype(float) - a.astype(float), n_boot=n_boot, seed=seed)
    f_lo, f_hi = wilson_ci(flips, kept)
    return {"n": len(b), "base_acc": float(b.mean()), "ablated_acc": float(a.mean()),
            "drop": float(b.mean() - a.mean()),
            "drop_ci95": [lo, hi], "flips": flips, "base_correct": kept,
            "flip_rate": flips / kept if kept else float("nan"), "flip_ci95": [f_lo, f_hi],
            "truncated": sum(g["finish_reason"] == "length" for g in ablated)}


def run(cfg, ctx: RunContext) -> dict:
    ac = cfg.ablation
    datasets = [cfg.dataset] + ([ac.control] if ac.control is not None else [])
    names = [d.name for d in datasets]
    sampling = ctx.sampling(n_samples=1)
    columns = ["stage", "dataset", "mode", "layer", "n", "base_acc", "ablated_acc", "drop", "drop_lo", "drop_hi",
               "flips", "base_correct", "flip_rate", "flip_lo", "flip_hi", "truncated", "one_minus_cos", "cka"]
    rows, results, plot = [], {}, {}
    for stage in ctx.stages():
        results[stage.name] = {"representation": {}, "modes": {m: {} for m in ac.modes}}
        for dcfg in datasets:
            records = ctx.records(dcfg)
            base = ctx.generations(stage, records, sampling, label=dcfg.name)  # log lines name the dataset
            stats, key = cached_block_statistics(
                lambda: ctx.load_stage(stage), base, fingerprint(ctx.model_spec(stage)), precision(ctx, stage),
                ctx.cache_dir, cfg.generation.batch_size, ac.max_tokens, ac.seed)
            n_layers = len(stats.cka)
            layers = list(ac.layers) if ac.layers is not None else default_layers(n_layers, ac.layer_step)
            bad = [l for l in layers if not 0 <= l < n_layers]
            if bad:
                raise RlsftError(f"ablation.layers {bad} out of range: stage {stage.name!r} has {n_layers} blocks "
                                 f"(0..{n_layers - 1})")
            change = {"one_minus_cos": stats.one_minus_cos.tolist(), "cka": stats.cka.tolist()}
            results[stage.name]["representation"][dcfg.name] = change
            plot[(stage.name, "change", dcfg.name)] = change
            for mode in ac.modes:
                per_layer = []
                for layer in layers:
                    ablated = ablated_generations(ctx, stage, records, sampling, layer, mode, stats, key,
                                                  dcfg.name)
                    m = {"layer": layer, **compare(base, ablated, ac.n_boot, ac.seed)}
                    per_layer.append(m)
                    rows.append([stage.name, dcfg.name, mode, layer, m["n"], m["base_acc"], m["ablated_acc"],
                                 m["drop"], *m["drop_ci95"], m["flips"], m["base_correct"], m["flip_rate"],
                                 *m["flip_ci95"], m["truncated"], float(stats.one_minus_cos[layer]),
                                 float(stats.cka[layer])])
                    ctx.tracker.log({f"{stage.name}/{dcfg.name}/{mode}/drop": m["drop"], "layer": layer})
                drops = np.array([m["drop"] for m in per_layer])
                order = np.argsort(-drops, kind="stable")[:3]
                rho = spearmanr(drops, 1 - stats.cka[layers]).statistic if len(layers) > 2 else float("nan")
                results[stage.name]["modes"][mode][dcfg.name] = {
                    "layers": per_layer, "top_layers": [layers[i] for i in order],
                    "spearman_drop_vs_1_minus_cka": float(rho)}
                plot[(stage.name, mode, dcfg.name)] = per_layer
        ctx.release(stage)
    ctx.write_table("ablation", columns, rows)
    ctx.save_figure("ablation_layers", figure(plot, [s.name for s in ctx.stages()], list(ac.modes), names))
    ctx.write_json("ablation.json", results)
    print(markdown_table(columns, rows))
    return results


def figure(plot: dict, stages: list[str], modes: list[str], datasets: list[str]):
    """Accuracy drop by layer (one row per mode, one column per stage; datasets as line styles with 95% bands), and
    a last row with each block's representational change. Coloured by stage, as every other figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(len(modes) + 1, len(stages), figsize=(5 * len(stages), 2.8 * (len(modes) + 1)),
                             squeeze=False, sharex=True)
    styles = [("-", "o", 0.2), (":", "s", 0.08), ("-.", "^", 0.08)]  # per dataset: line, marker, band alpha
    for j, stage in enumerate(stages):
        color = stage_color(stage)
        for i, mode in enumerate(modes):
            ax = axes[i, j]
            for k, ds in enumerate(datasets):
                ls, mk, band = styles[k % len(styles)]
                per = plot[(stage, mode, ds)]
                x = [m["layer"] for m in per]
                ax.plot(x, [m["drop"] for m in per], marker=mk, ms=3, ls=ls, color=color, label=ds)
                ax.fill_between(x, [m["drop_ci95"][0] for m in per], [m["drop_ci95"][1] for m in per],
                                color=color, alpha=band)
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_title(f"{stage}: {mode}")
            ax.set_ylabel("accuracy drop")
        ax = axes[-1, j]
        for k, ds in enumerate(datasets):
            ch = plot[(stage, "change", ds)]
            mk = styles[k % len(styles)][1]
            ax.plot(ch["one_minus_cos"], color=color, marker=mk, ms=3, label=f"1 - cos ({ds})")
            ax.plot(1 - np.array(ch["cka"]), color=color, marker=mk, ms=3, ls="--", label=f"1 - CKA ({ds})")
        ax.set_title(f"{stage}: representational change per block")
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, -1].legend(fontsize=7)
    axes[-1, -1].legend(fontsize=7)
    fig.tight_layout()
    return fig
