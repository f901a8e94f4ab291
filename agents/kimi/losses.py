"""The math of Kimi k1.5 policy optimization (docs/algorithms.md §4) as pure functions of tensors.

With ``a_j = r_j − r̄`` (the reward minus its group's mean, :func:`group_advantage`), §4's surrogate is a sum of
independent per-response terms, so any split of the responses into micro-batches (or ranks) adds up to the same
loss and gradient:

    L(θ) = (1/N) Σ_j ( a_j − τ (log π_θ(y_j|x_j) − log π_θi(y_j|x_j)) )²        (N responses in the iteration)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def group_advantage(rewards: Tensor, k: int) -> Tensor:
    """``r_j − r̄`` for rows grouped prompt by prompt ([G·k] → [G·k]); r̄ = the group's mean reward (τ log Z)."""
    r = rewards.view(-1, k)
    return (r - r.mean(dim=1, keepdim=True)).flatten()


def kimi_loss(logp: Tensor, ref_logp: Tensor, advantage: Tensor, tau: float, total: int | None = None
              ) -> tuple[Tensor, dict[str, Tensor]]:
    """``Σ_j (a_j − τ (log π_θ(y_j) − log π_θi(y_j)))² / total`` over these rows (``total``: all rows of the
    iteration, default: these). ``ref_logp`` carries no gradient. Metrics, with the same denominator (so that
    micro-batches sum to the iteration's value): ``policy`` (the loss) and ``log_ratio_sq``."""
    total = len(logp) if total is None else total
    log_ratio = logp - ref_logp.detach()
    loss = (advantage - tau * log_ratio).pow(2).sum() / total
    return loss, {"policy": loss.detach(), "log_ratio_sq": log_ratio.detach().pow(2).sum() / total}


def length_penalty(lengths: Tensor, correct: Tensor, weight: float) -> Tensor:
    """§4's length reward for groups [..., k]: ``λ_j = 0.5 − (len_j − min_len)/(max_len − min_len)``; ``λ_j`` if
    response j is correct, ``min(0, λ_j)`` if not; 0 for the whole group when its lengths are all equal; × weight."""
    lengths = lengths.float()
    lo, hi = lengths.amin(-1, keepdim=True), lengths.amax(-1, keepdim=True)
    span = hi - lo
    lam = 0.5 - (lengths - lo) / torch.where(span > 0, span, torch.ones_like(span))
    lam = torch.where(span > 0, lam, torch.zeros_like(lam))
    return weight * torch.where(correct.bool(), lam, lam.clamp(max=0.0))


def dpo_loss(policy_chosen_logp: Tensor, policy_rejected_logp: Tensor, ref_chosen_logp: Tensor,
             ref_rejected_logp: Tensor, beta: float) -> tuple[Tensor, dict]:
    """DPO: ``−mean log σ(β [(log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))])``."""
    chosen = beta * (policy_chosen_logp - ref_chosen_logp)
    rejected = beta * (policy_rejected_logp - ref_rejected_logp)
    margin = chosen - rejected
    loss = -F.logsigmoid(margin).mean()
    return loss, {"dpo": loss.detach(), "reward_margin": margin.detach().mean(),
                  "reward_accuracy": (margin > 0).float().mean().detach()}
