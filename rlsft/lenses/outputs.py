"""Output-space lenses (method.md 9): forward KL to the reference per answer token, and pass@k.

- token_kl: KL(pi_ref || pi) = sum_j p_ref[j] (log p_ref[j] - log p[j]) at each answer position, averaged (Shenfeld
  et al. 2025, "RL's Razor": forgetting follows this KL on the new task);
- pass_at_k: the unbiased estimator 1 - C(n - c, k) / C(n, k) of Chen et al. 2021 from n samples with c correct, per
  question, averaged over questions (Yue et al. 2025: RL wins at k = 1, the base at large k).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..stats import bootstrap_ci


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k) as the product prod_{i=n-c+1}^{n} (1 - k / i): no huge binomials (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def powers_of_two(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to n, and n itself (method.md 9)."""
    ks = [2**i for i in range(int(np.log2(n)) + 1)]
    return ks if ks[-1] == n else ks + [n]


def pass_at_k_curve(correct: np.ndarray, n: int, ks: list[int], n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean pass@k over questions and its 95% bootstrap interval over questions, per k.

    correct: [Q] correct counts out of n samples per question. The questions are the sampled unit: the interval is
    for the population of questions the set was drawn from (coverage checked in tests/test_lenses.py).
    """
    per_q = np.array([[pass_at_k(n, int(c), k) for k in ks] for c in correct])  # [Q, K]
    rows = []
    for j, k in enumerate(ks):
        lo, hi = bootstrap_ci(per_q[:, j], n_boot=n_boot, seed=seed)
        rows.append({"k": k, "pass": float(per_q[:, j].mean()), "ci": [lo, hi]})
    return {"ks": list(ks), "rows": rows, "per_question": per_q}


def crossover_k(reference: dict, compared: dict) -> int | None:
    """The smallest k at which the reference's mean pass@k reaches the compared stage's after being below it at
    k = 1; None when the compared stage stays ahead (or never was)."""
    ref = [r["pass"] for r in reference["rows"]]
    cmp_ = [r["pass"] for r in compared["rows"]]
    if not ref or ref[0] >= cmp_[0]:
        return None
    for k, a, b in zip(reference["ks"], ref, cmp_):
        if a >= b:
            return k
    return None


def token_kl(logits_ref: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over masked positions of KL(p_ref || p) computed in fp64. logits: [..., V]; mask: bool [...]."""
    lr = F.log_softmax(logits_ref.double(), dim=-1)
    lp = F.log_softmax(logits.double(), dim=-1)
    kl = (lr.exp() * (lr - lp)).sum(-1)  # [...]
    m = mask.bool()
    return float(kl[m].mean()) if m.any() else float("nan")


@torch.no_grad()
def answer_logits(model, prompt_ids: list[int], output_ids: list[int]) -> torch.Tensor:
    """Logits predicting each answer token [T, V] (position t of the answer is read at prompt + t - 1)."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids + output_ids], device=device)
    logits = model(input_ids=ids).logits[0]
    return logits[len(prompt_ids) - 1 : len(prompt_ids) + len(output_ids) - 1].float().cpu()


def answer_kls(model_ref, model, answers: list[dict]) -> np.ndarray:
    """KL(pi_ref || pi) per answer token, averaged within each answer: [n answers] (nan for an empty answer)."""
    out = []
    for a in answers:
        if not a["output_ids"]:
            out.append(float("nan"))
            continue
        lr = answer_logits(model_ref, a["prompt_ids"], a["output_ids"])
        lp = answer_logits(model, a["prompt_ids"], a["output_ids"])
        out.append(token_kl(lr, lp, torch.ones(len(lr), dtype=torch.bool)))
    return np.array(out)
