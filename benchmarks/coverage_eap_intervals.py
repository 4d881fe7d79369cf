"""Coverage of the EAP intervals by simulation from a known population (issue 10, method.md 2.6).

    PYTHONPATH=. python benchmarks/coverage_eap_intervals.py               # n = 8 and 30, 400 replications each
    PYTHONPATH=. python benchmarks/coverage_eap_intervals.py --reps 200 --n 8

Population: a question k has a scale s_k ~ lognormal(0, SCALE_SD), shared by both stages. SFT edges are s_k * t3
draws (E = 400); RL edges are s_k * f_k * (0.6 * the SFT draw + 0.8 * t5), f_k ~ lognormal(0.3, 0.3): heavy tails,
per-sample scale spread, and a real pairing between the stages. Losses: log loss_k = log(scale) + N(0, 0.2) (RL -1),
so loss_adjusted has a population value too. The population value of each number is its expectation, computed from a
large independent draw (the mean of per-sample values, the paired mean difference, the least-squares c); for the paper's
pooled complexity (whose expectation depends on n) it is the mean over independent data sets of the same n.

Before: the old `summarize` (percentile bootstrap, 1000 resamples, pooled complexity on a histogram range fixed at the
full-data max). After: `compare` and `loss_adjusted` (BCa, 2000 resamples). Prints one row per number: the share of
replications whose 95% interval contains the population value.

Plasmode (issue 19, method.md 2.8): ``--plasmode RUN_DIR --alpha A`` takes the real per-question matrices of an EAP run
(``eap_scores_<stage>_alpha<A>.npz``, both stages) as the population, saves it compressed under
``<cache_dir>/plasmode/``, and resamples n questions with replacement; the true values are the means over the whole
pool (loss_adjusted: c fitted on the whole pool). Real W_k keep their correlation across questions and between stages,
which the i.i.d. t3 draw above lacks. A pool of >= 100 questions of the embedded pair: 1-digit +/- has 155 distinct
questions, fewer are both correct, so score all of them (not the paper's both-correct selection) and lift the N cap:

    python launch.py dataset.arithmetic.count=155 eap.require_correct=false truncation.n=155 "eap.alphas=[1.0]" \
        hydra.run.dir=outputs/pool155
    PYTHONPATH=. python benchmarks/coverage_eap_intervals.py --plasmode outputs/pool155 --alpha 1.0 --reps 400

Measured plasmode (138 questions of the embedded pair, today's RL stage, dataset.arithmetic.count=155,
require_correct=false, alpha 1.0, 999 resamples, 300 replications per n, 3 min on a 2-core machine): at n = 30 every
interval covers 0.907-0.970 (withheld kurtosis 0.940-0.967); at n = 8 0.837-0.990 (lowest: self_entropy rl 0.837,
activation_intensity rl 0.847).

Faithfulness (``--plasmode RUN --faithfulness``, method.md 2.7): the same pool through the faithfulness engine
(section below), 100 replications per n, 7-9 min per n: the cross-fitted summaries cover 0.90-1.00 at n = 8 and
0.93-1.00 at n = 30; control_auc, within_auc and within_frac80 (now point values, scored "withheld") 0.77-0.98 and
0.81-0.98.

Measured (1000 replications per n, population 40000, scale sd 0.5, 251 s): after, every reported interval covers
0.903-0.955 at n = 8 and 0.929-0.958 at n = 30 (l_kurtosis 0.931-0.955); the paper's kurtosis is a point value
because the BCa interval it would get ("withheld") covers 0.69-0.84 at n = 8 and 0.80-0.92 at n = 30. Before: the
pooled complexity 0.55 / 0.64 / 0.51 (sft / rl / diff) at n = 8 and 0.34 / 0.40 / 0.31 at n = 30; percentile
intensity 0.83-0.86 at n = 8; kurtosis 0.60-0.76 at n = 8.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rlsft.eap import METRICS, compare, compare_values, loss_adjusted, per_sample

E_SHAPE = (20, 20)  # E = 400 edges, all real (the mask is all True)
MASK = np.ones(E_SHAPE, dtype=bool)
OLD = ["activation_intensity", "information_complexity_pooled", "distribution_kurtosis"]


SCALE_SD = 0.5  # sd of log scale_k; the embedded pair's log intensity_k spreads by 0.1-0.4 (see --scale-sd)


def draw(rng, n: int):
    """n paired questions: W_sft, W_rl [n, 20, 20] and losses [n] per stage."""
    s = rng.lognormal(0.0, SCALE_SD, size=(n, 1, 1))
    f = rng.lognormal(0.3, 0.3, size=(n, 1, 1))
    base = rng.standard_t(3, size=(n, *E_SHAPE))
    W_sft = s * base
    W_rl = s * f * (0.6 * base + 0.8 * rng.standard_t(5, size=(n, *E_SHAPE)))
    loss_sft = np.exp(np.log(s[:, 0, 0]) + rng.normal(0, 0.2, n))
    loss_rl = np.exp(np.log((s * f)[:, 0, 0]) - 1.0 + rng.normal(0, 0.2, n))
    return W_sft, W_rl, loss_sft, loss_rl


def population(n_values=(8, 30), size: int = 40_000, pooled_sets: int = 2000, seed: int = 12345) -> dict:
    """{number: {"sft", "rl", "diff"}} for the per-sample numbers; pooled complexity per n."""
    rng = np.random.default_rng(seed)
    vals = {m: {"sft": [], "rl": []} for m in [*METRICS, "self_entropy"]}
    logs = {"i_sft": [], "i_rl": [], "l_sft": [], "l_rl": []}
    for _ in range(size // 2000):
        W_sft, W_rl, l_sft, l_rl = draw(rng, 2000)
        for m in METRICS:
            vals[m]["sft"].append(per_sample(W_sft, MASK, m))
            vals[m]["rl"].append(per_sample(W_rl, MASK, m))
        vals["self_entropy"]["sft"].append(l_sft)
        vals["self_entropy"]["rl"].append(l_rl)
        logs["i_sft"].append(per_sample(W_sft, MASK, "activation_intensity"))
        logs["i_rl"].append(per_sample(W_rl, MASK, "activation_intensity"))
        logs["l_sft"].append(l_sft)
        logs["l_rl"].append(l_rl)
    out = {}
    for m, v in vals.items():
        a, b = np.concatenate(v["sft"]), np.concatenate(v["rl"])
        out[m] = {"sft": a.mean(), "rl": b.mean(), "diff": (b - a).mean()}
    i_s, i_r, l_s, l_r = (np.log(np.concatenate(logs[k])) for k in ("i_sft", "i_rl", "l_sft", "l_rl"))
    N = len(i_s)
    X = np.column_stack([np.ones(2 * N), np.r_[l_s, l_r], np.r_[np.zeros(N), np.ones(N)]])
    out["loss_adjusted"] = {"diff": np.linalg.lstsq(X, np.r_[i_s, i_r], rcond=None)[0][2]}
    for n in n_values:  # the pooled statistic's expectation at this n
        p = np.array([[_pooled(W) for W in draw(rng, n)[:2]] for _ in range(pooled_sets)])
        out[f"information_complexity_pooled@{n}"] = {"sft": p[:, 0].mean(), "rl": p[:, 1].mean(),
                                                     "diff": (p[:, 1] - p[:, 0]).mean()}
    return out


def _pooled(W, bins: int = 100) -> float:
    a = np.abs(W).ravel()
    p = np.histogram(a, bins=bins, range=(0, a.max()))[0] / a.size
    return float(-(p * np.log(p + 1e-12)).sum())


def old_summarize(W_sft, W_rl, n_boot: int = 1000, seed: int = 0) -> dict:
    """The removed `summarize`: percentile bootstrap over samples, pooled complexity on the full-data range.

    Vectorised but equal to the old loop: a resample's pooled histogram is the sum of its samples' histograms on the
    fixed range, and its intensity/kurtosis are means of per-sample values.
    """
    n = len(W_sft)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))

    def per_row(W):
        A = np.abs(W.reshape(n, -1))
        counts = np.stack([np.histogram(a, bins=100, range=(0, A.max()))[0] for a in A])
        return {"activation_intensity": A.mean(1), "information_complexity_pooled": counts,
                "distribution_kurtosis": per_sample(W, MASK, "distribution_kurtosis")}

    def stat(name, rows, which):
        if name != "information_complexity_pooled":
            return rows[name][which].mean(-1)
        c = rows[name][which].sum(-2)
        p = c / c.sum(-1, keepdims=True)
        return -(p * np.log(p + 1e-12)).sum(-1)

    rs, rr = per_row(W_sft), per_row(W_rl)
    out = {}
    for name in OLD:
        s_full, r_full = stat(name, rs, slice(None)), stat(name, rr, slice(None))
        s_boot, r_boot = stat(name, rs, idx), stat(name, rr, idx)
        pct = lambda x: tuple(np.percentile(x, [2.5, 97.5]))  # noqa: E731
        out[name] = {"sft": s_full, "rl": r_full, "sft_ci": pct(s_boot), "rl_ci": pct(r_boot),
                     "diff_ci": pct(r_boot - s_boot)}
    return out


def coverage(n: int, reps: int, pop: dict, n_resamples: int = 2000, seed: int = 0, before: bool = True) -> dict:
    """{(when, number, side): share of replications covering the population value}."""
    rng = np.random.default_rng(seed)
    hits: dict = {}

    def count(when, name, side, ci, truth):
        hits.setdefault((when, name, side), []).append(ci[0] <= truth <= ci[1])

    for r in range(reps):
        W_sft, W_rl, l_sft, l_rl = draw(rng, n)
        after = compare(W_sft, W_rl, MASK, n_resamples=n_resamples, seed=r)
        after["self_entropy"] = compare_values(l_sft, l_rl, n_resamples=n_resamples, seed=r)
        for name, res in after.items():
            when = "after"
            if not np.isfinite(res["sft_ci"]).any():  # a point value: the interval it would have had, "withheld"
                when = "withheld"
                res = compare_values(per_sample(W_sft, MASK, name), per_sample(W_rl, MASK, name),
                                     n_resamples=n_resamples, seed=r)
            for side in ("sft", "rl", "diff"):
                count(when, name, side, res[f"{side}_ci"], pop[name][side])
        la = loss_adjusted(per_sample(W_sft, MASK, "activation_intensity"),
                           per_sample(W_rl, MASK, "activation_intensity"), l_sft, l_rl, n_resamples=n_resamples, seed=r)
        count("after", "loss_adjusted", "diff", la["c_ci"], pop["loss_adjusted"]["diff"])
        if before:
            for name, res in old_summarize(W_sft, W_rl, seed=r).items():
                key = f"{name}@{n}" if name == "information_complexity_pooled" else name
                for side in ("sft", "rl", "diff"):
                    count("before", name, side, res[f"{side}_ci"], pop[key][side])
    return {k: float(np.mean(v)) for k, v in hits.items()}


# ------------------------------------------------------------------------------------------------ plasmode (issue 19)
def plasmode_pool(run_dir, alpha: float, sft: str = "sft", rl: str = "rl", save=None) -> dict:
    """The real per-question matrices of an EAP run as a population: {W_sft, W_rl [N, n_src, n_dst], loss_sft,
    loss_rl [N], mask}. ``run_dir`` holds ``eap_scores_<stage>_alpha<a>.npz`` (every run saves them); ``save``: a path
    for a compressed copy (under the cache, not in git: a few MB per alpha)."""
    from pathlib import Path

    run_dir = Path(run_dir)
    a, b = (np.load(run_dir / f"eap_scores_{name}_alpha{alpha:g}.npz") for name in (sft, rl))
    if list(a["ids"]) != list(b["ids"]):
        raise ValueError(f"{run_dir}: the two stages' matrices hold different questions")
    pool = {"W_sft": a["W"], "W_rl": b["W"], "loss_sft": a["loss"], "loss_rl": b["loss"],
            "mask": a["mask"].astype(bool)}
    if save is not None:
        from rlsft.cache import atomic_path

        with atomic_path(save) as tmp:  # two benchmark processes may save the same pool
            np.savez_compressed(tmp, **pool)
    return pool


def pool_truth(pool: dict) -> dict:
    """The population values of a plasmode: means over the WHOLE pool (per-sample metrics, paired differences) and
    loss_adjusted's c fitted on the whole pool. Draws with replacement have exactly these expectations."""
    mask, out = pool["mask"], {}
    for m in METRICS:
        a, b = per_sample(pool["W_sft"], mask, m), per_sample(pool["W_rl"], mask, m)
        ok = np.isfinite(a) & np.isfinite(b)
        out[m] = {"sft": a[ok].mean(), "rl": b[ok].mean(), "diff": (b - a)[ok].mean()}
    ls, lr = pool["loss_sft"].astype(float), pool["loss_rl"].astype(float)
    out["self_entropy"] = {"sft": ls.mean(), "rl": lr.mean(), "diff": (lr - ls).mean()}
    logs = [np.log(per_sample(pool["W_sft"], mask, "activation_intensity")),
            np.log(per_sample(pool["W_rl"], mask, "activation_intensity")), np.log(ls), np.log(lr)]
    N = len(ls)
    X = np.column_stack([np.ones(2 * N), np.r_[logs[2], logs[3]], np.r_[np.zeros(N), np.ones(N)]])
    out["loss_adjusted"] = {"diff": np.linalg.lstsq(X, np.r_[logs[0], logs[1]], rcond=None)[0][2]}
    return out


def plasmode_coverage(pool: dict, n: int, reps: int, n_resamples: int = 2000, seed: int = 0) -> dict:
    """{(when, number, side): coverage} of every interval the EAP table prints, on samples of ``n`` questions drawn
    with replacement from the pool (real W_k: their correlation across questions and between stages is kept)."""
    truth, mask = pool_truth(pool), pool["mask"]
    rng = np.random.default_rng(seed)
    hits: dict = {}
    for r in range(reps):
        k = rng.integers(0, len(pool["loss_sft"]), n)
        W_s, W_r, l_s, l_r = pool["W_sft"][k], pool["W_rl"][k], pool["loss_sft"][k], pool["loss_rl"][k]
        res = compare(W_s, W_r, mask, n_resamples=n_resamples, seed=r)
        res["self_entropy"] = compare_values(l_s, l_r, n_resamples=n_resamples, seed=r)
        for name, v in res.items():
            when = "plasmode" if np.isfinite(v["sft_ci"]).any() else "withheld"
            if when == "withheld":  # a point value: the interval it would have had
                v = compare_values(per_sample(W_s, mask, name), per_sample(W_r, mask, name), n_resamples=n_resamples,
                                   seed=r)
            for side in ("sft", "rl", "diff"):
                hits.setdefault((when, name, side), []).append(v[f"{side}_ci"][0] <= truth[name][side]
                                                               <= v[f"{side}_ci"][1])
        la = loss_adjusted(per_sample(W_s, mask, "activation_intensity"), per_sample(W_r, mask, "activation_intensity"),
                           l_s, l_r, n_resamples=n_resamples, seed=r)
        hits.setdefault(("plasmode", "loss_adjusted", "diff"), []).append(
            la["c_ci"][0] <= truth["loss_adjusted"]["diff"] <= la["c_ci"][1])
    return {key: float(np.mean(v)) for key, v in hits.items()}


# ------------------------------------------------------------------------- faithfulness plasmode (issue 19, 2.7)
# A patched loss needs a forward per (question, kept set), so a pool of real curves for every kept set a resample
# could rank is out of reach. The plasmode keeps the real W_k (their heavy tails, their correlation across questions
# and between the stages) and a stated response model: removing edge e from question k costs |W_ke| nats, additively.
# The engine then ranks (|mean W| over the other half), prunes, cross-fits, draws its controls and bisects exactly as
# in a run; only the forward is replaced. The true value of a summary is that summary of the population curve:
#   cross-fitted  E over rankings learnt from n/2 pool questions of f_pop(pruned top set),
#   control       E over random orders of f_pop(pruned random set),
#   within        sum_j |W_j|[K_j] / sum_j |W_j| over the pool, K_j question j's own pruned top set,
# with f_pop(K) = sum_K mean_j |W_j| / sum_E mean_j |W_j| (a ratio of means, as the estimator's).
# The population curves' shares: the estimator's 20-point grid and every 2% between. A run's AUCs are trapezoids on
# its 20-point grid (method.md 2.7), so their true values are the population curves' trapezoids on that grid; frac80
# (which a run bisects to 1% of E) and f at 5/10/20/50% are read on the fine grid. How far the 20-point trapezoid is
# from the fine one (a steep within-sample curve loses area between 0 and 5%) is printed beside: a bias of the grid,
# not of the interval.
FAITH_GRID = np.arange(1, 21) / 20
FAITH_TRUTH_GRID = np.union1d(FAITH_GRID, np.arange(1, 51) / 50)


def _graph_of(mask: np.ndarray):
    from rlsft.eap.graph import make_graph

    graph = make_graph((mask.shape[0] - 1) // 2)
    if not np.array_equal(graph.mask.numpy(), mask):
        raise ValueError(f"the pool's mask {mask.shape} is not a qkv EAP graph's")
    return graph


def memoised_kept_sets():
    """Memoise rlsft.eap.faithfulness.kept_at_count (a pure function of order and count) for this process: the
    controls' orders are the same in every replication and the within orders repeat with their pool question, so
    most kept sets are found once. Results are unchanged; a replication costs about 3x less."""
    import hashlib

    from rlsft.eap import faithfulness

    plain = getattr(faithfulness.kept_at_count, "__wrapped__", faithfulness.kept_at_count)
    memo: dict = {}

    def kept_at_count(order, graph, count):
        key = (hashlib.sha1(np.ascontiguousarray(order).tobytes()).digest(), int(count))
        if key not in memo:
            if len(memo) > 50_000:
                memo.clear()
            memo[key] = plain(order, graph, count)
        return memo[key]

    kept_at_count.__wrapped__ = plain
    faithfulness.kept_at_count = kept_at_count


def faithfulness_truth(pool: dict, n: int, rankings: int = 100, control_draws: int = 100, seed: int = 1) -> dict:
    """{(stage, summary): population value} and {("diff", summary): rl - sft} of the faithfulness summaries for
    data sets of n questions (the cross-fitted curve's estimand depends on n: its rankings are learnt on n/2)."""
    from rlsft.eap.faithfulness import _order, kept_at_count, rank_scores
    from rlsft.eap.faithfulness_stats import AT, curve_summaries

    mask = pool["mask"]
    graph, E = _graph_of(mask), int(mask.sum())
    counts = [max(1, int(np.ceil(q * E - 1e-9))) for q in FAITH_TRUTH_GRID]
    on_grid = np.isin(FAITH_TRUTH_GRID, FAITH_GRID)
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(pool["W_sft"]), n // 2) for _ in range(rankings)]
    controls = [_order(rng.random(mask.shape), mask) for _ in range(control_draws)]
    out = {}
    for s in ("sft", "rl"):
        C = np.abs(pool[f"W_{s}"])
        mu = C.mean(0)
        f_pop = lambda keep: mu[keep].sum() / mu[mask].sum()  # noqa: E731
        curve = lambda orders: np.mean([[f_pop(kept_at_count(o, graph, c)) for c in counts]  # noqa: E731
                                         for o in orders], 0)
        cross = curve([_order(rank_scores(pool[f"W_{s}"][d]), mask) for d in draws])
        control = curve(controls)
        own = [_order(rank_scores(pool[f"W_{s}"][j : j + 1]), mask) for j in range(len(C))]
        within = np.array([sum(C[j][kept_at_count(o, graph, c)].sum() for j, o in enumerate(own)) for c in counts])
        within /= C[:, mask].sum()
        cs, ct, wi = (curve_summaries(FAITH_TRUTH_GRID, v) for v in (cross, control, within))
        for summ, v in zip((cs, ct, wi), (cross, control, within)):
            summ["fine_auc"], summ["auc"] = summ["auc"], curve_summaries(FAITH_GRID, v[on_grid])["auc"]
        out.update({(s, f"grid_bias_{name}"): summ["auc"] - summ["fine_auc"]
                    for name, summ in (("faith_auc", cs), ("control_auc", ct), ("within_auc", wi))})
        out.update({(s, "faith_auc"): cs["auc"], (s, "faith_auc_minus_control"): cs["auc"] - ct["auc"],
                    (s, "frac80"): cs["frac80"], (s, "control_auc"): ct["auc"], (s, "control_frac80"): ct["frac80"],
                    (s, "within_auc"): wi["auc"], (s, "within_frac80"): wi["frac80"]})
        out.update({(s, f"f_{q:g}"): cs[f"f_{q:g}"] for q in AT})
    for (s, k), v in list(out.items()):
        if s == "rl":
            out[("diff", k)] = v - out[("sft", k)]
    return {k: float(v) for k, v in out.items()}


def faithfulness_plasmode_coverage(pool: dict, n: int, reps: int, truth: dict | None = None, n_boot: int = 1000,
                                   seed: int = 0) -> dict:
    """{("faithfulness", summary, side): coverage} of every faithfulness interval a run prints (per stage and RL -
    SFT), on n questions drawn with replacement from the pool, through the engine's own code (see above). A
    replication where the run prints no interval (the summary undefined in too many resamples, e.g. frac80 never
    reached) is left out of that row's share and counted in ("undefined", summary, side)."""
    from rlsft.eap.faithfulness import faithfulness_losses, share_grid
    from rlsft.eap.faithfulness_stats import POINT_VALUES, summarize

    from rlsft.experiments.eap_causal import SUMMARIES  # what a run prints (control_frac80 is computed, not shown)

    memoised_kept_sets()
    truth = truth if truth is not None else faithfulness_truth(pool, n)
    truth = {key: v for key, v in truth.items() if key[1] in SUMMARIES}
    mask, graph = pool["mask"], _graph_of(pool["mask"])
    rng = np.random.default_rng(seed)
    hits: dict = {}
    for r in range(reps):
        k = rng.integers(0, len(pool["W_sft"]), n)
        res = {}
        for s in ("sft", "rl"):
            W = pool[f"W_{s}"][k].astype(float)
            C = np.abs(W)
            none = pool[f"loss_{s}"][k].astype(float) + C[:, mask].sum(1)
            evaluate = lambda pairs, C=C, none=none: np.array([none[j] - C[j][keep].sum() for j, keep in pairs])  # noqa: E731
            res[s] = faithfulness_losses(W, graph, evaluate, share_grid(20), n_splits=10, draws=5, seed=r)
        out = summarize(res, n_boot=n_boot, seed=r, withhold=False)  # withheld ones: the interval they would get
        if (r + 1) % 10 == 0:
            print(f"  n = {n}: {r + 1}/{reps} replications", flush=True)
        for (side, name), value in truth.items():
            ci = out["rl-sft"][name]["ci"] if side == "diff" else out[side][f"{name}_ci"]
            defined = bool(np.isfinite(ci).all())
            hits.setdefault(("undefined", name, side), []).append(not defined)
            if defined:
                when = "withheld" if name in POINT_VALUES else "faithfulness"
                hits.setdefault((when, name, side), []).append(ci[0] <= value <= ci[1])
    return {key: float(np.mean(v)) if v else float("nan") for key, v in hits.items()}


def print_table(table: dict, ns, reps: int, title: str) -> None:
    print(f"\n{title}: coverage of nominal 95% intervals, {reps} replications per n "
          f"(binomial SE at 95%: {np.sqrt(0.95 * 0.05 / reps):.3f})\n")
    print("| when | number | side | " + " | ".join(f"n={n}" for n in ns) + " |")
    print("|---|---|---|" + "---|" * len(ns))
    for key in table[ns[0]]:
        print(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(f"{table[n][key]:.3f}" for n in ns) + " |")


def run_plasmode(args) -> None:
    from rlsft.cache import default_cache_dir

    t0 = time.time()
    if args.plasmode.endswith(".npz"):  # a pool saved by an earlier call (the run folder may be gone)
        pool, save = dict(np.load(args.plasmode)), args.plasmode
    else:
        name = f"{args.plasmode.rstrip('/').replace('/', '_')}_alpha{args.alpha:g}.npz"
        save = default_cache_dir(None) / "plasmode" / name
        pool = plasmode_pool(args.plasmode, args.alpha, save=save)
    print(f"plasmode population: {len(pool['loss_sft'])} real questions of {args.plasmode} at alpha {args.alpha:g} "
          f"(saved to {save})")
    if args.faithfulness:
        table = {}
        for n in args.n:
            truth = faithfulness_truth(pool, n)
            print(f"n = {n}: population values {({k: round(v, 4) for k, v in truth.items()})} "
                  f"({time.time() - t0:.0f} s)", flush=True)
            table[n] = faithfulness_plasmode_coverage(pool, n, args.reps, truth, n_boot=args.resamples)
        print_table(table, args.n, args.reps, "faithfulness plasmode (response: removing e costs |W_ke|)")
        worst = min(v for t in table.values() for k, v in t.items() if k[0] == "faithfulness")
        print(f"\nworst faithfulness plasmode coverage of a printed interval: {worst:.3f} "
              f"({time.time() - t0:.0f} s in all)")
        return
    table = {n: plasmode_coverage(pool, n, args.reps, n_resamples=args.resamples) for n in args.n}
    print_table(table, args.n, args.reps, "plasmode")
    worst = min(v for t in table.values() for k, v in t.items() if k[0] == "plasmode")
    print(f"\nworst plasmode coverage: {worst:.3f} ({time.time() - t0:.0f} s in all)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=400)
    ap.add_argument("--n", type=int, nargs="+", default=[8, 30])
    ap.add_argument("--population", type=int, default=40_000, help="questions drawn for the population values")
    ap.add_argument("--scale-sd", type=float, default=SCALE_SD, help="sd of the log per-sample scale")
    ap.add_argument("--plasmode", help="an EAP run folder (its real per-question matrices are the population), or a "
                                       "pool .npz this script saved from one")
    ap.add_argument("--alpha", type=float, default=1.0, help="with --plasmode: the alpha whose matrices to use")
    ap.add_argument("--resamples", type=int, default=2000, help="with --plasmode: bootstrap resamples per interval")
    ap.add_argument("--faithfulness", action="store_true",
                    help="with --plasmode: the faithfulness summaries' intervals (method.md 2.7) instead")
    args = ap.parse_args()
    if args.plasmode:
        return run_plasmode(args)
    globals()["SCALE_SD"] = args.scale_sd
    t0 = time.time()
    pop = population(tuple(args.n), size=args.population)
    print(f"population values from {args.population} questions, scale sd {SCALE_SD} ({time.time() - t0:.0f} s)")
    table = {n: coverage(n, args.reps, pop) for n in args.n}
    print(f"\ncoverage of nominal 95% intervals, {args.reps} replications per n "
          f"(binomial SE at 95%: {np.sqrt(0.95 * 0.05 / args.reps):.3f})\n")
    print("| when | number | side | " + " | ".join(f"n={n}" for n in args.n) + " |")
    print("|---|---|---|" + "---|" * len(args.n))
    for key in table[args.n[0]]:
        print(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(f"{table[n][key]:.3f}" for n in args.n) + " |")
    worst = min(v for t in table.values() for k, v in t.items() if k[0] == "after")
    print(f"\nworst 'after' coverage: {worst:.3f} ({time.time() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
