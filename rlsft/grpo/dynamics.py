"""What a GRPO run does to its policy while it learns (method.md 9, "During GRPO"): one row of keys per step and the
entropy-reward fit at the end. ``TrainingDynamics``, a default callback of GRPOTrainer (rlsft.grpo.callbacks), calls
``observe`` once per step between rollout and update and fits at the end (``entropy_reward_fit`` in the summary).

Per step, over the sampled answers' tokens, all at the sampling temperature T (the policy that acted):
- ``dynamics/entropy``: mean token entropy H of pi_old (Cui et al. 2025, arXiv 2505.22617);
- ``dynamics/cov_logp_adv``: Cov(log pi(y_t), A_t) over answer tokens, the quantity Cui et al. show drives the
  entropy change of a policy-gradient step (positive: confident tokens get reinforced, entropy falls);
- ``dynamics/high_entropy_share``: the share of tokens whose entropy exceeds the first step's 80th percentile
  (Wang et al. 2025, arXiv 2506.01939: the top 20% "forking" tokens carry the learning): 0.2 at step 1 by
  construction, falling as entropy collapses; ``dynamics/high_entropy_threshold`` is that fixed threshold;
- ``dynamics/kl_initial``: KL(pi_0 || pi) per answer token with full distributions (not the k3 estimate);
- ``dynamics/unchanged``: share of parameters still equal to the initial ones at bf16 (update sparsity so far).
At the end ``fit_entropy_reward`` fits R = -a exp(H) + b (Cui et al.) of reward against entropy over the steps.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..lenses.weights import changed_mask
from .callbacks import TrainerCallback
from .rollout import Answer, completion_logits, pack

HIGH_ENTROPY_QUANTILE = 0.8  # Wang et al.: the top 20% of tokens by entropy


def token_cov(logp: torch.Tensor, adv: torch.Tensor) -> float:
    """Cov(log pi(y_t), A_t) over tokens (population covariance; logp and adv one value per token)."""
    logp, adv = logp.double(), adv.double()
    return float(((logp - logp.mean()) * (adv - adv.mean())).mean()) if logp.numel() else float("nan")


class Dynamics:
    """Per-step dynamics of a policy against its initial weights; ``initial`` yields the initial model (a context
    manager, the trainer's own reference when it has one), ``state`` holds the initial weights in bf16."""

    def __init__(self, model, initial, temperature: float, pad_id: int, micro_batch_size: int = 16):
        self.initial, self.T, self.pad_id, self.mb = initial, temperature, pad_id, micro_batch_size
        self.state = {n: p.detach().to(torch.bfloat16).clone() for n, p in model.named_parameters()}
        self.threshold: float | None = None

    @torch.no_grad()
    def _token_stats(self, model, answers: list[Answer], adv: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per answer token: entropy, log pi(y_t) and KL(pi_0 || pi) at temperature T, and the answer's advantage."""
        device = next(model.parameters()).device
        parts = {"entropy": [], "logp": [], "kl": [], "adv": []}
        for i in range(0, len(answers), self.mb):
            batch = pack(answers[i : i + self.mb], self.pad_id, adv[i : i + self.mb], device)
            mask = batch.completion_mask.bool()  # [B, C]
            logq = F.log_softmax(completion_logits(model, batch).float() / self.T, dim=-1)  # [B, C, V]
            with self.initial() as init:
                log0 = F.log_softmax(completion_logits(init, batch).float() / self.T, dim=-1)
            parts["entropy"].append(-(logq.exp() * logq).sum(-1)[mask])
            parts["logp"].append(logq.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)[mask])
            parts["kl"].append((log0.exp() * (log0 - logq)).sum(-1)[mask])
            parts["adv"].append(batch.advantages.float().unsqueeze(1).expand_as(mask)[mask])
        return {k: torch.cat(v).cpu() for k, v in parts.items()}

    def observe(self, model, answers: list[Answer], adv: torch.Tensor) -> dict[str, float]:
        """The step's dynamics keys, on the answers the update is about to learn from."""
        t = self._token_stats(model, answers, adv)
        if self.threshold is None and t["entropy"].numel():
            self.threshold = float(torch.quantile(t["entropy"].double(), HIGH_ENTROPY_QUANTILE))
        return {"dynamics/entropy": float(t["entropy"].mean()), "dynamics/cov_logp_adv": token_cov(t["logp"], t["adv"]),
                "dynamics/high_entropy_share": float((t["entropy"] > self.threshold).double().mean()),
                "dynamics/high_entropy_threshold": self.threshold, "dynamics/kl_initial": float(t["kl"].mean()),
                "dynamics/unchanged": self.unchanged(model)}

    @torch.no_grad()
    def unchanged(self, model) -> float:
        same = total = 0
        for n, p in model.named_parameters():
            if n in self.state:
                same += p.numel() - int(changed_mask(self.state[n], p.detach()).sum())
                total += p.numel()
        return same / total if total else float("nan")

    def resume(self, history: list[dict]) -> None:
        """A resumed run keeps the first step's entropy threshold (the initial weights are those given at start)."""
        for row in history:
            if row.get("dynamics/high_entropy_threshold") is not None:
                self.threshold = row["dynamics/high_entropy_threshold"]
                return


def fit_entropy_reward(history: list[dict]) -> dict:
    """R = -a exp(H) + b over the steps (scipy curve_fit; Cui et al. 2025), with R^2; "cannot tell" (None values
    and a reason) with fewer than 4 steps or an entropy that does not vary."""
    from scipy.optimize import curve_fit

    pts = [(r["dynamics/entropy"], r["train/reward_mean"]) for r in history
           if isinstance(r.get("dynamics/entropy"), float) and isinstance(r.get("train/reward_mean"), float)]
    H, R = (np.array(x, dtype=float) for x in zip(*pts)) if pts else (np.array([]), np.array([]))
    none = {"a": None, "b": None, "r2": None, "steps": len(pts)}
    if len(pts) < 4 or np.ptp(H) < 1e-9:
        return none | {"why": "cannot tell: fewer than 4 steps or a constant entropy"}
    model = lambda h, a, b: -a * np.exp(h) + b  # noqa: E731
    try:
        (a, b), _ = curve_fit(model, H, R, p0=[0.0, float(R.mean())])
    except (RuntimeError, ValueError) as exc:
        return none | {"why": f"cannot tell: the fit failed ({exc})"}
    resid = R - model(H, a, b)
    ss_tot = float(((R - R.mean()) ** 2).sum())
    r2 = 1 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return {"a": float(a), "b": float(b), "r2": r2 if math.isfinite(r2) else None, "steps": len(pts)}


class TrainingDynamics(TrainerCallback):
    """The dynamics as a GRPOTrainer callback (on by default): per step the keys above on the answers the update is
    about to learn from, at the end ``entropy_reward_fit`` in the summary.

    GRPO only: every key but ``dynamics/unchanged`` is a statistic of the policy's own sampled answers and their
    advantages, which SFT, RFT and DPO do not have, and transformers' hooks (TRL's trainers) are not handed the batch.
    """

    needs_initial_model = True  # KL(pi_0 || pi)

    def __init__(self):
        self.dynamics: Dynamics | None = None

    def on_init_end(self, trainer) -> None:
        r = trainer.recipe  # the bf16 snapshot of the weights as given, before a resume loads later ones
        self.dynamics = Dynamics(trainer.model, trainer.initial_model, r.temperature, trainer.tokenizer.pad_token_id,
                                 r.micro_batch_size)

    def on_train_begin(self, trainer) -> None:
        self.dynamics.resume(trainer.history)

    def on_rollout_end(self, trainer, row: dict, groups: list, advantages) -> None:
        if groups:
            row.update(self.dynamics.observe(trainer.model, [a for g in groups for a in g], advantages))

    def on_train_end(self, trainer, summary: dict) -> None:
        summary["entropy_reward_fit"] = fit_entropy_reward(trainer.history)
