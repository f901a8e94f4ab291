"""DDPG (Lillicrap et al., 2016) with TD3's three fixes as flags (Fujimoto et al., 2018). docs/algorithms.md §3.

    y       = r + γ (1 − terminated) · min_i q'_i(s', ã'),   ã' = clip(μ'(s') + clip(ε, −c, c), low, high)
    L_q     = Σ_i mean (q_i(s, a) − y)²                       (critic, SARSA-style TD regression)
    L_μ     = − mean q_1(s, μ(s))                             (deterministic policy gradient)
    w'      ← τ w + (1 − τ) w'                                (Polyak, for actor and critics)

DDPG: one critic, ε = 0, actor every step. TD3: ``twin_critics``, ``target_policy_noise=0.2``,
``policy_delay=2``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import List

import gymnasium as gym
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.base import Agent
from rl.approximation import polyak_update, td_target
from rl.config import AgentConfig, ConfigError, check, non_negative, positive, register_agent
from rl.networks import DeterministicActor, QCritic, adam


@dataclass
class DDPGConfig(AgentConfig):
    name: str = "ddpg"
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    hidden_sizes: List[int] = field(default_factory=lambda: [256, 256])
    gamma: float = 0.99
    tau: float = 0.005  # Polyak coefficient
    exploration_noise: float = 0.1  # Gaussian σ, as a fraction of the action half-range
    twin_critics: bool = False  # TD3 fix 1: two critics, min in the target
    target_policy_noise: float = 0.0  # TD3 fix 2: σ of the target-policy smoothing noise (0.2 in TD3)
    target_noise_clip: float = 0.5  # ... clipped to ±c (fractions of the half-range)
    policy_delay: int = 1  # TD3 fix 3: actor and targets updated every d critic updates (2 in TD3)

    def __post_init__(self) -> None:
        positive("agent.actor_lr", self.actor_lr)
        positive("agent.critic_lr", self.critic_lr)
        check(0 <= self.gamma <= 1, f"agent.gamma must be in [0, 1], got {self.gamma}")
        check(0 < self.tau <= 1, f"agent.tau must be in (0, 1], got {self.tau}")
        non_negative("agent.exploration_noise", self.exploration_noise)
        non_negative("agent.target_policy_noise", self.target_policy_noise)
        non_negative("agent.target_noise_clip", self.target_noise_clip)
        positive("agent.policy_delay", self.policy_delay)
        check(len(self.hidden_sizes) > 0 and all(h > 0 for h in self.hidden_sizes),
              f"agent.hidden_sizes must be positive widths, got {list(self.hidden_sizes)}")


# -- the math, as pure functions ---------------------------------------------------------------------
def smoothed_target_action(mu_next: Tensor, noise: Tensor, clip: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """TD3's target-policy smoothing: ``clip(μ'(s') + clip(noise, −clip, clip), low, high)``."""
    return torch.clamp(mu_next + torch.clamp(noise, -clip, clip), low, high)


def critic_target(reward: Tensor, next_qs: Sequence[Tensor], terminated: Tensor, gamma: float) -> Tensor:
    """``y = r + γ (1 − terminated) min_i q'_i(s', a')`` — bootstraps through truncation, not termination."""
    return td_target(reward, torch.stack(list(next_qs)).min(dim=0).values, terminated, gamma)


def critic_loss(qs: Sequence[Tensor], target: Tensor) -> Tensor:
    """``Σ_i mean (q_i(s, a) − y)²`` over the critics."""
    return sum(F.mse_loss(q, target) for q in qs)


def actor_loss(q_of_mu: Tensor) -> Tensor:
    """``−mean q(s, μ(s))``: its gradient is the deterministic policy gradient ``∇μ · ∇_a q``."""
    return -q_of_mu.mean()


class DDPG(Agent):
    config_cls = DDPGConfig
    random_warmup = True
    off_policy = True

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, cfg: DDPGConfig,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(obs_space, action_space, cfg, device)
        if not isinstance(action_space, gym.spaces.Box):
            raise ConfigError(f"DDPG needs a continuous (Box) action space, but the env has {action_space}; "
                              "use a discrete-action agent (agent=a2c or agent=qac) instead")
        if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
            raise ConfigError(f"DDPG needs a flat Box observation space, got {obs_space}")
        obs_dim, act_dim = obs_space.shape[0], action_space.shape[0]
        low, high = torch.as_tensor(action_space.low), torch.as_tensor(action_space.high)
        self.actor = DeterministicActor(obs_dim, low, high, cfg.hidden_sizes)
        self.critics = nn.ModuleList(QCritic(obs_dim, act_dim, cfg.hidden_sizes)
                                     for _ in range(2 if cfg.twin_critics else 1))
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_targets = copy.deepcopy(self.critics).requires_grad_(False)
        self.register_buffer("low", low.float())
        self.register_buffer("high", high.float())
        self.to(self.device)
        self.actor_opt = adam(self.actor.parameters(), cfg.actor_lr, self.device)
        self.critic_opt = adam(self.critics.parameters(), cfg.critic_lr, self.device)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_opt, "critic": self.critic_opt}

    def phase(self) -> int:
        """1 when this update also steps the actor and the targets (every ``policy_delay``-th update)."""
        return int((self.num_updates + 1) % self.cfg.policy_delay == 0)

    def act(self, obs: Tensor, explore: bool) -> tuple[Tensor, dict[str, Tensor]]:
        action = self.actor(obs)
        if explore and self.cfg.exploration_noise > 0:
            noise = torch.randn_like(action) * self.cfg.exploration_noise * self.actor.half_range
            action = torch.clamp(action + noise, self.low, self.high)
        return action, {}

    def update_step(self, batch: dict[str, Tensor], phase: int) -> dict[str, Tensor]:
        cfg = self.cfg
        obs, action, next_obs = batch["obs"], batch["action"], batch["next_obs"]
        with torch.no_grad():
            next_action = self.actor_target(next_obs)
            if cfg.target_policy_noise > 0:
                half = self.actor.half_range
                noise = torch.randn_like(next_action) * cfg.target_policy_noise * half
                next_action = smoothed_target_action(next_action, noise, cfg.target_noise_clip * half,
                                                     self.low, self.high)
            y = critic_target(batch["reward"], [q(next_obs, next_action) for q in self.critic_targets],
                              batch["terminated"], cfg.gamma)
        qs = [q(obs, action) for q in self.critics]
        loss_q = critic_loss(qs, y)
        self.critic_opt.zero_grad(set_to_none=False)  # in place: a replayed graph keeps its gradient buffers
        loss_q.backward()
        self.critic_opt.step()
        metrics = {"critic": loss_q.detach(), "q_mean": qs[0].detach().mean()}
        if phase:
            loss_mu = actor_loss(self.critics[0](obs, self.actor(obs)))
            self.actor_opt.zero_grad(set_to_none=False)
            loss_mu.backward()
            self.actor_opt.step()
            polyak_update(self.actor_target.parameters(), self.actor.parameters(), cfg.tau)
            polyak_update(self.critic_targets.parameters(), self.critics.parameters(), cfg.tau)
            metrics["actor"] = loss_mu.detach()
        return metrics


register_agent("ddpg", DDPG, DDPGConfig)
register_agent("td3", DDPG, DDPGConfig,
               preset=DDPGConfig(name="td3", twin_critics=True, target_policy_noise=0.2, policy_delay=2))
