"""Batched torch re-implementations of gymnasium's classic-control envs (Pendulum, CartPole, MountainCarContinuous).

One :class:`TorchVectorEnv` holds ``num_envs`` copies of an environment as tensors on one device (CPU or
CUDA), so that thousands of envs advance in one short sequence of elementwise kernels: there is no Python
loop over envs, no ``.item()``, no boolean indexing and no host<->device sync inside :meth:`~TorchVectorEnv.step`
(reset states are drawn for every row on every step from a private ``torch.Generator`` and selected with
``torch.where``, so the amount of work and the generator's consumption never depend on the data).

API (all tensors live on ``env.device``; ``N = num_envs``)::

    env = make_torch_env("Pendulum-v1", num_envs=4096, device="cuda")
    obs = env.reset(seed=0)                                    # float32 [N, obs_dim]
    obs, reward, terminated, truncated, final_obs = env.step(action)
    # reward float32 [N]; terminated, truncated bool [N]; final_obs float32 [N, obs_dim]

Cost: a step is ~40-60 small elementwise kernels. On an H100 (measured) a step took 0.6-1 ms whatever
``N`` (launch- and Python-bound): ~5M env-steps/s at N=4096 (about what one CPU core gives), ~100M at
N=65536 and 1.2-1.7G at N=2**20. CUDA graphs or ``torch.compile`` would be the next lever for small ``N``.

Autoreset is SAME-STEP: for a row that ended on this step (``terminated | truncated``), ``obs`` already is
the first observation of its next episode and ``final_obs`` is the true last observation of the episode
that ended; for every other row ``final_obs`` equals ``obs``. Bootstrapping targets should therefore use
``final_obs`` (masked by ``terminated``), and the next policy input is ``obs``.

Truncation is gymnasium's ``TimeLimit`` with the registry's ``max_episode_steps`` (Pendulum-v1: 200,
CartPole-v1: 500, MountainCarContinuous-v0: 999): ``truncated = elapsed >= max_episode_steps`` counted after
the step, independent of ``terminated`` (both can be true on the same step, exactly as with ``TimeLimit``).

Fidelity to gymnasium (measured in ``tests/test_torch_envs.py``, which replays gymnasium envs step by step):

* Dynamics, reward, termination and truncation follow gymnasium 1.x's code operation for operation,
  including its dtype mix under numpy 2 (NEP 50) rules. Pendulum and CartPole keep a float64 state and
  compute in float64, as gymnasium's numpy code does, and round only the observation to float32
  (Pendulum's ``0.001 * u**2`` and ``3.0 * u`` are evaluated in the action's float32 first, like numpy).
  MountainCarContinuous reproduces gymnasium's float64 reset state / float32 post-step state and the
  float32 / float64 mix of its step (see :class:`MountainCarContinuousTorch`).
* Measured on CPU against gymnasium (160 episodes per env, CartPole/MountainCar rows partly driven by
  controllers up to the 500 / 999-step limits): observations, terminated and truncated were *identical*
  (bit for bit) at every step; the float64 physical states differed by at most 7e-14 (Pendulum) and
  7e-15 (CartPole), from torch's float64 ``sin``/``cos`` (SLEEF) differing from glibc's by one ulp on
  ~0.15% of arguments. Rewards are float32 roundings of gymnasium's float64 rewards, so they differ by up
  to half a float32 ulp (<= 9.1e-7 for Pendulum, <= 3.8e-6 for MountainCar's +100, 0 for CartPole).
  Bit-identity is not guaranteed: on another device or libm the last-ulp ``sin``/``cos`` differences can
  grow in CartPole, whose upright pole is open-loop unstable (differences grow by ~e^0.07 per step, so
  1-ulp differences can reach 1e-5 after ~300 steps of a balancing episode); CUDA vs CPU agreed to 6e-8
  (Pendulum, 199 steps) and exactly (MountainCar, 998 steps) on an H100.
* ``dtype=torch.float32`` (Pendulum, CartPole only) is faster on GPUs with slow float64 but does *not* match
  to 1e-5: measured, observations or rewards left 1e-5 after 27..64 steps (Pendulum: its angle is never
  wrapped, and float32 rounding grows near the upright position) and 64..89 steps (CartPole balancing),
  after which CartPole terminations flip.
* Reset distributions use the same ranges as gymnasium (uniform on ``[low, high)``) but draw from torch's
  generator, so reset states are not the numbers numpy would draw for the same seed.
* Actions are clipped like gymnasium (Pendulum to [-2, 2] N·m, MountainCar's force to [-1, 1], with the
  reward still using the unclipped action as in gymnasium). CartPole pushes right for action ``== 1`` and
  left for anything else (gymnasium asserts the action is in {0, 1}; no check here, as it would need a sync).
* Not reproduced: rendering, ``reset(options=...)`` bounds, gymnasium's "step after terminated" warning and
  reward-0 behaviour for CartPole (unreachable because of autoreset), env kwargs (``g``, ``goal_velocity``,
  ``sutton_barto_reward``) other than the defaults.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

__all__ = [
    "TorchVectorEnv",
    "PendulumTorch",
    "CartPoleTorch",
    "MountainCarContinuousTorch",
    "make_torch_env",
    "TORCH_ENVS",
]


class TorchVectorEnv:
    """Base class: ``num_envs`` copies of one environment as tensors on ``device``, same-step autoreset.

    Attributes:
        num_envs: ``N``.
        device: the ``torch.device`` of every tensor the env returns or holds.
        dtype: dtype of the physical state and of the dynamics computation (observations are float32).
        max_episode_steps: time limit (gymnasium's registry value unless overridden).
        single_observation_space, single_action_space: the gymnasium spaces of one env (equal to gymnasium's).
        observation_space, action_space: the same spaces batched over ``N`` (``gymnasium.vector.utils.batch_space``).
        state: physical state ``[N, state_dim]`` in ``dtype`` (``None`` before :meth:`reset` / :meth:`set_state`),
            laid out exactly like the gymnasium env's ``unwrapped.state``.
        elapsed: int64 ``[N]``, steps taken in the current episode (gymnasium ``TimeLimit._elapsed_steps``).

    Subclasses set ``env_id``, ``state_dim``, ``obs_dim``, ``default_dtype``, ``supported_dtypes`` and implement
    :meth:`_sample_reset`, :meth:`_obs`, :meth:`_prepare_action` and :meth:`_dynamics`.
    """

    env_id: str = ""
    state_dim: int = 0
    obs_dim: int = 0
    default_dtype: torch.dtype = torch.float64
    supported_dtypes: tuple[torch.dtype, ...] = (torch.float64, torch.float32)
    autoreset_mode = AutoresetMode.SAME_STEP
    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, num_envs: int, device: str | torch.device = "cpu", *, dtype: torch.dtype | None = None,
                 max_episode_steps: int | None = None) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        dtype = self.default_dtype if dtype is None else dtype
        if dtype not in self.supported_dtypes:
            raise ValueError(f"{type(self).__name__} supports dtype in {self.supported_dtypes}, got {dtype}")
        self.num_envs = int(num_envs)
        self.device = torch.device(device)
        self.dtype = dtype
        if max_episode_steps is None:
            max_episode_steps = gym.spec(self.env_id).max_episode_steps
        self.max_episode_steps = int(max_episode_steps)
        self.single_observation_space, self.single_action_space = self._make_spaces()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.state: torch.Tensor | None = None
        self.elapsed = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        self._generator = torch.Generator(device=self.device)
        self._seeded = False

    # ----------------------------------------------------------------------------------------- subclass hooks
    def _make_spaces(self) -> tuple[spaces.Space, spaces.Space]:
        raise NotImplementedError

    def _sample_reset(self, n: int) -> torch.Tensor:
        """``[n, state_dim]`` fresh initial states in ``self.dtype``, drawn from ``self._generator``."""
        raise NotImplementedError

    def _obs(self, state: torch.Tensor) -> torch.Tensor:
        """float32 ``[n, obs_dim]`` observation of a state ``[n, state_dim]``."""
        raise NotImplementedError

    def _prepare_action(self, action: torch.Tensor) -> torch.Tensor:
        """Validate / reshape an action batch (shape and dtype checks only: no data-dependent checks)."""
        raise NotImplementedError

    def _dynamics(self, state: torch.Tensor, action: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step for every row: ``(next_state [N, d], reward [N] (any float dtype), terminated bool [N])``."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------- API
    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Reset every env; returns float32 ``[N, obs_dim]``.

        ``seed`` re-seeds the private generator (``torch.Generator(device=self.device)``); ``None`` keeps the
        current generator stream (seeding it non-deterministically on the very first reset), like gymnasium.
        """
        if seed is not None:
            self._generator.manual_seed(int(seed))
            self._seeded = True
        elif not self._seeded:
            self._generator.seed()
            self._seeded = True
        self.state = self._sample_reset(self.num_envs)
        self.elapsed = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        return self._obs(self.state)

    def step(self, action: torch.Tensor | np.ndarray
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Advance all ``N`` envs by one step, with same-step autoreset.

        Returns ``(obs, reward, terminated, truncated, final_obs)``: ``obs`` float32 ``[N, obs_dim]`` (already
        the reset observation for rows that ended), ``reward`` float32 ``[N]``, ``terminated`` / ``truncated``
        bool ``[N]``, ``final_obs`` float32 ``[N, obs_dim]`` (the observation reached by this step, before any
        reset; equal to ``obs`` where the episode did not end). Launches only device kernels: no host sync.
        """
        if self.state is None:
            raise RuntimeError(f"{type(self).__name__}: call reset() (or set_state()) before step()")
        action = self._prepare_action(torch.as_tensor(action, device=self.device))
        next_state, reward, terminated = self._dynamics(self.state, action)
        elapsed = self.elapsed + 1
        truncated = elapsed >= self.max_episode_steps
        done = terminated | truncated
        final_obs = self._obs(next_state)
        fresh = self._sample_reset(self.num_envs)  # every row, every step: data-independent work, no sync
        self.state = torch.where(done.unsqueeze(1), fresh, next_state)
        self.elapsed = elapsed.masked_fill(done, 0)
        obs = torch.where(done.unsqueeze(1), self._obs(fresh), final_obs)
        return obs, reward.to(torch.float32), terminated, truncated, final_obs

    def get_obs(self) -> torch.Tensor:
        """float32 ``[N, obs_dim]`` observation of the current state."""
        if self.state is None:
            raise RuntimeError(f"{type(self).__name__}: no state yet; call reset() or set_state()")
        return self._obs(self.state)

    def set_state(self, state: torch.Tensor | np.ndarray, elapsed: torch.Tensor | np.ndarray | int | None = None,
                  env_ids: torch.Tensor | np.ndarray | list[int] | None = None) -> torch.Tensor:
        """Overwrite the physical state (gymnasium's ``unwrapped.state`` layout, converted to ``self.dtype``).

        ``state``: ``[N, state_dim]``, or ``[len(env_ids), state_dim]`` when ``env_ids`` selects rows.
        ``elapsed``: optional new step counts for the same rows (int or int tensor); left unchanged if ``None``.
        Returns the float32 observation of the whole batch.
        """
        if isinstance(state, (torch.Tensor, np.ndarray)):
            state = torch.as_tensor(state).to(device=self.device, dtype=self.dtype)
        else:
            state = torch.as_tensor(state, dtype=self.dtype, device=self.device)
        if env_ids is None:
            if state.shape != (self.num_envs, self.state_dim):
                raise ValueError(f"state must have shape {(self.num_envs, self.state_dim)}, got {tuple(state.shape)}")
            self.state = state.clone()
            if elapsed is not None:
                self.elapsed = (torch.as_tensor(elapsed, device=self.device, dtype=torch.int64)
                                .expand(self.num_envs).clone())
        else:
            ids = torch.as_tensor(env_ids, device=self.device, dtype=torch.int64).reshape(-1)
            if state.shape != (ids.numel(), self.state_dim):
                raise ValueError(f"state must have shape {(ids.numel(), self.state_dim)}, got {tuple(state.shape)}")
            if self.state is None:
                raise RuntimeError("set_state with env_ids needs a full state first (reset() or set_state())")
            new = self.state.clone()
            new[ids] = state
            self.state = new
            if elapsed is not None:
                el = self.elapsed.clone()
                el[ids] = torch.as_tensor(elapsed, device=self.device, dtype=torch.int64).expand(ids.numel())
                self.elapsed = el
        return self._obs(self.state)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically: state, elapsed, generator state (CPU uint8 tensor)."""
        return {
            "env_id": self.env_id,
            "num_envs": self.num_envs,
            "dtype": str(self.dtype),
            "state": None if self.state is None else self.state.clone(),
            "elapsed": self.elapsed.clone(),
            "generator": self._generator.get_state(),
            "seeded": self._seeded,
            **self._extra_state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (tensors are moved to this env's device and dtype)."""
        if state_dict.get("env_id", self.env_id) != self.env_id:
            raise ValueError(f"state_dict is for {state_dict['env_id']!r}, this env is {self.env_id!r}")
        if int(state_dict["num_envs"]) != self.num_envs:
            raise ValueError(f"state_dict has num_envs={state_dict['num_envs']}, this env has {self.num_envs}")
        gen_state = state_dict["generator"]
        if gen_state.numel() != self._generator.get_state().numel():
            raise ValueError("generator state does not fit this device's generator (checkpoint taken on another "
                             f"device type than {self.device.type}?)")
        self._generator.set_state(gen_state.cpu())
        self._seeded = bool(state_dict.get("seeded", True))
        st = state_dict["state"]
        self.state = None if st is None else st.to(device=self.device, dtype=self.dtype).clone()
        self.elapsed = state_dict["elapsed"].to(device=self.device, dtype=torch.int64).clone()
        self._load_extra_state_dict(state_dict)

    def _extra_state_dict(self) -> dict[str, Any]:
        """Subclass state beyond ``state`` / ``elapsed`` / generator (none here)."""
        return {}

    def _load_extra_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.env_id}, num_envs={self.num_envs}, device={self.device}, "
                f"dtype={self.dtype}, max_episode_steps={self.max_episode_steps})")

    # ------------------------------------------------------------------------------------------- helpers
    def _uniform(self, n: int, low: float, high: float, cols: int) -> torch.Tensor:
        """``low + (high - low) * U[0, 1)``, numpy's formula for ``Generator.uniform``, shape ``[n, cols]``."""
        u = torch.rand((n, cols), generator=self._generator, device=self.device, dtype=self.dtype)
        return low + (high - low) * u

    def _continuous_action(self, action: torch.Tensor) -> torch.Tensor:
        """``[N, 1]`` or ``[N]`` float action -> ``[N]`` (its own float dtype kept, as numpy would)."""
        if action.shape not in ((self.num_envs, 1), (self.num_envs,)):
            raise ValueError(f"{self.env_id}: action must have shape ({self.num_envs}, 1), got {tuple(action.shape)}")
        if not action.is_floating_point():
            action = action.to(torch.float32)
        return action.reshape(self.num_envs)


class PendulumTorch(TorchVectorEnv):
    """Pendulum-v1: swing a pendulum up and hold it (no termination; truncated after 200 steps).

    * state ``[N, 2]``: ``theta`` (rad, 0 = upright, unbounded: not wrapped, as in gymnasium), ``theta_dot``
      (rad/s, clipped to [-8, 8]).
    * observation float32 ``[N, 3]``: ``cos(theta), sin(theta), theta_dot``.
    * action float ``[N, 1]``: torque in N·m, clipped to [-2, 2].
    * reward ``-(angle_normalize(theta)**2 + 0.1 * theta_dot**2 + 0.001 * torque**2)`` of the state *before*
      the step, in [-16.27, 0].
    * reset: ``theta ~ U[-pi, pi)``, ``theta_dot ~ U[-1, 1)``.
    * g = 10 m/s², m = l = 1, dt = 0.05 s. Default dtype float64 (gymnasium computes in float64).
    """

    env_id = "Pendulum-v1"
    state_dim = 2
    obs_dim = 3
    max_speed = 8
    max_torque = 2.0
    dt = 0.05
    g = 10.0
    m = 1.0
    l = 1.0  # noqa: E741  (gymnasium's name)

    def _make_spaces(self) -> tuple[spaces.Space, spaces.Space]:
        high = np.array([1.0, 1.0, self.max_speed], dtype=np.float32)
        return (spaces.Box(low=-high, high=high, dtype=np.float32),
                spaces.Box(low=-self.max_torque, high=self.max_torque, shape=(1,), dtype=np.float32))

    def _sample_reset(self, n: int) -> torch.Tensor:
        th = self._uniform(n, -math.pi, math.pi, 1)
        thdot = self._uniform(n, -1.0, 1.0, 1)
        return torch.cat([th, thdot], dim=1)

    def _obs(self, state: torch.Tensor) -> torch.Tensor:
        th, thdot = state[:, 0], state[:, 1]
        return torch.stack([torch.cos(th), torch.sin(th), thdot], dim=1).to(torch.float32)

    def _prepare_action(self, action: torch.Tensor) -> torch.Tensor:
        return self._continuous_action(action)

    def _dynamics(self, state, action):
        th, thdot = state[:, 0], state[:, 1]
        dt, g, m, l = self.dt, self.g, self.m, self.l
        u = action.clamp(-self.max_torque, self.max_torque)  # in the action's dtype, like np.clip
        # numpy evaluates ``0.001 * u**2`` and ``3.0 / (m * l**2) * u`` in u's (float32) dtype before promoting.
        torque_cost = (0.001 * (u * u)).to(self.dtype)
        torque_acc = (3.0 / (m * l**2) * u).to(self.dtype)
        costs = _angle_normalize(th) ** 2 + 0.1 * thdot**2 + torque_cost
        newthdot = thdot + (3 * g / (2 * l) * torch.sin(th) + torque_acc) * dt
        newthdot = newthdot.clamp(-self.max_speed, self.max_speed)
        newth = th + newthdot * dt
        terminated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        return torch.stack([newth, newthdot], dim=1), -costs, terminated


def _angle_normalize(x: torch.Tensor) -> torch.Tensor:
    """``((x + pi) % (2 pi)) - pi`` with Python/numpy modulo semantics (``torch.remainder``)."""
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


class CartPoleTorch(TorchVectorEnv):
    """CartPole-v1: balance a pole on a cart (reward 1 per step, including the terminating one).

    * state ``[N, 4]``: cart position (m), cart velocity (m/s), pole angle (rad, 0 = upright),
      pole angular velocity (rad/s); observation float32 ``[N, 4]`` is the same four numbers.
    * action int64 ``[N]``: 1 pushes right with 10 N, anything else pushes left.
    * terminated when ``|x| > 2.4`` or ``|theta| > 12°`` (strict inequalities, as gymnasium); truncated at 500.
    * reset: each state variable ``~ U[-0.05, 0.05)``.
    * explicit Euler, tau = 0.02 s. Default dtype float64 (gymnasium computes in float64).
    """

    env_id = "CartPole-v1"
    state_dim = 4
    obs_dim = 4
    gravity = 9.8
    masscart = 1.0
    masspole = 0.1
    total_mass = masspole + masscart  # same float64 arithmetic as gymnasium's constants
    length = 0.5  # half the pole's length
    polemass_length = masspole * length
    force_mag = 10.0
    tau = 0.02
    theta_threshold_radians = 12 * 2 * math.pi / 360
    x_threshold = 2.4

    def _make_spaces(self) -> tuple[spaces.Space, spaces.Space]:
        high = np.array([self.x_threshold * 2, np.inf, self.theta_threshold_radians * 2, np.inf], dtype=np.float32)
        return spaces.Box(-high, high, dtype=np.float32), spaces.Discrete(2)

    def _sample_reset(self, n: int) -> torch.Tensor:
        return self._uniform(n, -0.05, 0.05, 4)

    def _obs(self, state: torch.Tensor) -> torch.Tensor:
        return state.to(torch.float32)

    def _prepare_action(self, action: torch.Tensor) -> torch.Tensor:
        if action.shape not in ((self.num_envs,), (self.num_envs, 1)):
            raise ValueError(f"{self.env_id}: action must have shape ({self.num_envs},), got {tuple(action.shape)}")
        if action.is_floating_point() or action.is_complex():
            raise TypeError(f"{self.env_id}: action must be an integer tensor in {{0, 1}}, got {action.dtype}")
        return action.reshape(self.num_envs)

    def _dynamics(self, state, action):
        x, x_dot, theta, theta_dot = state.unbind(1)
        force = (action == 1).to(self.dtype) * (2 * self.force_mag) - self.force_mag  # exactly +-10
        costheta = torch.cos(theta)
        sintheta = torch.sin(theta)
        temp = (force + self.polemass_length * torch.square(theta_dot) * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * torch.square(costheta) / self.total_mass))
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        x = x + self.tau * x_dot
        x_dot = x_dot + self.tau * xacc
        theta = theta + self.tau * theta_dot
        theta_dot = theta_dot + self.tau * thetaacc
        terminated = ((x < -self.x_threshold) | (x > self.x_threshold)
                      | (theta < -self.theta_threshold_radians) | (theta > self.theta_threshold_radians))
        reward = torch.ones(self.num_envs, dtype=torch.float32, device=self.device)
        return torch.stack([x, x_dot, theta, theta_dot], dim=1), reward, terminated


class MountainCarContinuousTorch(TorchVectorEnv):
    """MountainCarContinuous-v0: drive an under-powered car up the right hill.

    * state ``[N, 2]``: position (m, clipped to [-1.2, 0.6]), velocity (clipped to [-0.07, 0.07]; set to 0
      on hitting the left wall while moving left). Observation float32 ``[N, 2]`` is the state.
    * action float ``[N, 1]``: force, clipped to [-1, 1] and multiplied by power 0.0015.
    * reward ``-0.1 * action**2`` (the *unclipped* action, as gymnasium) plus 100 on reaching the goal.
    * terminated when ``position >= 0.45`` and ``velocity >= 0``; truncated at 999.
    * reset: position ``~ U[-0.6, -0.4)`` (float64), velocity 0.

    Precision follows gymnasium exactly: its reset state is a float64 array, and every step stores a float32
    array, so the first step after a reset does its position arithmetic in float64 and later steps in float32
    (numpy 2 / NEP 50 rules: ``np.float32 op float`` is float32, comparisons too). This env keeps the state in
    a float64 tensor plus a per-row flag ``float64_rows`` ("gymnasium's state would be float64 here": true after
    a reset, false after a step) and emulates float32 arithmetic as float64 arithmetic rounded to float32
    (exact for +, -, * of float32 operands, since 53 >= 2 * 24 + 2 bits). :meth:`set_state` sets the flag
    from the dtype of what it is given: pass gymnasium's ``unwrapped.state`` as is (float32 array after a
    step, float64 after a reset).
    """

    env_id = "MountainCarContinuous-v0"
    state_dim = 2
    obs_dim = 2
    default_dtype = torch.float64
    supported_dtypes = (torch.float64,)
    min_action = -1.0
    max_action = 1.0
    min_position = -1.2
    max_position = 0.6
    max_speed = 0.07
    goal_position = 0.45
    goal_velocity = 0
    power = 0.0015

    def __init__(self, num_envs: int, device: str | torch.device = "cpu", **kwargs: Any) -> None:
        super().__init__(num_envs, device, **kwargs)
        self.float64_rows = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)

    def _make_spaces(self) -> tuple[spaces.Space, spaces.Space]:
        low = np.array([self.min_position, -self.max_speed], dtype=np.float32)
        high = np.array([self.max_position, self.max_speed], dtype=np.float32)
        return (spaces.Box(low=low, high=high, dtype=np.float32),
                spaces.Box(low=self.min_action, high=self.max_action, shape=(1,), dtype=np.float32))

    def _sample_reset(self, n: int) -> torch.Tensor:
        pos = self._uniform(n, -0.6, -0.4, 1)
        return torch.cat([pos, torch.zeros_like(pos)], dim=1)

    def _obs(self, state: torch.Tensor) -> torch.Tensor:
        return state.to(torch.float32)

    def _prepare_action(self, action: torch.Tensor) -> torch.Tensor:
        return self._continuous_action(action).to(torch.float32)

    def _dynamics(self, state, action):
        f64 = self.float64_rows  # rows whose gymnasium state is a float64 array (first step after a reset)
        position, velocity = state[:, 0], state[:, 1]
        a = action.to(torch.float64)  # float32 values
        # gymnasium: force = min(max(a, -1.0), 1.0) is the np.float32 action when in range, else a Python float.
        clipped = (action < self.min_action) | (action > self.max_action)
        slope = 0.0025 * torch.cos(torch.where(f64, 3 * position, _f32(3 * position)))  # math.cos: float64
        dv_in_range = _f32(_f32(a * _F32_POWER) - _f32(slope))  # np.float32 - float -> float32
        dv_clipped = torch.sign(a) * self.power - slope  # Python floats
        dv = torch.where(clipped, dv_clipped, dv_in_range)
        velocity = torch.where(f64, velocity + dv, _f32(velocity + _f32(dv)))
        velocity = torch.where(f64, velocity.clamp(-self.max_speed, self.max_speed),
                               velocity.clamp(-_F32_MAX_SPEED, _F32_MAX_SPEED))
        position = position + velocity
        position = torch.where(f64, position.clamp(self.min_position, self.max_position),
                               _f32(position).clamp(_F32_MIN_POSITION, _F32_MAX_POSITION))
        at_wall = torch.where(f64, position == self.min_position, position == _F32_MIN_POSITION)
        velocity = velocity.masked_fill(at_wall & (velocity < 0), 0.0)
        at_goal = torch.where(f64, position >= self.goal_position, position >= _F32_GOAL_POSITION)
        terminated = at_goal & (velocity >= self.goal_velocity)
        reward = terminated.to(torch.float64) * 100.0 - (a * a) * 0.1  # math.pow(action[0], 2) * 0.1
        next_state = _f32(torch.stack([position, velocity], dim=1))  # np.array(..., dtype=np.float32)
        return next_state, reward, terminated

    def reset(self, seed: int | None = None) -> torch.Tensor:
        obs = super().reset(seed)
        self.float64_rows = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        return obs

    def step(self, action):
        out = super().step(action)
        self.float64_rows = out[2] | out[3]  # autoreset rows now hold (float64) reset states
        return out

    def set_state(self, state, elapsed=None, env_ids=None) -> torch.Tensor:
        """As :meth:`TorchVectorEnv.set_state`; a float32 ``state`` marks the rows as post-step (float32) states."""
        is64 = not (isinstance(state, (torch.Tensor, np.ndarray)) and state.dtype in (torch.float32, np.float32))
        obs = super().set_state(state, elapsed, env_ids)
        if env_ids is None:
            self.float64_rows = torch.full((self.num_envs,), is64, dtype=torch.bool, device=self.device)
        else:
            ids = torch.as_tensor(env_ids, device=self.device, dtype=torch.int64).reshape(-1)
            flags = self.float64_rows.clone()
            flags[ids] = is64
            self.float64_rows = flags
        return obs

    def _extra_state_dict(self) -> dict[str, Any]:
        return {"float64_rows": self.float64_rows.clone()}

    def _load_extra_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.float64_rows = state_dict["float64_rows"].to(device=self.device, dtype=torch.bool).clone()


def _f32(x: torch.Tensor) -> torch.Tensor:
    """Round a float64 tensor to float32 precision, keeping float64 storage."""
    return x.to(torch.float32).to(torch.float64)


_F32_POWER = float(np.float32(MountainCarContinuousTorch.power))
_F32_MAX_SPEED = float(np.float32(MountainCarContinuousTorch.max_speed))
_F32_MIN_POSITION = float(np.float32(MountainCarContinuousTorch.min_position))
_F32_MAX_POSITION = float(np.float32(MountainCarContinuousTorch.max_position))
_F32_GOAL_POSITION = float(np.float32(MountainCarContinuousTorch.goal_position))


TORCH_ENVS: dict[str, type[TorchVectorEnv]] = {
    cls.env_id: cls for cls in (PendulumTorch, CartPoleTorch, MountainCarContinuousTorch)
}


def make_torch_env(env_id: str, num_envs: int, device: str | torch.device = "cpu", **kwargs: Any) -> TorchVectorEnv:
    """The batched torch env for a gymnasium id (``kwargs``: ``dtype``, ``max_episode_steps``).

    Raises ``ValueError`` naming the supported ids for any other id.
    """
    try:
        cls = TORCH_ENVS[env_id]
    except KeyError:
        raise ValueError(f"no torch env for {env_id!r}; supported ids: {sorted(TORCH_ENVS)}") from None
    return cls(num_envs, device, **kwargs)
