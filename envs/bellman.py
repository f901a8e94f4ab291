"""Exact solvers for a finite MDP ``(P, R, γ)`` — the test oracles of docs/algorithms.md §1.

Shapes: ``P[s, a, s']`` is [S, A, S] (rows sum to 1), ``R[s, a]`` is the expected reward [S, A],
a stochastic policy ``pi[s, a]`` is [S, A], a deterministic policy is an int array [S].
"""

from __future__ import annotations

import numpy as np


def one_hot(actions: np.ndarray, n_actions: int) -> np.ndarray:
    """Int actions [S] → one-hot policy probabilities [S, A]."""
    return np.eye(n_actions)[np.asarray(actions, dtype=int)]


def greedy_actions(q: np.ndarray) -> np.ndarray:
    """``argmax_a q[s, a]`` for every state: int [S] (first maximiser on ties)."""
    return np.asarray(q).argmax(axis=1)


def greedy(q: np.ndarray) -> np.ndarray:
    """The greedy policy of ``q`` [S, A] as one-hot probabilities [S, A]."""
    return one_hot(greedy_actions(q), q.shape[1])


def policy_evaluation(P: np.ndarray, R: np.ndarray, pi: np.ndarray, gamma: float) -> np.ndarray:
    """``v_π = (I − γ P_π)^{-1} r_π`` with ``P_π = Σ_a π(a|s) P[s, a, :]`` and ``r_π = Σ_a π(a|s) R[s, a]``.

    ``pi``: [S, A] probabilities (or int actions [S]). Returns v_π [S].
    """
    pi = np.asarray(pi)
    if pi.ndim == 1:
        pi = one_hot(pi, P.shape[1])
    P_pi = np.einsum("sa,sat->st", pi, P)
    r_pi = (pi * R).sum(axis=1)
    return np.linalg.solve(np.eye(P.shape[0]) - gamma * P_pi, r_pi)


def q_from_v(P: np.ndarray, R: np.ndarray, v: np.ndarray, gamma: float) -> np.ndarray:
    """``q(s, a) = R[s, a] + γ Σ_{s'} P[s, a, s'] v(s')``: [S, A]."""
    return R + gamma * P @ v


def value_iteration(
    P: np.ndarray, R: np.ndarray, gamma: float, tol: float = 1e-10, max_iter: int = 100_000
) -> tuple[np.ndarray, np.ndarray]:
    """Iterate ``v ← max_a (R + γ P v)`` until ``‖Δv‖_∞ < tol``. Returns ``(v* [S], greedy policy int [S])``."""
    v = np.zeros(P.shape[0])
    for _ in range(max_iter):
        v_new = q_from_v(P, R, v, gamma).max(axis=1)
        done = np.abs(v_new - v).max() < tol
        v = v_new
        if done:
            break
    else:
        raise RuntimeError(f"value iteration did not reach tol={tol} in {max_iter} iterations")
    return v, greedy_actions(q_from_v(P, R, v, gamma))


def policy_iteration(P: np.ndarray, R: np.ndarray, gamma: float, max_iter: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    """Alternate exact evaluation and greedy improvement until the policy is stable.

    An action changes only if it is strictly better (by 1e-12), so ties cannot make it cycle.
    Returns ``(v* [S], greedy policy int [S])``.
    """
    S = P.shape[0]
    policy = np.zeros(S, dtype=int)
    for _ in range(max_iter):
        v = policy_evaluation(P, R, policy, gamma)
        q = q_from_v(P, R, v, gamma)
        best = greedy_actions(q)
        improve = q[np.arange(S), best] > q[np.arange(S), policy] + 1e-12
        if not improve.any():
            return v, policy
        policy = np.where(improve, best, policy)
    raise RuntimeError(f"policy iteration did not converge in {max_iter} iterations")
