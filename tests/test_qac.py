"""QAC / A2C / off-policy AC: each pure loss against hand-computed numbers (values and gradients)."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.qac import A2C, A2CConfig, OffPAC, OffPACConfig, QAC, QACConfig, a2c_loss, nstep_returns, offpac_loss, qac_loss
from rl.config import ConfigError


def T(*x):
    return torch.tensor(x, dtype=torch.float32)


def test_nstep_returns_hand_computed():
    r, v = T(1, 2, 3).view(3, 1), T(10, 20, 30).view(3, 1)
    f = torch.zeros(3, 1, dtype=torch.bool)
    # G2 = 3 + .5*30 = 18; G1 = 2 + .5*18 = 11; G0 = 1 + .5*11 = 6.5
    assert nstep_returns(r, v, f, f, 0.5).flatten().tolist() == [6.5, 11.0, 18.0]
    trunc = torch.tensor([[False], [True], [False]])  # a time-limit cut after row 1: bootstrap from v(s'_1)=20
    assert nstep_returns(r, v, f, trunc, 0.5).flatten().tolist() == [7.0, 12.0, 18.0]
    term = torch.tensor([[True], [False], [False]])  # termination after row 0: no bootstrap at all
    assert nstep_returns(r, v, term, f, 0.5).flatten().tolist() == [1.0, 11.0, 18.0]
    # T = 1 is the one-step TD target r + γ v(s')
    assert nstep_returns(T(1.0).view(1, 1), T(4.0).view(1, 1), f[:1], f[:1], 0.9).item() == pytest.approx(4.6)


def softmax_logp(logits, a):
    return torch.log_softmax(logits, -1)[torch.arange(len(a)), a]


def test_a2c_loss_gradients_are_the_td_actor_critic_update():
    z = torch.zeros(1, 2, requires_grad=True)  # π = (.5, .5)
    v = T(0.5).requires_grad_()
    dist = torch.distributions.Categorical(logits=z)
    loss, m = a2c_loss(softmax_logp(z, torch.tensor([0])), dist.entropy(), v, T(2.0), ent_coef=0.0)
    loss.backward()
    # δ = 2 − 0.5 = 1.5;  ∂/∂z (−δ ln π(a)) = −δ (onehot(a) − π) = −1.5 (.5, −.5)
    assert z.grad.flatten().tolist() == pytest.approx([-0.75, 0.75])
    assert v.grad.item() == pytest.approx(-1.5)  # ∂ ½δ² / ∂v = −δ: gradient descent does v += α δ
    assert m["critic"].item() == pytest.approx(0.5 * 1.5**2)


def test_a2c_normalized_advantage_hand_computed():
    logp = T(-1.0, -2.0).requires_grad_()
    v = T(0.0, 0.0).requires_grad_()
    loss, m = a2c_loss(logp, torch.zeros(2), v, T(1.0, 3.0), ent_coef=0.0, normalize_advantage=True)
    loss.backward()
    # δ = (1, 3): mean 2, std (n−1) √2 → adv = (−1/√2, 1/√2); actor = −mean(adv · ln π) = −(1/√2 − 2/√2)/2
    assert m["actor"].item() == pytest.approx(1 / (2 * 2**0.5), rel=1e-6)
    assert logp.grad.tolist() == pytest.approx([0.5 / 2**0.5, -0.5 / 2**0.5], rel=1e-6)
    assert v.grad.tolist() == pytest.approx([-0.5, -1.5])  # the critic still regresses on the raw δ


def test_a2c_entropy_bonus_pushes_towards_uniform():
    z = T(1.0, 0.0).view(1, 2).requires_grad_()
    dist = torch.distributions.Categorical(logits=z)
    loss, _ = a2c_loss(torch.zeros(1), dist.entropy(), T(0.0), T(0.0), ent_coef=1.0)
    loss.backward()
    assert z.grad[0, 0] > 0 > z.grad[0, 1]  # descending lowers the larger logit


def test_qac_loss_gradients():
    z = torch.zeros(1, 2, requires_grad=True)
    q = T(3.0).requires_grad_()
    loss, _ = qac_loss(softmax_logp(z, torch.tensor([1])), q, T(4.0))
    loss.backward()
    # actor: −q ∇ln π(a=1) = −3 (onehot(1) − π) = −3 (−.5, .5);  critic: −(4 − 3) = −1
    assert z.grad.flatten().tolist() == pytest.approx([1.5, -1.5])
    assert q.grad.item() == pytest.approx(-1.0)


def test_offpac_loss_importance_ratio():
    z = torch.zeros(1, 2, requires_grad=True)  # π(a) = .5
    v = T(0.5).requires_grad_()
    loss, m = offpac_loss(softmax_logp(z, torch.tensor([0])), T(math.log(0.25)), v, T(2.0), rho_clip=10.0)
    loss.backward()
    # ρ = .5/.25 = 2, δ = 1.5: actor −ρδ(onehot − π) = −3 (.5, −.5); critic −ρδ = −3
    assert m["rho_mean"].item() == pytest.approx(2.0)
    assert z.grad.flatten().tolist() == pytest.approx([-1.5, 1.5])
    assert v.grad.item() == pytest.approx(-3.0)
    _, m = offpac_loss(softmax_logp(z, torch.tensor([0])), T(math.log(0.25)), v, T(2.0), rho_clip=1.5)
    assert m["rho_mean"].item() == pytest.approx(1.5)


def test_offpac_stores_behaviour_logprobs_in_replay(tmp_path):
    agent = OffPAC.from_env("GridWorld-v0", device="cpu", behaviour="uniform", hidden_sizes=[])
    agent.learn(40, progress=False, eval_episodes=1, learning_starts=0)
    buf = agent._trainer.storage
    assert len(buf) == 40
    assert torch.allclose(buf.data["behaviour_logp"][:40], torch.full((40,), -math.log(5)))
    self_agent = OffPAC.from_env("CartPole-v1", device="cpu")
    self_agent.learn(30, progress=False, eval_episodes=1, batch_size=8)
    stored = self_agent._trainer.storage.data
    assert stored["behaviour_logp"][:30].lt(0).all() and stored["behaviour_logp"][:30].gt(math.log(1e-3)).all()


def test_continuous_gaussian_policy_actions_and_logprobs():
    box = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
    agent = A2C(gym.spaces.Box(-1, 1, (3,), np.float32), box, A2CConfig(), "cpu")
    a, _ = agent.act(torch.zeros(4, 3), explore=False)
    assert a.shape == (4, 1) and (a.abs() <= 2).all()
    d = agent.dist(torch.zeros(1, 3))
    x = torch.tensor([[0.3]])
    expected = torch.distributions.Normal(d.mean, agent.policy.log_std.exp()).log_prob(x).sum(-1)
    assert torch.allclose(d.log_prob(x), expected)


def test_bad_hyperparameters():
    with pytest.raises(ConfigError, match="agent.n_steps must be > 0"):
        A2CConfig(n_steps=0)
    with pytest.raises(ConfigError, match="behaviour"):
        OffPACConfig(behaviour="greedy")


def test_a2c_learns_cartpole_quickly():
    agent = A2C.from_env("CartPole-v1", device="cpu", num_envs=8, seed=0)
    before = agent.evaluate(episodes=5)["return_mean"]
    after = agent.learn(25_000, progress=False, eval_every=0, eval_episodes=5)["return_mean"]
    assert before < 50 and after > 100, (before, after)  # measured: 9.4 → 148.6


@pytest.mark.parametrize("name", ["QAC", "A2C", "OffPAC"])
def test_notebook_api_works_like_ddpg(tmp_path, name):
    """``from agents import QAC, A2C`` in a notebook: from_env, learn, evaluate, save, load, predict (single and batch)."""
    import agents

    cls = getattr(agents, name)
    agent = cls.from_env("CartPole-v1", device="cpu", num_envs=2, seed=0)
    agent.learn(200, progress=False, eval_every=0, eval_episodes=1, learning_starts=0, batch_size=16)
    result = agent.evaluate(episodes=2)
    assert set(result) == {"return_mean", "return_std"} and result["return_mean"] >= 8  # CartPole lasts ≥ 8 steps
    path = agent.save(tmp_path / f"{name}.pt")
    loaded = cls.load(path, device="cpu")
    obs = np.array([[0.01, 0.0, 0.02, 0.0], [0.0, 0.5, -0.1, -0.5]], dtype=np.float32)
    assert loaded.predict(obs).tolist() == agent.predict(obs).tolist() and loaded.predict(obs).shape == (2,)
    assert int(loaded.predict(obs[0])) in (0, 1)
    for a, b in zip(agent.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
