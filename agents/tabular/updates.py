"""The tabular methods as pure functions on tensors (docs/algorithms.md §1): one stochastic-approximation step
``w(i) ← w(i) − α [w(i) − x]`` per method, each with its own target x, plus ε-greedy and per-visit step sizes."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rl.approximation import n_step_target, td_target


def sa_update(table: Tensor, index: Tensor, target: Tensor, alpha: Tensor) -> Tensor:
    """``w(i) ← w(i) − α [w(i) − x]`` for every sample (i, x, α) of a flat table [E]; repeated i's add up."""
    return table.index_add(0, index, -alpha * (table[index] - target))


def q_update(q: Tensor, s: Tensor, a: Tensor, target: Tensor, alpha: Tensor) -> Tensor:
    """:func:`sa_update` on the entries (s, a) of q [S, A]."""
    return sa_update(q.flatten(), s * q.shape[1] + a, target, alpha).view_as(q)


def td_update(v: Tensor, s: Tensor, r: Tensor, s_next: Tensor, terminated: Tensor, alpha: Tensor,
              gamma: float) -> Tensor:
    """TD(0): ``v(s) ← v(s) − α [v(s) − (r + γ v(s'))]``."""
    return sa_update(v, s, td_target(r, v[s_next], terminated, gamma), alpha)


def sarsa_update(q: Tensor, s: Tensor, a: Tensor, r: Tensor, s_next: Tensor, a_next: Tensor, terminated: Tensor,
                 alpha: Tensor, gamma: float) -> Tensor:
    """SARSA: ``q(s,a) ← q(s,a) − α [q(s,a) − (r + γ q(s',a'))]``."""
    return q_update(q, s, a, td_target(r, q[s_next, a_next], terminated, gamma), alpha)


def expected_sarsa_update(q: Tensor, s: Tensor, a: Tensor, r: Tensor, s_next: Tensor, pi_next: Tensor,
                          terminated: Tensor, alpha: Tensor, gamma: float) -> Tensor:
    """Expected SARSA: the target is ``r + γ Σ_a π(a|s') q(s',a)``; ``pi_next`` [B, A]."""
    return q_update(q, s, a, td_target(r, (pi_next * q[s_next]).sum(-1), terminated, gamma), alpha)


def nstep_sarsa_update(q: Tensor, s: Tensor, a: Tensor, rewards: Tensor, s_n: Tensor, a_n: Tensor,
                       terminated: Tensor, alpha: Tensor, gamma: float) -> Tensor:
    """n-step SARSA: target ``r_1 + γ r_2 + … + γ^{n−1} r_n + γ^n q(s_n, a_n)``; rewards, terminated [n, B]."""
    return q_update(q, s, a, n_step_target(rewards, q[s_n, a_n], terminated, gamma)[0], alpha)


def qlearning_update(q: Tensor, s: Tensor, a: Tensor, r: Tensor, s_next: Tensor, terminated: Tensor,
                     alpha: Tensor, gamma: float) -> Tensor:
    """Q-learning: the target is ``r + γ max_a q(s', a)``."""
    return q_update(q, s, a, td_target(r, q[s_next].max(-1).values, terminated, gamma), alpha)


def mc_update(v: Tensor, s: Tensor, returns: Tensor, alpha: Tensor) -> Tensor:
    """Monte Carlo: ``v(s) ← v(s) − α [v(s) − G]``."""
    return sa_update(v, s, returns, alpha)


def mc_return(rewards: Tensor, terminated: Tensor, truncated: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """``G = r_1 + γ r_2 + …`` up to the episode's end or the window's (rewards etc. [H, ...]).

    Returns (G [...], complete [...]): ``complete`` is False where a truncation before the H-th reward cut
    the return short.
    """
    ended = terminated | truncated
    g = n_step_target(rewards, torch.zeros_like(rewards[0]), ended, gamma)[0]
    end = ended.float().argmax(0, keepdim=True)  # the first step that ended the episode (0 if none did)
    cut = truncated.gather(0, end) & ~terminated.gather(0, end) & (end < rewards.shape[0] - 1)
    return g, ~cut[0]


def epsilon_greedy(q: Tensor, epsilon: Tensor) -> Tensor:
    """``π(a|s) = ε/|A| + (1 − ε) 1[a = argmax q(s,·)]``: q [B, A], epsilon [B] → [B, A]."""
    eps = epsilon.unsqueeze(-1)
    return eps / q.shape[-1] + (1 - eps) * F.one_hot(q.argmax(-1), q.shape[-1]).to(q.dtype)


def visit_step_sizes(counts: Tensor, index: Tensor, schedule: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """Per-sample step sizes for one batch, and the visit counts after it.

    A sample of entry i is i's visit ``k = counts[i] + (its rank among i's samples in the batch) + 1``; alone
    it gets ``a_k``. m samples of one entry share ``1 − Π (1 − a_k)`` equally: the batch moves w(i) to the mean
    target as far as m sequential steps would (with a_k = 1/k: exactly the running sample mean).
    """
    m = torch.bincount(index, minlength=counts.numel())
    order = torch.argsort(index, stable=True)
    rank = torch.empty_like(index)
    rank[order] = torch.arange(index.numel(), device=index.device) - (torch.cumsum(m, 0) - m)[index[order]]
    a = schedule((counts[index] + rank + 1).double())
    keep = torch.ones(counts.numel(), dtype=torch.float64, device=index.device).scatter_reduce(0, index, 1 - a, "prod")
    return ((1 - keep[index]) / m[index]).float(), counts + m


