"""Layer-wise linear probes (method.md section 4): can a linear read-out of one layer tell right answers from wrong?

Two stages, each testable alone:

1. ``extract_features``: one forward per sample over the ids the model itself saw and produced (never re-tokenised),
   hooks on every decoder block keep the block's output at a position only:
     ``before_answer``            the token holding the ``{`` of the last ``\\boxed{`` (the answer is still unwritten),
                                  with the prompt in context;
     ``before_answer_no_prompt``  the same token while re-reading the generated ids alone (the seed's variant);
     ``question_end``             the last prompt token (before any answer exists);
     ``answer_mean``              the mean over the generated tokens.
   A sample without the position (no ``\\boxed{``, empty answer) is skipped and counted, never filled in.
   ``cached_features`` stores them as fp16 ``.npz`` keyed by everything that determines them, rows named by question id.

2. ``probe_layers``: per layer, ``StandardScaler -> LogisticRegression(class_weight=balanced)`` in a question-grouped,
   stratified, repeated k-fold CV. C is chosen by an inner grouped CV on each training fold (nested), scored by
   AUROC (threshold-free, so it does not reward a probe for matching the class balance). The layer is also chosen
   inside each training fold (highest inner score), and the chosen layer's outer-fold score is the honest "best
   layer" number; the first layer reaching a threshold is read off the inner scores too: test folds never pick
   anything. Every curve comes with the majority-class rate, a shuffled-label control run through the same CV and,
   given baseline features (the one-hot template id), a baseline probe on the same folds. Intervals over folds are
   Nadeau-Bengio corrected t-intervals, the control's included: one permutation's control wanders around 0.5 by
   several points at small minority counts (about 0.05 SD per layer with 11 of 100 in the minority), and its
   interval, not its mean, is what must hold 0.5.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from .ablation import block_hooks
from .architectures import decoder_body, decoder_layers
from .cache import cached_npz, stage_dir, stage_key
from .stats import cv_interval

class ProbeInputError(ValueError):
    """Input a probe cannot be fit on (too few of a class, wrong shapes); the glue reports it and goes on."""


POSITIONS = ("before_answer", "before_answer_no_prompt", "question_end", "answer_mean")
FEATURE_VERSION = 1
BOXED = "\\boxed{"


# ----------------------------------------------------------------------------------------------- positions
def boxed_brace_index(tokenizer, ids: list[int]) -> int | None:
    """Index in ``ids`` of the token that holds the ``{`` of the last ``\\boxed{`` in their decoded text, or None.

    Found by decoding prefixes of the stored ids (binary search on how many ``\\boxed{`` a prefix contains), so the
    answer is exact for any tokenizer, including tokens that merge ``{`` with what follows.
    """
    def count(k: int) -> int:
        return tokenizer.decode(ids[:k], skip_special_tokens=True, clean_up_tokenization_spaces=False).count(BOXED)

    total = count(len(ids))
    if total == 0:
        return None
    lo, hi = 1, len(ids)  # the shortest prefix that contains every occurrence ends with the `{` token
    while lo < hi:
        mid = (lo + hi) // 2
        if count(mid) >= total:
            hi = mid
        else:
            lo = mid + 1
    return lo - 1


def feature_inputs(tokenizer, gen: dict, positions) -> dict[str, tuple[list[int], list[int]] | None]:
    """Per position: (input ids of the forward, indices averaged into the feature), or None when it does not exist."""
    prompt, out = list(gen["prompt_ids"]), list(gen["output_ids"])
    full = prompt + out
    brace = boxed_brace_index(tokenizer, out) if any(p.startswith("before_answer") for p in positions) else None
    # Re-reading without the prompt starts from the same start token the prompt began with (BOS), if any.
    start = prompt[:1] if prompt and tokenizer.bos_token_id is not None and prompt[0] == tokenizer.bos_token_id else []
    table = {
        "before_answer": (full, [len(prompt) + brace]) if brace is not None else None,
        "before_answer_no_prompt": (start + out, [len(start) + brace]) if brace is not None else None,
        "question_end": (full, [len(prompt) - 1]) if prompt else None,
        "answer_mean": (full, list(range(len(prompt), len(full)))) if out else None,
    }
    return {p: table[p] for p in positions}


# ----------------------------------------------------------------------------------------------- features
@dataclass
class Features:
    """Hidden states ``X[i, l]`` = block ``l``'s output for question ``ids[i]``; ``skipped`` had no such position."""

    ids: list[str]
    X: np.ndarray  # [n, L, d]
    skipped: list[str] = field(default_factory=list)


@torch.no_grad()
def extract_features(model, tokenizer, gens: list[dict], positions, batch_size: int = 8) -> dict[str, Features]:
    """Block outputs at each position for every generation (one forward per distinct input sequence).

    Sequences are right padded: with a causal mask a real token never sees the padding after it, so a sample's
    features do not depend on what it is batched with.
    """
    unknown = [p for p in positions if p not in POSITIONS]
    if unknown:
        raise ValueError(f"unknown probe position(s) {unknown}; expected some of {list(POSITIONS)}")
    device = next(model.parameters()).device
    n_layers = len(decoder_layers(model))
    # One job per (sample, input sequence): the with-prompt positions share a forward.
    jobs: dict[tuple[str, tuple[int, ...]], dict[str, list[int]]] = {}
    skipped: dict[str, list[str]] = {p: [] for p in positions}
    for g in gens:
        for pos, spec in feature_inputs(tokenizer, g, positions).items():
            if spec is None:
                skipped[pos].append(g["id"])
            else:
                jobs.setdefault((g["id"], tuple(spec[0])), {})[pos] = spec[1]
    found: dict[str, dict[str, np.ndarray]] = {p: {} for p in positions}
    items = sorted(jobs.items(), key=lambda item: len(item[0][1]))  # similar lengths together: little padding
    body = decoder_body(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    from .console import progress

    for start in progress(desc="probe features", unit="batch", iterable=range(0, len(items), batch_size)):
        chunk = items[start : start + batch_size]
        width = max(len(seq) for (_, seq), _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        weights = {p: torch.zeros((len(chunk), width)) for p in positions}
        for b, ((_, seq), targets) in enumerate(chunk):
            ids[b, : len(seq)] = torch.tensor(seq)
            mask[b, : len(seq)] = 1
            for pos, idx in targets.items():
                weights[pos][b, idx] = 1.0 / len(idx)
        weights = {p: w.to(device) for p, w in weights.items() if w.any()}
        out = {p: torch.zeros((len(chunk), n_layers, model.config.hidden_size)) for p in weights}

        def keep(layer, _inp, h):
            for pos, w in weights.items():
                out[pos][:, layer] = torch.einsum("bt,btd->bd", w.to(torch.float32), h.float()).cpu()

        with block_hooks(model, keep):
            body(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        for b, ((qid, _), targets) in enumerate(chunk):
            for pos in targets:
                found[pos][qid] = out[pos][b].numpy()
    result = {}
    for pos in positions:
        order = [g["id"] for g in gens if g["id"] in found[pos]]
        X = np.stack([found[pos][q] for q in order]) if order else np.zeros((0, n_layers, model.config.hidden_size))
        result[pos] = Features(order, X.astype(np.float32), skipped[pos])
    return result


def _compact(X: np.ndarray) -> np.ndarray:
    """fp16 halves the cache; a model whose activations overflow fp16 (|x| > 65504) keeps fp32."""
    return X.astype(np.float16) if np.all(np.abs(X) <= np.finfo(np.float16).max) else X.astype(np.float32)


def features_key(model_fingerprint: dict, precision: str, gens: list[dict], position: str) -> str:
    """Everything that determines a feature file: model, its precision, the exact token ids, the position."""
    samples = hashlib.sha256(repr([(g["id"], g["prompt_ids"], g["output_ids"]) for g in gens]).encode()).hexdigest()
    return stage_key(version=FEATURE_VERSION, model=model_fingerprint, precision=precision, samples=samples,
                     position=position)


def cached_features(load, gens: list[dict], positions, model_fingerprint: dict, precision: str, cache_dir: str,
                    batch_size: int = 8) -> dict[str, Features]:
    """``extract_features`` through the cache, one entry per position: ``load() -> (model, tokenizer)`` is called
    only on a miss.

    Each position is its own ``cached_npz`` entry under its own lock, so calls asking for overlapping positions in
    any order share them. A miss extracts, in the same forward pass, every other position not yet on disk: those
    entries are then written from it when their turn comes (a damaged one is only found at its turn, and costs a
    second pass).
    """
    paths = {p: stage_dir(cache_dir, "features", features_key(model_fingerprint, precision, gens, p)) / "features.npz"
             for p in positions}
    fresh: dict[str, Features] = {}

    def compute(pos: str) -> dict:
        if pos not in fresh:
            todo = [pos] + [p for p in positions if p != pos and p not in fresh and not paths[p].exists()]
            model, tokenizer = load()
            fresh.update(extract_features(model, tokenizer, gens, todo, batch_size))
        feats = fresh.pop(pos)
        return {"ids": np.array(feats.ids, dtype=str), "X": _compact(feats.X),
                "skipped": np.array(feats.skipped, dtype=str)}

    result = {}
    for pos in positions:
        z = cached_npz(paths[pos], partial(compute, pos))
        result[pos] = Features(z["ids"].tolist(), z["X"].astype(np.float32), z["skipped"].tolist())
    return result


# ----------------------------------------------------------------------------------------------- probes
@dataclass
class LayerScores:
    """Outer-fold scores of one layer ([F] arrays, F = folds * repeats) and its inner-CV (validation) scores at the
    chosen C: ``inner`` (AUROC) picks C and the layer, ``inner_balanced_accuracy`` the first layer reaching a
    threshold, so no test fold chooses anything."""

    balanced_accuracy: np.ndarray
    auroc: np.ndarray
    inner: np.ndarray
    C: np.ndarray
    inner_balanced_accuracy: np.ndarray


@dataclass
class ProbeResult:
    layers: list[LayerScores]  # per layer
    control: list[LayerScores] | None  # the same CV on shuffled labels
    baseline: LayerScores | None  # the same CV on baseline features only (the template's one-hot id)
    selected_layer: np.ndarray  # [F] layer picked on each training fold by its inner CV
    selected: LayerScores  # outer-fold scores of the layer picked on that fold
    majority_rate: float
    n: int
    n_positive: int
    n_groups: int
    test_fraction: float

    def summary(self, scores: LayerScores | None = None) -> dict:
        """Mean and Nadeau-Bengio corrected 95% interval of both metrics."""
        s = scores or self.selected
        out = {}
        for name in ("balanced_accuracy", "auroc"):
            mean, lo, hi = score_interval(getattr(s, name), self.test_fraction)
            out[name] = {"mean": mean, "ci95": [lo, hi]}
        return out


def score_interval(scores, test_fraction: float) -> tuple[float, float, float]:
    """(mean, low, high) of fold scores: the corrected CV t-interval, clipped to the metric's range [0, 1]."""
    mean, lo, hi = cv_interval(scores, test_fraction)
    return mean, float(np.clip(lo, 0, 1)), float(np.clip(hi, 0, 1))


def check_classes(y: np.ndarray, groups: np.ndarray, folds: int, inner_folds: int, what: str = "") -> None:
    """Enough groups holding each class for the outer and inner stratified group folds, else ProbeInputError.

    Counted in groups (questions, or templates with ``group_by=template``), since a fold takes whole groups.
    """
    if folds < 2 or inner_folds < 2:
        raise ProbeInputError(f"probe: folds and inner_folds must be >= 2 (got {folds}, {inner_folds})")
    need = max(folds, math.ceil(inner_folds * folds / (folds - 1)))
    label = {0: "wrong", 1: "correct"}
    for cls in (0, 1):
        k = len(set(groups[y == cls].tolist()))
        if k < need:
            # Fewer folds need at least 2 groups per class: with fewer, only more questions (or another model) help.
            fewer = " or fewer folds (probe.folds, probe.inner_folds)" if k >= 2 else ""
            raise ProbeInputError(
                f"probe{what}: only {k} group(s) with a {label[cls]} answer (of {len(y)} samples, {int(y.sum())} "
                f"correct); {folds}-fold CV with {inner_folds}-fold inner CV needs at least {need} per class. "
                f"Use more questions (dataset.n / dataset.per_template){fewer}")


def outer_splits(y, groups, folds: int, repeats: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedGroupKFold

    splits = []
    for r in range(repeats):
        cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed + r)
        splits += list(cv.split(np.zeros(len(y)), y, groups))
    return splits


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic (ties count one half): the same number as sklearn's
    ``roc_auc_score``, without its input checks, which cost more than the fits here. nan with one class."""
    from scipy.stats import rankdata

    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    return float((rankdata(score)[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def inner_scores(X: np.ndarray, y: np.ndarray, groups: np.ndarray, Cs, inner_folds: int, seed: int,
                 max_iter: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Mean validation AUROC and balanced accuracy of each C ([len(Cs)] each) over a stratified group k-fold of the
    training fold (nan where never defined).

    The scaler is fit on each inner training part only; C runs from small to large with warm starts (a regularisation
    path), which is what makes the nested search affordable for every layer.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.preprocessing import StandardScaler

    order = np.argsort(Cs)
    scores = np.full((inner_folds, len(Cs)), np.nan)
    bacc = np.full((inner_folds, len(Cs)), np.nan)
    cv = StratifiedGroupKFold(n_splits=inner_folds, shuffle=True, random_state=seed)
    for i, (a, b) in enumerate(cv.split(X, y, groups)):
        if len(set(y[a].tolist())) < 2 or len(set(y[b].tolist())) < 2:
            continue
        scaler = StandardScaler().fit(X[a])
        Xa, Xb = scaler.transform(X[a]), scaler.transform(X[b])
        lr = LogisticRegression(class_weight="balanced", max_iter=max_iter, warm_start=True)
        for j in order:
            lr.set_params(C=Cs[j]).fit(Xa, y[a])
            decision = lr.decision_function(Xb)
            scores[i, j] = auroc(y[b], decision)
            bacc[i, j] = balanced_accuracy_score(y[b], (decision > 0).astype(int))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan column: mean of empty slice
        return np.nanmean(scores, 0), np.nanmean(bacc, 0)


def fit_layer(X: np.ndarray, y: np.ndarray, groups: np.ndarray, splits, Cs, inner_folds: int, seed: int,
              max_iter: int = 2000) -> LayerScores:
    """One layer through every outer fold: choose C by inner CV on the training fold, refit, score the test fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    Cs = [float(c) for c in Cs]
    F = len(splits)
    bacc, auc, inner, Cbest, inner_bacc = (np.full(F, np.nan) for _ in range(5))
    # One BLAS thread: these problems are small, and threads fighting over shared cores cost 10x; parallelism comes
    # from fitting layers side by side instead.
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence notes on separable folds
        for f, (tr, te) in enumerate(splits):
            scores, scores_bacc = inner_scores(X[tr], y[tr], groups[tr], Cs, inner_folds, seed + f, max_iter)
            best = int(np.nanargmax(scores)) if np.isfinite(scores).any() else len(Cs) // 2
            pipe = make_pipeline(StandardScaler(), LogisticRegression(C=Cs[best], class_weight="balanced",
                                                                      max_iter=max_iter))
            pipe.fit(X[tr], y[tr])
            bacc[f] = balanced_accuracy_score(y[te], pipe.predict(X[te]))
            auc[f] = auroc(y[te], pipe.decision_function(X[te]))
            inner[f], Cbest[f], inner_bacc[f] = scores[best], Cs[best], scores_bacc[best]
    return LayerScores(bacc, auc, inner, Cbest, inner_bacc)


def _all_layers(X, y, groups, splits, Cs, inner_folds, seed, n_jobs, desc: str = "probe") -> list[LayerScores]:
    from joblib import Parallel, delayed

    from .console import progress

    n_layers = X.shape[1]
    jobs = (delayed(fit_layer)(np.ascontiguousarray(X[:, l]), y, groups, splits, Cs, inner_folds, seed)
            for l in range(n_layers))
    if n_jobs == 1 or n_layers == 1:
        done = (job[0](*job[1], **job[2]) for job in jobs)
    else:  # results in layer order as they come, so progress shows while the pool works
        done = Parallel(n_jobs=n_jobs, return_as="generator")(jobs)
    return list(progress(total=n_layers, desc=desc, unit="layer", iterable=done))


def shuffled_labels(y: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The control's labels: shuffled between groups where every group holds one label, else between samples.

    A greedy stage answers a repeated question alike every time, so its labels are constant within a question; a
    sample-wise shuffle makes mixed groups (identical features, both labels) that the real labels never have, a
    different null. Groups of one size swap their labels whole, so the class counts and group sizes stay.
    """
    members: dict = {}
    for i, g in enumerate(groups.tolist()):
        members.setdefault(g, []).append(i)
    if any(len(set(y[idx].tolist())) > 1 for idx in members.values()):
        return rng.permutation(y)
    out = y.copy()
    by_size: dict[int, list] = {}
    for idx in members.values():
        by_size.setdefault(len(idx), []).append(idx)
    for same in by_size.values():
        for dst, src in zip(same, rng.permutation(len(same))):
            out[dst] = y[same[src][0]]
    return out


def control_scores(X, y, groups, folds, inner_folds, repeats, Cs, seed, n_jobs, permutations: int,
                   desc: str) -> list[LayerScores]:
    """Per layer, the fold scores of ``permutations`` shuffled-label runs of the same CV, concatenated.

    One permutation moves every layer together (the same labels, the same folds), so its layer curve can sit
    several points off 0.5 everywhere (issue 23: 0.63 over 30 layers); averaging permutations shrinks that.
    """
    rng = np.random.default_rng(seed)
    runs = []
    for k in range(permutations):
        y_perm = shuffled_labels(y, groups, rng)
        splits = outer_splits(y_perm, groups, folds, repeats, seed + 10_000 * (k + 1))
        runs.append(_all_layers(X, y_perm, groups, splits, Cs, inner_folds, seed, n_jobs,
                                f"{desc} shuffled labels {k + 1}/{permutations}"))
    return [LayerScores(*(np.concatenate([getattr(run[l], f) for run in runs]) for f in
                          ("balanced_accuracy", "auroc", "inner", "C", "inner_balanced_accuracy")))
            for l in range(len(runs[0]))]


def probe_layers(X: np.ndarray, y, groups, folds: int = 5, inner_folds: int = 3, repeats: int = 2,
                 Cs=(0.01, 0.1, 1.0, 10.0, 100.0), seed: int = 0, shuffle_control: bool = True,
                 n_jobs: int = 1, what: str = "", baseline: np.ndarray | None = None,
                 control_permutations: int = 3) -> ProbeResult:
    """Probe every layer of ``X`` [n, L, d] for the binary label ``y`` with question-grouped nested CV.

    ``baseline`` [n, k]: features of a baseline probe run through the same folds (e.g. the one-hot template id): a
    curve is only as interesting as its margin over what the baseline already predicts.
    """
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y).astype(int)
    groups = np.asarray(groups)
    if X.ndim != 3 or len(X) != len(y) or len(y) != len(groups):
        raise ProbeInputError(f"probe: X must be [n, L, d] with n = len(y) = len(groups); got {X.shape}, {len(y)}, "
                         f"{len(groups)}")
    check_classes(y, groups, folds, inner_folds, what)
    splits = outer_splits(y, groups, folds, repeats, seed)
    desc = "probe" + (what.split(":")[0] + "]" if what else "")
    layers = _all_layers(X, y, groups, splits, Cs, inner_folds, seed, n_jobs, desc)
    control = None
    if shuffle_control:
        control = control_scores(X, y, groups, folds, inner_folds, repeats, Cs, seed, n_jobs, control_permutations,
                                 desc)
    base = None
    if baseline is not None:
        base = fit_layer(np.asarray(baseline, dtype=np.float32), y, groups, splits, Cs, inner_folds, seed)
    inner = np.stack([s.inner for s in layers])  # [L, F]
    pick = np.nanargmax(np.where(np.isnan(inner), -np.inf, inner), axis=0)
    F = np.arange(inner.shape[1])
    selected = LayerScores(*(np.stack([getattr(s, k) for s in layers])[pick, F]
                             for k in ("balanced_accuracy", "auroc", "inner", "C", "inner_balanced_accuracy")))
    test_fraction = float(np.mean([len(te) / len(y) for _, te in splits]))
    return ProbeResult(layers, control, base, pick, selected, float(max(y.mean(), 1 - y.mean())), len(y), int(y.sum()),
                       len(set(groups.tolist())), test_fraction)


def first_layer_reaching(result: ProbeResult, threshold: float, metric: str = "balanced_accuracy") -> int | None:
    """The first layer whose mean validation ``metric`` (inner folds, at the chosen C) reaches ``threshold``, or None.

    Chosen on the inner folds like C and the best layer: thresholding the outer (test) fold means would pick the
    layer on the very scores it is then reported with.
    """
    field_name = {"balanced_accuracy": "inner_balanced_accuracy", "auroc": "inner"}[metric]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a layer never scored: mean of empty slice
        for layer, s in enumerate(result.layers):
            if np.nanmean(getattr(s, field_name)) >= threshold:
                return layer
    return None
