"""The notebook API (Stable-Baselines3 style), a mixin of :class:`agents.base.Agent`.

    agent = DDPG.from_env("Pendulum-v1", device="cpu", actor_lr=1e-3)   # hyperparameters as keywords
    agent.learn(20_000)          # a Trainer behind the scenes; learn() again continues the same run
    agent.evaluate(episodes=10)  # {'return_mean': ..., 'return_std': ...}
    agent.predict(obs)           # numpy in, numpy out; one observation or a batch
    agent.save("ddpg.pt"); agent = DDPG.load("ddpg.pt")   # load() also takes a CLI run directory

It only builds configs and calls the learner interface (``act``, ``state``/``load_state``, ``make_evaluator``)
and :class:`rl.trainer.Trainer`; a subclass with another kind of input (e.g. Kimi's text prompts) overrides the
methods whose input differs.
"""

from __future__ import annotations

import numbers
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rl import checkpoint
from rl.config import (AGENTS, BufferConfig, Config, ConfigError, EnvConfig, LoggerConfig, TrainerConfig, check,
                       from_yaml, one_line, to_config, to_yaml)
from rl.trainer import Trainer, resolve_device


def describe_space(space: gym.Space) -> dict:
    """A gymnasium space as tensors and numbers (checkpoints load with ``weights_only=True``)."""
    if isinstance(space, gym.spaces.Box):
        return {"type": "Box", "low": torch.from_numpy(space.low), "high": torch.from_numpy(space.high)}
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    raise ConfigError(f"unsupported space {space}")


def rebuild_space(d: dict) -> gym.Space:
    if d["type"] == "Box":
        return gym.spaces.Box(d["low"].numpy(), d["high"].numpy(), dtype=np.float32)
    return gym.spaces.Discrete(d["n"], start=d["start"])


def _need_env(agent: Any) -> Config:
    if agent.run_config is None:
        raise ConfigError("this agent has no environment: build it with from_env(...) or load(...)")
    return agent.run_config


class NotebookAPI:
    """``from_env``, ``learn``, ``evaluate``, ``predict``, ``save``, ``load`` for an agent that has the learner
    interface and the attributes ``run_config`` (the env/trainer settings) and ``_trainer`` (set by learn)."""

    run_config: Config | None
    _trainer: Trainer | None

    @classmethod
    def from_env(cls, env: str, device: str = "auto", seed: int = 0, num_envs: int = 1, num_seeds: int = 1,
                 **hyperparameters: Any) -> Any:
        """Build an agent for gymnasium id ``env`` (``num_envs`` copies per seed when it learns) with this class's
        config, overridden by ``hyperparameters``; ``num_seeds`` K > 1: K agents (seeds seed … seed+K−1) as one
        (DDPG, TD3: docs/algorithms.md §5)."""
        from agents.base import build_agent

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
        """Train for ``total_steps`` more environment steps; repeated calls continue the same run.
        ``log_dir``: TensorBoard events (and checkpoints) go there; ``trainer``: any ``trainer.*`` key."""
        run_config = _need_env(self)
        check(isinstance(total_steps, numbers.Integral) and total_steps > 0, f"learn(total_steps) must be a positive "
              f"number of steps, got {total_steps!r}")
        check(trainer.get("num_seeds", self.num_seeds) == self.num_seeds, f"learn() cannot change num_seeds (this agent "
              f"holds {self.num_seeds}): build another with from_env(..., num_seeds={trainer.get('num_seeds')})")
        same_dir = self._trainer is not None and log_dir is not None and self._trainer.run_dir == Path(log_dir)
        if log_dir is not None and not same_dir and checkpoint.holds_run(log_dir):
            raise ConfigError(f"{log_dir} already holds a run; pick a new log_dir (nothing was written)")
        if self._trainer is None or trainer or (log_dir is not None and not same_dir):
            if self._trainer is not None:
                self._trainer.close()
            cfg = replace(run_config, trainer=replace(run_config.trainer, **trainer))
            self._trainer = Trainer(to_config(cfg), self, run_dir=log_dir)
        return self._trainer.run(self._trainer.step + total_steps)

    def evaluate(self, episodes: int = 10) -> dict[str, float]:
        """Mean and std of the return of ``episodes`` deterministic episodes on fresh envs (on the grid world also
        the value error and the greedy policy's optimal cells: agents/evaluation.py)."""
        run_config = _need_env(self)
        cfg = replace(run_config, trainer=replace(run_config.trainer, eval_episodes=episodes))
        return self.make_evaluator(cfg)(self)

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
        if self.run_config is None:
            raise ConfigError("cannot save an agent built without a run config (use from_env)")
        try:
            return checkpoint.atomic_save({"version": checkpoint.FORMAT, "config": to_yaml(self.run_config),
                                           "spaces": self.describe_spaces(), "agent": self.state()}, path)
        except OSError as e:
            raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Any:
        """Load what :meth:`save` wrote, or a trainer checkpoint (a run directory: its newest complete one)."""
        state = checkpoint.load_newest(path).state
        cfg = replace(from_yaml(state["config"]), device=device)
        agent_cls = AGENTS[cfg.agent.name][0]
        if not issubclass(agent_cls, cls):
            raise ConfigError(f"{path} holds a {agent_cls.__name__}, not a {cls.__name__}")
        from agents.base import create

        agent = create(agent_cls, rebuild_space(state["spaces"]["obs"]), rebuild_space(state["spaces"]["action"]), cfg,
                       resolve_device(device))
        agent.run_config = cfg
        try:
            agent.load_state(state["agent"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise ConfigError(f"{path} does not fit a {agent_cls.__name__} as its config describes it: "
                              f"{checkpoint.first_line(e)}") from None
        return agent
