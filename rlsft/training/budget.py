"""Matched training budgets (method.md 8): what each kind counts, and whether the arms of a family trained with one
learning rate and the same optimizer steps and trained answer tokens, within 10%. An arm whose recipe says
``lr_swept`` (its rate picked by experiment=lr_sweep, because the shared one did not train it) may differ in lr.

Trained answer tokens are the answer tokens whose log-probabilities enter the loss, summed over every optimizer step:
- ``sft``, ``rft``: each example's completion tokens (the answer and its stop token: the completion mask);
- ``dpo``: both answers of each pair (the loss reads the log-probabilities of the chosen and the rejected answer);
- ``grpo`` and its controls: every answer token of the groups kept for an update (``train/tokens`` of each step that
  updated: with dynamic sampling, the arms' setting, only groups whose answers differ in reward; without it, groups
  of zero advantage count too); a skipped step (no informative group after resampling) counts no optimizer step and
  no token.
For sft, rft and dpo, an arm trained for ``steps`` optimizer steps sees whole passes over its examples (counted
exactly) and then, in its last pass, ``batch_size`` examples per remaining step from a reshuffled order (counted at
the examples' mean length: the expected count); with the recipe's ``full_batches``, ``batch_size`` examples every
step (counted at the mean length). Optimizer steps are the trainer's own count (TRL's ``global_step``;
GRPO: the mini-batches of the steps that updated). The learning rate is the recipe's ``lr``.
"""

from __future__ import annotations

import math

TOLERANCE = 0.10  # method.md 8: optimizer steps and trained answer tokens within 10% of the reference arm
MATCHED = ("optimizer_steps", "answer_tokens")


def seen_tokens(per_example: list[int], batch_size: int, steps: int, full_batches: bool = False) -> tuple[int, int]:
    """(examples, answer tokens) that ``steps`` optimizer steps of ``batch_size`` see, cycling over examples whose
    answer token counts are ``per_example`` (each pass reshuffled, its last batch short as the HF Trainer's is; with
    ``full_batches`` that short batch is dropped: every step sees ``batch_size`` examples, a random subset of each
    pass, counted at the examples' mean length)."""
    n = len(per_example)
    if full_batches:
        examples = steps * batch_size
        return examples, round(examples * sum(per_example) / n)
    per_pass = math.ceil(n / batch_size)
    passes, rest = divmod(steps, per_pass)
    examples = passes * n + rest * batch_size
    tokens = passes * sum(per_example) + rest * batch_size * sum(per_example) / n
    return examples, round(tokens)


def batch_for_tokens(per_example: list[int], steps: int, answer_tokens: int) -> int:
    """The whole batch whose ``steps`` full batches train nearest ``answer_tokens`` answer tokens, counted as
    ``seen_tokens`` counts them (``steps x batch x`` the mean example's tokens); at least 1."""
    mean = sum(per_example) / len(per_example)
    return max(1, round(answer_tokens / (steps * mean)))


def reference_value(budgets: dict[str, dict], stages: list[str], key: str) -> float | None:
    """The mean of ``key`` over the reference arm's stages that recorded it (its seeds), or None."""
    values = [budgets[s][key] for s in stages if budgets.get(s) and budgets[s].get(key) is not None]
    return sum(values) / len(values) if values else None


def budget_gaps(budgets: dict[str, dict], reference_stages: list[str]) -> dict[str, dict]:
    """Per trained stage: ``lr_same`` (the reference arm's learning rate, bool or None if unknown) and, for each of
    ``MATCHED``, its relative gap (value / reference mean - 1; None when either is unknown)."""
    ref = {key: reference_value(budgets, reference_stages, key) for key in (*MATCHED, "lr")}
    out = {}
    for stage, b in budgets.items():
        if not b:
            continue
        gap = {key: None if ref[key] in (None, 0) or b.get(key) is None else b[key] / ref[key] - 1 for key in MATCHED}
        lr = b.get("lr")
        gap["lr_same"] = None if ref["lr"] is None or lr is None else math.isclose(lr, ref["lr"], rel_tol=1e-9)
        gap["lr_swept"] = bool(b.get("lr_swept"))
        out[stage] = gap
    return out


def within(gap: dict) -> bool:
    """One learning rate (or this arm's own, picked by its lr sweep) and every matched quantity within TOLERANCE (an
    unknown one does not pass)."""
    lr_ok = gap["lr_same"] is True or gap.get("lr_swept", False)
    return lr_ok and all(gap[k] is not None and abs(gap[k]) <= TOLERANCE + 1e-12 for k in MATCHED)


def match_text(gap: dict | None) -> str:
    """The budget table's cell: "within 10%", or what is off ("answer_tokens +35%, lr differs: not within 10%")."""
    if gap is None:
        return ""
    swept = " (its lr from its lr sweep)" if gap.get("lr_swept") and gap["lr_same"] is not True else ""
    if within(gap):
        return f"within {TOLERANCE:.0%}{swept}"
    off = [f"{k} {'n/a' if gap[k] is None else f'{gap[k]:+.0%}'}" for k in MATCHED
           if gap[k] is None or abs(gap[k]) > TOLERANCE + 1e-12]
    off += [] if gap["lr_same"] or gap.get("lr_swept") else ["lr " + ("n/a" if gap["lr_same"] is None else "differs")]
    return ", ".join(off) + f": not within {TOLERANCE:.0%}"


def arm_means(budgets: dict[str, dict | None], arms: dict[str, list[str]]) -> dict[str, dict]:
    """Per arm with a trained stage: the mean of each of ``MATCHED`` over its trained seeds, its lr (None when its
    seeds differ) and ``lr_swept`` (all its seeds swept)."""
    out = {}
    for arm, stages in arms.items():
        trained = [budgets[s] for s in stages if budgets.get(s)]
        if not trained:
            continue
        lrs = {b.get("lr") for b in trained}
        out[arm] = {**{key: reference_value(budgets, stages, key) for key in MATCHED},
                    "lr": lrs.pop() if len(lrs) == 1 else None, "lr_swept": all(b.get("lr_swept") for b in trained)}
    return out


def warning_line(gaps: dict[str, dict], reference: str, arm_gaps: dict[str, dict] | None = None) -> str | None:
    """The budget verdict in a line (two with a seeds note), or None when everything matches.

    With ``arm_gaps`` (an arm's mean over its seeds against the reference arm's: the unit the study compares) the
    warning names the arms that do not match, and a second, ``note`` line the seeds outside 10% of the reference
    arm's mean: a seed's sampled answer lengths move its tokens (the grpo arm's own seeds span -13% to +7%), so a
    seed can be off while its arm matches."""
    if reference is None:  # no trained stage at all: no budget to speak of
        return None
    if not gaps:
        return (f"[budget] no verdict: {reference}, the reference arm, has no trained stage here (train it, e.g. with "
                f"eap.compare naming it, or set model_pair.budget_reference)")
    stage_off = {stage: match_text(gap).split(":")[0] for stage, gap in gaps.items() if not within(gap)}
    head = f"not within {TOLERANCE:.0%} of {reference}'s budget (method.md 8, matched budgets)"
    if arm_gaps is None:
        return ("[budget] warning: " + head + ": " + "; ".join(f"{s} ({what})" for s, what in stage_off.items())
                if stage_off else None)
    arm_off = {arm: match_text(gap).split(":")[0] for arm, gap in arm_gaps.items() if not within(gap)}
    lines = [f"[budget] warning: arms {head}, their means over seeds: "
             + "; ".join(f"{a} ({what})" for a, what in arm_off.items())] if arm_off else []
    if stage_off:
        lines.append(f"[budget] note: seeds not within {TOLERANCE:.0%} of {reference}'s mean over its seeds: "
                     + "; ".join(f"{s} ({what})" for s, what in stage_off.items()))
    return "\n".join(lines) or None


def check_arms(budgets: dict[str, dict | None], arms: dict[str, list[str]],
               reference: str | None = None) -> tuple[str | None, dict[str, dict], dict[str, dict]]:
    """(reference arm, gaps of every trained stage, gaps of every trained arm's mean over its seeds) for a family:
    ``budgets`` per stage (None: not trained), ``arms`` {arm: its stages}; the reference arm is ``reference``, else
    the first arm with a trained stage. Stage and arm gaps are both against the reference arm's mean over its seeds;
    both empty when the reference arm has no trained stage (no verdict, not "not within" everywhere)."""
    trained = [arm for arm, stages in arms.items() if any(budgets.get(s) for s in stages)]
    reference = reference or (trained[0] if trained else None)
    if reference is None or reference not in trained:  # nothing to measure against: no verdict (warning_line says so)
        return reference, {}, {}
    return reference, budget_gaps(budgets, arms[reference]), budget_gaps(arm_means(budgets, arms), [reference])
