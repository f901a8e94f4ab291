"""Tabular agents: every method is one stochastic-approximation step on a table (docs/algorithms.md §1).

    w(i) ← w(i) − a_k(i) [w(i) − x]        k(i): how often entry i (a state, or a state-action pair) was updated

with a target x per method (π_ε: the ε-greedy policy of q; π: the evaluated policy of td/mc):

    td              x = r + γ v(s')                                  → v_π
    mc              x = G_t = r_1 + γ r_2 + … (to the end, or `horizon` rewards)    → v_π
    sarsa           x = r + γ q(s', a'),   a' ~ π_ε(s') the action taken next        → q*  (GLIE ε)
    expected_sarsa  x = r + γ Σ_a π_ε(a|s') q(s', a)                  → q*  (GLIE ε)
    nstep_sarsa     x = r_1 + γ r_2 + … + γ^{n−1} r_n + γ^n q(s_n, a_n)              → q*  (GLIE ε)
    qlearning       x = r + γ max_a q(s', a)     (off-policy; default behaviour: uniform) → q*

Step sizes come from ``rl.approximation``: Robbins–Monro ``a_k = a0 / (k + k0)^p`` (0.5 < p ≤ 1 converges)
or a constant ``a0`` (tracks, never settles). GLIE exploration: ``ε(s) = ε0 / (1 + n(s)/h)``, n(s) the
updates made from s so far. Targets bootstrap through truncation and stop at termination.

Modules: ``config`` (one dataclass per method), ``updates`` (the math as pure functions on tensors), ``agent``
(the agents, their sliding-window storage, and their registration with the config system).
"""

from agents.tabular.agent import (MC, SARSA, TD, ActionValueAgent, ExpectedSARSA, NStepSARSA, QLearning,
                                  SlidingRollout, StateValueAgent, TabularAgent, ahead)
from agents.tabular.config import (ControlConfig, EvaluationConfig, ExpectedSARSAConfig, MCConfig, NStepSARSAConfig,
                                   QLearningConfig, SARSAConfig, TabularConfig, TDConfig, parse_policy)
from agents.tabular.updates import (epsilon_greedy, expected_sarsa_update, mc_return, mc_update, nstep_sarsa_update,
                                    q_update, qlearning_update, sa_update, sarsa_update, td_update, visit_step_sizes)

__all__ = ["MC", "SARSA", "TD", "ActionValueAgent", "ExpectedSARSA", "NStepSARSA", "QLearning", "SlidingRollout",
           "StateValueAgent", "TabularAgent", "ahead", "ControlConfig", "EvaluationConfig", "ExpectedSARSAConfig",
           "MCConfig", "NStepSARSAConfig", "QLearningConfig", "SARSAConfig", "TabularConfig", "TDConfig",
           "parse_policy", "epsilon_greedy", "expected_sarsa_update", "mc_return", "mc_update", "nstep_sarsa_update",
           "q_update", "qlearning_update", "sa_update", "sarsa_update", "td_update", "visit_step_sizes"]
