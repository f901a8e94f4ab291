"""Env construction from config: gymnasium vector envs with same-step autoreset, and env snapshots.

Every sub-env is wrapped in :class:`Snapshot`, which captures the plain state of each wrapper layer
(numbers, numpy arrays, numpy RNGs; MuJoCo's qpos/qvel) so that a checkpoint can restore the exact
simulator state and a resumed run continues the same trajectory.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv

from rl.config import ConfigError, EnvConfig


def _plain_state(obj: Any) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for k, v in vars(obj).items():
        if isinstance(v, np.random.Generator):
            state[k] = {"__numpy_rng__": v.bit_generator.state}
        elif isinstance(v, np.ndarray) and v.dtype != object:
            state[k] = torch.from_numpy(np.array(v))
        elif isinstance(v, np.generic):
            state[k] = {"__numpy_scalar__": torch.from_numpy(np.array(v))}
        elif v is None or isinstance(v, (bool, int, float)):
            state[k] = v
    return state


def _restore_plain(obj: Any, state: dict[str, Any]) -> None:
    for k, v in state.items():
        if isinstance(v, dict) and "__numpy_rng__" in v:
            rng = np.random.Generator(getattr(np.random, v["__numpy_rng__"]["bit_generator"])())
            rng.bit_generator.state = v["__numpy_rng__"]
            v = rng
        elif isinstance(v, dict) and "__numpy_scalar__" in v:
            v = v["__numpy_scalar__"].numpy()[()]
        elif isinstance(v, torch.Tensor):
            v = v.numpy().copy()
        setattr(obj, k, v)


class Snapshot(gym.Wrapper):
    """Adds ``get_snapshot()`` / ``set_snapshot(states)`` so vector envs can save and restore sub-envs."""

    def __init__(self, env: gym.Env, index: int) -> None:
        super().__init__(env)
        self.index = index

    def _layers(self) -> list[Any]:
        layers, e = [], self.env
        while True:
            layers.append(e)
            if not hasattr(e, "env") or e is e.unwrapped:
                return layers
            e = e.env

    def get_snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {"layers": [_plain_state(layer) for layer in self._layers()]}
        data = getattr(self.env.unwrapped, "data", None)
        if data is not None and hasattr(data, "qpos"):  # MuJoCo
            snap["mujoco"] = {k: torch.from_numpy(np.array(getattr(data, k))) for k in ("qpos", "qvel", "act")}
            snap["mujoco"]["time"] = float(data.time)
        return snap

    def set_snapshot(self, snapshots: list[dict[str, Any]]) -> None:
        snap = snapshots[self.index]
        for layer, state in zip(self._layers(), snap["layers"]):
            _restore_plain(layer, state)
        if "mujoco" in snap:
            import mujoco

            u = self.env.unwrapped
            for k in ("qpos", "qvel", "act"):
                getattr(u.data, k)[:] = snap["mujoco"][k].numpy()
            u.data.time = snap["mujoco"]["time"]
            mujoco.mj_forward(u.model, u.data)


def unknown_env_message(env_id: str) -> str:
    return (f"unknown environment {env_id!r}: not a registered gymnasium id "
            "(use env=<preset> such as env=pendulum, or env.id=<gymnasium id>)")


def _make_one(cfg: EnvConfig, index: int) -> gym.Env:
    try:
        env = gym.make(cfg.id, max_episode_steps=cfg.max_episode_steps, **cfg.kwargs)
    except gym.error.Error as e:
        if isinstance(e, (gym.error.NameNotFound, gym.error.NamespaceNotFound, gym.error.VersionNotFound)):
            raise ConfigError(unknown_env_message(cfg.id)) from None
        if isinstance(e, gym.error.DependencyNotInstalled):
            raise ConfigError(f"environment {cfg.id!r} needs an optional dependency: {e}") from None
        raise
    return Snapshot(env, index)


def _make_in_worker(cfg: EnvConfig, index: int) -> gym.Env:
    """For async workers: leave Ctrl-C to the main process, which checkpoints and closes the workers."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return _make_one(cfg, index)


def probe_spaces(cfg: EnvConfig) -> tuple[gym.Space, gym.Space]:
    """(observation space, action space) of one sub-env, without keeping it."""
    env = _make_one(cfg, 0)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def make_vec_env(cfg: EnvConfig, num_envs: int | None = None, vectorization: str | None = None) -> VectorEnv:
    """``num_envs`` copies of ``cfg.id`` in a sync or async vector env with same-step autoreset.

    Same-step autoreset: when a sub-env ends, ``step`` returns the first observation of the next episode
    and puts the last one in ``info["final_obs"]``, so every stored transition has its true ``s'``.
    """
    n = num_envs or cfg.num_envs
    _make_one(cfg, 0).close()  # fail fast, in this process, on a bad id
    mode = vectorization or cfg.vectorization
    make = _make_in_worker if mode == "async" else _make_one
    fns = [lambda i=i: make(cfg, i) for i in range(n)]
    cls = AsyncVectorEnv if mode == "async" else SyncVectorEnv
    return cls(fns, autoreset_mode=AutoresetMode.SAME_STEP)


def snapshot(envs: VectorEnv) -> list[dict[str, Any]]:
    return list(envs.call("get_snapshot"))


def restore(envs: VectorEnv, snapshots: list[dict[str, Any]]) -> None:
    envs.call("set_snapshot", snapshots)
