"""The agents of the zoo. Importing this package registers each one with the config system.

    from agents import DDPG
    agent = DDPG.from_env("Pendulum-v1", device="cpu")
    agent.learn(20_000)
"""

from agents.base import Agent, build_agent
from agents.ddpg import DDPG, DDPGConfig
from agents.kimi import Kimi, KimiConfig
from agents.tabular import MC, SARSA, TD, ExpectedSARSA, NStepSARSA, QLearning, TabularConfig
from agents.qac import A2C, QAC, A2CConfig, OffPAC, OffPACConfig, QACConfig

__all__ = ["A2C", "A2CConfig", "Agent", "DDPG", "DDPGConfig", "Kimi", "KimiConfig", "OffPAC", "OffPACConfig", "QAC", "QACConfig",
           "build_agent"]
__all__ += ["ExpectedSARSA", "MC", "NStepSARSA", "QLearning", "SARSA", "TD", "TabularConfig"]
