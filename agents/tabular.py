"""Tabular agents: every method is one stochastic-approximation step on a table (ALGORITHMS.md §1).

    w(i) ← w(i) − a_k(i) [w(i) − x]        k(i): how often entry i (a state, or a state-action pair) was updated

with a target x per method (π_ε: the ε-greedy policy of q; π: the evaluated policy of td/mc):

    td              x = r + γ v(s')                                  → v_π
    mc              x = G_t = r_1 + γ r_2 + … (to the end, or `horizon` rewards)    → v_π
    sarsa           x = r + γ q(s', a'),   a' ~ π_ε(s') the action taken next        → q*  (GLIE ε)
    expected_sarsa  x = r + γ Σ_a π_ε(a|s') q(s', a)                  → q*  (GLIE ε)
    nstep_sarsa     x = r_1 + γ r_2 + … + γ^{n−1} r_n + γ^n q(s_n, a_n)              → q*  (GLIE ε)
    qlearning       x = r + γ max_a q(s', a)     (off-policy; default behaviour: uniform) → q*

Step sizes come from ``rl.approximation``: Robbins–Monro ``a_k = a0 / (k + k0)^p`` (0.5 < p ≤ 1 converges)
or a constant ``a0`` (tracks, never settles). GLIE exploration: ``ε(s) = ε0 / (1 + n(s)/h)``, n(s) the
updates made from s so far. Targets bootstrap through truncation and stop at termination.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from agents.base import Agent
from rl.approximation import n_step_target, step_size, td_target
from rl.buffers import RolloutBuffer
from rl.collector import transition_spec
from rl.config import AgentConfig, Config, ConfigError, check, positive, register_agent
from rl.trainer import env_evaluator


# -- configs -----------------------------------------------------------------------------------------
@dataclass
class TabularConfig(AgentConfig):
    gamma: float = 0.9
    step_size: str = "robbins_monro"  # robbins_monro: a_k = a0 / (k + k0)^p  |  constant: a_k = a0
    a0: float = 1.0
    p: float = 0.7  # 0.5 < p <= 1 unless convergent=false; p < 1 forgets the biased early TD targets faster
    k0: float = 0.0
    convergent: bool = True  # reject Robbins–Monro powers that break Σ a_k = ∞, Σ a_k² < ∞
    init: float = 0.0  # every table entry's first value (optimistic, e.g. r_max/(1−γ): untried actions look good)

    def __post_init__(self) -> None:
        check(0 <= self.gamma <= 1, f"agent.gamma must be in [0, 1], got {self.gamma}")
        self.schedule()  # a bad schedule fails here, before training

    def schedule(self) -> Callable[[Tensor], Tensor]:
        if self.step_size == "constant":
            return step_size("constant", a=self.a0)
        return step_size(self.step_size, a0=self.a0, p=self.p, k0=self.k0, convergent=self.convergent)


@dataclass
class EvaluationConfig(TabularConfig):
    # the evaluated policy, the same in every state: "uniform" or comma-separated probabilities "0.5,0.5,0,0,0"
    policy: str = "uniform"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.policy != "uniform":
            probs = parse_policy(self.policy)
            check(all(x >= 0 for x in probs) and abs(sum(probs) - 1) < 1e-6,
                  f"agent.policy must be 'uniform' or probabilities summing to 1, got {self.policy!r}")


@dataclass
class TDConfig(EvaluationConfig):
    name: str = "td"


@dataclass
class MCConfig(EvaluationConfig):
    name: str = "mc"
    p: float = 1.0  # MC targets are unbiased samples: a_k = 1/k makes v(s) their sample mean
    horizon: Optional[int] = None  # rewards summed when no termination comes first; None: smallest H with γ^H ≤ 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.horizon is None:
            check(self.gamma < 1, "agent.horizon must be set when agent.gamma = 1")
        else:
            positive("agent.horizon", self.horizon)

    def return_horizon(self) -> int:
        if self.horizon is not None:
            return self.horizon
        return 1 if self.gamma == 0 else max(1, int(np.ceil(np.log(1e-3) / np.log(self.gamma))))


@dataclass
class ControlConfig(TabularConfig):
    epsilon: float = 1.0  # ε0: exploration at a state's first visit
    epsilon_halflife: Optional[float] = 20.0  # h: ε(s) = ε0 / (1 + n(s)/h) (GLIE); None: ε0 forever

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.epsilon <= 1, f"agent.epsilon must be in [0, 1], got {self.epsilon}")
        if self.epsilon_halflife is not None:
            positive("agent.epsilon_halflife", self.epsilon_halflife)


@dataclass
class SARSAConfig(ControlConfig):
    name: str = "sarsa"


@dataclass
class ExpectedSARSAConfig(ControlConfig):
    name: str = "expected_sarsa"


@dataclass
class NStepSARSAConfig(ControlConfig):
    name: str = "nstep_sarsa"
    n: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        positive("agent.n", self.n)


@dataclass
class QLearningConfig(ControlConfig):
    name: str = "qlearning"
    epsilon_halflife: Optional[float] = None  # uniform behaviour policy: Q-learning is off-policy


def parse_policy(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"agent.policy must be 'uniform' or comma-separated probabilities, got {text!r}") from None


# -- the math, as pure functions ---------------------------------------------------------------------
def sa_update(table: Tensor, index: Tensor, target: Tensor, alpha: Tensor) -> Tensor:
    """``w(i) ← w(i) − α [w(i) − x]`` for every sample (i, x, α) of a flat table [E]; repeated i's add up."""
    return table.index_add(0, index, -alpha * (table[index] - target))


def q_update(q: Tensor, s: Tensor, a: Tensor, target: Tensor, alpha: Tensor) -> Tensor:
    """:func:`sa_update` on the entries (s, a) of q [S, A]."""
    return sa_update(q.flatten(), s * q.shape[1] + a, target, alpha).view_as(q)


def td_update(v: Tensor, s: Tensor, r: Tensor, s_next: Tensor, terminated: Tensor, alpha: Tensor,
              gamma: float) -> Tensor:
    """TD(0): ``v(s) ← v(s) − α [v(s) − (r + γ v(s'))]``."""
    return sa_update(v, s, td_target(r, v[s_next], terminated, gamma), alpha)


def sarsa_update(q: Tensor, s: Tensor, a: Tensor, r: Tensor, s_next: Tensor, a_next: Tensor, terminated: Tensor,
                 alpha: Tensor, gamma: float) -> Tensor:
    """SARSA: ``q(s,a) ← q(s,a) − α [q(s,a) − (r + γ q(s',a'))]``."""
    return q_update(q, s, a, td_target(r, q[s_next, a_next], terminated, gamma), alpha)


def expected_sarsa_update(q: Tensor, s: Tensor, a: Tensor, r: Tensor, s_next: Tensor, pi_next: Tensor,
                          terminated: Tensor, alpha: Tensor, gamma: float) -> Tensor:
    """Expected SARSA: the target is ``r + γ Σ_a π(a|s') q(s',a)``; ``pi_next`` [B, A]."""
    return q_update(q, s, a, td_target(r, (pi_next * q[s_next]).sum(-1), terminated, gamma), alpha)


def nstep_sarsa_update(q: Tensor, s: Tensor, a: Tensor, rewards: Tensor, s_n: Tensor, a_n: Tensor,
                       terminated: Tensor, alpha: Tensor, gamma: float) -> Tensor:
    """n-step SARSA: target ``r_1 + γ r_2 + … + γ^{n−1} r_n + γ^n q(s_n, a_n)``; rewards, terminated [n, B]."""
    return q_update(q, s, a, n_step_target(rewards, q[s_n, a_n], terminated, gamma)[0], alpha)


def qlearning_update(q: Tensor, s: Tensor, a: Tensor, r: Tensor, s_next: Tensor, terminated: Tensor,
                     alpha: Tensor, gamma: float) -> Tensor:
    """Q-learning: the target is ``r + γ max_a q(s', a)``."""
    return q_update(q, s, a, td_target(r, q[s_next].max(-1).values, terminated, gamma), alpha)


def mc_update(v: Tensor, s: Tensor, returns: Tensor, alpha: Tensor) -> Tensor:
    """Monte Carlo: ``v(s) ← v(s) − α [v(s) − G]``."""
    return sa_update(v, s, returns, alpha)


def mc_return(rewards: Tensor, terminated: Tensor, truncated: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """``G = r_1 + γ r_2 + …`` up to the episode's end or the window's (rewards etc. [H, ...]).

    Returns (G [...], complete [...]): ``complete`` is False where a truncation before the H-th reward cut
    the return short.
    """
    ended = terminated | truncated
    g = n_step_target(rewards, torch.zeros_like(rewards[0]), ended, gamma)[0]
    end = ended.float().argmax(0, keepdim=True)  # the first step that ended the episode (0 if none did)
    cut = truncated.gather(0, end) & ~terminated.gather(0, end) & (end < rewards.shape[0] - 1)
    return g, ~cut[0]


def epsilon_greedy(q: Tensor, epsilon: Tensor) -> Tensor:
    """``π(a|s) = ε/|A| + (1 − ε) 1[a = argmax q(s,·)]``: q [B, A], epsilon [B] → [B, A]."""
    eps = epsilon.unsqueeze(-1)
    return eps / q.shape[-1] + (1 - eps) * F.one_hot(q.argmax(-1), q.shape[-1]).to(q.dtype)


def visit_step_sizes(counts: Tensor, index: Tensor, schedule: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """Per-sample step sizes for one batch, and the visit counts after it.

    A sample of entry i is i's visit ``k = counts[i] + (its rank among i's samples in the batch) + 1``; alone
    it gets ``a_k``. m samples of one entry share ``1 − Π (1 − a_k)`` equally: the batch moves w(i) to the mean
    target as far as m sequential steps would (with a_k = 1/k: exactly the running sample mean).
    """
    m = torch.bincount(index, minlength=counts.numel())
    order = torch.argsort(index, stable=True)
    rank = torch.empty_like(index)
    rank[order] = torch.arange(index.numel(), device=index.device) - (torch.cumsum(m, 0) - m)[index[order]]
    a = schedule((counts[index] + rank + 1).double())
    keep = torch.ones(counts.numel(), dtype=torch.float64, device=index.device).scatter_reduce(0, index, 1 - a, "prod")
    return ((1 - keep[index]) / m[index]).float(), counts + m


# -- storage -----------------------------------------------------------------------------------------
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
    """Shared plumbing: discrete-space check, visit counts, step sizes, storage and the exact-value evaluator."""

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

    def make_evaluator(self, cfg: Config) -> Callable[[Any], dict[str, float]]:
        """Greedy-episode returns, plus ``charts/value_error`` = max_s |values() − exact| on a GridWorld."""
        from envs.gridworld import GridWorld

        returns = env_evaluator(cfg, self.device)
        env = gym.make(cfg.env.id, **cfg.env.kwargs).unwrapped
        exact = self.exact_values(*env.transition_model()) if isinstance(env, GridWorld) else None
        env.close()

        def evaluate(agent: TabularAgent) -> dict[str, float]:
            out = returns(agent)
            if exact is not None:
                out["charts/value_error"] = float(np.abs(agent.values() - exact).max())
            return out

        return evaluate


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
