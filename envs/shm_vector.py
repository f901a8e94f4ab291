"""A vector env of worker processes that trade actions and results through shared memory (``env.vectorization=shm``).

gymnasium's ``AsyncVectorEnv`` sends every step's command and result through a pipe (pickled) and merges the
sub-envs' info dicts in Python: for a handful of MuJoCo envs that costs several times the simulation itself
(docs/benchmarks.md, issue #12). Here each step is: the actions written into one shared array, one semaphore
release per worker, each worker stepping its env and writing observation, reward and flags into shared arrays,
one semaphore acquire per worker. Rare commands (reset with seeds, ``call``, close) go through a pipe. With ``spin``
(``env.spin_us``), workers and the main process poll their semaphore for a while before they sleep on it: a sleeping
process wakes tens to hundreds of microseconds after the release, a polling one at once.

``step_async`` / ``step_wait`` let the caller work while the workers simulate. Same-step autoreset, as
``envs.make.make_vec_env`` gives the other backends: a sub-env that ends is reset at once; ``info["final_obs"]``
holds its last observation where ``info["_final_obs"]`` is True. The sub-envs are the same gymnasium envs as
the other backends', so a run steps through the same transitions whichever backend it uses (tests/test_shm_vector.py).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import VectorEnv
from gymnasium.vector.utils import batch_space

STEP, RESET, CALL, CLOSE = 1, 2, 3, 4


def _arrays(buffers: dict[str, Any], shapes: dict[str, tuple[tuple[int, ...], Any]]) -> dict[str, np.ndarray]:
    return {k: np.frombuffer(buffers[k], dtype=dtype).reshape(shape) for k, (shape, dtype) in shapes.items()}


def worker_signals() -> None:
    """A worker forked from a training process inherits its signal handlers, which only note a signal and wait
    for the training loop to act on it: such a worker would outlive ``terminate()`` and hang the exit that joins it.
    Ctrl-C goes to the main process, which closes its workers; SIGTERM ends a worker at once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def poll(sem: Any, spin: float) -> bool:
    """Take ``sem`` if it can be taken within ``spin`` seconds of polling (busy, no sleep); False otherwise. A
    process that sleeps on a semaphore is woken by the kernel some ten to hundreds of microseconds after the
    release (more in a VM); one that polls sees it at once, at the price of a busy core while it waits."""
    if spin <= 0:
        return False
    deadline = time.perf_counter() + spin
    while not sem.acquire(False):
        if time.perf_counter() > deadline:
            return False
        os.sched_yield()  # a core shared with other runnable processes goes to them meanwhile, and the GIL to
        # this process's other threads (TensorBoard's writer): time.sleep(0) would too, but takes ~50 µs a call
    return True


def auto_spin_us(workers: int) -> int:
    """2000 µs where this process may run on a core for each worker and 4 more (the main process, a background
    evaluation, the GPU driver's threads), else 0: a poller that shares its core with the process it waits for
    only delays it. 2 ms covers the gap between two steps of a training loop, so that its workers never sleep,
    while workers left idle (between evaluations, after the run) sleep after 2 ms."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 2000 if cores >= workers + 4 else 0


def _worker(index: int, env_fn: Callable[[], gym.Env], buffers: dict[str, Any], shapes: dict, go: Any, done: Any,
            pipe: Any, command: Any, failed: Any, spin: float = 0.0) -> None:
    worker_signals()
    a = _arrays(buffers, shapes)
    env, parent = None, os.getppid()
    while True:
        if not poll(go, spin):
            while not go.acquire(timeout=1.0):
                if os.getppid() != parent:  # the main process died without closing us (e.g. SIGKILL): do not linger
                    return
        cmd = command[index]
        try:
            if env is None:
                env = env_fn()
            if cmd == STEP:
                obs, reward, terminated, truncated, _ = env.step(a["action"][index].copy())
                a["has_final"][index] = terminated or truncated
                if terminated or truncated:
                    a["final_obs"][index] = obs
                    obs, _ = env.reset()
                a["obs"][index], a["reward"][index] = obs, reward
                a["terminated"][index], a["truncated"][index] = terminated, truncated
            elif cmd == RESET:
                obs, info = env.reset(**pipe.recv())
                a["obs"][index] = obs
                pipe.send(("ok", info))
            elif cmd == CALL:
                name, args, kwargs = pipe.recv()
                attr = getattr(env, name)
                pipe.send(("ok", attr(*args, **kwargs) if callable(attr) else attr))
            elif cmd == CLOSE:
                env.close()
                pipe.send(("ok", None))
                return
        except BaseException:  # noqa: BLE001 — reported to the main process, which raises it there
            failed[index] = 1
            pipe.send(("error", traceback.format_exc()))
            if cmd == CLOSE:
                return
        finally:
            done.release()


class SharedMemoryVectorEnv(VectorEnv):
    """``len(env_fns)`` envs, one per worker process (see the module docstring). ``timeout``: seconds to wait for a
    step before checking that every worker is alive. ``spin``: seconds that a worker polls for its next command, and
    the main process for the workers' results, before sleeping on the semaphore (:func:`poll`; 0: sleep at once)."""

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], context: str | None = None,
                 timeout: float = 1.0, spin: float = 0.0) -> None:
        if spin < 0:
            raise ValueError(f"spin must be >= 0 seconds, got {spin}")
        probe = env_fns[0]()
        self.single_observation_space, self.single_action_space = probe.observation_space, probe.action_space
        self.metadata = dict(getattr(probe, "metadata", {}))
        self.render_mode = None
        probe.close()
        for space in (self.single_observation_space, self.single_action_space):
            if not isinstance(space, (gym.spaces.Box, gym.spaces.Discrete)):
                raise TypeError(f"env.vectorization=shm needs Box or Discrete spaces, got {space}")
        n = self.num_envs = len(env_fns)
        self.observation_space = batch_space(self.single_observation_space, n)
        self.action_space = batch_space(self.single_action_space, n)
        obs, act = self.single_observation_space, self.single_action_space
        self.shapes = {"action": ((n, *act.shape), act.dtype), "obs": ((n, *obs.shape), obs.dtype),
                       "final_obs": ((n, *obs.shape), obs.dtype), "reward": ((n,), np.float64),
                       "terminated": ((n,), np.bool_), "truncated": ((n,), np.bool_), "has_final": ((n,), np.bool_)}
        ctx = mp.get_context(context)
        buffers = {k: ctx.RawArray("b", int(np.prod(shape)) * np.dtype(dtype).itemsize)
                   for k, (shape, dtype) in self.shapes.items()}
        self.a = _arrays(buffers, self.shapes)
        self.command, self.failed = ctx.RawArray("i", n), ctx.RawArray("i", n)
        self.go = [ctx.Semaphore(0) for _ in range(n)]
        self.done = ctx.Semaphore(0)
        self.pipes, self.processes = [], []
        for i, fn in enumerate(env_fns):
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(i, fn, buffers, self.shapes, self.go[i], self.done, theirs,
                                                  self.command, self.failed, spin), daemon=True, name=f"env-{i}")
            p.start()
            theirs.close()
            self.pipes.append(mine)
            self.processes.append(p)
        self.timeout, self.spin, self.closed, self.waiting, self.broken = timeout, spin, False, False, False

    # -- the hot path ------------------------------------------------------------------------------
    def step_async(self, actions: Any) -> None:
        self.a["action"][:] = np.asarray(actions).reshape(self.a["action"].shape)
        self._send(STEP)
        self.waiting = True

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        self._wait(STEP)
        self.waiting = False
        a = self.a
        info: dict[str, Any] = {}
        if a["has_final"].any():
            info = {"final_obs": a["final_obs"].copy(), "_final_obs": a["has_final"].copy()}
        return a["obs"].copy(), a["reward"].copy(), a["terminated"].copy(), a["truncated"].copy(), info

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        self.step_async(actions)
        return self.step_wait()

    # -- the rest ----------------------------------------------------------------------------------
    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        seeds = [None] * self.num_envs if seed is None else (
            [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else list(seed))
        if len(seeds) != self.num_envs:
            raise ValueError(f"{len(seeds)} seeds for {self.num_envs} envs")
        self._send(RESET, [{"seed": s, "options": options} for s in seeds])
        self._replies(RESET)
        return self.a["obs"].copy(), {}

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        self._send(CALL, [(name, args, kwargs)] * self.num_envs)
        return tuple(self._replies(CALL))

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return self.call(name)

    def close_extras(self, **kwargs: Any) -> None:
        """Close every env in its worker and end the workers (those that do not end in 2 s, or all of them once a
        worker has died, are terminated)."""
        try:
            if not self.broken:
                if self.waiting:
                    self._wait(STEP)
                self._send(CLOSE, [None] * self.num_envs)
                self._replies(CLOSE)
        except (RuntimeError, OSError, EOFError):  # a worker failed or died while closing: end them all now
            self.broken = True
        for p in self.processes:
            p.join(timeout=0 if self.broken else 2)
            if p.is_alive():
                p.terminate()
                p.join(timeout=2)
        for pipe in self.pipes:
            pipe.close()

    def _send(self, cmd: int, payloads: list[Any] | None = None) -> None:
        if self.closed or self.broken:
            raise RuntimeError("this vector env is closed" + (" (a worker died)" if self.broken else ""))
        for i in range(self.num_envs):
            self.command[i] = cmd
            if payloads is not None and cmd != CLOSE:
                self.pipes[i].send(payloads[i])
            self.go[i].release()

    def _wait(self, cmd: int) -> None:
        for _ in range(self.num_envs):
            if poll(self.done, self.spin):
                continue
            while not self.done.acquire(timeout=self.timeout):
                dead = [p.name for p in self.processes if not p.is_alive()]
                if dead:
                    self.broken = True
                    raise RuntimeError(f"env worker(s) {', '.join(dead)} died")
        if any(self.failed):
            errors = [self.pipes[i].recv()[1] for i in range(self.num_envs) if self.failed[i]]
            for i in range(self.num_envs):
                self.failed[i] = 0
            if cmd in (RESET, CALL):  # the workers that did not fail sent their replies too: drop them
                for i in range(self.num_envs):
                    if self.pipes[i].poll():
                        self.pipes[i].recv()
            raise RuntimeError("an env worker failed:\n" + errors[0])

    def _replies(self, cmd: int) -> list[Any]:
        self._wait(cmd)
        return [self.pipes[i].recv()[1] for i in range(self.num_envs)]
