"""DDPG (Lillicrap et al., 2016) with TD3's three fixes as flags (Fujimoto et al., 2018). docs/algorithms.md §3.

    y       = r + γ (1 − terminated) · min_i q'_i(s', ã'),   ã' = clip(μ'(s') + clip(ε, −c, c), low, high)
    L_q     = Σ_i mean (q_i(s, a) − y)²                       (critic, SARSA-style TD regression)
    L_μ     = − mean q_1(s, μ(s))                             (deterministic policy gradient)
    w'      ← τ w + (1 − τ) w'                                (Polyak, for actor and critics)

DDPG: one critic, ε = 0, actor every step. TD3: ``twin_critics``, ``target_policy_noise=0.2``,
``policy_delay=2``.

K seeds as one batch (``trainer.num_seeds``, docs/algorithms.md §5): every network is an ensemble whose layers
carry a leading member axis (the actor K members, the critics K × C), each loss is a [K] vector of per-seed
losses, and one backward pass of their sum gives each seed exactly its own gradient; Adam, Polyak averaging and
the noise are elementwise or drawn per seed. A single run is the case K = 1 of the same code.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import List

import gymnasium as gym
import torch
from torch import Tensor, nn

from agents.base import Agent
from rl import seeding
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


def critic_target(reward: Tensor, next_qs: Tensor, terminated: Tensor, gamma: float) -> Tensor:
    """``y = r + γ (1 − terminated) min_i q'_i(s', a')`` — bootstraps through truncation, not termination.
    ``next_qs`` [..., C, B] (C critics), the others [..., B]."""
    return td_target(reward, next_qs.min(dim=-2).values, terminated, gamma)


def critic_loss(qs: Tensor, target: Tensor) -> Tensor:
    """``Σ_i mean (q_i(s, a) − y)²`` over the critics: ``qs`` [..., C, B], ``target`` [..., B] → [...]."""
    return (qs - target.unsqueeze(-2)).pow(2).mean(-1).sum(-1)


def actor_loss(q_of_mu: Tensor) -> Tensor:
    """``−mean q(s, μ(s))`` over the last axis: its gradient is the deterministic policy gradient ``∇μ · ∇_a q``."""
    return -q_of_mu.mean(-1)


class DDPG(Agent):
    """DDPG/TD3 for the seeds ``seeds`` (K = len(seeds) agents as one; rows of ``act``'s observations and of
    ``update``'s batches are seed-major: K blocks of equal size)."""

    config_cls = DDPGConfig
    random_warmup = True
    off_policy = True
    batches_seeds = True

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, cfg: DDPGConfig,
                 device: str | torch.device = "cpu", seeds: Sequence[int] = (0,)) -> None:
        super().__init__(obs_space, action_space, cfg, device)
        if not isinstance(action_space, gym.spaces.Box):
            raise ConfigError(f"DDPG needs a continuous (Box) action space, but the env has {action_space}; "
                              "use a discrete-action agent (agent=a2c or agent=qac) instead")
        if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
            raise ConfigError(f"DDPG needs a flat Box observation space, got {obs_space}")
        obs_dim, act_dim = obs_space.shape[0], action_space.shape[0]
        low, high = torch.as_tensor(action_space.low), torch.as_tensor(action_space.high)
        self.num_seeds, self.num_critics = len(seeds), 2 if cfg.twin_critics else 1
        init = seeding.generators(seeds, "init")  # seed k's networks: actor, then its critics, layer by layer
        self.actor = DeterministicActor(obs_dim, low, high, cfg.hidden_sizes, generators=init)
        self.critics = QCritic(obs_dim, act_dim, cfg.hidden_sizes,  # members k·C + c: critic c of seed k
                               generators=[g for g in init for _ in range(self.num_critics)])
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_targets = copy.deepcopy(self.critics).requires_grad_(False)
        self.register_buffer("low", low.float())
        self.register_buffer("high", high.float())
        self.to(self.device)
        self.generators = seeding.generators(seeds, "noise", self.device)  # exploration and target-policy noise
        # Adam is elementwise: one step over the stacked [K, ...] tensors is K independent Adam steps
        self.actor_opt = adam(self.actor.parameters(), cfg.actor_lr, self.device)
        self.critic_opt = adam(self.critics.parameters(), cfg.critic_lr, self.device)
        self._critic_losses, self._actor_losses = self.critic_losses, self.actor_losses  # fuse_losses() compiles them

    def fuse_losses(self) -> None:
        """``trainer.fuse``: compile the two loss computations with TorchInductor (each forward, and through
        AOTAutograd its backward, becomes a few fused kernels around the matmuls). The same math; float rounding may
        differ from the eager kernels'. Adam and Polyak averaging stay as they are (fused / foreach kernels)."""
        if self._critic_losses != self.critic_losses:  # compiled already (a notebook's second learn(fuse=True))
            return
        self._critic_losses = torch.compile(self.critic_losses, fullgraph=True, dynamic=False)
        self._actor_losses = torch.compile(self.actor_losses, fullgraph=True, dynamic=False)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_opt, "critic": self.critic_opt}

    def phase(self) -> int:
        """1 when this update also steps the actor and the targets (every ``policy_delay``-th update)."""
        return int((self.num_updates + 1) % self.cfg.policy_delay == 0)

    def per_seed(self, x: Tensor) -> Tensor:
        """Seed-major rows [K·B, ...] → [K, B, ...]."""
        return x.view(self.num_seeds, -1, *x.shape[1:])

    def q_values(self, critics: nn.Module, obs: Tensor, action: Tensor) -> Tensor:
        """``q_c(s, a)`` of every critic c of every seed k: [K, C, B] for obs [K, B, d] and action [K, B, a]."""
        x = torch.cat([obs, action], dim=-1).unsqueeze(1)  # [K, 1, B, d + a] → [K·C, B, d + a]
        x = x.expand(-1, self.num_critics, -1, -1).reshape(-1, *x.shape[2:])
        return critics.net(x).view(self.num_seeds, self.num_critics, -1)

    def act(self, obs: Tensor, explore: bool) -> tuple[Tensor, dict[str, Tensor]]:
        action = self.actor(self.per_seed(obs))
        if explore and self.cfg.exploration_noise > 0:
            noise = seeding.bank(self.banks, "explore", self.generators, action.shape[1:], normal=True).take() \
                * self.cfg.exploration_noise * self.actor.half_range
            action = torch.clamp(action + noise, self.low, self.high)
        return action.flatten(0, 1), {}

    def critic_losses(self, obs: Tensor, action: Tensor, next_obs: Tensor, reward: Tensor, terminated: Tensor,
                      draws: Tensor | None) -> tuple[Tensor, Tensor]:
        """(per-seed critic losses [K], the critics' q-values [K, C, B]) for seed-major [K, B, ...] batches;
        ``draws``: standard normal target-policy noise [K, B, a] (TD3), or None."""
        cfg = self.cfg
        with torch.no_grad():
            next_action = self.actor_target(next_obs)
            if draws is not None:
                half = self.actor.half_range
                next_action = smoothed_target_action(next_action, draws * cfg.target_policy_noise * half,
                                                     cfg.target_noise_clip * half, self.low, self.high)
            y = critic_target(reward, self.q_values(self.critic_targets, next_obs, next_action), terminated,
                              cfg.gamma)
        qs = self.q_values(self.critics, obs, action)
        return critic_loss(qs, y), qs  # [K]: seed k's loss depends on seed k's parameters only

    def actor_losses(self, obs: Tensor) -> Tensor:
        """Per-seed actor losses [K] (the first critic's q of the actor's actions). Called with the critics'
        gradients switched off: the backward goes through them to the actions without their weight gradients."""
        return actor_loss(self.q_values(self.critics, obs, self.actor(obs))[:, 0])

    def update_step(self, batch: dict[str, Tensor], phase: int) -> dict[str, Tensor]:
        cfg = self.cfg
        obs, action, next_obs, reward, terminated = (self.per_seed(batch[k]) for k in
                                                     ("obs", "action", "next_obs", "reward", "terminated"))
        draws = seeding.bank(self.banks, "target", self.generators, action.shape[1:], normal=True).take() \
            if cfg.target_policy_noise > 0 else None
        loss_q, qs = self._critic_losses(obs, action, next_obs, reward, terminated, draws)
        self.critic_opt.zero_grad()  # None: the backward writes each gradient (no zero fill, no accumulation)
        loss_q.sum().backward()
        self.critic_opt.step()
        metrics = {"critic": loss_q.detach(), "q_mean": qs[:, 0].detach().mean(-1)}
        if phase:
            self.critics.requires_grad_(False)  # a host-side flag, read when the forward records its backward
            loss_mu = self._actor_losses(obs)
            self.critics.requires_grad_(True)
            self.actor_opt.zero_grad()
            loss_mu.sum().backward()
            self.actor_opt.step()
            polyak_update(self.actor_target.parameters(), self.actor.parameters(), cfg.tau)
            polyak_update(self.critic_targets.parameters(), self.critics.parameters(), cfg.tau)
            metrics["actor"] = loss_mu.detach()
        return metrics


register_agent("ddpg", DDPG, DDPGConfig)
register_agent("td3", DDPG, DDPGConfig,
               preset=DDPGConfig(name="td3", twin_critics=True, target_policy_noise=0.2, policy_delay=2))
