"""The eap experiment's matched-loss calibration and causal check (method.md 2.6 calibration, 2.7 faithfulness).

calibrated_tau: the temperature that gives the RL stage the SFT stage's mean self-entropy on the selected samples.
faithfulness_alpha: per stage, per-sample patched losses of the cross-fitted, random-control and within-sample curves
(rlsft.eap.faithfulness; cached and sealed), then summaries with intervals and RL - SFT with p-values.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import torch

from ..cache import cached_npz, stage_dir, stage_key
from ..console import progress
from ..eap import build_graph, collate, edge_scores, samples_hash, scored_inputs, summed_positions
from ..eap.calibration import calibrate_temperature, mean_self_entropy, scored_states
from ..eap.faithfulness import baseline_outputs, faithfulness_losses as engine_losses, mean_positional, \
    patch_evaluator, share_grid, shared_prefix
from ..eap.faithfulness_stats import POINT_VALUES, seed_differences, summarize
from ..eap.results import metric_interval
from ..errors import RlsftError
from ..models import fingerprint
from ..templates import encode_prompt
from .common import RunContext, stage_color

log = logging.getLogger(__name__)
FAITHFULNESS_VERSION = 2
TOLERANCE = 0.01  # the bisection at the 0.8 crossing stops at 1% of E (method.md 2.7)


def _batches(items, pad_id, batch_size):
    return [collate(items[i : i + batch_size], pad_id=pad_id, side="left") for i in range(0, len(items), batch_size)]


def calibrated_tau(ctx: RunContext, stages: dict, answers: dict, cut_len: int | None, sft_scores: dict) -> float:
    """tau for the RL stage at this T_cut: its mean self-entropy (NLL) at logits / tau equals the SFT stage's."""
    batch_size = ctx.cfg.eap.batch_size
    if ctx.cfg.eap.target == "nll":
        target = float(np.mean(sft_scores["loss"]))  # the saved per-sample losses are the self-entropies
    else:
        model, tok = ctx.load_stage(stages["sft"])
        batches = _batches(scored_inputs(answers["sft"], cut_len), tok.pad_token_id, batch_size)
        target = mean_self_entropy(model, scored_states(model, batches), 1.0)
    model, tok = ctx.load_stage(stages["rl"])
    try:
        tau = calibrate_temperature(
            model, _batches(scored_inputs(answers["rl"], cut_len), tok.pad_token_id, batch_size), target)
    except ValueError as exc:
        raise RlsftError(f"eap.calibrate=match_sft (T_cut {cut_len}): {exc}") from None
    log.info("calibration: %s logits / tau=%.4g match %s's mean self-entropy %.4g", stages["rl"].name, tau,
             stages["sft"].name, target)
    return tau


def _twin_prompts(ctx: RunContext, tok, answers: list[dict], baseline: str, seed: int) -> list[list[int]]:
    """Each sample's baseline prompt ids, the same token length as its own (method.md 2.7): counterfactual, its
    record's first corrupted twin of that length under this stage's tokenizer; resample, another selected question's
    prompt of the same length (Chan et al. 2022)."""
    if baseline == "resample":
        rng = np.random.default_rng(seed)
        out = []
        for k, a in enumerate(answers):
            same = [j for j, b in enumerate(answers) if j != k and len(b["prompt_ids"]) == len(a["prompt_ids"])
                    and b["prompt_ids"] != a["prompt_ids"]]
            if not same:
                raise RlsftError(f"eap.faithfulness_baseline=resample: question {a['id']} has no other selected "
                                 f"question with its prompt length ({len(a['prompt_ids'])} tokens); use mean")
            out.append(list(answers[same[rng.integers(len(same))]]["prompt_ids"]))
        return out
    records = {r.id: r for r in ctx.records()}
    out = []
    for a in answers:
        twins = records[a["id"]].meta.get("twins")
        if not twins:
            raise RlsftError(f"eap.faithfulness_baseline=counterfactual: dataset {ctx.cfg.dataset.name!r} has no "
                             f"corrupted twins (synthetic arithmetic has them); use resample or mean")
        fits = [ids for ids in (encode_prompt(tok, ctx.cfg.model_pair.template, q) for q in twins)
                if len(ids) == len(a["prompt_ids"])]
        if not fits:
            raise RlsftError(f"eap.faithfulness_baseline=counterfactual: no twin of question {a['id']} keeps its "
                             f"{len(a['prompt_ids'])}-token prompt length under this tokenizer; use resample")
        out.append(fits[0])
    return out


def _baseline(ctx: RunContext, model, tok, graph, answers, cut_len, ids, am, baseline: str):
    """B_u per sample [n, n_src, seq, d] for the faithfulness baseline (None for zero), and the baseline inputs'
    ids [n, seq] (None unless counterfactual or resample)."""
    cfg = ctx.cfg.eap
    if baseline == "zero":
        return None, None
    if baseline == "mean":
        return mean_positional(baseline_outputs(model, graph, ids, am, cfg.batch_size), am), None
    twins = _twin_prompts(ctx, tok, answers, baseline, ctx.cfg.truncation.seed)
    items = scored_inputs([{**a, "prompt_ids": t} for t, a in zip(twins, answers)], cut_len)
    twin_ids, _, twin_am = collate(items, pad_id=tok.pad_token_id, side="left")
    if not torch.equal(twin_am, am):
        raise RlsftError("eap.faithfulness: a baseline input's length differs from its sample's")
    return baseline_outputs(model, graph, twin_ids, am, cfg.batch_size), twin_ids


def _ranking_scores(model, graph, ids, lm, am, B, settings: dict, batch_size: int) -> np.ndarray:
    """EAP scores [n, n_src, n_dst] against the curve's own baseline (what the kept sets are ranked by)."""
    out = []
    for i in range(0, len(ids), batch_size):
        rows = slice(i, i + batch_size)
        base = dict(baseline="zero") if B is None else dict(baseline="input", baseline_acts=B[rows])
        out.append(edge_scores(model, ids[rows], lm[rows], am[rows], graph=graph,
                               positions=summed_positions(settings["positions"]),
                               target=settings.get("target", "nll"), tau=settings.get("tau", 1.0), **base))
    return torch.cat(out).numpy()


def faithfulness_losses(ctx: RunContext, stage, answers: list[dict], cut_len: int | None, settings: dict, grid,
                        seed: int) -> dict:
    """`faithfulness.faithfulness_losses` of one stage (curves' per-sample losses, the splits drawn with `seed`),
    cached and sealed under a key of everything that determines them."""
    cfg = ctx.cfg.eap
    samples = samples_hash(answers)
    records = hashlib.sha256(repr([(r.id, r.meta.get("twins")) for r in ctx.records()]).encode()).hexdigest() \
        if cfg.faithfulness_baseline == "counterfactual" else None
    key = stage_key(version=FAITHFULNESS_VERSION, model=fingerprint(ctx.model_spec(stage)), samples=samples,
                    cut_len=cut_len, settings=settings, grid=[float(q) for q in grid], seed=seed,
                    baseline=cfg.faithfulness_baseline, twins=records, template=ctx.cfg.model_pair.template,
                    truncation_seed=ctx.cfg.truncation.seed, splits=cfg.faithfulness_splits,
                    draws=cfg.faithfulness_draws, ranking=cfg.faithfulness_ranking, tol=TOLERANCE)

    def compute() -> dict:
        model, tok = ctx.load_stage(stage)
        graph = build_graph(model, settings["attn_inputs"])
        ids, lm, am = collate(scored_inputs(answers, cut_len), pad_id=tok.pad_token_id, side="left")
        B, twin_ids = _baseline(ctx, model, tok, graph, answers, cut_len, ids, am, cfg.faithfulness_baseline)
        W = _ranking_scores(model, graph, ids, lm, am, B, settings, cfg.batch_size)
        log.info("faithfulness [%s]: %d samples, %d shares, %d splits, %d control draws, baseline %s", stage.name,
                 len(ids), len(grid), cfg.faithfulness_splits, cfg.faithfulness_draws, cfg.faithfulness_baseline)
        bar = progress(desc=f"faithfulness [{stage.name}]", unit="patched forward")
        # the positions before a twin's first changed token run once per batch (numerically the whole forward's)
        shared = shared_prefix(ids, twin_ids) if twin_ids is not None else None
        evaluate = patch_evaluator(model, graph, ids, lm, am, B, cfg.batch_size, on_rows=bar.update, shared=shared,
                                   target=settings.get("target", "nll"), tau=settings.get("tau", 1.0))

        def counted(pairs):  # the engine hands over its planned kept sets in a few large calls: the total grows
            bar.total = bar.n + len(pairs)
            return evaluate(pairs)

        try:
            return engine_losses(W, graph, counted, grid, cfg.faithfulness_splits, cfg.faithfulness_draws,
                                 cfg.faithfulness_ranking, seed, TOLERANCE)
        finally:
            bar.close()

    return cached_npz(stage_dir(ctx.cache_dir, "eap_faithfulness", key) / "losses.npz", compute)


def faithfulness_alpha(ctx: RunContext, gens: dict, selection, scored: dict, stages: dict,
                       seed: int | None = None) -> dict:
    """Curves (cross-fitted with band, control, within-sample), summaries with intervals per stage and RL - SFT with
    intervals and p-values at one alpha, JSON-ready. `seed` draws the splits (default truncation.seed)."""
    cfg = ctx.cfg
    grid = share_grid(cfg.eap.faithfulness_points)
    seed = split_seed(cfg, seed)
    if len(selection.ids) < 4:
        raise RlsftError(f"eap.faithfulness needs at least 4 selected questions (two per half); "
                         f"got {len(selection.ids)}")
    losses = {}
    for side, stage in stages.items():
        answers = [gens[stage.name][q] for q in selection.ids]
        losses[side] = faithfulness_losses(ctx, stage, answers, scored["cut_len"], scored["settings"][side], grid, seed)
    for stage in stages.values():
        ctx.release(stage)
    res = summarize(losses, n_boot=cfg.eap.n_boot, seed=seed)
    out = {"baseline": cfg.eap.faithfulness_baseline, "n_points": len(grid), "splits": cfg.eap.faithfulness_splits,
           "draws": cfg.eap.faithfulness_draws, "ranking": cfg.eap.faithfulness_ranking, "seed": seed}
    for side in stages:
        below = shares_not_above_control(res[side])
        out[side] = res[side] | {"beats_control": not below, "not_above_control": below}
    out["diffs"] = res["rl-sft"]  # every summary: {"diff", "ci", "p"} (p unadjusted: the run's Holm step adjusts it)
    d = res["rl-sft"]["frac80"]
    out["diff"] = {"frac80": d["diff"], "frac80_ci": d["ci"], "frac80_p": d["p"]}  # the flat keys eap.py tabulates
    return out


def split_seed(cfg, seed: int | None = None) -> int:
    """The seed that draws the cross-fitting splits: ``seed``, else eap.faithfulness_seed, else truncation.seed."""
    if seed is not None:
        return seed
    return cfg.eap.faithfulness_seed if cfg.eap.faithfulness_seed is not None else cfg.truncation.seed


def faithfulness_arm(ctx: RunContext, gens: dict, selection, scored: dict, reference, seeds: list) -> dict:
    """The causal check of an arm trained on several seeds (method.md 8 with 2.7): each cross-fitted summary, the
    seeds' mean minus the reference's, with an interval over seeds and questions (faithfulness_stats.seed_differences).
    ``scored``: score_alpha's output for the reference and the seeds' stages on the arm's selection. The patched
    losses are the per-seed checks' (cached), so this adds only the bootstrap."""
    cfg = ctx.cfg
    grid, seed = share_grid(cfg.eap.faithfulness_points), split_seed(cfg)
    losses = [faithfulness_losses(ctx, stage, [gens[stage.name][q] for q in selection.ids], scored["cut_len"],
                                  scored["settings"][stage.name], grid, seed) for stage in (reference, *seeds)]
    for stage in (reference, *seeds):
        ctx.release(stage)
    return seed_differences(losses[0], losses[1:], n_boot=cfg.eap.n_boot, seed=seed)


def shares_not_above_control(r: dict, from_share: float = 0.05) -> list[float]:
    """The evaluated shares in [`from_share`, 1) where the cross-fitted curve is not above the random control. The
    full set is left out: keeping every edge gives f = 1 whatever the ranking, so no curve can beat another there."""
    return [float(q) for q, f, c in zip(r["shares"], r["curve"], r["control"])
            if from_share - 1e-12 <= q < 1 - 1e-12 and not f > c]


CURVES = (("curve", "cross-fitted"), ("control", "random control"), ("within", "within-sample"))


def curve_rows(dataset: str, summaries: dict, names: dict) -> tuple[list[str], list[list]]:
    """The curves as one long table: alpha, stage, which curve, kept share, faithfulness (band on the cross-fitted)."""
    rows = []
    for a, s in summaries.items():
        f = s["faithfulness"]
        for side in ("sft", "rl"):
            c = f[side]
            for key, label in CURVES:
                lo, hi = (c["curve_lo"], c["curve_hi"]) if key == "curve" else ([None] * len(c[key]),) * 2
                rows += [[dataset, float(a), names[side], label, q, v, l, h]
                         for q, v, l, h in zip(c["shares"], c[key], lo, hi)]
    return ["dataset", "alpha", "stage", "curve", "kept_share", "faithfulness", "lo", "hi"], rows


SUMMARIES = ("faith_auc", "faith_auc_minus_control", "frac80", "f_0.05", "f_0.1", "f_0.2", "f_0.5", "control_auc",
             "within_auc", "within_frac80")


def _cannot_tell(ci) -> bool:
    return not (ci[0] > 0 or ci[1] < 0)  # nan bounds: cannot tell either


def _reading(k: str, ci) -> str:
    if k in POINT_VALUES:
        return "point value (no interval, no test)"
    return "cannot tell" if _cannot_tell(ci) else ("RL higher" if ci[0] > 0 else "RL lower")


def faithfulness_summary_rows(dataset: str, summaries: dict, names: dict) -> tuple[list[str], list[list]]:
    """Per alpha and summary: each stage's value with interval, RL - SFT with interval and unadjusted p-value."""
    rows = []
    for a, s in summaries.items():
        f = s["faithfulness"]
        for k in SUMMARIES:
            sft, rl, d = f["sft"], f["rl"], f["diffs"][k]
            rows.append([dataset, float(a), f["baseline"], k, sft[k], *metric_interval(sft[f"{k}_ci"]), rl[k],
                         *metric_interval(rl[f"{k}_ci"]), d["diff"], *metric_interval(d["ci"]),
                         None if k in POINT_VALUES else d["p"], _reading(k, d["ci"])])
    return ["dataset", "alpha", "baseline", "summary", names["sft"], "sft_lo", "sft_hi", names["rl"], "rl_lo", "rl_hi",
            "rl_minus_sft", "diff_lo", "diff_hi", "p_unadjusted", "reading"], rows


def faithfulness_console(summaries: dict, names: dict) -> str:
    """The faithfulness block of the console: summaries per stage and RL - SFT ('cannot tell' where the interval
    holds 0), and whether the cross-fitted curve beats the random control at every share >= 5%."""
    lines = []
    for a, s in summaries.items():
        f = s["faithfulness"]
        lines.append(f"faithfulness at alpha {a} (baseline {f['baseline']}, {f['splits']} splits, {f['draws']} control "
                     f"draws; 95% intervals include the split; p unadjusted):")
        for k in SUMMARIES:
            d = f["diffs"][k]
            if k in POINT_VALUES:
                lines.append(f"  {k:<24} {names['sft']} {f['sft'][k]:.3f}  {names['rl']} {f['rl'][k]:.3f}  RL - SFT "
                             f"{d['diff']:+.3f}  point values (no interval, no test)")
                continue
            cell = lambda r: f"{r[k]:.3f} [{r[k + '_ci'][0]:.3f}, {r[k + '_ci'][1]:.3f}]"  # noqa: E731
            lines.append(f"  {k:<24} {names['sft']} {cell(f['sft'])}  {names['rl']} {cell(f['rl'])}  RL - SFT "
                         f"{d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] p={d['p']:.3g}"
                         + ("  cannot tell" if _cannot_tell(d["ci"]) else ""))
        for side in ("sft", "rl"):
            below = f[side]["not_above_control"]
            lines.append(f"  {names[side]}: cross-fitted above the random control at every share in [0.05, 1): "
                         + ("yes" if not below else f"no (not at {', '.join(f'{q:.3g}' for q in below)})"))
    return "\n".join(lines)


def faithfulness_figure(plt, summaries: dict, names: dict):
    """Per alpha, each stage's cross-fitted curve (95% band), its random control (dotted) and its within-sample curve
    (dashed); frac80 of the cross-fitted curve in the legend."""
    fig, axes = plt.subplots(1, len(summaries), figsize=(5.6 * len(summaries), 5.0), squeeze=False)
    for ax, (a, s) in zip(axes[0], summaries.items()):
        f = s["faithfulness"]
        for side in ("sft", "rl"):
            c = f[side]
            x = [0.0] + list(c["shares"])
            line, = ax.plot(x, [0.0] + list(c["curve"]), lw=1.8, color=stage_color(names[side]),
                            label=f"{names[side]} cross-fitted (frac80 {c['frac80']:.2f}, AUC {c['faith_auc']:.2f})")
            ax.fill_between(c["shares"], c["curve_lo"], c["curve_hi"], alpha=0.2, color=line.get_color(), lw=0)
            ax.plot(x, [0.0] + list(c["control"]), ls=":", lw=1.4, color=line.get_color(),
                    label=f"{names[side]} random control (AUC {c['control_auc']:.2f})")
            ax.plot(x, [0.0] + list(c["within"]), ls="--", lw=1.2, color=line.get_color(),
                    label=f"{names[side]} within-sample (AUC {c['within_auc']:.2f})")
        ax.axhline(0.8, color="grey", lw=0.8)
        ax.set(xlim=(0, 1), ylim=(max(-1.0, ax.get_ylim()[0]), 1.1), xlabel="kept share of edges (after pruning)",
               ylabel="faithfulness f", title=f"alpha={a}: baseline {f['baseline']}, {f['splits']} splits")
        # below the axes: the control curves climb through the lower right, the bands fill the upper left
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.tight_layout()
    return fig
