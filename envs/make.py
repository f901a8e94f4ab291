"""Env construction from config: gymnasium vector envs with same-step autoreset, and env snapshots.

Every sub-env is wrapped in :class:`Snapshot`, which captures the state of each wrapper layer and of the env
(numbers, numpy arrays and RNGs, tensors; deques, lists, tuples, sets and dicts of them, as in RecordEpisodeStatistics
and FrameStackObservation; plain records such as NormalizeObservation's running statistics; MuJoCo's qpos/qvel)
so that a checkpoint can restore the exact simulator state and a resumed run continues the same trajectory. What
it cannot capture it names in a :class:`SnapshotWarning`; configuration (spaces, spec, constructor arguments,
callables) and render handles are rebuilt from the config, not captured.
"""

from __future__ import annotations

import types
import warnings
from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv

from rl.config import ConfigError, EnvConfig


class SnapshotWarning(UserWarning):
    """An env attribute the snapshot cannot capture: a resumed run may not continue exactly."""


class _Uncapturable(Exception):
    pass


_CONFIG_NAMES = {"_saved_kwargs"}  # a wrapper's constructor arguments: configuration, rebuilt from the config
_NOT_STATE = (gym.Space, gym.Env, EnvSpec, type, types.ModuleType)  # configuration and links, not state
_OTHER_HANDLES = ("pygame", "mujoco")  # render handles; MuJoCo's model and data (their state is taken apart)


def _is_state(name: str, value: Any) -> bool:
    module = type(value).__module__ or ""
    return not (name in _CONFIG_NAMES or isinstance(value, _NOT_STATE) or callable(value)
                or module.split(".")[0] in _OTHER_HANDLES or module.startswith("gymnasium.envs.mujoco"))


def _encode(v: Any, depth: int = 0) -> Any:
    """A value as tensors and plain containers (what ``torch.load(weights_only=True)`` reads back)."""
    if isinstance(v, np.generic) and v.dtype.kind in "biufc":  # before float: np.float64 is a float
        return {"__numpy_scalar__": torch.from_numpy(np.array(v))}
    if v is None or type(v) in (bool, int, float, str):
        return v
    if isinstance(v, (int, float, str)):  # a subclass (an IntEnum, numpy's str_): its plain value
        return next(t(v) for t in (int, float, str) if isinstance(v, t))
    if isinstance(v, np.random.Generator):
        return {"__numpy_rng__": v.bit_generator.state}
    if isinstance(v, np.ndarray) and v.dtype.kind in "biufc":
        return torch.from_numpy(np.array(v))
    if isinstance(v, torch.Tensor):
        return {"__tensor__": v.detach().cpu().clone()}
    if depth > 4:
        raise _Uncapturable
    if type(v) is deque:
        return {"__deque__": [_encode(x, depth + 1) for x in v], "maxlen": v.maxlen}
    if type(v) in (list, tuple, set, frozenset):  # not subclasses (a namedtuple would come back a tuple)
        return {f"__{type(v).__name__}__": [_encode(x, depth + 1) for x in v]}
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return {"__dict__": {k: _encode(x, depth + 1) for k, x in v.items()}}
    if hasattr(v, "__dict__") and not callable(v):  # a plain record, e.g. gymnasium's RunningMeanStd
        return {"__object__": {k: _encode(x, depth + 1) for k, x in vars(v).items()}}
    raise _Uncapturable


def _decode(v: Any, current: Any = None) -> Any:
    """Inverse of :func:`_encode`; an ``__object__`` is restored into ``current``, the object already there."""
    if isinstance(v, torch.Tensor):
        return v.numpy().copy()
    if not isinstance(v, dict):
        return v
    if "__numpy_rng__" in v:
        rng = np.random.Generator(getattr(np.random, v["__numpy_rng__"]["bit_generator"])())
        rng.bit_generator.state = v["__numpy_rng__"]
        return rng
    if "__numpy_scalar__" in v:
        return v["__numpy_scalar__"].numpy()[()]
    if "__tensor__" in v:
        return v["__tensor__"].clone()
    if "__deque__" in v:
        return deque((_decode(x) for x in v["__deque__"]), maxlen=v["maxlen"])
    for kind in (list, tuple, set, frozenset):
        if f"__{kind.__name__}__" in v:
            return kind(_decode(x) for x in v[f"__{kind.__name__}__"])
    if "__dict__" in v:
        return {k: _decode(x) for k, x in v["__dict__"].items()}
    if "__object__" in v and current is not None:
        for k, x in v["__object__"].items():
            setattr(current, k, _decode(x, getattr(current, k, None)))
        return current
    raise ValueError(f"cannot rebuild a snapshot entry with keys {sorted(v)}")


def _layer_state(layer: Any) -> tuple[dict[str, Any], list[str]]:
    """(the state of one wrapper layer or env, the ``Class.attr (type)`` names it cannot capture)."""
    state: dict[str, Any] = {}
    skipped = []
    for k, v in vars(layer).items():
        if not _is_state(k, v):
            continue
        try:
            state[k] = _encode(v)
        except (_Uncapturable, TypeError):
            skipped.append(f"{type(layer).__name__}.{k} ({type(v).__name__})")
    return state, skipped


def _restore_layer(layer: Any, state: dict[str, Any]) -> None:
    for k, v in state.items():
        setattr(layer, k, _decode(v, getattr(layer, k, None)))


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
        layers = [_layer_state(layer) for layer in self._layers()]
        snap: dict[str, Any] = {"layers": [state for state, _ in layers],
                                "skipped": [name for _, names in layers for name in names]}
        data = getattr(self.env.unwrapped, "data", None)
        if data is not None and hasattr(data, "qpos"):  # MuJoCo
            snap["mujoco"] = {k: torch.from_numpy(np.array(getattr(data, k))) for k in ("qpos", "qvel", "act")}
            snap["mujoco"]["time"] = float(data.time)
        return snap

    def set_snapshot(self, snapshots: list[dict[str, Any]]) -> None:
        snap = snapshots[self.index]
        for layer, state in zip(self._layers(), snap["layers"]):
            _restore_layer(layer, state)
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
    except TypeError as e:  # env.kwargs the env's constructor does not take
        raise ConfigError(f"env.kwargs do not fit {cfg.id}: {e}") from None
    return Snapshot(env, index)


def _make_in_worker(cfg: EnvConfig, index: int) -> gym.Env:
    """For async workers: leave Ctrl-C to the main process, which checkpoints and closes the workers; SIGTERM
    (``terminate()``) ends a worker at once, whatever handler it inherited from the training process."""
    from envs.shm_vector import worker_signals

    worker_signals()
    return _make_one(cfg, index)


def probe_spaces(cfg: EnvConfig) -> tuple[gym.Space, gym.Space]:
    """(observation space, action space) of one sub-env, without keeping it."""
    env = _make_one(cfg, 0)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def make_vec_env(cfg: EnvConfig, num_envs: int | None = None, vectorization: str | None = None,
                 spin_us: int | None = None) -> VectorEnv:
    """``num_envs`` copies of ``cfg.id`` in a vector env with same-step autoreset: ``sync`` (in this process), ``async``
    (gymnasium's worker processes) or ``shm`` (worker processes trading through shared memory: envs/shm_vector.py;
    ``spin_us``, else ``cfg.spin_us``, else :func:`envs.shm_vector.auto_spin_us`: how long its processes poll).

    Same-step autoreset: when a sub-env ends, ``step`` returns the first observation of the next episode
    and puts the last one in ``info["final_obs"]``, so every stored transition has its true ``s'``.
    """
    n = num_envs or cfg.num_envs
    _make_one(cfg, 0).close()  # fail fast, in this process, on a bad id
    mode = vectorization or cfg.vectorization
    make = _make_in_worker if mode in ("async", "shm") else _make_one
    fns = [lambda i=i: make(cfg, i) for i in range(n)]
    if mode == "shm":
        from envs.shm_vector import SharedMemoryVectorEnv, auto_spin_us

        if spin_us is None:
            spin_us = auto_spin_us(n) if cfg.spin_us is None else cfg.spin_us
        return SharedMemoryVectorEnv(fns, spin=spin_us / 1e6)
    cls = AsyncVectorEnv if mode == "async" else SyncVectorEnv
    return cls(fns, autoreset_mode=AutoresetMode.SAME_STEP)


_warned: set[str] = set()


def snapshot(envs: VectorEnv) -> list[dict[str, Any]]:
    """Every sub-env's state (its wrappers' too). An attribute it cannot capture is named in a warning, once."""
    snaps = list(envs.call("get_snapshot"))
    for name in sorted({n for snap in snaps for n in snap.get("skipped", [])} - _warned):
        _warned.add(name)
        warnings.warn(f"exact resume: the env snapshot cannot capture {name}; a resumed run continues with it as "
                      "the rebuilt env has it, so it may not continue exactly", SnapshotWarning, stacklevel=2)
    return snaps


def restore(envs: VectorEnv, snapshots: list[dict[str, Any]]) -> None:
    envs.call("set_snapshot", snapshots)
