"""The agents of the zoo. Importing this package registers each one with the config system.

    from agents import DDPG
    agent = DDPG.from_env("Pendulum-v1", device="cpu")
    agent.learn(20_000)
"""

from agents.base import Agent, build_agent
from agents.ddpg import DDPG, DDPGConfig

__all__ = ["Agent", "DDPG", "DDPGConfig", "build_agent"]
