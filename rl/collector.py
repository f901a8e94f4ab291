"""Collectors: the actor side of the loop. They step environments with the agent and fill storage.

A collector has ``collect(agent, storage, random_actions) -> (env_steps, finished_episodes)``,
``state_dict()`` / ``load_state_dict()`` and ``close()``; the trainer needs nothing else from it. With K seeds
trained as one batch, ``env_steps`` counts the steps of one seed (each seed steps as many envs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import VectorEnv
from torch import Tensor

from envs.make import restore, snapshot
from rl import seeding

Episode = tuple[float, int, int]  # (return, length, index of the seed whose env it ran in)


class Collector(Protocol):
    def collect(self, agent: Any, storage: Any, random_actions: bool,
                during: Callable[[int], None] | None = None) -> tuple[int, list[Episode]]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    def close(self) -> None: ...


def space_spec(space: gym.Space) -> tuple[tuple[int, ...], torch.dtype]:
    """Storage shape and dtype of one element of a gymnasium space."""
    if isinstance(space, gym.spaces.Box):
        return tuple(space.shape), torch.float32
    if isinstance(space, gym.spaces.Discrete):
        return (), torch.int64
    raise TypeError(f"unsupported space {space}")


def transition_spec(obs_space: gym.Space, act_space: gym.Space, extra: dict | None = None) -> dict:
    obs, act = space_spec(obs_space), space_spec(act_space)
    spec = {"obs": obs, "action": act, "reward": ((), torch.float32), "next_obs": obs,
            "terminated": ((), torch.bool), "truncated": ((), torch.bool)}
    return {**spec, **(extra or {})}


def box_clip(space: gym.Space, device: torch.device) -> Callable[[Tensor], Tensor]:
    """What the env receives: an action clipped to the Box ``[low, high]`` (identity for other spaces). The
    collectors store the action as the agent chose it (a Gaussian policy's sample, whose log-probability the
    learner needs) and send this clipped copy to ``env.step``, as Stable-Baselines3 does."""
    if not isinstance(space, gym.spaces.Box):
        return lambda action: action
    low, high = (torch.as_tensor(b, dtype=torch.float32, device=device) for b in (space.low, space.high))
    return lambda action: torch.clamp(action, low, high)


def host_box_clip(space: gym.Space) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`box_clip` for an action already on the host, into a new array (a copy for other spaces): the same
    values (float32 bounds), without a device launch in the loop."""
    if not isinstance(space, gym.spaces.Box):
        return np.array
    low, high = (np.asarray(b, dtype=np.float32) for b in (space.low, space.high))
    return lambda action: np.clip(action, low, high)


class VectorEnvCollector:
    """Steps a gymnasium vector env one step per ``collect`` and stores ``num_envs`` transitions.

    ``seeds``: the envs are K = len(seeds) equal blocks, block k the envs of the run with seed ``seeds[k]``, reset
    and given warm-up actions exactly as that run's collector would (its sub-env j starts from seed
    ``seeds[k] + j``; its warm-up actions come from its own generator, :mod:`rl.seeding` stream ``warmup``)."""

    def __init__(self, envs: VectorEnv, device: torch.device, seeds: Sequence[int]) -> None:
        self.envs, self.device = envs, device
        self.n = envs.num_envs
        self.per_seed = self.n // len(seeds)  # envs of one seed: the env steps of one seed per collect
        if self.per_seed * len(seeds) != self.n:
            raise ValueError(f"{self.n} envs do not split evenly over {len(seeds)} seeds")
        self.act_space = envs.single_action_space
        self.clip = host_box_clip(self.act_space)  # on the host copy that goes to the envs (_download)
        obs_spec = space_spec(envs.single_observation_space)
        self.obs_dtype = obs_spec[1]
        obs, _ = envs.reset(seed=[s + j for s in seeds for j in range(self.per_seed)])
        self.obs = self._tensor(obs)
        self.ep_return = np.zeros(self.n)
        self.ep_length = np.zeros(self.n, dtype=np.int64)
        self.rngs = seeding.generators(seeds, "warmup")  # warm-up actions: independent of the agent's streams
        self.staging: list[tuple[Tensor, Any]] = []  # pinned host buffers (and their copy events) for uploads to CUDA
        self.pipelined = hasattr(envs, "step_async")  # worker processes (async, shm): send, work, then collect
        self.pinned: Tensor | None = None  # the actions' way back from CUDA (_download), and its copy's event
        self.downloaded: Any = None

    def _tensor(self, x: np.ndarray) -> Tensor:
        return torch.as_tensor(x, device=self.device, dtype=self.obs_dtype)

    def _upload(self, next_obs: np.ndarray, final_next: np.ndarray, *scalars: np.ndarray
                ) -> tuple[Tensor, Tensor, Tensor]:
        """(next obs, stored s', [3, n] reward/terminated/truncated) on the device. Float observations travel
        with the scalars in one host→device copy (each copy is a round trip through the driver)."""
        n = self.n
        if self.obs_dtype != torch.float32:
            return (self._tensor(next_obs), self._tensor(final_next),
                    torch.as_tensor(np.stack(scalars), dtype=torch.float32).to(self.device))
        parts = [next_obs.reshape(n, -1)] + ([final_next.reshape(n, -1)] if final_next is not next_obs else [])
        packed = np.concatenate(parts + [np.stack(scalars, 1)], axis=1, dtype=np.float32)
        dev = self._to_device(packed)
        d, shape = parts[0].shape[1], next_obs.shape[1:]
        next_t = dev[:, :d].view(n, *shape)
        stored = dev[:, d:2 * d].view(n, *shape) if len(parts) == 2 else next_t
        return next_t, stored, dev[:, -3:].T

    def _to_device(self, packed: np.ndarray) -> Tensor:
        """``packed`` on the device. To CUDA it goes through a pinned buffer, asynchronously: the host does not wait
        for the GPU work queued before the copy (e.g. an overlapped update) and steps on. Two buffers take turns;
        each is refilled only after its previous copy is done (its event)."""
        if self.device.type != "cuda":
            return torch.from_numpy(packed).to(self.device)
        if len(self.staging) < 2 or self.staging[0][0].shape != packed.shape:
            self.staging = [(torch.empty(packed.shape, dtype=torch.float32).pin_memory(), None) for _ in range(2)]
        host, event = self.staging.pop(0)
        if event is not None:
            event.synchronize()
        host.numpy()[...] = packed
        dev = host.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.staging.append((host, event))
        return dev

    def _download(self, action: Tensor) -> Callable[[], np.ndarray]:
        """``action`` on the host, clipped to the action space (a new array): returns a function that waits for it.
        From CUDA the copy goes into a pinned buffer behind the work queued so far; the host waits for that copy
        only, so work launched after this call (the overlapped update) is already queued on the GPU while the host
        waits and steps the envs."""
        if action.device.type != "cuda":
            host = self.clip(action.numpy())
            return lambda: host
        if self.pinned is None or self.pinned.shape != action.shape or self.pinned.dtype != action.dtype:
            self.pinned = torch.empty(action.shape, dtype=action.dtype, pin_memory=True)
            self.downloaded = torch.cuda.Event()
        self.pinned.copy_(action, non_blocking=True)
        self.downloaded.record()

        def wait() -> np.ndarray:
            self.downloaded.synchronize()
            return self.clip(self.pinned.numpy())  # a new array: the buffer is refilled next step
        return wait

    def collect(self, agent: Any, storage: Any, random_actions: bool,
                during: Callable[[int], None] | None = None) -> tuple[int, list[Episode]]:
        """One step of every env. ``during(n)``, if given, runs once the actions are queued on the device, before
        the host waits for them (the trainer's overlapped updates: on CUDA, the GPU runs them behind the action
        while the host waits for the action, then steps the envs; with worker processes — ``async``, ``shm`` —
        the workers simulate meanwhile). The update reads the parameters after the action, as in a plain run."""
        if random_actions:
            action = torch.cat([uniform_actions(self.act_space, self.per_seed, g) for g in self.rngs])
            action, extras = action.to(self.device), {}
        else:
            with torch.no_grad():
                action, extras = agent.explore(self.obs)
        host_action = self._download(action)
        if during is not None:
            during(self.per_seed)
        if self.pipelined:  # worker processes: send, then collect
            self.envs.step_async(host_action())
            next_obs, reward, terminated, truncated, info = self.envs.step_wait()
        else:
            next_obs, reward, terminated, truncated, info = self.envs.step(host_action())
        final_next = next_obs  # the stored s': the true last observation where an episode just ended
        if "_final_obs" in info and info["_final_obs"].any():
            final_next = next_obs.copy()
            for i in np.flatnonzero(info["_final_obs"]):
                final_next[i] = info["final_obs"][i]
        next_t, stored_next, scalars = self._upload(next_obs, final_next, reward, terminated, truncated)
        storage.add({"obs": self.obs, "action": action, "reward": scalars[0], "next_obs": stored_next,
                     "terminated": scalars[1], "truncated": scalars[2], **extras})  # the buffer casts flags to bool
        self.obs = next_t
        self.ep_return += reward
        self.ep_length += 1
        finished = []
        for i in np.flatnonzero(terminated | truncated):
            finished.append((float(self.ep_return[i]), int(self.ep_length[i]), int(i) // self.per_seed))
            self.ep_return[i], self.ep_length[i] = 0.0, 0
        return self.per_seed, finished

    def state_dict(self) -> dict:
        return {"obs": self.obs.cpu(), "ep_return": torch.from_numpy(self.ep_return.copy()),
                "ep_length": torch.from_numpy(self.ep_length.copy()), "rng": seeding.get_states(self.rngs),
                "envs": snapshot(self.envs)}

    def load_state_dict(self, state: dict) -> None:
        restore(self.envs, state["envs"])
        self.obs = state["obs"].to(self.device)
        self.ep_return = state["ep_return"].cpu().numpy().copy()
        self.ep_length = state["ep_length"].cpu().numpy().copy()
        seeding.set_states(self.rngs, state["rng"])

    def close(self) -> None:
        self.envs.close()


def uniform_actions(space: gym.Space, n: int, generator: torch.Generator) -> Tensor:
    """``n`` uniform random actions of ``space`` on the generator's device."""
    device = generator.device
    if isinstance(space, gym.spaces.Discrete):
        return torch.randint(0, int(space.n), (n,), generator=generator, device=device)
    low, high = (torch.as_tensor(b, dtype=torch.float32, device=device) for b in (space.low, space.high))
    return low + (high - low) * torch.rand((n, *low.shape), generator=generator, device=device)


def step_in_place(env: Any, action: Tensor) -> tuple[Tensor, ...]:
    """``env.step(action)``, then every tensor attribute the step replaced (state, step counts, …) is copied back
    into the tensor it replaced: the env keeps reading and writing the same memory, as a CUDA graph needs."""
    before = {k: v for k, v in vars(env).items() if isinstance(v, Tensor)}
    out = env.step(action)
    for k, old in before.items():
        new = getattr(env, k)
        if new is not old:
            old.copy_(new)
            setattr(env, k, old)
    return out


class TorchEnvCollector:
    """Steps a batched torch env (:mod:`envs.torch_envs`) that lives on the run's device: observations, actions,
    rewards and episode statistics never leave it. Finished-episode statistics are summed on the device and
    read once per log (:meth:`pop_logs`), so collecting makes no host sync at all. With
    :meth:`use_cuda_graphs`, the env step and the episode bookkeeping are one CUDA-graph replay."""

    def __init__(self, env: Any, seed: int) -> None:
        self.env, self.n, self.device = env, env.num_envs, env.device
        self.act_space = env.single_action_space
        self.clip = box_clip(self.act_space, self.device)
        self.obs = env.reset(seed=seed).clone()
        self.ep_return = torch.zeros(self.n, device=self.device)
        self.ep_length = torch.zeros(self.n, device=self.device)
        self.finished = torch.zeros(3, device=self.device)  # Σ return, Σ length, count of finished episodes
        self.rng = torch.Generator(device=self.device).manual_seed(seed)
        self._graphed_step: Any = None

    def use_cuda_graphs(self) -> bool:
        if self.device.type != "cuda":
            return False
        from rl.graphs import Graphed

        self._graphed_step = Graphed(lambda _, x: self._step(x["action"]), generators=(self.env._generator,))
        return True

    def _step(self, action: Tensor) -> tuple[Tensor, ...]:
        """The env step (of the clipped action) and the episode bookkeeping: device work only, in place."""
        next_obs, reward, terminated, truncated, final_obs = step_in_place(self.env, self.clip(action))
        self.ep_return += reward
        self.ep_length += 1
        done = (terminated | truncated).float()
        self.finished += torch.stack([(self.ep_return * done).sum(), (self.ep_length * done).sum(), done.sum()])
        self.ep_return *= 1 - done
        self.ep_length *= 1 - done
        return next_obs, reward, terminated, truncated, final_obs

    @torch.no_grad()
    def collect(self, agent: Any, storage: Any, random_actions: bool,
                during: Callable[[int], None] | None = None) -> tuple[int, list[Episode]]:
        if random_actions:
            action, extras = uniform_actions(self.act_space, self.n, self.rng), {}
        else:
            action, extras = agent.explore(self.obs)
        if during is not None:
            during(self.n)
        step = self._graphed_step
        next_obs, reward, terminated, truncated, final_obs = (
            step(0, {"action": action}) if step is not None else self._step(action))
        storage.add({"obs": self.obs, "action": action, "reward": reward, "next_obs": final_obs,
                     "terminated": terminated, "truncated": truncated, **extras})
        self.obs.copy_(next_obs)  # in place: the acting graph reads this very tensor
        return self.n, []

    def pop_logs(self) -> tuple[dict[str, float], dict[str, str]]:
        total_return, total_length, count = self.finished.tolist()  # the one sync, at log time
        self.finished.zero_()
        if count == 0:
            return {}, {}
        return {"charts/episodic_return": total_return / count, "charts/episodic_length": total_length / count}, {}

    def state_dict(self) -> dict:
        return {"env": self.env.state_dict(), "obs": self.obs, "ep_return": self.ep_return,
                "ep_length": self.ep_length, "finished": self.finished, "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.env.load_state_dict(state["env"])
        for k in ("obs", "ep_return", "ep_length", "finished"):
            getattr(self, k).copy_(state[k])
        self.rng.set_state(state["rng"].cpu())

    def close(self) -> None:
        self.env.close()


@torch.no_grad()
def evaluate_policy(agent: Any, envs: VectorEnv, episodes: int, seeds: Sequence[int], device: torch.device,
                    max_steps: int = 100_000) -> np.ndarray:
    """Returns [K, episodes] of ``episodes`` deterministic episodes per seed on ``envs`` (separate from the training
    envs): K = len(seeds) equal blocks of sub-envs, block k acted in by the agent's seed k (an agent of K seeds
    takes seed-major rows).

    Each round resets every sub-env with fixed seeds (block k's sub-env j with ``seeds[k] + round · n + j``, n
    envs per block) and runs until each has finished one episode, so the result is a function of the agent's
    parameters alone, and seed k's returns are those a single run with seed ``seeds[k]`` would get. An episode still
    running after ``max_steps`` (an env without a time limit) is cut there, its return counted so far.
    """
    K = len(seeds)
    n = envs.num_envs // K
    returns: list[np.ndarray] = []
    dtype = space_spec(envs.single_observation_space)[1]
    clip = box_clip(envs.single_action_space, device)
    for round_ in range((episodes + n - 1) // n):
        obs, _ = envs.reset(seed=[s + round_ * n + j for s in seeds for j in range(n)])
        ret, done = np.zeros(K * n), np.zeros(K * n, dtype=bool)
        for _ in range(max_steps):
            if done.all():
                break
            action, _ = agent.act(torch.as_tensor(obs, device=device, dtype=dtype), explore=False)
            obs, reward, terminated, truncated, _ = envs.step(clip(action).cpu().numpy())
            ret += np.where(done, 0.0, reward)
            done |= terminated | truncated
        returns.append(ret.reshape(K, n))
    return np.concatenate(returns, axis=1)[:, :episodes]
