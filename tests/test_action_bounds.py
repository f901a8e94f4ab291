"""Action bounds: the env receives the action clipped to its Box; the replay/rollout storage keeps the action the
Gaussian policy sampled (its log-probability is what the learner needs)."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.base import build_agent
from agents.qac import A2C, A2CConfig
from envs.torch_envs import make_torch_env
from rl.buffers import RolloutBuffer
from rl.collector import TorchEnvCollector, transition_spec
from rl.config import BufferConfig, Config, EnvConfig, LoggerConfig, TrainerConfig, agent_config
from rl.trainer import Trainer

BOUND = 0.1


class NarrowBox(gym.Env):
    """Actions in [-0.1, 0.1]²; reward −Σ a², MuJoCo's control cost; remembers every action it is sent."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-BOUND, BOUND, (2,), np.float32)

    def __init__(self) -> None:
        self.received: list[np.ndarray] = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), {}

    def step(self, action):
        self.received.append(np.array(action, dtype=np.float32))
        obs = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return obs, -float(np.sum(np.square(action))), False, False, {}


if "NarrowBox-v0" not in gym.registry:
    gym.register("NarrowBox-v0", entry_point=NarrowBox, max_episode_steps=10)


@pytest.mark.parametrize("name", ["a2c", "qac", "offpac"])
def test_env_gets_clipped_actions_storage_keeps_the_sampled_ones(name):
    n_envs, steps = 4, 60
    cfg = Config(agent=agent_config(name, hidden_sizes=[16]), env=EnvConfig(name="narrow", id="NarrowBox-v0",
                 num_envs=n_envs), buffer=BufferConfig(capacity=1000), logger=LoggerConfig(tensorboard=False),
                 trainer=TrainerConfig(total_steps=steps * n_envs, learning_starts=0, batch_size=16, eval_every=0,
                                       eval_episodes=2, progress=False), seed=0, device="cpu")
    trainer = Trainer(cfg, build_agent(cfg), None)
    trainer.run()
    received = np.stack([np.stack(e.unwrapped.received) for e in trainer.collector.envs.envs], 1)  # [T, N, 2]
    assert received.shape == (steps, n_envs, 2) and np.abs(received).max() <= BOUND
    stored = trainer.storage.data["action"]
    stored = stored if stored.dim() == 3 else stored[:trainer.storage.size].view(-1, n_envs, 2)
    sent = received[-stored.shape[0]:]  # a rollout buffer holds the last rollout; the replay buffer all of them
    assert np.array_equal(sent, stored.clamp(-BOUND, BOUND).numpy())
    assert (stored.abs() > BOUND).float().mean() > 0.5  # σ = 1: most samples lie outside the Box, as stored
    # the control cost the env charged is that of actions in the Box: at most 2 · 0.1² per step, 10 steps an episode
    assert -0.2 - 1e-6 <= trainer.last_return <= 0.0
    trainer.close()


def test_torch_env_collector_clips_too():
    env = make_torch_env("Pendulum-v1", 64, torch.device("cpu"))
    agent = A2C(env.single_observation_space, env.single_action_space, A2CConfig(hidden_sizes=[16]), "cpu")
    with torch.no_grad():
        agent.policy.log_std.fill_(2.0)  # σ ≈ 7.4 against bounds ±2
    sent = []
    step = env.step
    env.step = lambda action: (sent.append(action.clone()), step(action))[1]
    storage = RolloutBuffer(3, 64, transition_spec(env.single_observation_space, env.single_action_space))
    collector = TorchEnvCollector(env, seed=0)
    for _ in range(3):
        collector.collect(agent, storage, False)
    stored = storage.data["action"]
    assert torch.equal(torch.stack(sent), stored.clamp(-2.0, 2.0)) and (stored.abs() > 2).any()
