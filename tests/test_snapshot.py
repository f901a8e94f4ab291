"""Env snapshots behind exact resume: gymnasium's standard wrappers (episode statistics in deques, frame stacks,
running normalization statistics, delayed observations, sticky actions) are captured and restored exactly; what
cannot be captured is named in a warning."""

import threading

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.wrappers import (DelayObservation, FrameStackObservation, NormalizeObservation, NormalizeReward,
                                RecordEpisodeStatistics, StickyAction)

from envs.make import SnapshotWarning, make_vec_env, restore, snapshot
from rl import checkpoint
from rl.config import EnvConfig


def wrapped_cartpole(**kwargs) -> gym.Env:
    env = gym.make("CartPole-v1", max_episode_steps=30, **kwargs)
    env = StickyAction(DelayObservation(env, 2), 0.25)
    env = NormalizeReward(NormalizeObservation(env))
    return RecordEpisodeStatistics(FrameStackObservation(env, 3), buffer_length=5)


class HoldsALock(gym.Wrapper):
    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.lock = threading.Lock()  # nothing a checkpoint can hold


for env_id, entry in [("WrappedCartPole-v0", wrapped_cartpole),
                      ("LockedCartPole-v0", lambda **kw: HoldsALock(gym.make("CartPole-v1", **kw)))]:
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=entry)


def trajectory(envs, actions) -> list:
    out = []
    for a in actions:
        obs, reward, terminated, truncated, _ = envs.step(a)
        out.append((obs.copy(), reward.copy(), terminated.copy(), truncated.copy()))
    return out


def layer(envs, cls: type) -> gym.Env:
    e = envs.envs[0]
    while not isinstance(e, cls):
        e = e.env
    return e


def wrapper_stats(envs) -> list:
    stats = layer(envs, RecordEpisodeStatistics)
    return [list(stats.return_queue), list(stats.length_queue), stats.episode_count,
            layer(envs, FrameStackObservation).obs_queue[-1].copy(), layer(envs, NormalizeObservation).obs_rms.mean.copy(),
            layer(envs, NormalizeReward).return_rms.var.copy(), layer(envs, StickyAction).last_action]


def test_standard_wrappers_continue_exactly_after_restore(tmp_path):
    envs = make_vec_env(EnvConfig(id="WrappedCartPole-v0", num_envs=2))
    envs.reset(seed=3)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 2, size=(120, 2))
    trajectory(envs, actions[:70])  # several episodes in: the statistics' deques are filled
    with checkpoint_round_trip(tmp_path) as save:  # through torch.save / torch.load(weights_only=True)
        snap = save(snapshot(envs))
    expected, stats = trajectory(envs, actions[70:]), wrapper_stats(envs)
    trajectory(envs, actions[:40])  # move on, then go back
    restore(envs, snap)
    again = trajectory(envs, actions[70:])
    for (o1, r1, te1, tr1), (o2, r2, te2, tr2) in zip(expected, again):
        assert np.array_equal(o1, o2) and np.array_equal(r1, r2) and np.array_equal(te1, te2)
    for a, b in zip(stats, wrapper_stats(envs)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert stats[2] >= 3 and len(stats[0]) >= 3  # episodes really ended in the replayed stretch and before it


class checkpoint_round_trip:
    def __init__(self, d) -> None:
        self.path = d / "snap.pt"

    def __enter__(self):
        def save(obj):
            checkpoint.atomic_save(obj, self.path)
            return torch.load(self.path, weights_only=True)
        return save

    def __exit__(self, *exc) -> None:
        pass


def test_uncapturable_attribute_is_named_in_a_warning():
    envs = make_vec_env(EnvConfig(id="LockedCartPole-v0", num_envs=1))
    envs.reset(seed=0)
    with pytest.warns(SnapshotWarning, match=r"cannot capture HoldsALock\.lock \(lock\); a resumed run"):
        snapshot(envs)
