"""DDPG/TD3: pure losses on hand-computed tensors, then one real update and the collector's s'."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.ddpg import DDPG, DDPGConfig, actor_loss, critic_loss, critic_target, smoothed_target_action
from envs.make import make_vec_env
from rl.buffers import ReplayBuffer
from rl.collector import VectorEnvCollector, transition_spec
from rl.config import ConfigError, EnvConfig

BOX_OBS = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
BOX_ACT = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)


def test_critic_target_min_of_twins_and_termination():
    r = torch.tensor([1.0, 1.0, 1.0])
    next_qs = torch.tensor([[2.0, 5.0, 3.0], [4.0, 1.0, 3.0]])  # [critics, batch]; min: 2, 1, 3
    terminated = torch.tensor([False, False, True])
    y = critic_target(r, next_qs, terminated, gamma=0.5)
    assert y.tolist() == pytest.approx([2.0, 1.5, 1.0])  # 1 + .5*2, 1 + .5*1, 1 (no bootstrap)


def test_truncation_still_bootstraps():
    # A time-limit cut is not a terminal state: only `terminated` enters the target.
    y = critic_target(torch.tensor([0.0]), torch.tensor([[10.0]]), torch.tensor([False]), gamma=0.99)
    assert y.item() == pytest.approx(9.9)


def test_critic_loss_sums_mse_over_critics():
    qs = torch.tensor([[1.0, 2.0], [3.0, 0.0]])  # [critics, batch]
    assert critic_loss(qs, torch.tensor([1.0, 1.0])).item() == pytest.approx(0.5 + 2.5)
    # with a leading seed axis: one loss per seed, each from its own critics and targets
    per_seed = critic_loss(torch.stack([qs, qs + 1]), torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert per_seed.tolist() == pytest.approx([0.5 + 2.5, (4 + 9) / 2 + (16 + 1) / 2])


def test_actor_loss_gradient_is_dpg():
    # q(s, a) = c·a (critic fixed), μ(s) = θ s  ⇒  ∇_θ(−mean q(s, μ(s))) = −c · mean(s)
    theta = torch.tensor(0.7, requires_grad=True)
    s = torch.tensor([1.0, 2.0, 3.0, 6.0])
    c = 1.5
    actor_loss(c * (theta * s)).backward()
    assert theta.grad.item() == pytest.approx(-c * 3.0)


def test_target_policy_smoothing_clips_noise_then_action():
    mu = torch.tensor([0.9, -0.5])
    out = smoothed_target_action(mu, torch.tensor([0.5, -0.1]), torch.tensor(0.2), torch.tensor(-1.0),
                                 torch.tensor(1.0))
    assert out.tolist() == pytest.approx([1.0, -0.6])  # 0.9+0.2 clipped to 1; -0.5-0.1


def make_agent(**kw):
    torch.manual_seed(0)
    return DDPG(BOX_OBS, BOX_ACT, DDPGConfig(hidden_sizes=[16, 16], **kw), "cpu")


def fake_batch(n=32):
    g = torch.Generator().manual_seed(1)
    return {"obs": torch.randn(n, 3, generator=g), "action": torch.rand(n, 1, generator=g) * 4 - 2,
            "reward": torch.randn(n, generator=g), "next_obs": torch.randn(n, 3, generator=g),
            "terminated": torch.rand(n, generator=g) < 0.1, "truncated": torch.zeros(n, dtype=torch.bool)}


def test_update_moves_targets_by_polyak():
    agent = make_agent(tau=0.1)
    old_target = [p.clone() for p in agent.actor_target.parameters()]
    agent.update(fake_batch())
    for t, old, new in zip(agent.actor_target.parameters(), old_target, agent.actor.parameters()):
        assert torch.allclose(t, 0.1 * new + 0.9 * old, atol=1e-6)


def test_policy_delay():
    agent = make_agent(policy_delay=2, twin_critics=True, target_policy_noise=0.2)
    before = [p.clone() for p in agent.actor.parameters()]
    m1 = agent.update(fake_batch())
    assert "actor" not in m1 and all(torch.equal(a, b) for a, b in zip(before, agent.actor.parameters()))
    m2 = agent.update(fake_batch())
    assert "actor" in m2 and not all(torch.equal(a, b) for a, b in zip(before, agent.actor.parameters()))
    assert agent.critics.net[0].weight.shape[0] == 2  # two critic members for the one seed


def test_actions_stay_in_bounds():
    agent = make_agent(exploration_noise=5.0)
    a, extras = agent.act(torch.randn(256, 3), explore=True)
    assert extras == {} and a.min() >= -2.0 and a.max() <= 2.0 and a.shape == (256, 1)


def test_discrete_action_space_rejected():
    with pytest.raises(ConfigError, match="continuous"):
        DDPG(BOX_OBS, gym.spaces.Discrete(2), DDPGConfig(), "cpu")


def test_negative_learning_rate_rejected():
    with pytest.raises(ConfigError, match="agent.actor_lr must be > 0"):
        DDPGConfig(actor_lr=-1e-3)


def test_collector_stores_final_obs_on_truncation():
    # Pendulum truncates at 200 steps; with same-step autoreset the env returns the reset obs, and
    # the stored next_obs must be the true last observation, flagged truncated (not terminated).
    envs = make_vec_env(EnvConfig(id="Pendulum-v1", num_envs=2))
    agent = make_agent()
    buf = ReplayBuffer(500, transition_spec(envs.single_observation_space, envs.single_action_space))
    col = VectorEnvCollector(envs, torch.device("cpu"), seeds=[0])
    finished = []
    for _ in range(200):
        finished += col.collect(agent, buf, random_actions=True)[1]
    last = {k: v[398:400] for k, v in buf.data.items()}  # step 200 of both envs
    assert last["truncated"].all() and not last["terminated"].any()
    assert not torch.allclose(last["next_obs"], col.obs)  # col.obs is the new episode's first obs
    # the final next_obs continues the trajectory: |θ̇| bounded by 8, and cos²+sin² = 1
    assert torch.allclose(last["next_obs"][:, 0] ** 2 + last["next_obs"][:, 1] ** 2, torch.ones(2), atol=1e-5)
    assert len(finished) == 2 and all(length == 200 and seed == 0 for _, length, seed in finished)
    envs.close()
