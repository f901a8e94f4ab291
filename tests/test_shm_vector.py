"""envs/shm_vector.py: worker processes trading through shared memory step through exactly the transitions of
gymnasium's SyncVectorEnv (same-step autoreset), train and resume as the other backends do, and report a failing or
dead worker as one error instead of hanging."""

import multiprocessing as mp
import os
import signal
import time

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from agents.ddpg import DDPGConfig
from envs.make import make_vec_env, restore, snapshot
from envs.shm_vector import SharedMemoryVectorEnv, poll
from rl.config import BufferConfig, Config, EnvConfig, LoggerConfig, TrainerConfig
from rl.train import run


def rollout(envs, steps: int, seed: int = 0) -> list:
    """Random actions (the same for every backend); every step's outputs, final observations included."""
    rng = np.random.default_rng(seed)
    obs, _ = envs.reset(seed=[10 + i for i in range(envs.num_envs)])
    out = [obs]
    for _ in range(steps):
        if isinstance(envs.single_action_space, gym.spaces.Discrete):
            action = rng.integers(0, envs.single_action_space.n, envs.num_envs)
        else:
            action = rng.uniform(-1, 1, (envs.num_envs, *envs.single_action_space.shape)).astype(np.float32)
        o, r, term, trunc, info = envs.step(action)
        ended = info.get("_final_obs", np.zeros(envs.num_envs, bool))
        finals = np.stack([info["final_obs"][i] for i in np.flatnonzero(ended)]) if ended.any() else None
        out.append((o, r, term, trunc, ended, finals))
    return out


def assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if isinstance(x, tuple):
            for u, v in zip(x, y):
                assert (u is None and v is None) or np.array_equal(u, v)
        else:
            assert np.array_equal(x, y)


@pytest.mark.parametrize("env_id, steps, spin_us", [("Pendulum-v1", 120, 0), ("CartPole-v1", 120, 0),
                                                    ("Hopper-v5", 300, 0), ("Pendulum-v1", 120, 500)])
def test_shm_vector_env_steps_as_sync(env_id, steps, spin_us):
    """Also with polling processes (``spin_us``): the same transitions, whether a release is seen by polling or
    by waking from the semaphore (with 3 polling workers on this 2-core machine, both happen)."""
    if env_id == "Hopper-v5":
        pytest.importorskip("mujoco")
    cfg = EnvConfig(id=env_id, max_episode_steps=40, spin_us=spin_us)  # short episodes: autoresets inside the rollout
    sync, shm = make_vec_env(cfg, num_envs=3, vectorization="sync"), make_vec_env(cfg, num_envs=3, vectorization="shm")
    assert shm.spin == spin_us / 1e6
    try:
        assert isinstance(shm, SharedMemoryVectorEnv)
        want, got = rollout(sync, steps), rollout(shm, steps)
        assert sum(int(s[4].sum()) for s in want[1:]) >= 3  # episodes did end (and were reset) on the way
        assert_same(got, want)
        states = snapshot(shm)  # through call(): every worker's env state, then back
        before = rollout_tail(shm, 5)
        restore(shm, states)
        after = rollout_tail(shm, 5)  # MuJoCo: the solver's warm start is not part of a snapshot, hence allclose
        assert all(np.allclose(u, v, rtol=1e-6, atol=1e-8) for x, y in zip(after, before) for u, v in zip(x, y))
    finally:
        sync.close()
        shm.close()


def test_poll_takes_a_released_semaphore_and_gives_up_after_its_time():
    sem = mp.get_context().Semaphore(0)
    t = time.perf_counter()
    assert not poll(sem, 0.01) and time.perf_counter() - t >= 0.01  # nothing released: False once 10 ms have passed
    assert not poll(sem, 0)  # no polling at all
    sem.release()
    assert poll(sem, 0.01) and not sem.acquire(False)  # taken, and only once


def test_auto_spin_polls_only_with_a_core_for_each_worker_and_four_to_spare(monkeypatch):
    from envs import shm_vector

    for cores, workers, want in [(16, 5, 2000), (9, 5, 2000), (8, 5, 0), (2, 1, 0), (32, 50, 0)]:
        monkeypatch.setattr(shm_vector.os, "sched_getaffinity", lambda _pid, c=cores: set(range(c)), raising=False)
        assert shm_vector.auto_spin_us(workers) == want, (cores, workers)
    monkeypatch.setattr(shm_vector.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    envs = make_vec_env(EnvConfig(), num_envs=2, vectorization="shm")  # the default, env.spin_us=None: auto
    try:
        assert envs.spin == 0  # 2 cores: the processes sleep
    finally:
        envs.close()


def rollout_tail(envs, steps: int) -> list:
    """``steps`` more steps without a reset, with fixed actions."""
    action = np.stack([envs.single_action_space.sample() for _ in range(envs.num_envs)]) * 0
    return [envs.step(action)[:4] for _ in range(steps)]


class Fragile(gym.Env):
    """Raises on its third step."""

    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        if self.t == 3:
            raise ValueError("the env broke on purpose")
        return np.full(2, self.t / 10, np.float32), 1.0, False, False, {}


def test_shm_vector_env_reports_failures():
    envs = SharedMemoryVectorEnv([Fragile for _ in range(2)], timeout=0.2)
    try:
        envs.reset(seed=0)
        with pytest.raises(ValueError, match="2 seeds for 2 envs|seeds for 2 envs"):
            envs.reset(seed=[1, 2, 3])
        for _ in range(2):
            obs, reward, *_ = envs.step(np.zeros((2, 1), np.float32))
        assert np.allclose(obs, 0.2) and list(reward) == [1.0, 1.0]
        with pytest.raises(RuntimeError, match="the env broke on purpose"):
            envs.step(np.zeros((2, 1), np.float32))
        envs.reset(seed=0)  # the workers live on after an exception in their env
        os.kill(envs.processes[1].pid, signal.SIGKILL)
        envs.processes[1].join()
        with pytest.raises(RuntimeError, match="env-1 died"):
            envs.step(np.zeros((2, 1), np.float32))
        with pytest.raises(RuntimeError, match="closed"):
            envs.step(np.zeros((2, 1), np.float32))
    finally:
        envs.close()
    assert not any(p.is_alive() for p in envs.processes)  # the surviving worker is ended too


def test_training_with_shm_workers_matches_sync_and_resumes(tmp_path):
    """DDPG with updates overlapped with the env step (the workers simulate while the updates are launched): the same
    parameters as with in-process envs, and a run stopped halfway resumes to the same end; polling or sleeping
    processes (``env.spin_us``, which a resumed run may change) step the same."""
    def cfg(vectorization, total, resume=None, spin_us=None):
        return Config(agent=DDPGConfig(hidden_sizes=[16]), env=EnvConfig(num_envs=2, vectorization=vectorization,
                                                                         max_episode_steps=60, spin_us=spin_us),
                      buffer=BufferConfig(capacity=2000), logger=LoggerConfig(tensorboard=False), seed=1,
                      device="cpu", trainer=TrainerConfig(total_steps=total, learning_starts=100, eval_every=0,
                                                          eval_episodes=2, progress=False, overlap=True,
                                                          resume=resume))
    sync = run(cfg("sync", 300), run_dir=tmp_path / "sync")
    full = run(cfg("shm", 300, spin_us=300), run_dir=tmp_path / "full")
    run(cfg("shm", 150), run_dir=tmp_path / "half")
    resumed = run(cfg("shm", 300, resume=str(tmp_path / "half"), spin_us=300), total_steps=300)
    assert sync["step"] == full["step"] == resumed["step"] == 300
    assert full["return_mean"] == sync["return_mean"] == resumed["return_mean"]
    modules = [torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["agent"]["modules"]
               for d in ("sync", "full", "half")]
    assert all(torch.equal(modules[0][k], m[k]) for m in modules[1:] for k in modules[0])


def test_workers_exit_when_the_main_process_is_killed(tmp_path):
    """A main process killed with SIGKILL cannot close its workers: they notice within about a second and exit."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = ("import sys, time\nsys.path.insert(0, %r)\nfrom rl.config import EnvConfig\nfrom envs.make import make_vec_env\n"
              "envs = make_vec_env(EnvConfig(id='Pendulum-v1'), num_envs=2, vectorization='shm')\n"
              "envs.reset(seed=0)\nprint(' '.join(str(p.pid) for p in envs.processes), flush=True)\ntime.sleep(60)\n"
              % str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(map(running, pids)):
        time.sleep(0.2)
    assert not any(map(running, pids))


def running(pid: int) -> bool:
    """The process exists and is not a zombie (exited, waiting for its new parent to reap it)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" not in f.read().lower()
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("vectorization", ["shm", "async"])
def test_workers_end_on_terminate_whatever_handler_they_inherit(vectorization):
    """Workers forked while the trainer's signal handlers are installed (they only note a signal) used to inherit
    them, ignore ``terminate()`` and hang the interpreter's exit, which joins them (seen on the GPU: a benchmark
    that left its evaluation envs open never exited). Now a worker ends on SIGTERM: an open vector env no longer
    keeps its process from exiting."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = ("import signal, sys\nsys.path.insert(0, %r)\nfrom rl.config import EnvConfig\nfrom envs.make import make_vec_env\n"
              "signal.signal(signal.SIGTERM, lambda *a: None)\nsignal.signal(signal.SIGINT, lambda *a: None)\n"
              "envs = make_vec_env(EnvConfig(id='Pendulum-v1'), num_envs=2, vectorization=%r)\n"
              "envs.reset(seed=0)\nfor p in getattr(envs, 'processes', []):\n    p.terminate(); p.join(5); "
              "assert p.exitcode == -signal.SIGTERM, p.exitcode\nprint('exiting', flush=True)\n"
              % (str(ROOT), vectorization))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exiting" in proc.stdout
