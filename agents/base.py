"""The one base every agent shares: the learner interface the trainer calls, and the notebook API.

Learner interface (used by :class:`rl.trainer.Trainer`)
    ``act(obs, explore) -> (action, extras)``  — batched obs on the device; ``extras`` are stored with
    the transition (e.g. behaviour log-probs); ``update(batch) -> metrics`` (0-d tensors, no host sync);
    ``state()`` / ``load_state()``; ``make_storage``/``make_collector``/``make_evaluator`` pick the
    buffer, actor and evaluation the agent needs. An agent that ``batches_seeds`` holds K = ``trainer.num_seeds``
    agents as one (docs/algorithms.md §5): its observations and batches are K seed-major blocks of rows, and its
    metrics are [K] tensors, one value per seed.

Notebook API (Stable-Baselines3 style)
    ``Agent.from_env(env_id, device=..., **hyperparameters)``, ``learn(steps)``, ``evaluate(episodes)``,
    ``predict(obs)``, ``save(path)``, ``Agent.load(path)``.
"""

from __future__ import annotations

import numbers
import re
from abc import ABCMeta, abstractmethod
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor, nn

from rl import checkpoint, seeding
from rl.buffers import ReplayBuffer
from rl.collector import transition_spec
from rl.config import (AGENTS, AgentConfig, BufferConfig, Config, ConfigError, EnvConfig, LoggerConfig,
                       TrainerConfig, check, from_yaml, one_line, to_config)
from rl.trainer import Trainer, env_collector, env_evaluator, resolve_device


def describe_space(space: gym.Space) -> dict:
    if isinstance(space, gym.spaces.Box):
        return {"type": "Box", "low": torch.from_numpy(space.low), "high": torch.from_numpy(space.high)}
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    raise ConfigError(f"unsupported space {space}")


def rebuild_space(d: dict) -> gym.Space:
    if d["type"] == "Box":
        return gym.spaces.Box(d["low"].numpy(), d["high"].numpy(), dtype=np.float32)
    return gym.spaces.Discrete(d["n"], start=d["start"])


class Agent(nn.Module, metaclass=ABCMeta):
    """Base class: subclasses set ``config_cls`` and implement ``act`` and ``update``."""

    config_cls: ClassVar[type[AgentConfig]]
    random_warmup: ClassVar[bool] = False  # uniform random actions for trainer.learning_starts steps
    off_policy: ClassVar[bool] = False  # learns from replayed data (so trainer.overlap may reorder its updates)
    extra_spec: ClassVar[dict] = {}  # extra per-transition tensors returned by act() and stored
    batches_seeds: ClassVar[bool] = False  # trains trainer.num_seeds seeds as one batch (its __init__ takes seeds=)

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, cfg: AgentConfig,
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.obs_space, self.action_space, self.cfg = obs_space, action_space, cfg
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.run_config: Config | None = None  # the env/trainer settings learn() and evaluate() use
        self.num_updates = 0
        self.num_seeds = 1  # agents that batch seeds: K
        self.generators: list[torch.Generator] = []  # the agent's own random streams (checkpointed; CUDA-graph safe)
        self._graphed_update: Any = None  # rl.graphs.Graphed, once use_cuda_graphs() is called
        self._graphed_act: Any = None
        self._trainer: Trainer | None = None

    # -- learner interface ---------------------------------------------------------------------------
    @abstractmethod
    def act(self, obs: Tensor, explore: bool) -> tuple[Tensor, dict[str, Tensor]]:
        """Actions [B, ...] for observations [B, ...] (exploring or greedy), plus tensors to store."""

    def update(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One learning step on ``batch``; returns 0-d metric tensors, left on the device."""
        phase = self.phase()
        metrics = self._graphed_update(phase, batch) if self._graphed_update else self.update_step(batch, phase)
        self.num_updates += 1
        return metrics

    def explore(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``act(obs, explore=True)`` as collectors call it (from a CUDA graph once :meth:`use_cuda_graphs`)."""
        if self._graphed_act:
            return self._graphed_act(True, {"obs": obs})
        return self.act(obs, explore=True)

    def use_cuda_graphs(self) -> bool:
        """Replay :meth:`update_step` (one graph per phase) and exploring :meth:`act` from CUDA graphs.
        Returns False (and changes nothing) off CUDA or for an agent whose update is not a pure ``update_step``."""
        if self._graphed_update is not None:
            return True
        if self.device.type != "cuda" or type(self).update_step is Agent.update_step:
            return False
        from rl.graphs import Graphed

        gens = tuple(self.generators)
        self._graphed_update = Graphed(lambda phase, batch: self.update_step(batch, phase), generators=gens)
        self._graphed_act = Graphed(lambda explore, x: self.act(x["obs"], explore), generators=gens)
        return True

    def update_step(self, batch: dict[str, Tensor], phase: int) -> dict[str, Tensor]:
        """The tensor work of one update, a function of (``batch``, ``phase``) and the agent's tensors only:
        no host-side state, no host sync — so that the trainer can capture it in a CUDA graph (one per phase)."""
        raise NotImplementedError(f"{type(self).__name__} defines update() itself")

    def set_progress(self, fraction: float) -> None:
        """Called by the trainer every iteration with the fraction of the run done (for step-size schedules)."""

    def phase(self) -> int:
        """Which variant of :meth:`update_step` the next update runs (e.g. TD3: with or without the actor step)."""
        return 0

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def make_storage(self, cfg: Config) -> Any:
        spec = transition_spec(self.obs_space, self.action_space, self.extra_spec)
        return ReplayBuffer(cfg.buffer.capacity, spec, self.device, seeds=cfg.seeds)

    def make_collector(self, cfg: Config) -> Any:
        return env_collector(cfg, self.device)

    def make_evaluator(self, cfg: Config) -> Any:
        return with_value_error(env_evaluator(cfg, self.device), self, cfg)

    def values(self) -> np.ndarray | None:
        """The agent's state-value estimate [S] on a finite-state env (None where that does not apply)."""
        return None

    def exact_values(self, P: np.ndarray, R: np.ndarray) -> np.ndarray:
        """What :meth:`values` should converge to on the finite MDP (P [S,A,S'], R [S,A]): v* by default."""
        from envs.bellman import value_iteration

        return value_iteration(P, R, self.cfg.gamma)[0]

    def counters(self) -> dict[str, int]:
        return {"num_updates": self.num_updates}

    def load_counters(self, counters: dict[str, int]) -> None:
        self.num_updates = int(counters.get("num_updates", 0))

    def state(self) -> dict:
        return {"modules": self.state_dict(), "counters": self.counters(),
                "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
                **({"rng": seeding.get_states(self.generators)} if self.generators else {})}

    def load_state(self, state: dict) -> None:
        self.load_state_dict(state["modules"])
        for k, o in self.optimizers().items():
            o.load_state_dict(state["optimizers"][k])
        if self.generators and "rng" in state:
            seeding.set_states(self.generators, state["rng"])
        self.load_counters(state["counters"])

    def describe_spaces(self) -> dict:
        return {"obs": describe_space(self.obs_space), "action": describe_space(self.action_space)}

    # -- notebook API --------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, env: str, device: str = "auto", seed: int = 0, num_envs: int = 1, num_seeds: int = 1,
                 **hyperparameters: Any) -> "Agent":
        """Build an agent for gymnasium id ``env`` (``num_envs`` copies per seed when it learns) with this class's
        config, overridden by ``hyperparameters``; ``num_seeds`` K > 1: K agents (seeds seed … seed+K−1) as one."""
        name = re.sub(r"[^a-z0-9]+", "_", env.lower()).strip("_")
        try:  # the same key and type checks as the command line's (a typo is an error, not a silent default)
            agent_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls.config_cls), hyperparameters))
        except OmegaConfBaseException as e:
            raise ConfigError(f"{cls.__name__}: {one_line(e)}") from None
        cfg = Config(agent=agent_cfg, env=EnvConfig(name=name, id=env, num_envs=num_envs),
                     buffer=BufferConfig(), trainer=TrainerConfig(num_seeds=num_seeds), logger=LoggerConfig(),
                     seed=seed, device=device)
        agent = build_agent(to_config(cfg))
        if not isinstance(agent, cls):
            raise ConfigError(f"{cls.__name__}.from_env built a {type(agent).__name__}")
        return agent

    def learn(self, total_steps: int, log_dir: str | Path | None = None, **trainer: Any) -> dict[str, Any]:
        """Train for ``total_steps`` more environment steps; repeated calls continue the same run."""
        if self.run_config is None:
            raise ConfigError("this agent has no environment: build it with from_env(...) or load(...)")
        check(isinstance(total_steps, numbers.Integral) and total_steps > 0, f"learn(total_steps) must be a positive number of "
              f"steps, got {total_steps!r}")
        check(trainer.get("num_seeds", self.num_seeds) == self.num_seeds, f"learn() cannot change num_seeds (this agent "
              f"holds {self.num_seeds}): build another with from_env(..., num_seeds={trainer.get('num_seeds')})")
        same_dir = self._trainer is not None and log_dir is not None and self._trainer.run_dir == Path(log_dir)
        if log_dir is not None and not same_dir and checkpoint.holds_run(log_dir):
            raise ConfigError(f"{log_dir} already holds a run; pick a new log_dir (nothing was written)")
        if self._trainer is None or trainer or (log_dir is not None and not same_dir):
            if self._trainer is not None:
                self._trainer.close()
            cfg = replace(self.run_config, trainer=replace(self.run_config.trainer, **trainer))
            self._trainer = Trainer(to_config(cfg), self, run_dir=log_dir)
        return self._trainer.run(self._trainer.step + total_steps)

    def evaluate(self, episodes: int = 10) -> dict[str, Any]:
        """Mean and std of the return of ``episodes`` deterministic episodes on fresh envs (K seeds: lists of K)."""
        if self.run_config is None:
            raise ConfigError("this agent has no environment: build it with from_env(...) or load(...)")
        cfg = replace(self.run_config, trainer=replace(self.run_config.trainer, eval_episodes=episodes))
        return env_evaluator(cfg, self.device)(self)

    @torch.no_grad()
    def predict(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        """Action(s) for one observation or a batch of them (numpy in, numpy out); K seeds: every seed's, [K, ...]."""
        x = torch.as_tensor(np.asarray(obs), device=self.device)
        x = x.to(torch.float32) if isinstance(self.obs_space, gym.spaces.Box) else x.long()
        shape = tuple(self.obs_space.shape)
        single = x.shape == shape
        check(single or tuple(x.shape[1:]) == shape, f"predict expects one observation of shape {shape} or a batch "
                                                     f"of shape (B, {', '.join(map(str, shape))}), got {tuple(x.shape)}")
        x = x.unsqueeze(0) if single else x
        action, _ = self.act(x.repeat(self.num_seeds, *[1] * (x.dim() - 1)), explore=not deterministic)
        action = action.view(self.num_seeds, x.shape[0], *action.shape[1:]).cpu().numpy()
        action = action[:, 0] if single else action
        return action[0] if self.num_seeds == 1 else action

    def save(self, path: str | Path) -> Path:
        """Weights, optimizer state and config in one file (loadable with ``weights_only=True``)."""
        from rl.config import to_yaml

        if self.run_config is None:
            raise ConfigError("cannot save an agent built without a run config (use from_env)")
        try:
            return checkpoint.atomic_save({"version": checkpoint.FORMAT, "config": to_yaml(self.run_config),
                                           "spaces": self.describe_spaces(), "agent": self.state()}, path)
        except OSError as e:
            raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> "Agent":
        """Load what :meth:`save` wrote, or a trainer checkpoint (a run directory: its newest complete one)."""
        state = checkpoint.load_newest(path).state
        cfg = from_yaml(state["config"])
        cfg = replace(cfg, device=device)
        agent_cls = AGENTS[cfg.agent.name][0]
        if not issubclass(agent_cls, cls):
            raise ConfigError(f"{path} holds a {agent_cls.__name__}, not a {cls.__name__}")
        agent = create(agent_cls, rebuild_space(state["spaces"]["obs"]), rebuild_space(state["spaces"]["action"]),
                       cfg, resolve_device(device))
        agent.run_config = cfg
        try:
            agent.load_state(state["agent"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise ConfigError(f"{path} does not fit a {agent_cls.__name__} as its config describes it: "
                              f"{checkpoint.first_line(e)}") from None
        return agent


def with_value_error(evaluate: Any, agent: Agent, cfg: Config) -> Any:
    """Adds ``charts/value_error`` = max_s |values() − exact| to an evaluator, on grid-world envs."""
    from envs.gridworld import GridWorld

    env = gym.make(cfg.env.id, **cfg.env.kwargs).unwrapped
    exact = None
    if isinstance(env, GridWorld) and agent.values() is not None:
        exact = agent.exact_values(*env.transition_model())
    env.close()
    if exact is None:
        return evaluate

    def evaluate_with_error(a: Agent) -> dict[str, float]:
        return {**evaluate(a), "charts/value_error": float(np.abs(a.values() - exact).max())}

    return evaluate_with_error


def check_seeds(agent_cls: type[Agent], cfg: Config) -> None:
    """``trainer.num_seeds`` > 1 needs an agent that batches seeds, and envs stepped per seed."""
    k = cfg.trainer.num_seeds
    if k == 1:
        return
    batched = ", ".join(sorted(n for n, (c, _) in AGENTS.items() if c.batches_seeds))
    check(agent_cls.batches_seeds, f"trainer.num_seeds={k}: agent={cfg.agent.name} trains one seed per process "
          f"(trainer.num_seeds batches the seeds of {batched}); for {k} seeds of it run a multirun: python -m rl.train "
          f"-m agent={cfg.agent.name} seed={','.join(map(str, cfg.seeds))}")
    check(cfg.env.backend == "gymnasium", f"trainer.num_seeds={k} needs env.backend=gymnasium (each seed steps and "
          "resets its own gymnasium envs; a batched torch env draws every env's resets from one generator)")


def create(agent_cls: type[Agent], obs_space: gym.Space, action_space: gym.Space, cfg: Config,
           device: torch.device) -> Agent:
    """``agent_cls`` for ``cfg`` (its ``trainer.num_seeds`` seeds when it batches seeds)."""
    seeds = {"seeds": cfg.seeds} if agent_cls.batches_seeds else {}
    return agent_cls(obs_space, action_space, cfg.agent, device, **seeds)


def build_agent(cfg: Config) -> Agent:
    """Seed torch, look at the env's spaces and construct the configured agent on the configured device."""
    from envs.make import probe_spaces

    name = cfg.agent.name
    if name not in AGENTS:
        raise ConfigError(f"unknown agent {name!r}; known: {', '.join(sorted(AGENTS))}")
    check_seeds(AGENTS[name][0], cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    obs_space, action_space = probe_spaces(cfg.env)
    agent = create(AGENTS[name][0], obs_space, action_space, cfg, device)
    agent.run_config = cfg
    return agent
