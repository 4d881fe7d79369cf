"""Edge attribution patching of an SFT and an RL model (method.md section 2; the paper's Table 1, Figures 2-3).

generate (cached) -> both-correct questions -> select (once, for every alpha) -> per alpha: score_alpha (T_cut,
edge_scores per model, cached) -> compare_alpha (every registered metric per sample with BCa intervals, the
loss-adjusted RL effect, self-entropy, the paper's pooled complexity as a point value) -> typed results
(rlsft.eap.results) -> tables, W&B, figures, console.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import torch

from ..cache import cached_npz, stage_dir, stage_key
from ..eap import (METRICS, answer_span, build_graph, collate, compare, compare_values, cut_length, edge_scores,
                   estimate_memory, information_complexity_pooled, loss_adjusted, output_edge_entropy, per_sample,
                   relative_change, sample_diversity, samples_hash, scored_inputs, select_shared, summed_positions)
from ..eap.results import RESULTS, Result, has_interval, interval_text, results, with_tests
from ..errors import RlsftError
from ..models import fingerprint
from ..seeds import stage_names
from ..console import progress
from .common import RunContext, markdown_table, stage_color
from .eap_causal import (calibrated_tau, curve_rows, faithfulness_alpha, faithfulness_arm, faithfulness_console,
                         faithfulness_figure, faithfulness_summary_rows)
from .eap_family import add_tests, family_cell, family_table, family_wandb, lookup, primary_text, run_family
from .eap_study import check_study, compared_arms, is_study, primary_values
from .eap_study import report as study_report

log = logging.getLogger(__name__)
SCORES_VERSION = 3  # 2: per-sample loss saved beside the scores; 3: number of scored tokens per sample
STAGE_ROWS = [*METRICS, "self_entropy"]  # per-stage values with an interval: the summary table's, the alpha figure's
READS_INTERNALS = True  # gradients at every edge of the model's blocks
DATA_PARALLEL = False


def check(cfg) -> None:
    """eap.alphas (the default job's [0.1, 0.3, 0.5, 1.0]) overrides truncation.alpha: say so rather than ignore it."""
    from ..config import TruncationConfig

    t = cfg.truncation
    if cfg.eap.positions == "answer_span" and cfg.eap.primary.alpha != 1.0:
        raise RlsftError(f"eap.primary.alpha={cfg.eap.primary.alpha:g}: eap.positions=answer_span scores one span, "
                         f"reported as alpha 1.0; set eap.primary.alpha=1.0")
    if cfg.eap.alphas and t.alpha != TruncationConfig.alpha:
        raise RlsftError(f"truncation.alpha={t.alpha} would be ignored: eap.alphas={list(cfg.eap.alphas)} scores "
                         f"those alphas in one job; add eap.alphas=[] to use truncation.alpha (e.g. to sweep it)")


def tags(cfg) -> list[str]:
    """truncation.alpha, to tell the runs of an alpha sweep apart in W&B."""
    return [f"alpha={cfg.truncation.alpha}"]


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


def score_settings(cfg) -> dict:
    """Everything besides the model, the samples and T_cut that changes the scores: one dict, all in the cache key."""
    e = cfg.eap
    settings = {"attn_inputs": e.attn_inputs, "positions": e.positions, "dtype": cfg.run.dtype}
    if e.positions == "answer_span":
        settings["span_before"] = e.span_before
    if e.target != "nll":  # only what differs from the paper's setting, so existing caches stay valid
        settings["target"] = e.target
    if e.method != "eap":
        settings |= {"method": e.method, "ig_steps": e.ig_steps}
    return settings


def scores_for(ctx: RunContext, stage, answers: list[dict], cut_len: int | None, settings: dict) -> dict:
    """Per-sample EAP matrices of one model at one T_cut (None: each answer's span): cached, one .npz per (model,
    samples, T_cut, settings)."""
    key = stage_key(version=SCORES_VERSION, model=fingerprint(ctx.model_spec(stage)), samples=samples_hash(answers),
                    cut_len=cut_len, settings=settings)
    path = stage_dir(ctx.cache_dir, "eap_scores", key) / "scores.npz"
    return cached_npz(path, lambda: _compute_scores(ctx, stage, answers, cut_len, settings)) | {"path": path}


def _compute_scores(ctx: RunContext, stage, answers: list[dict], cut_len: int | None, settings: dict) -> dict:
    """The arrays of one scores.npz (the members existing caches hold)."""
    model, tok = ctx.load_stage(stage)
    return model_scores(model, tok.pad_token_id, answers, cut_len, settings, ctx.cfg.eap.batch_size, stage.name)


def model_scores(model, pad_id: int | None, answers: list[dict], cut_len: int | None, settings: dict, batch_size: int,
                 name: str) -> dict:
    """Per-sample EAP matrices (and losses) of a loaded model on ``answers`` (dicts with id, prompt_ids, output_ids)
    cut at ``cut_len``, scored as ``settings`` say; ``name`` labels logs and errors. Also the GRPO EAP drift's."""
    try:
        graph = build_graph(model, settings["attn_inputs"])
    except ValueError as exc:
        raise RlsftError(f"stage {name!r}: {exc}") from None
    items = scored_inputs(answers, cut_len)
    longest = max(len(it.input_ids) for it in items)
    need = estimate_memory(model.config, longest, min(batch_size, len(items)), model.dtype)
    log.info("edge_scores [%s]: %d samples, up to %d tokens, about %.2f GiB of activations per batch",
             name, len(items), longest, need / 2**30)
    mats, losses = [], []
    for i in progress(desc=f"edge_scores [{name}]", unit="batch", iterable=range(0, len(items), batch_size)):
        ids, loss_mask, attention = collate(items[i : i + batch_size], pad_id=pad_id, side="left")
        scores, loss = edge_scores(model, ids, loss_mask, attention, graph=graph,
                                   positions=summed_positions(settings["positions"]),
                                   return_losses=True, target=settings.get("target", "nll"),
                                   tau=settings.get("tau", 1.0), method=settings.get("method", "eap"),
                                   ig_steps=settings.get("ig_steps", 5))
        mats.append(scores)
        losses.append(loss)
    W = torch.cat(mats).numpy().astype(np.float32)
    return dict(W=W, mask=graph.mask.numpy(), sources=np.array(graph.sources), targets=np.array(graph.targets),
                ids=np.array([a["id"] for a in answers]), answer_len=np.array([it.answer_len for it in items]),
                scored_tokens=np.array([int(it.loss_mask.sum()) for it in items]),
                shorter_than_cut=np.array([it.shorter_than_cut for it in items]), loss=torch.cat(losses).numpy(),
                cut_len=0 if cut_len is None else cut_len)  # 0: each answer's span (eap.positions=answer_span)


# ------------------------------------------------------------------------------------------------ the named steps
def generations(ctx: RunContext, *stages) -> dict:
    """{stage name: {question id: generation}}, one greedy answer per question (cached)."""
    sampling = ctx.sampling()
    if sampling.n_samples != 1:
        raise RlsftError(f"eap scores one answer per question; got generation.n_samples={sampling.n_samples}")
    records = ctx.records()
    gens = {}
    for stage in stages:
        gens[stage.name] = {g["id"]: g for g in ctx.generations(stage, records, sampling)}
        if ctx.cfg.eap.positions == "answer_span":
            add_spans(gens[stage.name], ctx.load_stage(stage)[1], ctx.cfg.eap.span_before)
        ctx.release(stage)
    return gens


def add_spans(gens: dict, tokenizer, before: int) -> None:
    """eap.positions=answer_span: each generation's scored span ``span`` (rlsft.eap.span: [start, end) of its
    output ids; start < 0 when fewer than ``before`` tokens precede the number), None when its number is not found."""
    for g in gens.values():
        g["span"] = answer_span(tokenizer, g["output_ids"], g["text"], before) if g["output_ids"] else None


def span_drops(counts: dict) -> str:
    """The answer-span drops of a selection's counts, for an error message ("" without a span)."""
    drops = {k: v for k, v in counts.items() if k.startswith(("dropped_no_answer", "dropped_span")) and v}
    return f" and with an answer span ({', '.join(f'{k}={v}' for k, v in drops.items())})" if drops else ""


def span_filter(gens: dict, ids: list, counts: dict) -> list:
    """The questions every stage can be scored on at its answer span, of one length in every stage; each drop
    counted by its reason (method.md 8: the same scored span)."""
    spans = {q: [g[q]["span"] for g in gens.values()] for q in ids}
    found = [q for q in ids if None not in spans[q]]
    after = [q for q in found if min(s[0] for s in spans[q]) >= 0]
    same = [q for q in after if len({e - b for b, e in spans[q]}) == 1]
    counts.update(dropped_no_answer_number=len(ids) - len(found), dropped_span_before_answer=len(found) - len(after),
                  dropped_span_length_mismatch=len(after) - len(same))
    return same


def select(cfg, gens: dict, sft, rl):
    """method.md 2.1: both-correct questions, then the length window; the same questions serve every alpha."""
    usable, counts = paired_questions(gens, cfg.eap.require_correct)
    if cfg.eap.positions == "answer_span":
        usable = span_filter({n: gens[n] for n in (sft.name, rl.name)}, usable, counts)
    if not usable:
        raise RlsftError(
            f"no question of {cfg.dataset.name} was answered correctly by both models "
            f"({sft.name}: {counts[f'{sft.name}_correct']}/{counts['questions']}, "
            f"{rl.name}: {counts[f'{rl.name}_correct']}/{counts['questions']}){span_drops(counts)}")
    return length_filter(cfg.truncation, {n: gens[n] for n in (sft.name, rl.name)}, usable, counts)


def length_filter(t, gens: dict, usable: list, counts: dict):
    """method.md 2.1's length window over ``usable`` for two stages or more (two: select_samples exactly)."""
    try:
        selection = select_shared({n: {q: len(g[q]["output_ids"]) for q in usable} for n, g in gens.items()},
                                  t.beta, t.gamma, t.delta, t.n, t.seed)
    except ValueError as exc:
        raise RlsftError(f"truncation: {exc}") from None
    if len(selection.ids) < 2:
        raise RlsftError(f"only {len(selection.ids)} question(s) left after the length filter (counts: "
                         f"{selection.n_correct} usable, {selection.n_in_window} in window, "
                         f"{selection.n_balanced} balanced); "
                         f"loosen truncation.beta/gamma/delta or use more questions")
    counts.update(n_usable=selection.n_correct, n_in_window=selection.n_in_window, n_balanced=selection.n_balanced,
                  n_selected=len(selection.ids), tbar=selection.tbar, t_min=selection.t_min, t_max=selection.t_max)
    return selection, counts


def scored_alphas(cfg) -> list[float]:
    """The alphas a run scores: eap.alphas, else truncation.alpha; under eap.positions=answer_span one, reported as
    1.0 (the whole span: T_cut does not apply)."""
    if cfg.eap.positions == "answer_span":
        log.info("eap.positions=answer_span: each stage scored on its answer number and the %d tokens before it; "
                 "eap.alphas and truncation.alpha do not apply (reported as alpha 1.0)", cfg.eap.span_before)
        return [1.0]
    return list(cfg.eap.alphas) or [cfg.truncation.alpha]


def score_alpha(ctx: RunContext, gens: dict, selection, alpha: float, stages: dict) -> dict:
    """Scores of both stages at one alpha: {"cut_len", "mask", "sources", "targets", side: saved arrays}. Under
    eap.positions=answer_span each answer is scored on its span whatever the alpha (cut_len None)."""
    cut = None if ctx.cfg.eap.positions == "answer_span" else cut_length(alpha, selection.tbar)
    out = {"cut_len": cut, "settings": {}}
    answers = {side: [gens[stage.name][q] for q in selection.ids] for side, stage in stages.items()}
    for side, stage in stages.items():
        settings = score_settings(ctx.cfg)
        if side == "rl" and ctx.cfg.eap.calibrate == "match_sft":  # method.md 2.6: RL scored at SFT's loss level
            out["tau"] = calibrated_tau(ctx, stages, answers, cut, out["sft"])
            settings["tau"] = out["tau"]
        out["settings"][side] = settings
        res = scores_for(ctx, stage, answers[side], cut, settings)
        shutil.copyfile(res["path"], ctx.run_dir / f"eap_scores_{stage.name}_alpha{alpha:g}.npz")
        out[side] = res
        out["mask"], out["sources"], out["targets"] = res["mask"], [str(s) for s in res["sources"]], \
            [str(x) for x in res["targets"]]
    for stage in stages.values():
        ctx.release(stage)
    return out


def compare_alpha(eap_cfg, scored: dict, seed: int) -> dict:
    """Every number of one alpha (method.md 2.5-2.6), JSON-ready: metrics, self_entropy, loss_adjusted, pooled."""
    mask, sft, rl = scored["mask"], scored["sft"], scored["rl"]
    boot = dict(n_resamples=eap_cfg.n_boot, seed=seed)
    log.info("bootstrap intervals: %d resamples of %d questions for %d metrics", eap_cfg.n_boot, len(sft["W"]),
             len(METRICS) + 2)  # the silent part before the table: say what it is
    summary = compare(sft["W"], rl["W"], mask, **boot)
    summary["self_entropy"] = compare_values(sft["loss"], rl["loss"], **boot)
    intensity = {side: per_sample(scored[side]["W"], mask, "activation_intensity") for side in ("sft", "rl")}
    summary["target"] = eap_cfg.target  # what "self_entropy" holds: the NLL, or minus the own-token margin
    if eap_cfg.target != "nll":
        log.info("loss_adjusted skipped: it regresses on log self-entropy, and eap.target=%s scores another loss "
                 "(method.md 2.6)", eap_cfg.target)
    else:
        try:
            summary["loss_adjusted"] = loss_adjusted(intensity["sft"], intensity["rl"], sft["loss"], rl["loss"], **boot)
        except ValueError as exc:
            log.warning("loss_adjusted skipped: %s", exc)
    top = {side: float(np.abs(scored[side]["W"][:, mask]).max()) for side in ("sft", "rl")}
    ranges = {side: (0.0, max(top.values()) if eap_cfg.shared_range else top[side]) for side in ("sft", "rl")}
    pooled = {side: information_complexity_pooled(scored[side]["W"], mask, bins=eap_cfg.bins, value_range=ranges[side])
              for side in ("sft", "rl")}
    summary["information_complexity_pooled"] = {**pooled, "diff": pooled["rl"] - pooled["sft"], "range": ranges,
                                                "shared_range": eap_cfg.shared_range, "bins": eap_cfg.bins}
    diversity = {side: sample_diversity(scored[side]["W"], mask) for side in ("sft", "rl")}
    summary["sample_diversity"] = {**diversity, "diff": diversity["rl"] - diversity["sft"]}
    summary.update(cut_len=scored["cut_len"], n_samples=len(sft["W"]), n_edges=int(mask.sum()),
                   shorter_than_cut={side: int(scored[side]["shorter_than_cut"].sum()) for side in ("sft", "rl")},
                   scored_tokens={side: float(scored[side]["scored_tokens"].mean()) for side in ("sft", "rl")})
    add_tests(summary, scored)  # p of each difference, near-duplicate metrics (method.md 2.8)
    return summary


def run(cfg, ctx: RunContext) -> dict:
    if cfg.eap.reference:
        return run_compare(cfg, ctx)
    stages = {"sft": _stage(ctx, cfg.eap.sft_stage), "rl": _stage(ctx, cfg.eap.rl_stage)}
    gens = generations(ctx, stages["sft"], stages["rl"])
    selection, counts = select(cfg, gens, stages["sft"], stages["rl"])
    ctx.write_json("eap_selection.json", {"counts": counts, "ids": selection.ids, "params": selection.params})
    log.info("eap selection: %s", counts)
    alphas = scored_alphas(cfg)
    scored, summaries = {}, {}
    for alpha in alphas:
        scored[alpha] = score_alpha(ctx, gens, selection, alpha, stages)
        summaries[f"{alpha:g}"] = compare_alpha(cfg.eap, scored[alpha], cfg.truncation.seed)
        if "tau" in scored[alpha]:
            summaries[f"{alpha:g}"]["tau"] = scored[alpha]["tau"]
        if cfg.eap.faithfulness:
            faith = faithfulness_alpha(ctx, gens, selection, scored[alpha], stages)
            summaries[f"{alpha:g}"]["faithfulness"] = faith
            # method.md 2.8: the faithfulness summaries are secondary tests of the run like the metrics
            summaries[f"{alpha:g}"]["faithfulness_tests"] = {
                name if name.startswith(("faith", "frac80")) else f"faith_{name}": d for name, d in faith["diffs"].items()}
    names = {side: stage.name for side, stage in stages.items()}
    ranked = run_family(summaries, cfg.eap.primary)  # method.md 2.8: one primary, Holm over the secondaries
    columns, rows = summary_rows(cfg.dataset.name, summaries, names)
    ctx.write_table("eap_summary", columns, rows)
    ctx.write_table("eap_differences", *difference_rows(cfg.dataset.name, summaries, ranked))
    ctx.write_table("eap_tests", *family_table(cfg.dataset.name, ranked))
    if cfg.eap.faithfulness:
        ctx.write_table("eap_faithfulness", *curve_rows(cfg.dataset.name, summaries, names))
        ctx.write_table("eap_faithfulness_summary", *faithfulness_summary_rows(cfg.dataset.name, summaries, names))
    ctx.write_json("eap_metrics.json", {"selection": counts, "alphas": summaries, "stages": names, "tests": ranked})
    track(ctx, summaries)
    ctx.tracker.summary(family_wandb(ranked))
    figures(ctx, scored, summaries, names)
    print(primary_text(ranked, cfg.eap.primary, names["rl"], names["sft"])
          + console_summary(cfg.dataset.name, counts, summaries, names["sft"], names["rl"], ranked))
    if cfg.eap.faithfulness:
        print(faithfulness_console(summaries, names))
    return {"selection": counts, "alphas": {a: {m: {k: s[m][k] for k in ("sft", "rl", "diff")} for m in METRICS}
                                            for a, s in summaries.items()}}


# --------------------------------------------------------------------- several stages against one reference
def shared_questions(gens: dict[str, dict[str, dict]], require_correct: bool) -> tuple[list[str], dict]:
    """Question ids every stage can be scored on (all correct, one prompt length, non-empty answers), with counts."""
    names = list(gens)
    ids = [q for q in gens[names[0]] if all(q in gens[n] for n in names)]
    counts = {"questions": len(ids), **{f"{n}_correct": sum(gens[n][q]["correct"] for q in ids) for n in names}}
    keep = [q for q in ids if all(gens[n][q]["correct"] for n in names)] if require_correct else ids
    counts["all_correct"] = len(keep) if require_correct else None
    same_len = [q for q in keep if len({len(gens[n][q]["prompt_ids"]) for n in names}) == 1]
    counts["dropped_prompt_length_mismatch"] = len(keep) - len(same_len)
    usable = [q for q in same_len if all(gens[n][q]["output_ids"] for n in names)]
    counts["dropped_empty_answer"] = len(same_len) - len(usable)
    return usable, counts


def compare_stages(ctx: RunContext) -> tuple[str, dict]:
    """The reference and the ordered {name: stage} of eap.reference + eap.compare (bad names are named)."""
    cfg = ctx.cfg.eap
    names = [cfg.reference, *cfg.compare]
    if not cfg.compare or len(set(names)) != len(names):
        raise RlsftError(f"eap.reference={cfg.reference!r} needs eap.compare: a list of other stages, each once "
                         f"(got {list(cfg.compare)})")
    arms = ctx.arms()
    if len(arms.get(cfg.reference, [])) > 1:
        raise RlsftError(f"eap.reference={cfg.reference!r} is an arm of {len(arms[cfg.reference])} seeds; the "
                         "reference is one stage (e.g. base): arms are compared with each other in the study tables")
    names = stage_names(arms, names)  # an arm stands for its seeds (rlsft.seeds)
    stages = {s.name: s for s in ctx.stages()}
    unknown = [n for n in names if n not in stages]
    if unknown:
        raise RlsftError(f"eap.reference / eap.compare name stages {unknown} that model_pair "
                         f"{ctx.cfg.model_pair.name!r} does not have (stages: {list(stages)})")
    return cfg.reference, {n: stages[n] for n in names}


def select_compared(cfg, gens: dict):
    """The shared selection: questions every compared stage and the reference answer correctly, length filter."""
    usable, counts = shared_questions(gens, cfg.eap.require_correct)
    if cfg.eap.positions == "answer_span":
        usable = span_filter(gens, usable, counts)
    if len(usable) < 2:
        correct = ", ".join(f"{n}: {counts[f'{n}_correct']}/{counts['questions']}" for n in gens)
        raise RlsftError(f"only {len(usable)} question(s) of {cfg.dataset.name} answered correctly by every "
                         f"compared stage ({correct}){span_drops(counts)}")
    return length_filter(cfg.truncation, gens, usable, counts)


def arm_selections(cfg, gens: dict, reference: str, arms: dict[str, list[str]]) -> dict[str, tuple | None]:
    """{arm: (selection, counts)}. eap.selection=shared: one selection over every stage, the same for each arm;
    per_arm: each arm's own over the reference and the arm's stages (method.md 8: an arm that answers little then
    shrinks its own comparison, not every arm's), None for an arm left with fewer than 2 questions (said on the
    console); the run stops only when no arm has 2."""
    if cfg.eap.selection == "shared":
        shared = select_compared(cfg, gens)
        return {arm: shared for arm in arms}
    out: dict[str, tuple | None] = {}
    for arm, group in arms.items():
        try:
            out[arm] = select_compared(cfg, {n: gens[n] for n in (reference, *group)})
        except RlsftError as exc:
            print(f"[eap] {arm} is left out of the EAP comparison: {exc}")
            out[arm] = None
    if all(v is None for v in out.values()):
        raise RlsftError(f"no arm has 2 questions that {reference} and all its seeds answer correctly "
                         f"(eap.selection=per_arm); use more questions (dataset.n)")
    return out


def selection_json(selections: dict[str, tuple | None]) -> dict:
    """eap_selection.json: the shared selection's counts, ids and params, or those of each arm's (None: too few)."""
    one = lambda chosen: None if chosen is None else {"counts": chosen[1], "ids": chosen[0].ids,
                                                      "params": chosen[0].params}
    chosen = list(selections.values())
    if all(c is chosen[0] for c in chosen):
        return one(chosen[0])
    return {"per_arm": {arm: one(c) for arm, c in selections.items()}}


def write_selections(cfg, ctx: RunContext, selections: dict, names: list[str], arms: dict[str, list[str]]) -> None:
    """eap_selection.json, and each selection's counts in the log (``names``: the reference first, then the compared
    stages; per arm: the reference and the arm's seeds)."""
    ctx.write_json("eap_selection.json", selection_json(selections))
    for arm, chosen in selections.items():
        if chosen is not None:
            log.info("eap selection (%s): %s", [names[0], *arms[arm]] if cfg.eap.selection == "per_arm"
                     else names, chosen[1])


def stage_pair(scored: dict, reference: str, name: str) -> dict:
    """One compared stage's scores beside the reference's, in the pair form compare_alpha and the causal check read
    (the reference under ``sft``, the stage under ``rl``)."""
    return {"cut_len": scored["cut_len"], "mask": scored["mask"], "sft": scored[reference], "rl": scored[name],
            "settings": {"sft": scored["settings"][reference], "rl": scored["settings"][name]}}


def causal_checks(ctx: RunContext, gens: dict, selection, scored: dict, reference, seeds: list, per_stage: dict,
                  study: bool) -> dict | None:
    """eap.faithfulness for one arm on its selection: each seed's stage against the reference (into
    ``per_stage[name]["faithfulness"]``) and, in a study, the arm over its seeds (returned). A study arm with fewer
    than the 4 selected questions the check needs (two per half) gets none and a warning, not a stopped run."""
    if study and len(selection.ids) < 4:
        log.warning("eap.faithfulness: arm of %s has %d selected questions, fewer than the 4 the causal check needs "
                    "(two per half): no check for it", seeds[0].name, len(selection.ids))
        return None
    for stage in seeds:  # the reference's patched losses are cached: computed once for all pairs
        per_stage[stage.name]["faithfulness"] = faithfulness_alpha(
            ctx, gens, selection, stage_pair(scored, reference.name, stage.name), {"sft": reference, "rl": stage})
    return faithfulness_arm(ctx, gens, selection, scored, reference, seeds) if study else None


def run_compare(cfg, ctx: RunContext) -> dict:
    """eap.reference=<stage> with eap.compare=[...]: each compared stage against the reference on the shared
    selection or its arm's own (eap.selection); per metric one table and one figure with a row per stage (the
    reference first)."""
    reference, stages = compare_stages(ctx)
    arms = compared_arms(ctx, stages)
    study = is_study(arms)  # arms trained on several seeds: the seed-aware study leads (rlsft.experiments.eap_study)
    if study:
        check_study(cfg, ctx, arms)
    gens = generations(ctx, *stages.values())
    selections = arm_selections(cfg, gens, reference, arms)
    write_selections(cfg, ctx, selections, list(stages), arms)
    summaries: dict = {}
    primary = None  # the study's per-(seed, question) values of the primary metric, per arm
    faith_arms: dict | None = {arm: None for arm in arms} if study and cfg.eap.faithfulness else None
    for alpha in scored_alphas(cfg):
        a = f"{alpha:g}"
        summaries[a] = {}
        values: dict = {arm: None for arm in arms}
        for arm, chosen in selections.items():
            if chosen is None:
                continue
            selection = chosen[0]
            group = {n: stages[n] for n in (reference, *arms[arm])}
            scored = score_alpha(ctx, gens, selection, alpha, group)
            if cfg.eap.selection == "per_arm":  # the reference's scores of this arm's questions, beside its own
                copied = ctx.run_dir / f"eap_scores_{reference}_alpha{a}.npz"
                copied.rename(ctx.run_dir / f"eap_scores_{reference}_for_{arm}_alpha{a}.npz")
            if study and np.isclose(alpha, cfg.eap.primary.alpha):
                values[arm] = primary_values(scored, cfg.eap.primary.metric, reference, arms[arm], selection.ids)
            for name in arms[arm]:
                summaries[a][name] = compare_alpha(cfg.eap, stage_pair(scored, reference, name), cfg.truncation.seed)
            if cfg.eap.faithfulness:
                checked = causal_checks(ctx, gens, selection, scored, stages[reference], [stages[n] for n in arms[arm]],
                                        summaries[a], study)
                if faith_arms is not None and np.isclose(alpha, cfg.eap.primary.alpha):
                    faith_arms[arm] = checked
        if study and np.isclose(alpha, cfg.eap.primary.alpha):
            primary = values
    ranked = run_family(summaries, cfg.eap.primary, compare=True, stage_primaries=not study)  # one per stage
    columns, tables = compare_tables(cfg.dataset.name, summaries, reference, ranked)
    for metric, rows in tables.items():
        ctx.write_table(f"eap_compare_{metric}", columns, rows)
    ctx.write_table("eap_tests", *family_table(cfg.dataset.name, ranked))
    counts = selection_json(selections)
    ctx.write_json("eap_compare.json", {"selection": counts, "reference": reference, "alphas": summaries,
                                        "tests": ranked})
    ctx.tracker.summary(compare_wandb(tables, reference))
    ctx.tracker.summary(family_wandb(ranked))
    compare_figures(ctx, tables, reference)
    if study:
        print(study_report(cfg, ctx, reference, arms, gens, primary, faith_arms)
              + f"Each seed's stage against {reference} (intervals over questions only, every test secondary): "
              "eap_compare_<metric>.csv, eap_tests.csv")
    else:
        print(primary_text(ranked, cfg.eap.primary, reference=reference)
              + compare_console(cfg.dataset.name, selections, tables, reference))
    return {"selection": counts, "reference": reference, "tables": tables}


def compare_tables(dataset: str, summaries: dict, reference: str,
                   ranked: list[dict] | None = None) -> tuple[list[str], dict[str, list[list]]]:
    """{result: rows}; a row per alpha and stage: value [CI], then stage - reference [paired CI] (None for the
    reference's row, repeated where its questions change: eap.selection=per_arm). loss_adjusted has the stage coefficient c in the difference columns and no value. With the run's
    ranked tests: role, p, Holm p and near-duplicate group of each difference (empty for the reference)."""
    columns = ["dataset", "alpha", "cut_len", "stage", "n", "value", "lo", "hi", "minus_reference", "diff_lo",
               "diff_hi"]
    tests = None if ranked is None else lookup(ranked)
    tables: dict[str, list[list]] = {}
    for a, per_stage in summaries.items():
        rs = [r for name, s in per_stage.items() for r in results(a, s, name, reference, view="tables")]
        if tests is not None:
            rs = with_tests(rs, tests, compare=True)
        for name in RESULTS:
            own = [r for r in rs if r.name == name]
            rows = tables.setdefault(name, [])
            shown = None
            for r in own:  # the reference's own row (none for loss_adjusted), again wherever its questions change
                if r.reference_value is not None and (r.n, r.reference_value) != shown:
                    shown = (r.n, r.reference_value)
                    rows.append(_compare_row(dataset, r, reference, r.reference_value, r.reference_ci)
                                + [None, None, None] + ([] if tests is None else _test_cells(None)))
                rows.append(_compare_row(dataset, r, r.stage, r.value, r.ci) + [r.diff, *r.diff_ci]
                            + ([] if tests is None else _test_cells(r)))
    tables = {m: rows for m, rows in tables.items() if rows}
    return columns + ([] if tests is None else ["role", "p", "p_holm", "finding"]), tables


def _compare_row(dataset: str, r: Result, stage: str, value, ci) -> list:
    """A compare table row's first cells: alpha, T_cut, stage, n and the stage's value with its interval."""
    return [dataset, r.alpha, r.cut_len, stage, r.n, value, *(ci or (None, None))]


def compare_wandb(tables: dict, reference: str) -> dict:
    """W&B summary keys of compare mode: eap/<result>/<reference> (its value) and
    eap/<result>/<stage>_minus_<reference>."""
    return {f"eap/{m}/{row[3]}{'' if row[3] == reference else '_minus_' + reference}":
            row[5] if row[3] == reference else row[8] for m, rows in tables.items() for row in rows}


def compare_console(dataset: str, selections: dict[str, tuple | None], tables: dict, reference: str) -> str:
    stages = list(dict.fromkeys(row[3] for row in tables[STAGE_ROWS[0]]))
    heads = []
    for arm, chosen in selections.items():
        if chosen is None:
            heads.append(f"{arm}: fewer than 2 selected questions (its [eap] line above says why): not compared\n")
            continue
        counts = chosen[1]
        named = [n for n in stages if f"{n}_correct" in counts]
        correct = ", ".join(f"{n} {counts[f'{n}_correct']}/{counts['questions']}" for n in named)
        heads.append(f"{dataset}: {correct} correct; {counts['n_selected']} questions selected, answered correctly by "
                     f"all (Tbar {counts['tbar']:.1f} tokens)\n")
    tested = len(tables[STAGE_ROWS[0]][0]) > 11  # compare_tables with the run's tests: role, p, p_holm, finding
    rows = [[row[1], row[2], m, row[3], "" if row[5] is None else interval_text(row[5], row[6:8]),
             "" if row[8] is None else interval_text(row[8], row[9:11]), *([_cell_of(row[11:])] if tested else [])]
            for m, t in tables.items() for row in t]
    return "".join(dict.fromkeys(heads)) + markdown_table(
        ["alpha", "T_cut", "metric", "stage", "value [95% CI]", f"stage - {reference} [95% CI]",
         *(["test (Holm p)"] if tested else [])], rows)


def _cell_of(cells: list) -> str:
    """The console's test column from a table row's role, p, p_holm and finding cells."""
    role, p, p_holm, finding = cells
    if role is None:
        return ""
    return family_cell({"role": role, "p": np.nan if p is None else p, "p_holm": np.nan if p_holm is None else p_holm,
                        "finding": finding or ""})


def compare_figures(ctx: RunContext, tables: dict, reference: str) -> None:
    """One figure per metric: a row per stage (and alpha) with its value and its difference from the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(dict.fromkeys(row[3] for t in tables.values() for row in t))
    colour = {name: f"C{i}" for i, name in enumerate(stages)}  # one colour per stage in every panel and figure
    for metric, rows in tables.items():
        fig, axes = plt.subplots(1, 2, figsize=(10, 0.45 * len(rows) + 1.5), sharey=True)
        labels = [f"{row[3]} (alpha {row[1]:g}, n {row[4]})" for row in rows]
        point = metric in METRICS and not METRICS[metric].interval
        for ax, (v, lo, hi), title in ((axes[0], (5, 6, 7), metric), (axes[1], (8, 9, 10), f"minus {reference}")):
            for y, row in enumerate(rows):
                if row[v] is not None:
                    err = None if point else [[row[v] - row[lo]], [row[hi] - row[v]]]
                    ax.errorbar(row[v], y, xerr=err, fmt="o", capsize=3, color=colour[row[3]])
            ax.set(title=title + (" (point values: no interval covers)" if point and ax is axes[0] else ""))
        for y in range(1, len(rows)):
            if rows[y][1] != rows[y - 1][1]:  # a line between alphas
                for ax in axes:
                    ax.axhline(y - 0.5, color="lightgrey", lw=0.6)
        axes[1].axvline(0, color="grey", lw=0.8)
        axes[0].set_yticks(range(len(rows)), labels)
        axes[0].invert_yaxis()
        fig.tight_layout()
        ctx.save_figure(f"eap_compare_{metric}", fig)
        plt.close(fig)


# ---------------------------------------------------------------------------------------------------------- outputs
def summary_rows(dataset: str, summaries: dict, names: dict) -> tuple[list[str], list[list]]:
    """One row per alpha and stage: the per-sample results with their intervals, the point values, what was scored,
    the other results (those of every alpha, with their intervals), the calibration."""
    rs = {a: [r for r in results(a, s, names["rl"], names["sft"], view="summary") if r.value is not None]
          for a, s in summaries.items()}
    everywhere = set.intersection(*({r.name for r in x} for x in rs.values()))

    def groups(x: list[Result]) -> tuple[list[Result], list[Result]]:
        """Before what was scored: the per-sample results, then the point values; after it: the others."""
        rank = {r.name: 0 if RESULTS[r.name].per_sample else 1 if r.ci is None else 2 for r in x}
        x = sorted((r for r in x if r.name in everywhere), key=lambda r: rank[r.name])
        return [r for r in x if rank[r.name] < 2], [r for r in x if rank[r.name] == 2]

    first, other = groups(next(iter(rs.values())))
    columns = ["dataset", "alpha", "cut_len", "stage", "n"]
    columns += [c for r in first for c in ([r.name] if r.ci is None else [r.name, f"{r.name}_lo", f"{r.name}_hi"])]
    columns += ["scored_tokens", "shorter_than_cut"] + [c for r in other for c in (r.name, f"{r.name}_lo",
                                                                                    f"{r.name}_hi")]
    calibrated = all("tau" in s for s in summaries.values())
    columns += ["tau"] if calibrated else []
    rows = []
    for a, s in summaries.items():
        before, after = groups(rs[a])
        for side in ("sft", "rl"):
            rows.append([dataset, float(a), s["cut_len"], names[side], s["n_samples"], *_stage_cells(before, side),
                         s["scored_tokens"][side], s["shorter_than_cut"][side], *_stage_cells(after, side),
                         *([s["tau"] if side == "rl" else 1.0] if calibrated else [])])
    return columns, rows


def _stage_cells(rs: list[Result], side: str) -> list:
    """One stage's value of each result, with its interval where it has one ("sft": the reference)."""
    out = []
    for r in rs:
        value, ci = (r.reference_value, r.reference_ci) if side == "sft" else (r.value, r.ci)
        out += [value] if ci is None else [value, *ci]
    return out


def difference_rows(dataset: str, summaries: dict, ranked: list[dict] | None = None) -> tuple[list[str], list[list]]:
    """RL - SFT per alpha and result with its paired interval; loss_adjusted is the stage coefficient c. With the
    run's ranked tests: role (primary | secondary | point), p and Holm-adjusted p, near-duplicate group."""
    rs = [r for a, s in summaries.items() for r in results(a, s, "rl", "sft", view="tables")]
    columns = ["dataset", "alpha", "metric", "rl_minus_sft", "lo", "hi"]
    if ranked is None:
        return columns, [[dataset, r.alpha, r.name, r.diff, *r.diff_ci] for r in rs]
    rs = with_tests(rs, lookup(ranked), compare=False)
    return columns + ["role", "p", "p_holm", "finding"], [[dataset, r.alpha, r.name, r.diff, *r.diff_ci,
                                                           *_test_cells(r)] for r in rs]


def _test_cells(r: Result | None) -> list:
    """role, p, Holm p and finding of a table row (empty for a row no test covers: the reference's)."""
    if r is None or r.role is None:
        return [None, None, None, None]
    ok = [None if not np.isfinite(v) else v for v in (r.p, r.p_holm)]
    return [r.role, *ok, r.finding or None]


def wandb_values(alpha: str, summary: dict) -> dict:
    """One W&B key per number: eap/<result>/<sft|rl|diff|diff_lo|diff_hi> (alpha lives in the config or x axis);
    a point value (no valid interval) has no _lo/_hi keys; a kind's extra values and stage intervals join them."""
    out = {}
    for r in results(alpha, summary, "rl", "sft", view="wandb"):
        key = f"eap/{r.name}"
        for side, value, ci in (("sft", r.reference_value, r.reference_ci), ("rl", r.value, r.ci)):
            if value is not None:
                out[f"{key}/{side}"] = value
            if value is not None and RESULTS[r.name].wandb_stage_ci:
                out |= {f"{key}/{side}_lo": ci[0], f"{key}/{side}_hi": ci[1]}
        out[f"{key}/diff"] = r.diff
        if r.diff_ci is not None and r.diff_ci[0] is not None:
            out |= {f"{key}/diff_lo": r.diff_ci[0], f"{key}/diff_hi": r.diff_ci[1]}
        out |= {f"{key}/{k}": v for k, v in (r.extra or {}).items()}
    if "tau" in summary:
        out["eap/tau/rl"] = summary["tau"]
    return out


def track(ctx: RunContext, summaries: dict) -> None:
    """W&B: alpha and cut length in the config; one summary key per number; several alphas -> plots against alpha."""
    alphas = [float(a) for a in summaries]
    cuts = [s["cut_len"] for s in summaries.values()]
    cfg = ctx.cfg
    ctx.tracker.config({"alpha": alphas[0] if len(alphas) == 1 else alphas,
                        "cut_len": cuts[0] if len(cuts) == 1 else cuts,
                        "pair": cfg.model_pair.name, "dataset": cfg.dataset.name})
    if len(alphas) > 1:
        ctx.tracker.define_metric("eap/*", step_metric="alpha")
        for a, s in summaries.items():
            ctx.tracker.log({"alpha": float(a), **wandb_values(a, s)})
    else:
        ctx.tracker.summary(wandb_values(*next(iter(summaries.items()))))


def console_rows(a: str, s: dict, tests: dict | None = None) -> list[list]:
    """One alpha's console rows: the scale-free shape and loss_adjusted first, then the other results in registry
    order, the calibration last. With ``tests`` ({(alpha, metric, None): ranked test}) a last column says primary /
    secondary and the p-value."""
    rs = sorted(results(a, s, "rl", "sft", view="console"), key=lambda r: not RESULTS[r.name].console_first)
    rows = [[r.alpha, r.cut_len, r.label, _cell(r.reference_value, r.reference_ci), _cell(r.value, r.ci),
             _cell(r.diff, r.diff_ci), *([] if tests is None else [_test_text(r, tests)])] for r in rs]
    if "tau" in s:
        rows.append([float(a), s["cut_len"], "calibration: RL logits divided by tau", "1", f"{s['tau']:.4g}", "",
                     *([] if tests is None else [""])])
    return rows


def _cell(value, ci) -> str:
    """A console cell: empty without a value, the bare value without an interval at all, else interval_text."""
    return "" if value is None else f"{value:.4g}" if ci is None else interval_text(value, ci)


def _test_text(r: Result, tests: dict) -> str:
    """The console's test column of a pair-mode result: its kind's fixed text, else the ranked test's."""
    fixed = RESULTS[r.name].console_test
    return fixed if fixed is not None else family_cell(tests.get((r.alpha, r.name, None)))


def console_summary(dataset: str, counts: dict, summaries: dict, sft: str, rl: str,
                    ranked: list[dict] | None = None) -> str:
    """What a run prints: accuracies, the selection, and per alpha each number with its 95% interval.

    Means over questions of per-sample values; RL - SFT is the mean of the paired differences (BCa intervals); with
    the run's ranked tests, a last column with the role and the (Holm-adjusted) p-value.
    """
    head = (f"{dataset}: {sft} {counts[f'{sft}_correct']}/{counts['questions']} correct, {rl} "
            f"{counts[f'{rl}_correct']}/{counts['questions']}; {counts['n_selected']} questions selected "
            f"(Tbar {counts['tbar']:.1f} tokens)\n")
    tests = None if ranked is None else lookup(ranked)
    rows = [r for a, s in summaries.items() for r in console_rows(a, s, tests)]
    return head + markdown_table(["alpha", "T_cut", "metric", f"{sft} [95% CI]", f"{rl} [95% CI]",
                                  f"{rl} - {sft} [95% CI]", *([] if tests is None else ["test (Holm p)"])], rows)


def figures(ctx: RunContext, scored: dict, summaries: dict, names: dict) -> None:
    """Figure 2 (relative change), Figure 3 (diversity, output-edge entropy), intensity vs loss, metrics vs alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for alpha, sc in scored.items():
        for name, fig in ((f"eap_relative_change_alpha{alpha:g}", relative_change_figure(plt, sc, names, alpha)),
                          (f"eap_diversity_entropy_alpha{alpha:g}", diversity_figure(plt, sc, names))):
            ctx.save_figure(name, fig)
            plt.close(fig)
    if all("faithfulness" in s for s in summaries.values()):
        fig = faithfulness_figure(plt, summaries, names)
        ctx.save_figure("eap_faithfulness", fig)
        plt.close(fig)
    fig = loss_figure(plt, scored, summaries, names)
    ctx.save_figure("eap_intensity_vs_loss", fig)
    plt.close(fig)
    if len(summaries) > 1:
        fig = alpha_figure(plt, summaries, names)
        ctx.save_figure("eap_metrics_vs_alpha", fig)
        plt.close(fig)


def _sparse_ticks(ax, axis: str, labels, most: int = 40, **kw) -> None:
    """Every k-th node name (at most ``most``), so labels stay readable instead of shrinking to a few points."""
    step = max(1, -(-len(labels) // most))
    pos = list(range(0, len(labels), step))
    getattr(ax, f"set_{axis}ticks")(pos, [labels[i] for i in pos], **kw)


def relative_change_figure(plt, sc: dict, names: dict, alpha: float):
    """Per edge log2(mean|W_rl| / mean|W_sft|), the colour centred on its median: a stage whose attributions are
    uniformly 45x smaller saturates (RL - SFT) / SFT at -1 everywhere; the symmetric log-ratio around its median
    shows which edges changed more or less than the typical one, and the median itself is in the colour bar."""
    rel = relative_change(sc["sft"]["W"], sc["rl"]["W"], sc["mask"])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log2(np.clip(1 + rel, 2.0**-30, None))  # [n_src, n_dst], NaN off the mask
    sources, targets = sc["sources"], sc["targets"]
    fig, ax = plt.subplots(figsize=(min(14, max(6, len(targets) / 8)), min(11, max(4, len(sources) / 8))),
                           layout="constrained")
    finite = ratio[np.isfinite(ratio)]
    mid = float(np.median(finite)) if finite.size else 0.0
    half = float(np.percentile(np.abs(finite - mid), 98)) if finite.size else 1.0
    half = half or 1.0
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="lightgrey")  # masked cells (not edges) in grey, as titled
    im = ax.imshow(np.ma.masked_invalid(ratio), cmap=cmap, vmin=mid - half, vmax=mid + half, aspect="auto")
    _sparse_ticks(ax, "x", targets, rotation=90, fontsize=7)
    _sparse_ticks(ax, "y", sources, fontsize=7)
    ax.set(xlabel="target node", ylabel="source node")
    ax.set_title(f"change of mean |W| per edge, {names['rl']} vs {names['sft']} (alpha={alpha:g}; grey: not an edge)",
                 fontsize=10)
    bar = fig.colorbar(im, ax=ax, extend="both")
    bar.set_label(f"log2({names['rl']} / {names['sft']}) of mean |W|; centre = median {mid:.2f} "
                  f"({2 ** mid:.3g}x)", fontsize=9)
    bar.ax.tick_params(labelsize=8)
    return fig


def diversity_figure(plt, sc: dict, names: dict):
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
    mask = sc["mask"]
    for side in ("sft", "rl"):
        W = sc[side]["W"]
        corr = np.corrcoef(W[:, mask].astype(np.float64))
        per_q = 1 - (corr.sum(1) - 1) / max(len(corr) - 1, 1)  # 1 - mean correlation with the other samples
        color = stage_color(names[side])
        a1.plot(sorted(per_q), color=color, label=f"{names[side]} (diversity {sample_diversity(W, mask):.3f})")
        a2.plot(output_edge_entropy(W, mask), marker=".", color=color, label=names[side])
    a1.set(xlabel="sample (sorted)", ylabel="1 - mean Pearson r with other samples", title="per-sample diversity")
    _sparse_ticks(a2, "x", list(sc["sources"]), most=20, rotation=90, fontsize=7)  # 61 names overlapped
    a2.set(xlabel="source node", ylabel="entropy of |W| over outgoing edges",
           title="output-edge entropy per source node")
    a1.legend()
    a2.legend()
    return fig


def loss_figure(plt, scored: dict, summaries: dict, names: dict):
    """log intensity_k against log loss_k per stage and alpha, with the loss_adjusted fit (parallel lines, gap c)."""
    fig, axes = plt.subplots(1, len(scored), figsize=(4.2 * len(scored), 3.9), squeeze=False, layout="constrained")
    for ax, (alpha, sc) in zip(axes[0], scored.items()):
        la = summaries[f"{alpha:g}"].get("loss_adjusted")
        for side, shift in (("sft", 0.0), ("rl", 1.0)):
            loss = sc[side]["loss"].astype(float)
            inten = per_sample(sc[side]["W"], sc["mask"], "activation_intensity")
            ok = (loss > 0) & (inten > 0)
            x, y = np.log(loss[ok]), np.log(inten[ok])
            dots = ax.scatter(x, y, s=12, color=stage_color(names[side]), label=names[side])
            if la and len(x):
                grid = np.linspace(x.min(), x.max(), 2)
                ax.plot(grid, la["a"] + la["b"] * grid + shift * la["c"], color=dots.get_facecolor()[0])
        # Two lines: one line of title ran into the neighbouring panel's.
        title = f"alpha={alpha:g}" + (f"\nc = {la['c']:.3g} [{la['c_ci'][0]:.3g}, {la['c_ci'][1]:.3g}]" if la else "")
        ax.set(xlabel="log loss_k (self-entropy)", ylabel="log intensity_k", title=title)
        ax.xaxis.set_major_locator(plt.MaxNLocator(4))  # close losses: default ticks overlap
        ax.legend(fontsize=7)
    return fig


def alpha_figure(plt, summaries: dict, names: dict):
    alphas = sorted(float(a) for a in summaries)
    ncols = min(4, len(STAGE_ROWS))  # a grid, so eight panels stay readable on a page
    nrows = -(-len(STAGE_ROWS) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.1 * nrows), layout="constrained", squeeze=False)
    for ax in axes.flat[len(STAGE_ROWS):]:
        ax.set_visible(False)
    for ax, m in zip(axes.flat, STAGE_ROWS):
        for side in ("sft", "rl"):
            s = [summaries[f"{a:g}"][m] for a in alphas]
            color = stage_color(names[side])
            ax.plot(alphas, [v[side] for v in s], marker="o", color=color, label=names[side])
            ax.fill_between(alphas, [v[f"{side}_ci"][0] for v in s], [v[f"{side}_ci"][1] for v in s], color=color,
                            alpha=0.2)
        point = not any(has_interval(summaries[f"{a:g}"][m][f"{side}_ci"]) for a in alphas for side in ("sft", "rl"))
        ax.set(xscale="log", xlabel="alpha")
        ax.set_title(m.replace("_", " ") + (" (point value, no interval)" if point else ""), fontsize=9)
        ax.set_xticks(alphas, [f"{a:g}" for a in alphas])
        ax.minorticks_off()
        ax.legend(fontsize=7)
    return fig
