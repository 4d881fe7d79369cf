"""The eap experiment's matched-loss calibration and causal check (method.md 2.6 calibration, 2.7 faithfulness).

calibrated_tau: the temperature that gives the RL stage the SFT stage's mean self-entropy on the selected samples.
faithfulness_alpha: per stage, per-sample patched losses on a log grid of kept fractions (edges ranked on the other
half of the questions; cached like the scores), then curves, frac80 and RL - SFT with bootstrap intervals.
"""

from __future__ import annotations

import logging

import numpy as np

from ..cache import atomic_path, locked, stage_dir, stage_key
from ..eap import build_graph, collate, mean_source_outputs, truncation_inputs
from ..eap.calibration import calibrate_temperature, mean_self_entropy, scored_states
from ..eap.faithfulness import halves, held_out_losses, log_grid, summarize
from ..errors import RlsftError
from ..models import fingerprint
from .common import RunContext

log = logging.getLogger(__name__)
FAITHFULNESS_VERSION = 1


def _batches(items, pad_id, batch_size):
    return [collate(items[i : i + batch_size], pad_id=pad_id, side="left") for i in range(0, len(items), batch_size)]


def _items(answers: list[dict], cut_len: int):
    return [truncation_inputs(a["prompt_ids"], a["output_ids"], cut_len) for a in answers]


def calibrated_tau(ctx: RunContext, stages: dict, answers: dict, cut_len: int, sft_scores: dict) -> float:
    """tau for the RL stage at this T_cut: its mean self-entropy (NLL) at logits / tau equals the SFT stage's."""
    batch_size = ctx.cfg.eap.batch_size
    if ctx.cfg.eap.target == "nll":
        target = float(np.mean(sft_scores["loss"]))  # the saved per-sample losses are the self-entropies
    else:
        model, tok = ctx.load_stage(stages["sft"])
        target = mean_self_entropy(model, scored_states(model, _batches(_items(answers["sft"], cut_len),
                                                                          tok.pad_token_id, batch_size)), 1.0)
    model, tok = ctx.load_stage(stages["rl"])
    try:
        tau = calibrate_temperature(model, _batches(_items(answers["rl"], cut_len), tok.pad_token_id, batch_size),
                                    target)
    except ValueError as exc:
        raise RlsftError(f"eap.calibrate=match_sft (T_cut {cut_len}): {exc}") from None
    log.info("calibration: %s logits / tau=%.4g match %s's mean self-entropy %.4g", stages["rl"].name, tau,
             stages["sft"].name, target)
    return tau


def faithfulness_losses(ctx: RunContext, stage, answers: list[dict], scores: dict, cut_len: int, settings: dict,
                        grid, half) -> dict:
    """`held_out_losses` of one stage (clean, none, kept [n_grid, n]); cached beside the scores they rank by."""
    cfg = ctx.cfg.eap
    key = stage_key(version=FAITHFULNESS_VERSION, model=fingerprint(ctx.model_spec(stage)),
                    scores=scores["path"].parent.name, grid=[float(q) for q in grid], half=half.tolist(),
                    baseline=cfg.faithfulness_baseline)
    path = stage_dir(ctx.cache_dir, "eap_faithfulness", key) / "losses.npz"
    with locked(path):
        if not path.exists():
            model, tok = ctx.load_stage(stage)
            graph = build_graph(model, settings["attn_inputs"])
            ids, lm, am = collate(_items(answers, cut_len), pad_id=tok.pad_token_id, side="left")
            patch = dict(target=settings.get("target", "nll"), tau=settings.get("tau", 1.0))
            if cfg.faithfulness_baseline == "mean":
                pairs = [(ids[i : i + cfg.batch_size], am[i : i + cfg.batch_size])
                         for i in range(0, len(ids), cfg.batch_size)]
                patch.update(baseline="mean", baseline_acts=mean_source_outputs(model, pairs, graph))
            log.info("faithfulness [%s]: %d samples, %d kept fractions", stage.name, len(ids), len(grid))
            out = held_out_losses(model, ids, lm, am, scores["W"], graph, grid, half, cfg.batch_size, **patch)
            with atomic_path(path) as tmp:
                np.savez_compressed(tmp, **out)
    data = np.load(path)
    return {k: data[k] for k in data.files}


def faithfulness_alpha(ctx: RunContext, gens: dict, selection, scored: dict, stages: dict) -> dict:
    """Curves (with bands), frac80 per stage and RL - SFT (paired interval) at one alpha, JSON-ready."""
    cfg = ctx.cfg
    grid = log_grid(cfg.eap.faithfulness_points)
    try:
        half = halves(len(selection.ids), seed=cfg.truncation.seed)
    except ValueError as exc:
        raise RlsftError(f"eap.faithfulness: {exc}") from None
    losses = {}
    for side, stage in stages.items():
        answers = [gens[stage.name][q] for q in selection.ids]
        losses[side] = faithfulness_losses(ctx, stage, answers, scored[side], scored["cut_len"],
                                           scored["settings"][side], grid, half)
    for stage in stages.values():
        ctx.release(stage)
    res = summarize(grid, losses, half, n_resamples=cfg.eap.n_boot, seed=cfg.truncation.seed)
    out = {"grid": grid.tolist(), "baseline": cfg.eap.faithfulness_baseline, "n_points": len(grid)}
    for side in stages:
        r = res[side]
        out[side] = {"curve": r["curve"].tolist(), "curve_lo": r["curve_lo"].tolist(),
                     "curve_hi": r["curve_hi"].tolist(), "frac80": float(r["frac80"]),
                     "frac80_ci": [float(r["frac80_lo"]), float(r["frac80_hi"])]}
    d = res["rl-sft"]
    out["diff"] = {"frac80": float(d["frac80"]), "frac80_ci": [float(d["frac80_lo"]), float(d["frac80_hi"])]}
    return out


def curve_rows(dataset: str, summaries: dict, names: dict) -> tuple[list[str], list[list]]:
    """The curves as one long table: alpha, stage, kept fraction, faithfulness with its band."""
    rows = []
    for a, s in summaries.items():
        f = s["faithfulness"]
        for side in ("sft", "rl"):
            rows += [[dataset, float(a), names[side], q, v, lo, hi] for q, v, lo, hi in
                     zip(f["grid"], f[side]["curve"], f[side]["curve_lo"], f[side]["curve_hi"])]
    return ["dataset", "alpha", "stage", "kept_fraction", "faithfulness", "lo", "hi"], rows


def faithfulness_figure(plt, summaries: dict, names: dict):
    """Both stages' curves per alpha (x log), 95% bands, frac80 marked by a dashed line."""
    fig, axes = plt.subplots(1, len(summaries), figsize=(4.2 * len(summaries), 3.6), squeeze=False)
    for ax, (a, s) in zip(axes[0], summaries.items()):
        f = s["faithfulness"]
        for side in ("sft", "rl"):
            c = f[side]
            line, = ax.plot(f["grid"], c["curve"], marker=".", label=f"{names[side]}: frac80 {c['frac80']:.3g}")
            ax.fill_between(f["grid"], c["curve_lo"], c["curve_hi"], alpha=0.2, color=line.get_color())
            ax.axvline(c["frac80"], ls="--", lw=1, color=line.get_color())
        ax.axhline(0.8, color="grey", lw=0.8)
        ax.set(xscale="log", xlabel="kept fraction of edges (ranked on the other half)", ylabel="faithfulness",
               title=f"alpha={a}, baseline {f['baseline']}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
