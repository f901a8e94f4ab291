"""The one base every agent shares: the learner interface the trainer calls (the notebook API is a mixin,
agents/api.py; evaluation against exact answers, agents/evaluation.py).

Learner interface (used by :class:`rl.trainer.Trainer`)
    ``act(obs, explore) -> (action, extras)``  — batched obs on the device; ``extras`` are stored with
    the transition (e.g. behaviour log-probs); ``update(batch) -> metrics`` (0-d tensors, no host sync);
    ``state()`` / ``load_state()``; ``make_storage``/``make_collector``/``make_evaluator`` pick the
    buffer, actor and evaluation the agent needs. An agent that ``batches_seeds`` holds K = ``trainer.num_seeds``
    agents as one (docs/algorithms.md §5): its observations and batches are K seed-major blocks of rows, and its
    metrics are [K] tensors, one value per seed.

Notebook API (Stable-Baselines3 style, :class:`agents.api.NotebookAPI`)
    ``Agent.from_env(env_id, device=..., **hyperparameters)``, ``learn(steps)``, ``evaluate(episodes)``,
    ``predict(obs)``, ``save(path)``, ``Agent.load(path)``.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from agents.api import NotebookAPI, describe_space
from agents.evaluation import with_exact_errors
from rl import seeding
from rl.buffers import ReplayBuffer
from rl.collector import transition_spec
from rl.config import AGENTS, AgentConfig, Config, ConfigError, check
from rl.logging import MetricAccumulator
from rl.trainer import Trainer, env_collector, env_evaluator, resolve_device


class Agent(NotebookAPI, nn.Module, metaclass=ABCMeta):
    """Base class: subclasses set ``config_cls`` and implement ``act`` and ``update`` (or ``update_step``)."""

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
        self.banks: dict[str, seeding.Bank] = {}  # their draws made ahead, for graphs (rl.seeding.Bank)
        self._graphed_update: Any = None  # rl.graphs.Graphed, once use_cuda_graphs() is called
        self._graphed_act: Any = None
        self._graphed_sampled_update: Any = None  # (sample_and_update's graph: buffer + update + metric sums, its sums)
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

    def sample_and_update(self, storage: Any, batch_size: int, metrics: MetricAccumulator | None = None
                          ) -> dict[str, Tensor]:
        """One update on a fresh uniform minibatch of a replay buffer: ``update(storage.sample(batch_size))``, its
        metrics added to ``metrics`` if given. Where both are CUDA graphs, sampling, update and the metrics' sum
        replay as one graph (same kernels, same draws, one launch)."""
        if self._graphed_update is None or getattr(storage, "_graphed_sample", None) is None:
            out = self.update(storage.sample(batch_size))
            if metrics is not None:
                metrics.add(out)
            return out
        if self._graphed_sampled_update is None or self._graphed_sampled_update[1] is not metrics:
            from rl.graphs import Graphed

            def step(key: tuple[int, int], _: dict) -> dict[str, Tensor]:
                out = self.update_step(storage._sample(key[1]), key[0])
                return metrics.sum_in(out) if metrics is not None else out

            # captured with this accumulator's sums: another accumulator (a notebook's next learn()) recaptures
            self._graphed_sampled_update = (Graphed(step), metrics)
        out = self._graphed_sampled_update[0]((self.phase(), batch_size), {})
        if metrics is not None:
            metrics.tally(out)
        self.num_updates += 1
        return out

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

        # random numbers: the default CUDA generator's, or self.generators' through self.banks (drawn outside the graph)
        self._graphed_update = Graphed(lambda phase, batch: self.update_step(batch, phase))
        self._graphed_act = Graphed(lambda explore, x: self.act(x["obs"], explore))
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
        return with_exact_errors(env_evaluator(cfg, self.device), self, cfg)

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
                **({"rng": seeding.get_states(self.generators)} if self.generators else {}),
                **({"banks": seeding.bank_states(self.banks)} if self.banks else {})}

    def load_state(self, state: dict) -> None:
        self.load_state_dict(state["modules"])
        for k, o in self.optimizers().items():
            o.load_state_dict(state["optimizers"][k])
        if self.generators and "rng" in state:
            seeding.set_states(self.generators, state["rng"])
            seeding.load_banks(self.banks, self.generators, state.get("banks", {}))
        self.load_counters(state["counters"])

    def describe_spaces(self) -> dict:
        return {"obs": describe_space(self.obs_space), "action": describe_space(self.action_space)}


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


def check_fuse(agent_cls: type[Agent], cfg: Config) -> None:
    """``trainer.fuse`` compiles an agent's loss functions: only agents whose update calls them separately have a
    ``fuse_losses()`` (DDPG/TD3)."""
    names = ", ".join(sorted(n for n, (c, _) in AGENTS.items() if hasattr(c, "fuse_losses")))
    check(not cfg.trainer.fuse or hasattr(agent_cls, "fuse_losses"), f"trainer.fuse=true: agent={cfg.agent.name} has "
          f"no compiled losses (agents that have them: {names}); leave it false")


def check_eval_background(agent_cls: type[Agent], cfg: Config) -> None:
    """``trainer.eval_background`` needs the env evaluation every env agent has (rl/background_eval.py)."""
    check(not cfg.trainer.eval_background or agent_cls.make_evaluator is Agent.make_evaluator,
          f"trainer.eval_background=true plays gymnasium evaluation episodes in a CPU process; agent={cfg.agent.name} "
          "evaluates its own way: leave it false")


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
