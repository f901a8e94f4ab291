"""Evaluation against the exact answer on a finite MDP (the grid world, docs/algorithms.md §2).

On an env whose model is known (``GridWorld.transition_model()``), an agent's evaluation gains

- ``charts/value_error``: ``max_s |v̂(s) − v(s)|``, with ``v̂ = agent.values()`` and ``v = agent.exact_values(P, R)``
  (what the agent should converge to: v* for control methods, v_π for the evaluation of a fixed policy π);
- ``charts/optimal_cells``: for agents whose exact values are v*, the number of states whose greedy action is
  optimal, ``q*(s, a_greedy) = v*(s)`` (all of them: the greedy policy is optimal from every cell).
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np

from envs.bellman import q_from_v, value_iteration
from rl.config import Config

Evaluator = Callable[[Any], dict[str, float]]


def optimal_cells(agent: Any, P: np.ndarray, R: np.ndarray, gamma: float, tol: float = 1e-6) -> int:
    """How many states' greedy action (``agent.predict``) reaches the optimal action value ``max_a q*(s, a)``."""
    v_star = value_iteration(P, R, gamma)[0]
    q_star = q_from_v(P, R, v_star, gamma)
    states = np.arange(P.shape[0])
    actions = np.asarray(agent.predict(states)).astype(int)
    return int((q_star[states, actions] >= v_star - tol).sum())


def with_exact_errors(evaluate: Evaluator, agent: Any, cfg: Config) -> Evaluator:
    """``evaluate`` plus the two exact measures above when ``cfg.env`` is a grid world and the agent has
    ``values()``; ``evaluate`` unchanged otherwise."""
    from envs.gridworld import GridWorld

    env = gym.make(cfg.env.id, **cfg.env.kwargs).unwrapped
    model = env.transition_model() if isinstance(env, GridWorld) and agent.values() is not None else None
    env.close()
    if model is None:
        return evaluate
    P, R = model
    exact = agent.exact_values(P, R)
    controls = np.allclose(exact, value_iteration(P, R, agent.cfg.gamma)[0])

    def evaluate_exactly(a: Any) -> dict[str, float]:
        out = {**evaluate(a), "charts/value_error": float(np.abs(a.values() - exact).max())}
        if controls:
            out["charts/optimal_cells"] = float(optimal_cells(a, P, R, a.cfg.gamma))
        return out

    return evaluate_exactly
