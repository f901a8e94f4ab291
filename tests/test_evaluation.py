"""agents/evaluation.py: value errors against the exact solution and optimal greedy cells, on the classic grid world."""

import numpy as np
import torch

from agents import TD, QLearning
from agents.evaluation import optimal_cells, with_exact_errors
from envs.bellman import q_from_v, value_iteration
from envs.gridworld import STAY, GridWorld
from rl.config import BufferConfig, Config, EnvConfig, LoggerConfig, TrainerConfig

WORLD = GridWorld()
P, R = WORLD.transition_model()
V_STAR = value_iteration(P, R, 0.9)[0]
Q_STAR = q_from_v(P, R, V_STAR, 0.9)


def agent_on_grid(cls, **hp):
    cfg = Config(agent=cls.config_cls(gamma=0.9, **hp), env=EnvConfig(name="gridworld", id="GridWorld-v0"),
                 buffer=BufferConfig(), trainer=TrainerConfig(), logger=LoggerConfig(), device="cpu")
    agent = cls(WORLD.observation_space, WORLD.action_space, cfg.agent, "cpu")
    agent.run_config = cfg
    return agent, cfg


def test_q_star_is_exact_and_optimal_everywhere():
    agent, cfg = agent_on_grid(QLearning)
    agent.q = torch.tensor(Q_STAR, dtype=torch.float32)
    out = with_exact_errors(lambda a: {"return_mean": 0.0}, agent, cfg)(agent)
    assert out["charts/value_error"] < 1e-5 and out["charts/optimal_cells"] == 25


def test_staying_put_is_optimal_only_on_the_target():
    # q*(target, stay) = r_target + γ v*(target) = 1 + 0.9 · 10 = 10 = v*(target); elsewhere staying (0 + γ v*(s), or
    # −1 + γ v*(s) in a forbidden cell) is worse than moving towards the target
    agent, _ = agent_on_grid(QLearning)
    agent.q = torch.zeros(25, 5)
    agent.q[:, STAY] = 1.0
    assert optimal_cells(agent, P, R, 0.9) == 1
    assert abs(Q_STAR[WORLD.to_state(WORLD.target), STAY] - 10) < 1e-6


def test_policy_evaluation_reports_no_optimal_cells():
    agent, cfg = agent_on_grid(TD)  # evaluates the uniform policy: its exact values are v_π, not v*
    out = with_exact_errors(lambda a: {}, agent, cfg)(agent)
    assert "charts/optimal_cells" not in out
    assert out["charts/value_error"] == np.abs(agent.exact_values(P, R)).max()  # v = 0 at the start
