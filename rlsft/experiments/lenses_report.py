"""The lenses experiment's views: tables (CSV / markdown / W&B), W&B summary keys, console text and figures."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.ticker import MaxNLocator

from .common import RunContext, arm_name, markdown_table, stage_color


def _r(x, digits: int = 4):
    """``digits`` significant digits, not decimals: a spectral drift of 1.4e-05 printed as 0 reads as "no drift"."""
    return "" if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(f"{float(x):.{digits}g}")


def _cells(v: dict) -> list:
    return [_r(v["mean"]), _r(v["ci"][0]), _r(v["ci"][1])]


def weight_tables(result: dict) -> dict[str, tuple[list, list]]:
    ref = result["reference"]
    lens = ["unchanged", "effective_rank_share", "numerical_rank_share", "spectral_drift", "max_angle_deg"]
    out = {"lenses_weights": (["stage", "reference", "params", *lens], [
        [n, ref, w["all"]["numel"], *[_r(w["all"].get(x)) for x in lens]] for n, w in result["weights"].items()])}
    rows = []
    for n, w in result["weights"].items():
        total = sum(b["mass"] for b in w["by_block"].values()) or 1.0
        rows += [[n, g, b["numel"], _r(b["unchanged"]), _r(b["mass"] / total)] for g, b in _block_order(w["by_block"])]
    out["lenses_blocks"] = (["stage", "block", "params", "unchanged", "update_mass_share"], rows)
    out["lenses_types"] = (["stage", "matrix", "params", *lens], [
        [n, t, b["numel"], *[_r(b.get(x)) for x in lens]] for n, w in result["weights"].items()
        for t, b in sorted(w["by_type"].items())])
    out["lenses_overlap"] = (["stage_a", "stage_b", "jaccard", "chance", "ratio"], [
        [*pair.split("|"), _r(o["jaccard"]), _r(o["chance"]), _r(o["jaccard"] / o["chance"] if o["chance"] else None)]
        for pair, o in result["overlap"].items()])
    return out


def _block_order(by_block: dict):
    def key(item):
        g = item[0]
        return (0, -1) if g == "embed" else (1, int(g.split()[1])) if g.startswith("block ") else (2, g)
    return sorted(by_block.items(), key=key)


def output_tables(result: dict) -> dict[str, tuple[list, list]]:
    o, ref = result["outputs"], result["reference"]
    cols = ["stage", "reference", "task_kl", "task_kl_low", "task_kl_high", "control_kl", "control_kl_low",
            "control_kl_high", "task_accuracy", "task_accuracy_change", "task_change_low", "task_change_high",
            "control_accuracy", "control_accuracy_change", "control_change_low", "control_change_high",
            "crossover_k"]
    rows = [[n, ref, *_cells(v["task_kl"]), *_cells(v["control_kl"]), _r(v["task_accuracy"]),
             *_cells(v["task_accuracy_change"]), _r(v["control_accuracy"]), *_cells(v["control_accuracy_change"]),
             result["crossover_k"].get(n) or ""] for n, v in o.items() if n != "__reference__"]
    pk = [[n, r["k"], _r(r["pass"]), _r(r["ci"][0]), _r(r["ci"][1])]
          for n, c in result["pass_at_k"].items() for r in c["rows"]]
    out = {"lenses_outputs": (cols, rows), "lenses_pass_at_k": (["stage", "k", "pass_at_k", "low", "high"], pk)}
    circ = result.get("circuit") or {}
    if circ and "error" not in circ:  # a stage without a selection: "cannot tell" and why, in the blocks' cell
        out["lenses_circuit"] = (["stage", "top_eap_blocks", "update_mass_share", "changed_share", "param_share",
                                  "questions"],
                                 [[n, f"cannot tell: {c['error']}", None, None, None, 0] if "error" in c else
                                  [n, " ".join(map(str, c["blocks"])), _r(c["mass_share"]), _r(c["changed_share"]),
                                   _r(c["param_share"]), c["questions"]] for n, c in circ.items()])
    return out


def arm_table(result: dict) -> dict[str, tuple[list, list]]:
    """lenses_arms: each lens per arm over its seeds (rlsft.experiments.lenses_arms); absent for one seed."""
    cols = ["arm", "measure", "value", "ci_low", "ci_high", "seeds", "questions", "p", "p_holm", "verdict"]
    return {"lenses_arms": (cols, [[r["arm"], r["measure"], _r(r["value"]), _r(r["ci_low"]), _r(r["ci_high"]),
                                    r["seeds"], r["questions"] if r["questions"] is not None else "",
                                    _r(r.get("p"), 6), _r(r.get("p_holm"), 6), r["verdict"]]
                                   for r in result.get("arms", [])])}


def wandb_values(result: dict) -> dict:
    """lenses/<lens>/<stage> summary keys (one number each)."""
    vals = {}
    for n, w in result["weights"].items():
        vals |= {f"lenses/{k}/{n}": w["all"][k] for k in ("unchanged", "effective_rank_share", "spectral_drift",
                                                           "max_angle_deg") if k in w["all"]}
    for n, v in result["outputs"].items():
        if n != "__reference__":
            vals |= {f"lenses/{k}/{n}": v[k]["mean"] for k in ("task_kl", "control_kl", "control_accuracy_change",
                                                                "task_accuracy_change")}
    for n, c in result["pass_at_k"].items():
        vals |= {f"lenses/pass_at_{r['k']}/{n}": r["pass"] for r in c["rows"]}
    for r in result.get("arms", []):
        vals[f"lenses/arms/{r['measure'].split(' - ')[0]}/{r['arm']}"] = r["value"]
    for n, c in (result.get("circuit") or {}).items():
        if isinstance(c, dict) and "error" not in c:
            vals |= {f"lenses/circuit_mass_share/{n}": c["mass_share"], f"lenses/circuit_param_share/{n}":
                     c["param_share"]}
    return vals


def tables(ctx: RunContext, result: dict) -> str:
    """Write every table and the W&B keys; return the console text (the main tables as markdown)."""
    all_tables = arm_table(result) | weight_tables(result) | output_tables(result)
    all_tables = {n: t for n, t in all_tables.items() if t[1]}  # no overlap table with one compared stage
    for name, (cols, rows) in all_tables.items():
        ctx.write_table(name, cols, rows)
    ctx.tracker.summary(wandb_values(result))
    shown = ["lenses_arms", "lenses_weights", "lenses_overlap", "lenses_outputs", "lenses_circuit"]
    text = [f"## {n}\n" + markdown_table(*all_tables[n]) for n in shown if n in all_tables]
    if "error" in (result.get("circuit") or {}):
        text.append(f"lenses_circuit: cannot tell ({result['circuit']['error']})")
    return "\n".join(text)


def figures(ctx: RunContext, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, draw in (("lenses_pass_at_k_curves", pass_figure), ("lenses_sparsity_blocks", sparsity_figure),
                       ("lenses_kl_vs_forgetting", forgetting_figure)):
        fig = draw(plt, result)
        ctx.save_figure(name, fig)
        plt.close(fig)


def legend_labels(names, reference: str) -> dict[str, str]:
    """One legend entry per arm: a seeded arm's stages share its colour, so its first stage carries the arm's name and
    seed count and the others none (19 entries for the arms' 3 seeds would not fit beside the axes)."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(arm_name(n), []).append(n)
    labels = {}
    for arm, group in groups.items():
        first = group[0] if len(group) == 1 else f"{arm} ({len(group)} seeds)"
        labels |= {n: (first if i == 0 else "_nolegend_") for i, n in enumerate(group)}
    return labels | {reference: f"{reference} (reference)"} if reference in labels else labels


def pass_figure(plt, result: dict):
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = legend_labels(result["pass_at_k"], result["reference"])
    for n, c in result["pass_at_k"].items():
        ks = np.array(c["ks"])
        mean = [r["pass"] for r in c["rows"]]
        ax.plot(ks, mean, marker="o", ms=3, color=stage_color(n), label=labels[n],
                ls="--" if n == result["reference"] else "-")
        ax.fill_between(ks, [r["ci"][0] for r in c["rows"]], [r["ci"][1] for r in c["rows"]], color=stage_color(n),
                        alpha=0.12)
    ax.set_xscale("log", base=2)
    ax.set_xticks(result["pass_at_k"][result["reference"]]["ks"], [str(k) for k in
                                                                   result["pass_at_k"][result["reference"]]["ks"]])
    return _finish(fig, ax, "k (samples per question)", "pass@k (mean over questions, 95% CI)",
                   "pass@k, unbiased estimator")


def sparsity_figure(plt, result: dict):
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = legend_labels(result["weights"], result["reference"])
    shares: dict[str, list[float]] = {}
    for n, w in result["weights"].items():
        shares.setdefault(arm_name(n), []).append(w["all"]["unchanged"])
    for n, w in result["weights"].items():
        blocks = [(int(g.split()[1]), b["unchanged"]) for g, b in w["by_block"].items() if g.startswith("block ")]
        blocks.sort()
        arm = shares[arm_name(n)]
        overall = f"{arm[0]:.1%}" if len(arm) == 1 else f"{min(arm):.1%}-{max(arm):.1%}"
        ax.plot([b for b, _ in blocks], [u for _, u in blocks], marker="o", ms=3, color=stage_color(n),
                label=labels[n] if labels[n] == "_nolegend_" else f"{labels[n]} (all: {overall})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _finish(fig, ax, "decoder block", "share of parameters unchanged at bf16",
                   f"Update sparsity per block, against {result['reference']}")


def forgetting_figure(plt, result: dict):
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = legend_labels([n for n in result["outputs"] if n != "__reference__"], result["reference"])
    for n, v in result["outputs"].items():
        if n == "__reference__":
            continue
        x, y = v["task_kl"], v["control_accuracy_change"]
        ax.errorbar(x["mean"], y["mean"], xerr=[[x["mean"] - x["ci"][0]], [x["ci"][1] - x["mean"]]],
                    yerr=[[y["mean"] - y["ci"][0]], [y["ci"][1] - y["mean"]]], fmt="o", color=stage_color(n),
                    capsize=3, label=labels[n])
    ax.axhline(0, color="grey", lw=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    return _finish(fig, ax, f"task KL({result['reference']} || stage) per answer token, nats",
                   "control accuracy change (stage - reference)", "Forgetting against KL on the task (95% CIs)")


def _finish(fig, ax, xlabel: str, ylabel: str, title: str):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    # beside the axes: with the arms' seven stages a legend inside covers curves and error bars
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    ax.grid(alpha=0.3)
    return fig
