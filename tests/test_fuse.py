"""trainer.fuse: DDPG/TD3's loss functions compiled by TorchInductor (forward and, through AOTAutograd, backward)
give the updates of the eager ones to float rounding, for K seeds and both TD3 phases; the actor's loss, eager or
compiled, gives the critics no gradient (their gradients are switched off around it). (On a GPU, fused and graphed: tests/test_gpu.py.)"""

import copy

import gymnasium as gym
import pytest
import torch

from agents.ddpg import DDPG, DDPGConfig

OBS, ACT = gym.spaces.Box(-1, 1, (5,)), gym.spaces.Box(-2, 2, (2,))


def batches(n: int, rows: int) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"obs": torch.randn(rows, 5, generator=g), "action": torch.rand(rows, 2, generator=g) * 4 - 2,
             "reward": torch.randn(rows, generator=g), "next_obs": torch.randn(rows, 5, generator=g),
             "terminated": (torch.rand(rows, generator=g) < 0.1).float()} for _ in range(n)]


def flat(agent: DDPG) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in agent.parameters()])


def test_fused_updates_equal_eager_ones():
    cfg = DDPGConfig(name="td3", hidden_sizes=[32, 32], twin_critics=True, target_policy_noise=0.2, policy_delay=2)
    eager = DDPG(OBS, ACT, cfg, "cpu", seeds=[0, 1])
    fused = copy.deepcopy(eager)
    fused.fuse_losses()
    compiled = fused._critic_losses
    fused.fuse_losses()  # a second call (a notebook's second learn(fuse=True)) keeps the compiled functions
    assert fused._critic_losses is compiled and eager._critic_losses == eager.critic_losses
    start = flat(eager)
    for i, batch in enumerate(batches(12, 2 * 64)):
        a, b = eager.update(batch), fused.update(batch)
        assert set(a) == set(b) == {"critic", "q_mean", *(["actor"] if i % 2 else [])}
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5, msg=f"update {i}: {k}")
    torch.testing.assert_close(flat(fused), flat(eager), rtol=1e-5, atol=1e-5)
    assert (flat(fused) - start).abs().max() > 1e-3  # they did learn


@pytest.mark.parametrize("fused", [False, True])
def test_the_actor_loss_leaves_the_critics_without_gradients(fused):
    """As the update calls it (the critics' gradients switched off around the forward), eager and compiled."""
    cfg = DDPGConfig(hidden_sizes=[16], twin_critics=True)
    agent = DDPG(OBS, ACT, cfg, "cpu", seeds=[0, 1])
    if fused:
        agent.fuse_losses()
    obs = agent.per_seed(batches(1, 2 * 8)[0]["obs"])
    agent.critics.requires_grad_(False)
    loss = agent._actor_losses(obs)
    agent.critics.requires_grad_(True)
    torch.testing.assert_close(loss, agent.actor_losses(obs))  # the same value
    loss.sum().backward()
    assert all(p.grad is None for p in agent.critics.parameters())
    assert all(p.grad is not None for p in agent.actor.parameters())


@pytest.mark.parametrize("agent", ["a2c", "qac"])
def test_fuse_is_refused_by_agents_without_compiled_losses(agent):
    from agents.base import check_fuse
    from rl.config import AGENTS, ConfigError
    from tests.test_background_eval import config

    cfg = config(False, fuse=True)
    cfg.agent.name = agent
    with pytest.raises(ConfigError, match=f"trainer.fuse=true: agent={agent} has no compiled losses"):
        check_fuse(AGENTS[agent][0], cfg)
