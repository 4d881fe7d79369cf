"""Edge attribution patching of an SFT and an RL model (method.md section 2; the paper's Table 1, Figures 2-3).

generate (cached) -> both-correct questions -> select_samples (once, for every alpha) -> for each alpha: T_cut,
edge_scores per model (cached, one file per model and alpha) -> metrics with bootstrap CIs -> table and figures.
"""

from __future__ import annotations

import hashlib
import logging
import shutil

import numpy as np
import torch
from tqdm.auto import tqdm

from ..cache import atomic_path, intact, locked, stage_dir, stage_key
from ..eap import (build_graph, collate, cut_length, edge_scores, estimate_memory, output_edge_entropy,
                   relative_change, sample_diversity, select_samples, summarize, truncation_inputs)
from ..errors import RlsftError
from ..models import fingerprint
from .common import RunContext, markdown_table

log = logging.getLogger(__name__)
SCORES_VERSION = 2  # 2: per-sample loss saved beside the scores
METRICS = ["activation_intensity", "information_complexity", "distribution_kurtosis"]


def _stage(ctx: RunContext, name: str):
    stages = {s.name: s for s in ctx.stages()}
    if name not in stages:
        raise RlsftError(f"eap needs a stage named {name!r} in model_pair {ctx.cfg.model_pair.name!r} "
                         f"(stages: {list(stages)}); set eap.sft_stage / eap.rl_stage")
    return stages[name]


def paired_questions(gens: dict[str, dict[str, dict]], require_correct: bool) -> tuple[list[str], dict]:
    """Question ids usable by both models, and the counts of what was dropped and why."""
    (a, ga), (b, gb) = gens.items()
    ids = [q for q in ga if q in gb]
    counts = {"questions": len(ids), f"{a}_correct": sum(ga[q]["correct"] for q in ids),
              f"{b}_correct": sum(gb[q]["correct"] for q in ids)}
    keep = [q for q in ids if ga[q]["correct"] and gb[q]["correct"]] if require_correct else ids
    counts["both_correct"] = len(keep) if require_correct else None
    # As in the paper's code: the two prompts must tokenize to the same length (a shared prompt region).
    same_len = [q for q in keep if len(ga[q]["prompt_ids"]) == len(gb[q]["prompt_ids"])]
    counts["dropped_prompt_length_mismatch"] = len(keep) - len(same_len)
    usable = [q for q in same_len if ga[q]["output_ids"] and gb[q]["output_ids"]]
    counts["dropped_empty_answer"] = len(same_len) - len(usable)
    return usable, counts


def scores_for(ctx: RunContext, stage, answers: list[dict], cut_len: int) -> dict:
    """Per-sample EAP matrices of one model at one T_cut: cached, one .npz per (model, alpha's T_cut, samples)."""
    cfg = ctx.cfg.eap
    ids_hash = hashlib.sha256(repr([(a["id"], a["prompt_ids"], a["output_ids"]) for a in answers]).encode()).hexdigest()
    key = stage_key(version=SCORES_VERSION, model=fingerprint(ctx.model_spec(stage)), samples=ids_hash,
                    cut_len=cut_len, attn_inputs=cfg.attn_inputs, positions=cfg.positions, dtype=ctx.cfg.run.dtype)
    path = stage_dir(ctx.cache_dir, "eap_scores", key) / "scores.npz"
    with locked(path):
        if not intact(path):
            model, tok = ctx.load_stage(stage)
            try:
                graph = build_graph(model, cfg.attn_inputs)
            except ValueError as exc:
                raise RlsftError(f"stage {stage.name!r}: {exc}") from None
            items = [truncation_inputs(a["prompt_ids"], a["output_ids"], cut_len) for a in answers]
            longest = max(len(it.input_ids) for it in items)
            need = estimate_memory(model.config, longest, min(cfg.batch_size, len(items)), model.dtype)
            log.info("edge_scores [%s]: %d samples, up to %d tokens, about %.2f GiB of activations per batch",
                     stage.name, len(items), longest, need / 2**30)
            mats, losses = [], []
            for i in tqdm(range(0, len(items), cfg.batch_size), desc=f"edge_scores [{stage.name}]", disable=None):
                batch = items[i : i + cfg.batch_size]
                ids, loss_mask, attention = collate(batch, pad_id=tok.pad_token_id, side="left")
                scores, loss = edge_scores(model, ids, loss_mask, attention, graph=graph, positions=cfg.positions,
                                           return_losses=True)
                mats.append(scores)
                losses.append(loss)
            W = torch.cat(mats).numpy().astype(np.float32)
            with atomic_path(path, sealed=True) as tmp:
                np.savez_compressed(tmp, W=W, mask=graph.mask.numpy(), sources=np.array(graph.sources),
                                    targets=np.array(graph.targets), ids=np.array([a["id"] for a in answers]),
                                    answer_len=np.array([it.answer_len for it in items]),
                                    shorter_than_cut=np.array([it.shorter_than_cut for it in items]),
                                    loss=torch.cat(losses).numpy(), cut_len=cut_len)
    data = np.load(path)
    return {k: data[k] for k in data.files} | {"path": path}


def run(cfg, ctx: RunContext) -> dict:
    sft, rl = _stage(ctx, cfg.eap.sft_stage), _stage(ctx, cfg.eap.rl_stage)
    sampling = ctx.sampling()
    if sampling.n_samples != 1:
        raise RlsftError(f"eap scores one answer per question; got generation.n_samples={sampling.n_samples}")
    records = ctx.records()
    gens = {}
    for stage in (sft, rl):
        gens[stage.name] = {g["id"]: g for g in ctx.generations(stage, records, sampling)}
        ctx.release(stage)
    usable, counts = paired_questions(gens, cfg.eap.require_correct)
    if not usable:
        raise RlsftError(
            f"no question of {cfg.dataset.name} was answered correctly by both models "
            f"({sft.name}: {counts[f'{sft.name}_correct']}/{counts['questions']}, "
            f"{rl.name}: {counts[f'{rl.name}_correct']}/{counts['questions']})")
    t = cfg.truncation
    lengths = {name: {q: len(gens[name][q]["output_ids"]) for q in usable} for name in gens}
    try:
        selection = select_samples(lengths[sft.name], lengths[rl.name], t.beta, t.gamma, t.delta, t.n, t.seed)
    except ValueError as exc:
        raise RlsftError(f"truncation: {exc}") from None
    if len(selection.ids) < 2:
        raise RlsftError(f"only {len(selection.ids)} question(s) left after the length filter (counts: "
                         f"{selection.n_correct} usable, {selection.n_in_window} in window, "
                         f"{selection.n_balanced} balanced); loosen truncation.beta/gamma/delta or use more questions")
    counts.update(n_usable=selection.n_correct, n_in_window=selection.n_in_window, n_balanced=selection.n_balanced,
                  n_selected=len(selection.ids), tbar=selection.tbar, t_min=selection.t_min, t_max=selection.t_max)
    ctx.write_json("eap_selection.json", {"counts": counts, "ids": selection.ids, "params": selection.params})
    log.info("eap selection: %s", counts)

    alphas = list(cfg.eap.alphas) or [t.alpha]
    rows, summaries, per_alpha = [], {}, {}
    for alpha in alphas:
        cut = cut_length(alpha, selection.tbar)
        W, info = {}, {}
        for stage in (sft, rl):
            answers = [gens[stage.name][q] for q in selection.ids]
            res = scores_for(ctx, stage, answers, cut)
            shutil.copyfile(res["path"], ctx.run_dir / f"eap_scores_{stage.name}_alpha{alpha:g}.npz")
            W[stage.name] = res["W"]
            info[stage.name] = {"shorter_than_cut": int(res["shorter_than_cut"].sum()),
                                "self_entropy": float(res["loss"].mean())}
            mask, sources = res["mask"], [str(s) for s in res["sources"]]
            targets = [str(x) for x in res["targets"]]
        for stage in (sft, rl):
            ctx.release(stage)
        summary = summarize(W[sft.name], W[rl.name], mask, bins=cfg.eap.bins, shared_range=cfg.eap.shared_range,
                            n_boot=cfg.eap.n_boot, seed=t.seed)
        diversity = {name: sample_diversity(W[name], mask) for name in W}
        summary["sample_diversity"] = {"sft": diversity[sft.name], "rl": diversity[rl.name],
                                       "diff": diversity[rl.name] - diversity[sft.name]}
        summary.update(cut_len=cut, shorter_than_cut={k: v["shorter_than_cut"] for k, v in info.items()},
                       self_entropy={"sft": info[sft.name]["self_entropy"], "rl": info[rl.name]["self_entropy"],
                                     "diff": info[rl.name]["self_entropy"] - info[sft.name]["self_entropy"]})
        summaries[f"{alpha:g}"] = summary
        per_alpha[alpha] = (W, mask, sources, targets)
        for stage in (sft, rl):
            side = "sft" if stage is sft else "rl"
            row = [cfg.dataset.name, alpha, cut, stage.name, summary["n_samples"]]
            for m in METRICS:
                lo, hi = summary[m][f"{side}_ci"]
                row += [summary[m][side], lo, hi]
            row += [diversity[stage.name], info[stage.name]["self_entropy"], info[stage.name]["shorter_than_cut"]]
            rows.append(row)
        ctx.tracker.log({f"alpha={alpha:g}/{m}/{side}": summary[m][side] for m in METRICS for side in ("sft", "rl")}
                        | {f"alpha={alpha:g}/{m}/diff": summary[m]["diff"] for m in METRICS})
    columns = ["dataset", "alpha", "cut_len", "stage", "n"]
    for m in METRICS:
        columns += [m, f"{m}_lo", f"{m}_hi"]
    columns += ["sample_diversity", "self_entropy", "shorter_than_cut"]
    ctx.write_table("eap_summary", columns, rows)
    diff_rows = [[cfg.dataset.name, float(a), m, s[m]["diff"], *s[m]["diff_ci"]]
                 for a, s in summaries.items() for m in METRICS]
    ctx.write_table("eap_differences", ["dataset", "alpha", "metric", "rl_minus_sft", "lo", "hi"], diff_rows)
    ctx.write_json("eap_metrics.json", {"selection": counts, "alphas": summaries,
                                        "stages": {"sft": sft.name, "rl": rl.name}})
    figures(ctx, per_alpha, summaries, sft.name, rl.name)
    print(console_summary(cfg.dataset.name, counts, summaries, sft.name, rl.name))
    return {"selection": counts, "alphas": {a: {m: {k: s[m][k] for k in ("sft", "rl", "diff")} for m in METRICS}
                                            for a, s in summaries.items()}}


def console_summary(dataset: str, counts: dict, summaries: dict, sft: str, rl: str) -> str:
    """What a run prints: accuracies, the selection, and per alpha each metric with RL - SFT and its 95% interval.

    ``self_entropy`` (the mean loss whose gradients the scores are) is shown beside the metrics, without an interval:
    it is a diagnostic, not a metric.
    """
    def difference(stat: dict) -> str:
        ci = f" [{stat['diff_ci'][0]:.4g}, {stat['diff_ci'][1]:.4g}]" if "diff_ci" in stat else ""
        return f"{stat['diff']:.4g}{ci}"

    head = (f"{dataset}: {sft} {counts[f'{sft}_correct']}/{counts['questions']} correct, {rl} "
            f"{counts[f'{rl}_correct']}/{counts['questions']}; {counts['n_selected']} questions selected "
            f"(Tbar {counts['tbar']:.1f} tokens)\n")
    return head + markdown_table(["alpha", "T_cut", "metric", sft, rl, f"{rl} - {sft} [95% CI]"],
                                 [[float(a), s["cut_len"], m, s[m]["sft"], s[m]["rl"], difference(s[m])]
                                  for a, s in summaries.items() for m in [*METRICS, "self_entropy"]])


def figures(ctx: RunContext, per_alpha: dict, summaries: dict, sft: str, rl: str) -> None:
    """Figure 2 (relative-change heatmap), Figure 3 (per-sample diversity, per-node output-edge entropy), vs alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for alpha, (W, mask, sources, targets) in per_alpha.items():
        rel = relative_change(W[sft], W[rl], mask)
        fig, ax = plt.subplots(figsize=(max(6, len(targets) / 6), max(4, len(sources) / 6)))
        lim = np.nanpercentile(np.abs(rel), 99) or 1.0
        cmap = plt.get_cmap("RdBu_r").with_extremes(bad="lightgrey")  # masked cells (not edges) in grey, as titled
        im = ax.imshow(np.ma.masked_invalid(rel), cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xticks(range(len(targets)), targets, rotation=90, fontsize=5)
        ax.set_yticks(range(len(sources)), sources, fontsize=5)
        ax.set_xlabel("target node")
        ax.set_ylabel("source node")
        ax.set_title(f"relative change of mean |W|, {rl} vs {sft} (alpha={alpha:g}; grey: not an edge)")
        fig.colorbar(im, ax=ax)
        ctx.save_figure(f"eap_relative_change_alpha{alpha:g}", fig)
        plt.close(fig)

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        for name in (sft, rl):
            X = W[name][:, mask].astype(np.float64)
            corr = np.corrcoef(X)
            n = len(X)
            per_sample = 1 - (corr.sum(1) - 1) / max(n - 1, 1)  # 1 - mean correlation with the other samples
            a1.plot(sorted(per_sample), label=f"{name} (diversity {summaries[f'{alpha:g}']['sample_diversity'][('sft' if name == sft else 'rl')]:.3f})")
            a2.plot(output_edge_entropy(W[name], mask), marker=".", label=name)
        a1.set(xlabel="sample (sorted)", ylabel="1 - mean Pearson r with other samples", title="per-sample diversity")
        a2.set_xticks(range(len(sources)), sources, rotation=90, fontsize=6)
        a2.set(ylabel="entropy of |W| over outgoing edges", title="output-edge entropy per source node")
        a1.legend()
        a2.legend()
        ctx.save_figure(f"eap_diversity_entropy_alpha{alpha:g}", fig)
        plt.close(fig)

    if len(summaries) > 1:
        alphas = sorted(float(a) for a in summaries)
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
        for ax, m in zip(axes, METRICS):
            for side, name in (("sft", sft), ("rl", rl)):
                vals = [summaries[f"{a:g}"][m][side] for a in alphas]
                lo = [summaries[f"{a:g}"][m][f"{side}_ci"][0] for a in alphas]
                hi = [summaries[f"{a:g}"][m][f"{side}_ci"][1] for a in alphas]
                ax.plot(alphas, vals, marker="o", label=name)
                ax.fill_between(alphas, lo, hi, alpha=0.2)
            ax.set(xscale="log", xlabel="alpha", title=m)
            ax.legend()
        ctx.save_figure("eap_metrics_vs_alpha", fig)
        plt.close(fig)
