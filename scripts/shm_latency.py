"""A step's round trip through ``env.vectorization=shm`` workers (envs/shm_vector.py), sleeping against polling.

    python scripts/shm_latency.py                          # 1 Pendulum worker, 400 µs of other work between steps
    python scripts/shm_latency.py --env HalfCheetah-v5 --workers 5 --gap-us 400

Between two steps the main process busy-works ``--gap-us`` microseconds, as a training loop does (acting, storing,
launching the update), so that sleeping workers are asleep when the next step comes. Prints the mean wall time of
``step`` (the actions out, every worker's step, the results back) for each ``spin_us``, and of one env's raw step
in this process. The figure is the host's: a VM's wake-ups cost more than bare metal's.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np


def busy(us: float) -> None:
    """Keep this process's core busy for ``us`` microseconds (the main process's own work between two steps)."""
    now = time.perf_counter()
    end = now + us / 1e6
    while now < end:
        now = time.perf_counter()


def round_trip_us(env_id: str, workers: int, spin_us: int, gap_us: float, steps: int) -> float:
    from envs.shm_vector import SharedMemoryVectorEnv

    envs = SharedMemoryVectorEnv([lambda: gym.make(env_id) for _ in range(workers)], spin=spin_us / 1e6)
    try:
        envs.reset(seed=0)
        action = np.zeros((workers, *envs.single_action_space.shape), envs.single_action_space.dtype)
        for _ in range(100):
            envs.step(action)
        total = 0.0
        for _ in range(steps):
            busy(gap_us)
            start = time.perf_counter()
            envs.step(action)
            total += time.perf_counter() - start
        return total / steps * 1e6
    finally:
        envs.close()


def raw_step_us(env_id: str, steps: int) -> float:
    env = gym.make(env_id)
    env.reset(seed=0)
    action = np.zeros(env.action_space.shape, env.action_space.dtype)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return (time.perf_counter() - start) / steps * 1e6


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="Pendulum-v1")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--gap-us", type=float, default=400.0, help="other work between two steps (default 400)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--spin-us", type=int, nargs="+", default=[0, 2000], help="the settings compared (default 0 2000)")
    args = p.parse_args(argv)
    if args.workers < 1 or args.steps < 1 or args.gap_us < 0 or min(args.spin_us) < 0:
        p.error("--workers and --steps must be >= 1, --gap-us and --spin-us >= 0")
    print(f"{args.env}, {args.workers} worker(s), {args.gap_us:.0f} µs of other work between steps, "
          f"{args.steps} steps each")
    for spin in args.spin_us:
        us = round_trip_us(args.env, args.workers, spin, args.gap_us, args.steps)
        print(f"  spin_us={spin:<6} step round trip {us:8.1f} µs" + ("  (sleeping)" if spin == 0 else "  (polling)"))
    print(f"  raw step in this process  {raw_step_us(args.env, args.steps):8.1f} µs")


if __name__ == "__main__":
    main()
