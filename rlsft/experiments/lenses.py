"""What RL changes, through every lens the field uses (method.md 9), for a reference stage and the stages compared
to it (``eap.reference`` / ``eap.compare``, else ``eap.sft_stage`` -> ``eap.rl_stage``).

weights (cached per pair of stages): bf16 update sparsity overall / per block / per matrix type, update rank,
spectral drift, principal angles, mask Jaccard between every two compared stages vs chance
-> outputs: KL(pi_ref || pi) per answer token on task answers sampled from each compared stage and on the control
set, control and task accuracy change (paired bootstrap over questions)
-> pass@k: n samples per question at ``lenses.temperature`` (generation cache), unbiased estimator, curves with
bootstrap intervals over questions, the k where the reference overtakes
-> where the update meets the circuit: each stage's EAP scores (the eap experiment's cached stage), top blocks
-> arms trained on several seeds: each lens per arm, intervals over seeds and questions (lenses_arms)
-> tables, figures, W&B keys.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from ..architectures import architecture
from ..cache import cached_json, stage_dir, stage_key
from ..errors import RlsftError
from ..lenses import (aggregate, answer_kls, block_eap_mass, crossover_k, mask_overlap, pass_at_k_curve,
                      powers_of_two, top_blocks, update_meets_circuit, weight_rows)
from ..models import fingerprint
from ..seeds import stage_names
from ..stats import bootstrap_ci
from .common import RunContext
from .eap_study import compared_arms, is_study
from .lenses_arms import arm_rows
from .lenses_report import figures, tables

log = logging.getLogger(__name__)
LENSES_VERSION = 2  # bump when a cached lens changes meaning (2: a tied tensor counted once)
READS_INTERNALS = True  # weight matrices by block, EAP scores
DATA_PARALLEL = False


def check(cfg) -> None:
    """Nothing beyond rlsft.config.validate's checks of the sections it reads."""


def tags(cfg) -> list[str]:
    """No W&B tags beyond the pair's and the dataset's."""
    return []


def lens_stages(ctx: RunContext) -> tuple[str, dict]:
    """The reference and the ordered {name: stage} (reference first) this run compares."""
    e = ctx.cfg.eap
    names = stage_names(ctx.arms(), [e.reference, *e.compare] if e.reference else [e.sft_stage, e.rl_stage])
    stages = {s.name: s for s in ctx.stages()}
    unknown = [n for n in names if n not in stages]
    if unknown or len(set(names)) != len(names) or len(names) < 2:
        raise RlsftError(f"lenses compares eap.reference with eap.compare (or eap.sft_stage with eap.rl_stage): got "
                         f"{names}; model_pair {ctx.cfg.model_pair.name!r} has stages {list(stages)}")
    return names[0], {n: stages[n] for n in names}


def cached_lens(ctx: RunContext, stage: str, compute, **key) -> dict:
    """A lens's JSON result under a key of everything that determines it: locked, sealed, resumed (rlsft.cache)."""
    return cached_json(stage_dir(ctx.cache_dir, stage, stage_key(version=LENSES_VERSION, **key)) / "result.json",
                       compute)


def _state(ctx: RunContext, stage) -> dict:
    """A stage's weights where the model runs (on a GPU the decompositions run there too)."""
    model, _ = ctx.load_stage(stage)
    return {k: v.detach() for k, v in model.state_dict().items()}


def weight_lenses(ctx: RunContext, reference: str, stages: dict) -> dict:
    """{stage: per-tensor rows} for every compared stage, and the mask overlap of every two compared stages."""
    fp = {n: fingerprint(ctx.model_spec(s)) for n, s in stages.items()}
    k, state = ctx.cfg.lenses.top_k, {}

    def ref_state():
        if reference not in state:
            state[reference] = _state(ctx, stages[reference])
        return state[reference]

    def stage_state(name):
        if name not in state:
            state[name] = _state(ctx, stages[name])
            ctx.release(stages[name])
        return state[name]

    rows = {}
    for name in list(stages)[1:]:
        def compute(name=name):
            path = architecture(ctx.load_stage(stages[reference])[0])["layers"]
            return weight_rows(ref_state(), stage_state(name), path, k)
        rows[name] = cached_lens(ctx, "lenses_weights", compute, ref=fp[reference], model=fp[name], top_k=k)
        log.info("lenses: weights of %s against %s done", name, reference)
    overlap = {}
    names = list(stages)[1:]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            overlap[f"{a}|{b}"] = cached_lens(ctx, "lenses_overlap",
                                              lambda a=a, b=b: mask_overlap(ref_state(), stage_state(a), stage_state(b)),
                                              ref=fp[reference], a=fp[a], b=fp[b])
    for s in stages.values():
        ctx.release(s)
    return {"rows": rows, "overlap": overlap}


def _answers_hash(answers: list[dict]) -> str:
    return hashlib.sha256(repr([(a["id"], a["sample"], a["prompt_ids"], a["output_ids"]) for a in answers])
                          .encode()).hexdigest()


def kl_for(ctx: RunContext, ref_stage, stage, answers: list[dict]) -> np.ndarray:
    """KL(pi_ref || pi) per answer (mean over its tokens), cached by both models and the answers."""
    def compute():
        kls = answer_kls(ctx.load_stage(ref_stage)[0], ctx.load_stage(stage)[0], answers)
        return {"kl": [None if np.isnan(x) else float(x) for x in kls]}

    out = cached_lens(ctx, "lenses_kl", compute, ref=fingerprint(ctx.model_spec(ref_stage)),
                      model=fingerprint(ctx.model_spec(stage)), answers=_answers_hash(answers))
    return np.array([np.nan if x is None else x for x in out["kl"]], dtype=float)


def _mean_ci(values, n_boot: int, seed: int) -> dict:
    """Mean over questions with its 95% bootstrap interval (nan entries left out)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    lo, hi = bootstrap_ci(v, n_boot=n_boot, seed=seed)
    return {"mean": float(v.mean()) if v.size else float("nan"), "ci": [lo, hi], "n": int(v.size)}


def output_lenses(ctx: RunContext, reference: str, stages: dict) -> dict:
    """Per compared stage: task and control KL to the reference on its own sampled answers, and the accuracy
    change (stage - reference, paired over questions) on the task and on the control set (greedy answers)."""
    L = ctx.cfg.lenses
    sets = {"task": ctx.records()[: L.kl_questions], "control": ctx.records(L.control)[: L.kl_questions]}
    sampled = ctx.sampling(temperature=L.temperature, n_samples=1)
    greedy = ctx.sampling(temperature=0.0, n_samples=1)
    ref = stages[reference]
    # greedy answers on the whole sets (the evaluate experiment's cache for the task), then the same first questions
    full = {"task": ctx.records(), "control": ctx.records(L.control)}
    acc = {where: {n: np.array([g["correct"] for g in ctx.generations(s, recs, greedy)], dtype=float)[: L.kl_questions]
                   for n, s in stages.items()} for where, recs in full.items()}
    out = {}
    for name in list(stages)[1:]:
        row = {"per_question": {}}  # the values behind each mean, for the arms' intervals over seeds (lenses_arms)
        for where, recs in sets.items():
            answers = ctx.generations(stages[name], recs, sampled, batch_size=L.batch_size)
            kl = kl_for(ctx, ref, stages[name], answers)
            row["per_question"] |= {f"{where}_kl": [None if np.isnan(x) else float(x) for x in kl],
                                    f"{where}_correct": acc[where][name].tolist()}
            row[f"{where}_kl"] = _mean_ci(kl, L.n_boot, ctx.cfg.run.seed)
            row[f"{where}_accuracy"] = float(acc[where][name].mean())
            row[f"{where}_accuracy_change"] = _mean_ci(acc[where][name] - acc[where][reference], L.n_boot,
                                                       ctx.cfg.run.seed)
        ctx.release(stages[name])
        out[name] = row
    ctx.release(ref)
    out["__reference__"] = {f"{w}_accuracy": float(acc[w][reference].mean()) for w in sets} | {
        "per_question": {f"{w}_correct": acc[w][reference].tolist() for w in sets}}
    return out


def pass_lenses(ctx: RunContext, stages: dict) -> dict:
    """pass@k curves of every stage (reference included): n samples per question at lenses.temperature."""
    L = ctx.cfg.lenses
    records = ctx.records()[: L.pass_questions]
    sampling = ctx.sampling(temperature=L.temperature, n_samples=L.pass_n)
    ks = powers_of_two(L.pass_n)
    curves = {}
    for name, stage in stages.items():
        gens = ctx.generations(stage, records, sampling, batch_size=L.batch_size)
        correct = {}
        for g in gens:
            correct[g["id"]] = correct.get(g["id"], 0) + bool(g["correct"])
        curve = pass_at_k_curve(np.array([correct[r.id] for r in records]), L.pass_n, ks, L.n_boot, ctx.cfg.run.seed)
        curves[name] = {"ks": curve["ks"], "rows": curve["rows"], "per_question": curve["per_question"].tolist()}
        ctx.release(stage)
    return curves


def crossover(ref: dict, other: dict, n_boot: int, seed: int):
    """The k where the reference overtakes, or "cannot tell" when the paired interval of reference - stage at that k
    (over questions) holds 0; None when it never does."""
    k = crossover_k(ref, other)
    if k is None:
        return None
    j = ref["ks"].index(k)
    diff = np.array(ref["per_question"])[:, j] - np.array(other["per_question"])[:, j]
    lo, _ = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
    return k if lo > 0 else f"{k} (cannot tell)"


def circuit_lenses(ctx: RunContext, reference: str, stages: dict, blocks: dict) -> dict:
    """Each compared stage's update inside the blocks carrying its top EAP mass (the eap experiment's cached scores at
    truncation.alpha, on the selection eap.selection gives its arm: shared, or the questions the reference and the
    arm's seeds answer); a stage whose arm has too few questions says so (``{"error": ...}``)."""
    from .eap import arm_selections, generations, score_alpha

    arms = compared_arms(ctx, stages)
    try:
        gens = generations(ctx, *stages.values())
        selections = arm_selections(ctx.cfg, gens, reference, arms)
    except RlsftError as exc:
        log.warning("lenses: where the update meets the circuit cannot tell: %s", exc)
        return {"error": str(exc)}
    out = {}
    for arm, chosen in selections.items():
        if chosen is None:
            out |= {name: {"error": f"fewer than 2 selected questions for {arm} (its [eap] line says why)"}
                    for name in arms[arm]}
            continue
        selection = chosen[0]
        scored = score_alpha(ctx, gens, selection, ctx.cfg.truncation.alpha,
                             {n: stages[n] for n in (reference, *arms[arm])})
        for name in arms[arm]:
            n_layers = sum(1 for g in blocks[name] if g.startswith("block "))
            mass = block_eap_mass(scored[name]["W"], scored["mask"], scored["sources"], scored["targets"], n_layers)
            top = top_blocks(mass, ctx.cfg.lenses.circuit_share)
            out[name] = update_meets_circuit(blocks[name], top) | {"eap_block_mass": mass.tolist(),
                                                                  "questions": len(selection.ids)}
    return out


def run(cfg, ctx: RunContext) -> dict:
    reference, stages = lens_stages(ctx)
    log.info("lenses: %s against %s", list(stages)[1:], reference)
    weights = weight_lenses(ctx, reference, stages)
    blocks = {n: aggregate(r, "block") for n, r in weights["rows"].items()}
    result = {"reference": reference, "compared": list(stages)[1:], "overlap": weights["overlap"],
              "weights": {n: {"by_block": blocks[n], "by_type": aggregate(r, "type"),
                              "all": aggregate([dict(x, all="all") for x in r], "all")["all"]}
                          for n, r in weights["rows"].items()}}
    result["outputs"] = output_lenses(ctx, reference, stages)
    result["pass_at_k"] = pass_lenses(ctx, stages)
    result["crossover_k"] = {n: crossover(result["pass_at_k"][reference], result["pass_at_k"][n], cfg.lenses.n_boot,
                                          cfg.run.seed) for n in list(stages)[1:]}
    result["circuit"] = circuit_lenses(ctx, reference, stages, blocks) if cfg.lenses.circuit else {}
    arms = compared_arms(ctx, stages)
    if is_study(arms):  # arms trained on several seeds: each lens per arm with an interval over seeds and questions
        result["arms"] = arm_rows(result, arms, cfg.lenses.n_boot, cfg.run.seed)
    written = tables(ctx, result)
    figures(ctx, result)
    ctx.write_json("lenses.json", result)
    print(written)
    return {k: v for k, v in result.items() if k != "weights"} | {
        "weights": {n: w["all"] for n, w in result["weights"].items()}}
