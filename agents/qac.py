"""The actor-critic family of docs/algorithms.md §3: QAC, A2C (TD actor-critic) and off-policy actor-critic.

One pure loss per algorithm; each line maps to the update rule it implements (with δ the TD error):

    QAC     actor  θ += α_θ ∇ ln π(a|s) · q(s,a)            critic (SARSA)  w += α_w [r + γ q(s',a') − q(s,a)] ∇q
    A2C     actor  θ += α_θ δ ∇ ln π(a|s)                   critic          w += α_w δ ∇v(s)
    OffPAC  actor  θ += α_θ ρ δ ∇ ln π(a|s)                 critic          w += α_w ρ δ ∇v(s),   ρ = π(a|s)/β(a|s)

Gradient *ascent* on the actor and the critic's semi-gradient step are written as losses whose negative
gradient is exactly that step (e.g. ½δ² with the target detached has gradient −δ∇v).
Discrete (categorical) and continuous (Gaussian) policies; MLP critics, or linear-on-one-hot (= tabular)
critics for the grid world with ``hidden_sizes=[]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List

import gymnasium as gym
import torch
from torch import Tensor, nn

from agents.base import Agent
from rl.approximation import td_target
from rl.buffers import ReplayBuffer, RolloutBuffer
from rl.collector import transition_spec
from rl.config import AgentConfig, Config, ConfigError, check, non_negative, positive, register_agent
from rl.networks import (CategoricalPolicy, DiscreteQCritic, Features, GaussianPolicy, QCritic, ValueCritic, adam,
                         obs_dim)


@dataclass
class ActorCriticConfig(AgentConfig):
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    hidden_sizes: List[int] = field(default_factory=lambda: [64, 64])
    gamma: float = 0.99
    n_steps: int = 5  # rollout length per update (n-step returns for A2C; 1 = one-step TD actor-critic)
    ent_coef: float = 0.0  # entropy bonus
    max_grad_norm: float = 0.5  # 0: no clipping
    optimizer: str = "adam"  # adam | sgd | rmsprop
    lr_schedule: str = "constant"  # constant | linear: both step sizes decay linearly to 0 over the run (adam)
    log_std_init: float = 0.0  # Gaussian policies (Box actions): the initial log σ of the exploration noise

    def __post_init__(self) -> None:
        positive("agent.actor_lr", self.actor_lr)
        positive("agent.critic_lr", self.critic_lr)
        check(0 <= self.gamma <= 1, f"agent.gamma must be in [0, 1], got {self.gamma}")
        positive("agent.n_steps", self.n_steps)
        non_negative("agent.ent_coef", self.ent_coef)
        non_negative("agent.max_grad_norm", self.max_grad_norm)
        check(self.optimizer in ("adam", "sgd", "rmsprop"),
              f"agent.optimizer must be adam, sgd or rmsprop, got {self.optimizer!r}")
        check(self.lr_schedule in ("constant", "linear"),
              f"agent.lr_schedule must be constant or linear, got {self.lr_schedule!r}")
        check(self.lr_schedule == "constant" or self.optimizer == "adam",
              "agent.lr_schedule=linear is implemented for agent.optimizer=adam")
        check(all(h > 0 for h in self.hidden_sizes), f"agent.hidden_sizes must be positive, got {self.hidden_sizes}")


@dataclass
class A2CConfig(ActorCriticConfig):
    name: str = "a2c"
    normalize_advantage: bool = False  # standardize δ over each batch in the actor's step
    gae_lambda: float = 1.0  # λ of the λ-returns (GAE); 1: plain n-step returns
    normalize_obs: bool = False  # standardize Box observations by their running mean and variance
    reward_scale: float = 1.0  # rewards are multiplied by this in the update (returns and values on a friendlier scale)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.gae_lambda <= 1, f"agent.gae_lambda must be in [0, 1], got {self.gae_lambda}")
        positive("agent.reward_scale", self.reward_scale)


@dataclass
class QACConfig(ActorCriticConfig):
    name: str = "qac"
    # q(s,a) ~ 1/(1-γ) multiplies ∇ ln π, so the actor needs a smaller step than A2C's δ-weighted one;
    # joint gradient clipping would let the critic's large TD errors starve the actor, so none.
    actor_lr: float = 1e-4
    max_grad_norm: float = 0.0


@dataclass
class OffPACConfig(ActorCriticConfig):
    name: str = "offpac"
    behaviour: str = "self"  # self: β = π at collection time (replayed later) | uniform: β uniform (Discrete)
    rho_clip: float = 10.0  # importance ratios are clipped to ≤ this (inf: none)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.behaviour in ("self", "uniform"), f"agent.behaviour must be self or uniform, got {self.behaviour!r}")
        positive("agent.rho_clip", self.rho_clip)


# -- the math, as pure functions ---------------------------------------------------------------------
def nstep_returns(rewards: Tensor, next_values: Tensor, terminated: Tensor, truncated: Tensor,
                  gamma: float) -> Tensor:
    """Targets over a [T, N] rollout: ``G_t = r_t + γ (1 − term_t) · (v(s'_t) if t ends a segment else G_{t+1})``.

    A segment ends at the rollout's last row and at a truncation (where s'_t is the true last state, so
    the return bootstraps from it). With T = 1 this is the one-step TD target.
    """
    out = torch.empty_like(rewards)
    g = next_values[-1]
    for t in range(rewards.shape[0] - 1, -1, -1):
        nxt = next_values[t] if t == rewards.shape[0] - 1 else torch.where(truncated[t], next_values[t], g)
        g = td_target(rewards[t], nxt, terminated[t], gamma)
        out[t] = g
    return out


def lambda_returns(rewards: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor, truncated: Tensor,
                   gamma: float, lam: float) -> Tensor:
    """λ-returns over a [T, N] rollout: ``G^λ_t = v(s_t) + A_t`` with the GAE advantage (Schulman et al., 2016)

        δ_t = r_t + γ (1 − term_t) v(s'_t) − v(s_t),     A_t = δ_t + γ λ (1 − end_t) A_{t+1},

    where a segment ends (end_t) at a termination, a truncation or the rollout's last row. λ = 1 gives
    :func:`nstep_returns`, λ = 0 the one-step TD targets.
    """
    delta = td_target(rewards, next_values, terminated, gamma) - values
    carry = gamma * lam * (~(terminated | truncated)).to(rewards.dtype)
    adv = torch.empty_like(rewards)
    a = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        a = delta[t] + carry[t] * a
        adv[t] = a
    return adv + values


def a2c_loss(logp: Tensor, entropy: Tensor, values: Tensor, targets: Tensor, ent_coef: float,
             normalize_advantage: bool = False) -> tuple[Tensor, dict]:
    """δ = G − v(s);  actor −δ·ln π(a|s);  critic ½δ²;  minus the entropy bonus.

    ``normalize_advantage``: the actor weighs ``(δ − mean δ) / (std δ + 1e-8)`` over the batch instead of δ (a
    per-batch rescaling of the step; useful with the very large batches of thousands of GPU envs)."""
    delta = targets - values
    adv = delta.detach()
    if normalize_advantage:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    actor = -(adv * logp).mean()
    critic = 0.5 * delta.pow(2).mean()
    ent = entropy.mean()
    return actor + critic - ent_coef * ent, {"actor": actor.detach(), "critic": critic.detach(), "entropy": ent.detach()}


def qac_loss(logp: Tensor, q_sa: Tensor, q_target: Tensor) -> tuple[Tensor, dict]:
    """actor −q(s,a)·ln π(a|s);  critic ½(r + γ q(s',a') − q(s,a))² (SARSA)."""
    actor = -(q_sa.detach() * logp).mean()
    critic = 0.5 * (q_target - q_sa).pow(2).mean()
    return actor + critic, {"actor": actor.detach(), "critic": critic.detach()}


def offpac_loss(logp: Tensor, behaviour_logp: Tensor, values: Tensor, targets: Tensor,
                rho_clip: float) -> tuple[Tensor, dict]:
    """ρ = π(a|s)/β(a|s) (clipped, no gradient);  actor −ρ δ ln π(a|s);  critic ½ ρ δ²."""
    rho = torch.exp(logp.detach() - behaviour_logp).clamp(max=rho_clip)
    delta = targets - values
    actor = -(rho * delta.detach() * logp).mean()
    critic = 0.5 * (rho * delta.pow(2)).mean()
    return actor + critic, {"actor": actor.detach(), "critic": critic.detach(), "rho_mean": rho.mean()}


# -- agents ------------------------------------------------------------------------------------------
class ActorCritic(Agent):
    """Shared parts: features, the policy head for the action space, one optimizer with two step sizes."""

    critic_kind = "v"  # "v": state values; "q": action values

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, cfg: ActorCriticConfig,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(obs_space, action_space, cfg, device)
        if not isinstance(obs_space, (gym.spaces.Box, gym.spaces.Discrete)):
            raise ConfigError(f"{type(self).__name__} needs a Box or Discrete observation space, got {obs_space}")
        self.features = Features(obs_space, normalize=getattr(cfg, "normalize_obs", False))
        d, h = obs_dim(obs_space), cfg.hidden_sizes
        if isinstance(action_space, gym.spaces.Discrete):
            self.policy: nn.Module = CategoricalPolicy(d, int(action_space.n), h)
            q = DiscreteQCritic(d, int(action_space.n), h)
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            self.policy = GaussianPolicy(d, action_space.shape[0], h, cfg.log_std_init)
            q = QCritic(d, action_space.shape[0], h)
            self.register_buffer("low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(action_space.high, dtype=torch.float32))
        else:
            raise ConfigError(f"{type(self).__name__} needs a Discrete or 1-d Box action space, got {action_space}")
        self.critic = q if self.critic_kind == "q" else ValueCritic(d, h)
        self.to(self.device)
        self.base_lrs = (cfg.actor_lr, cfg.critic_lr)
        # on CUDA, Adam's step sizes are device tensors: a schedule changes them under a replayed CUDA graph
        lr = (lambda x: torch.tensor(x, device=self.device)) if cfg.optimizer == "adam" and self.device.type == "cuda" \
            else float
        groups = [{"params": self.policy.parameters(), "lr": lr(cfg.actor_lr)},
                  {"params": self.critic.parameters(), "lr": lr(cfg.critic_lr)}]
        if cfg.optimizer == "adam":
            self.opt = adam(groups, cfg.actor_lr, self.device)
        elif cfg.optimizer == "sgd":
            self.opt = torch.optim.SGD(groups, lr=cfg.actor_lr, foreach=True)
        else:
            self.opt = torch.optim.RMSprop(groups, lr=cfg.actor_lr, foreach=True, capturable=self.device.type == "cuda")

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def set_progress(self, fraction: float) -> None:
        """``lr_schedule=linear``: α = α_0 (1 − fraction of the run done)."""
        if self.cfg.lr_schedule == "linear":
            for group, base in zip(self.opt.param_groups, self.base_lrs):
                value = base * max(1.0 - fraction, 0.0)
                if isinstance(group["lr"], Tensor):
                    group["lr"].fill_(value)
                else:
                    group["lr"] = value

    def dist(self, obs: Tensor) -> torch.distributions.Distribution:
        return self.policy(self.features(obs))

    def act(self, obs: Tensor, explore: bool) -> tuple[Tensor, dict[str, Tensor]]:
        dist = self.dist(obs)
        if explore:
            return dist.sample(), {}
        action = self.policy.mode(dist)
        return (action.clamp(self.low, self.high) if hasattr(self, "low") else action), {}

    def make_storage(self, cfg: Config) -> Any:
        spec = transition_spec(self.obs_space, self.action_space, self.extra_spec)
        return RolloutBuffer(self.cfg.n_steps, cfg.env.num_envs, spec, self.device)

    def step(self, loss: Tensor) -> None:
        self.opt.zero_grad(set_to_none=False)  # in place: a replayed CUDA graph keeps its gradient buffers
        loss.backward()
        if self.cfg.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.parameters(), self.cfg.max_grad_norm, foreach=True)
        self.opt.step()

    def state_values(self, obs: Tensor) -> Tensor:
        """``v(s)`` under the current policy (for reports and grid-world value errors)."""
        return self.critic(self.features(obs))

    @torch.no_grad()
    def values(self) -> Any:
        if not isinstance(self.obs_space, gym.spaces.Discrete):
            return None
        return self.state_values(torch.arange(int(self.obs_space.n), device=self.device)).cpu().numpy()


class A2C(ActorCritic):
    """Advantage (TD) actor-critic on [T, N] rollouts with n-step returns."""

    config_cls = A2CConfig

    def update_step(self, batch: dict[str, Tensor], phase: int) -> dict[str, Tensor]:
        cfg, (T, N) = self.cfg, batch["reward"].shape
        self.features.observe(batch["obs"].flatten(0, 1))
        x = self.features(batch["obs"].flatten(0, 1))
        values = self.critic(x)
        with torch.no_grad():
            next_v = self.critic(self.features(batch["next_obs"].flatten(0, 1))).view(T, N)
            targets = lambda_returns(batch["reward"] * cfg.reward_scale, values.detach().view(T, N), next_v,
                                     batch["terminated"], batch["truncated"], cfg.gamma, cfg.gae_lambda)
        dist = self.policy(x)
        loss, metrics = a2c_loss(dist.log_prob(batch["action"].flatten(0, 1)), dist.entropy(), values,
                                 targets.flatten(), cfg.ent_coef, cfg.normalize_advantage)
        self.step(loss)
        return metrics


class QAC(ActorCritic):
    """Q actor-critic: the critic learns q by SARSA with a' ~ π(·|s'); the actor follows q(s,a)·∇ ln π."""

    config_cls = QACConfig
    critic_kind = "q"

    def update_step(self, batch: dict[str, Tensor], phase: int) -> dict[str, Tensor]:
        b = {k: v.flatten(0, 1) for k, v in batch.items()}
        x, x_next = self.features(b["obs"]), self.features(b["next_obs"])
        with torch.no_grad():
            next_action = self.policy(x_next).sample()
            q_target = td_target(b["reward"], self.critic(x_next, next_action), b["terminated"], self.cfg.gamma)
        loss, metrics = qac_loss(self.policy(x).log_prob(b["action"]), self.critic(x, b["action"]), q_target)
        self.step(loss)
        return metrics

    def state_values(self, obs: Tensor) -> Tensor:
        x = self.features(obs)
        if isinstance(self.action_space, gym.spaces.Discrete):
            probs = self.policy(x).probs
            q_all = self.critic.net(x)
            return (probs * q_all).sum(-1)
        return self.critic(x, self.policy(x).mean)


class OffPAC(ActorCritic):
    """Off-policy actor-critic from a replay buffer of (s, a, r, s', β(a|s)) with importance ratios."""

    config_cls = OffPACConfig
    off_policy = True
    extra_spec = {"behaviour_logp": ((), torch.float32)}

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, cfg: OffPACConfig,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(obs_space, action_space, cfg, device)
        if cfg.behaviour == "uniform" and not isinstance(action_space, gym.spaces.Discrete):
            raise ConfigError("agent.behaviour=uniform needs a Discrete action space")

    def make_storage(self, cfg: Config) -> Any:
        spec = transition_spec(self.obs_space, self.action_space, self.extra_spec)
        return ReplayBuffer(cfg.buffer.capacity, spec, self.device, seeds=cfg.seeds)

    def act(self, obs: Tensor, explore: bool) -> tuple[Tensor, dict[str, Tensor]]:
        if not explore:
            return super().act(obs, explore)
        if self.cfg.behaviour == "uniform":
            n = int(self.action_space.n)
            action = torch.randint(0, n, obs.shape[:1], device=obs.device)
            return action, {"behaviour_logp": torch.full(obs.shape[:1], -float(torch.log(torch.tensor(n))),
                                                         device=obs.device)}
        dist = self.dist(obs)
        action = dist.sample()
        return action, {"behaviour_logp": dist.log_prob(action)}

    def update_step(self, batch: dict[str, Tensor], phase: int) -> dict[str, Tensor]:
        x = self.features(batch["obs"])
        with torch.no_grad():
            targets = td_target(batch["reward"], self.critic(self.features(batch["next_obs"])), batch["terminated"],
                                self.cfg.gamma)
        loss, metrics = offpac_loss(self.policy(x).log_prob(batch["action"]), batch["behaviour_logp"],
                                    self.critic(x), targets, self.cfg.rho_clip)
        self.step(loss)
        return metrics


register_agent("a2c", A2C, A2CConfig)
register_agent("qac", QAC, QACConfig)
register_agent("offpac", OffPAC, OffPACConfig)
