"""The tabular agents (docs/algorithms.md §1) and the sliding windows of consecutive steps they learn from.

Each ``update`` picks its rows of the window and calls one pure update of :mod:`agents.tabular.updates`.
"""

from __future__ import annotations

from typing import ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from agents.base import Agent
from agents.tabular.config import (ControlConfig, EvaluationConfig, ExpectedSARSAConfig, MCConfig, NStepSARSAConfig,
                                   QLearningConfig, SARSAConfig, TabularConfig, TDConfig, parse_policy)
from agents.tabular.updates import (epsilon_greedy, expected_sarsa_update, mc_return, mc_update, nstep_sarsa_update,
                                    qlearning_update, sarsa_update, td_update, visit_step_sizes)
from rl.buffers import RolloutBuffer
from rl.collector import transition_spec
from rl.config import Config, ConfigError, check, register_agent


class SlidingRollout(RolloutBuffer):
    """[lookahead + stride, N] windows of consecutive steps, one every ``stride`` vector steps.

    The agent updates the first ``stride`` rows; the last ``lookahead`` rows (the steps those need to look
    ahead to: a', s_n, the rest of a return) stay and open the next window.
    """

    def __init__(self, stride: int, lookahead: int, num_envs: int, spec: dict, device: torch.device) -> None:
        super().__init__(stride + lookahead, num_envs, spec, device)
        self.lookahead = lookahead

    def batches(self, num_updates: int = 1, batch_size: int = 0):
        if self.full:
            window = {k: v.clone() for k, v in self.data.items()}
            for k, v in self.data.items():
                v[:self.lookahead] = window[k][self.num_steps - self.lookahead:]
            self.t = self.lookahead
            yield window


def ahead(x: Tensor, n: int, starts: int) -> Tensor:
    """``out[j, t] = x[t + j]`` for j < n, t < starts: [n, starts, ...] from [T, ...]."""
    return torch.stack([x[j:j + starts] for j in range(n)])


# -- agents ------------------------------------------------------------------------------------------
class TabularAgent(Agent):
    """Shared plumbing: discrete-space check, visit counts, step sizes and storage."""

    stride: ClassVar[int] = 1  # vector steps between updates
    lookahead: ClassVar[int] = 0  # steps after the updated ones that an update reads

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, cfg: TabularConfig,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(obs_space, action_space, cfg, device)
        if not (isinstance(obs_space, gym.spaces.Discrete) and isinstance(action_space, gym.spaces.Discrete)):
            raise ConfigError(f"tabular agent {cfg.name!r} needs Discrete observation and action spaces (a finite "
                              f"MDP such as env=gridworld), but the env has observation space {obs_space} and "
                              f"action space {action_space}")
        self.n_states, self.n_actions = int(obs_space.n), int(action_space.n)
        self.schedule = cfg.schedule()

    def make_storage(self, cfg: Config) -> SlidingRollout:
        spec = transition_spec(self.obs_space, self.action_space, self.extra_spec)
        return SlidingRollout(self.stride, self.lookahead, cfg.env.num_envs, spec, self.device)

    def step_sizes(self, index: Tensor) -> Tensor:
        alpha, self.counts = visit_step_sizes(self.counts, index, self.schedule)
        return alpha

    def values(self) -> np.ndarray:
        """The current state-value estimate [S]."""
        raise NotImplementedError

    def exact_values(self, P: np.ndarray, R: np.ndarray) -> np.ndarray:
        """What :meth:`values` converges to on the MDP (P, R)."""
        raise NotImplementedError


class StateValueAgent(TabularAgent):
    """Evaluates a fixed policy π (the same action probabilities in every state) with a table v [S]."""

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, cfg: EvaluationConfig,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(obs_space, action_space, cfg, device)
        probs = [1.0 / self.n_actions] * self.n_actions if cfg.policy == "uniform" else parse_policy(cfg.policy)
        check(len(probs) == self.n_actions, f"agent.policy has {len(probs)} probabilities, "
                                            f"the env has {self.n_actions} actions")
        self.register_buffer("pi", torch.tensor(probs, device=self.device))
        self.register_buffer("v", torch.full((self.n_states,), float(cfg.init), device=self.device))
        self.register_buffer("counts", torch.zeros(self.n_states, dtype=torch.int64, device=self.device))

    def act(self, obs: Tensor, explore: bool) -> tuple[Tensor, dict[str, Tensor]]:
        if not explore:  # the most probable action of π
            return self.pi.argmax().expand(obs.shape[0]).clone(), {}
        return torch.multinomial(self.pi.expand(obs.shape[0], -1), 1).squeeze(-1), {}

    def values(self) -> np.ndarray:
        return self.v.cpu().numpy().copy()

    def exact_values(self, P: np.ndarray, R: np.ndarray) -> np.ndarray:
        from envs.bellman import policy_evaluation

        pi = np.broadcast_to(self.pi.cpu().double().numpy(), (P.shape[0], P.shape[1]))
        return policy_evaluation(P, R, pi, self.cfg.gamma)

    def _apply(self, s: Tensor, new_v: Tensor) -> dict[str, Tensor]:
        change = (new_v[s] - self.v[s]).abs().mean()
        self.v = new_v
        return {"value_change": change}


class TD(StateValueAgent):
    config_cls = TDConfig

    def update(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        s, r, s_next, term = (batch[k].flatten() for k in ("obs", "reward", "next_obs", "terminated"))
        return self._apply(s, td_update(self.v, s, r, s_next, term, self.step_sizes(s), self.cfg.gamma))


class MC(StateValueAgent):
    """Every-visit Monte Carlo; each return runs to termination or ``horizon`` rewards (the cut-off error is at
    most γ^horizon max|v|). Returns cut short by a truncation are no samples of G and are skipped."""

    config_cls = MCConfig

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, cfg: MCConfig,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(obs_space, action_space, cfg, device)
        self.stride = self.lookahead = cfg.return_horizon()

    def make_storage(self, cfg: Config) -> SlidingRollout:
        steps = cfg.env.max_episode_steps
        check(steps is None or steps >= self.lookahead,
              f"agent=mc sums returns over agent.horizon={self.lookahead} rewards, but env.max_episode_steps="
              f"{steps} ends every episode before that: raise env.max_episode_steps or lower agent.horizon")
        return super().make_storage(cfg)

    def update(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        H, T = self.lookahead, self.stride
        g, complete = mc_return(ahead(batch["reward"], H, T), ahead(batch["terminated"], H, T),
                                ahead(batch["truncated"], H, T), self.cfg.gamma)
        s, g = batch["obs"][:T][complete], g[complete]
        return self._apply(s, mc_update(self.v, s, g, self.step_sizes(s)))


class ActionValueAgent(TabularAgent):
    """Control with a table q [S, A], acting ε-greedily with the GLIE schedule ε(s) = ε0 / (1 + n(s)/h)."""

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, cfg: ControlConfig,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(obs_space, action_space, cfg, device)
        S, A = self.n_states, self.n_actions
        self.register_buffer("q", torch.full((S, A), float(cfg.init), device=self.device))
        self.register_buffer("counts", torch.zeros(S * A, dtype=torch.int64, device=self.device))

    def epsilon(self, s: Tensor) -> Tensor:
        eps = torch.full(s.shape, float(self.cfg.epsilon), device=self.device)
        if self.cfg.epsilon_halflife is None:
            return eps
        return eps / (1 + self.counts.view(self.n_states, self.n_actions)[s].sum(-1) / self.cfg.epsilon_halflife)

    def policy(self, s: Tensor) -> Tensor:
        """π_ε(·|s) [B, A]."""
        return epsilon_greedy(self.q[s], self.epsilon(s))

    def act(self, obs: Tensor, explore: bool) -> tuple[Tensor, dict[str, Tensor]]:
        if not explore:
            return self.q[obs].argmax(-1), {}
        return torch.multinomial(self.policy(obs), 1).squeeze(-1), {}

    def values(self) -> np.ndarray:
        return self.q.max(-1).values.cpu().numpy()

    def exact_values(self, P: np.ndarray, R: np.ndarray) -> np.ndarray:
        from envs.bellman import value_iteration

        return value_iteration(P, R, self.cfg.gamma)[0]

    def _apply(self, s: Tensor, a: Tensor, new_q: Tensor) -> dict[str, Tensor]:
        change = (new_q[s, a] - self.q[s, a]).abs().mean()
        self.q = new_q
        return {"value_change": change}

    def rows(self, batch: dict[str, Tensor], *keys: str) -> list[Tensor]:
        return [batch[k][:self.stride].flatten() for k in keys]


class SARSA(ActionValueAgent):
    config_cls = SARSAConfig
    lookahead = 1  # a' is the next row's action

    def update(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        s, a, r, s_next, term, trunc = self.rows(batch, "obs", "action", "reward", "next_obs", "terminated",
                                                  "truncated")
        a_next = batch["action"][1:1 + self.stride].flatten()
        # after a truncation the next row starts a new episode: draw a' ~ π_ε(s') instead
        a_next = torch.where(trunc, torch.multinomial(self.policy(s_next), 1).squeeze(-1), a_next)
        return self._apply(s, a, sarsa_update(self.q, s, a, r, s_next, a_next, term,
                                              self.step_sizes(s * self.n_actions + a), self.cfg.gamma))


class ExpectedSARSA(ActionValueAgent):
    config_cls = ExpectedSARSAConfig

    def update(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        s, a, r, s_next, term = self.rows(batch, "obs", "action", "reward", "next_obs", "terminated")
        return self._apply(s, a, expected_sarsa_update(self.q, s, a, r, s_next, self.policy(s_next), term,
                                                       self.step_sizes(s * self.n_actions + a), self.cfg.gamma))


class NStepSARSA(ActionValueAgent):
    config_cls = NStepSARSAConfig

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, cfg: NStepSARSAConfig,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(obs_space, action_space, cfg, device)
        self.lookahead = cfg.n

    def update(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        n, T, gamma = self.lookahead, self.stride, self.cfg.gamma
        s, a = self.rows(batch, "obs", "action")
        rewards, term, trunc = (ahead(batch[k], n, T).flatten(1) for k in ("reward", "terminated", "truncated"))
        next_obs = ahead(batch["next_obs"], n, T).flatten(1)
        # a truncation ends the return with a bootstrap from the last s': fold γ q(s', a'), a' ~ π_ε(s'),
        # into that reward and stop there (r + γ q(s', a') is then exactly what the recursion adds)
        a_cut = torch.multinomial(self.policy(next_obs.flatten()), 1).view_as(next_obs)
        rewards = rewards + gamma * trunc.float() * self.q[next_obs, a_cut]
        s_n, a_n = batch["obs"][n:n + T].flatten(), batch["action"][n:n + T].flatten()
        return self._apply(s, a, nstep_sarsa_update(self.q, s, a, rewards, s_n, a_n, term | trunc,
                                                    self.step_sizes(s * self.n_actions + a), gamma))


class QLearning(ActionValueAgent):
    config_cls = QLearningConfig

    def update(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        s, a, r, s_next, term = self.rows(batch, "obs", "action", "reward", "next_obs", "terminated")
        return self._apply(s, a, qlearning_update(self.q, s, a, r, s_next, term,
                                                  self.step_sizes(s * self.n_actions + a), self.cfg.gamma))


register_agent("td", TD, TDConfig)
register_agent("mc", MC, MCConfig)
register_agent("sarsa", SARSA, SARSAConfig)
register_agent("expected_sarsa", ExpectedSARSA, ExpectedSARSAConfig)
register_agent("nstep_sarsa", NStepSARSA, NStepSARSAConfig)
register_agent("qlearning", QLearning, QLearningConfig)
