"""Where the time of a run goes: the torch profiler over a stretch of training, summed per part of the loop.

    python scripts/profile_run.py agent=ddpg env=halfcheetah device=cuda trainer.compile=true --steps 2000
    python scripts/profile_run.py +experiment=a2c_cartpole_gpu --steps 2000000

Positional arguments are Hydra overrides (as for ``python -m rl.train``). It trains past the warm-up (and past
CUDA-graph capture), then profiles ``--steps`` env steps and prints, per loop iteration: host time inside
each part (acting, env stepping, storing, updating), the GPU time of all kernels, and the top kernels. The
full profiler table goes to ``$OUT/profile_<agent>_<env>.txt`` when ``$OUT`` is set.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

import agents  # noqa: E402,F401
from agents.base import build_agent  # noqa: E402
from rl.trainer import Trainer  # noqa: E402
from scripts.bench import compose  # noqa: E402

PARTS = ("explore", "env.step", "storage.add", "storage.sample", "agent.update")


def labelled(obj: object, attr: str, label: str) -> None:
    """Wrap ``obj.attr`` in a profiler range named ``label`` (instance attribute: nothing else changes)."""
    fn = getattr(obj, attr)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with record_function(label):
            return fn(*args, **kwargs)

    setattr(obj, attr, wrapper)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*")
    p.add_argument("--steps", type=int, default=2000, help="env steps to profile")
    args = p.parse_args()
    cfg = compose(args.overrides + ["trainer.progress=false", "logger.tensorboard=false", "trainer.eval_every=0",
                                    "trainer.checkpoint_every=0"])
    agent = build_agent(cfg)
    trainer = Trainer(cfg, agent, run_dir=None)
    n = cfg.env.num_envs
    warm = (cfg.trainer.learning_starts if agent.random_warmup else 0) + 100 * n * getattr(agent.cfg, "n_steps", 1)
    trainer.evaluate = lambda: {}  # no evaluation inside the profiled stretch
    trainer.run(warm)  # warm-up, first updates, graph capture
    labelled(agent, "explore", "explore")
    labelled(agent, "update", "agent.update")
    labelled(trainer.storage, "add", "storage.add")
    if hasattr(trainer.storage, "sample"):
        labelled(trainer.storage, "sample", "storage.sample")
    envs = getattr(trainer.collector, "envs", None) or getattr(trainer.collector, "env", None)
    labelled(envs, "step", "env.step")
    cuda = agent.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize()
    t0, s0 = time.perf_counter(), trainer.step
    with profile(activities=acts) as prof:
        trainer.run(warm + args.steps)
        if cuda:
            torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    iters = (trainer.step - s0) / n
    events = prof.key_averages()
    host = {e.key: e.cpu_time_total for e in events if e.key in PARTS}  # µs, inclusive
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_total = sum(e.self_device_time_total for e in kernels)
    name = f"{cfg.agent.name}_{cfg.env.name}" + ("_graphs" if cfg.trainer.compile else "_eager")
    print(f"== profile {name}: {trainer.step - s0:,} env steps in {wall:.2f} s under the profiler "
          f"({(trainer.step - s0) / wall:,.0f} SPS, {iters:,.0f} loop iterations of {n} env steps)")
    print(f"   per iteration: wall {wall / iters * 1e6:8.1f} µs" + (f" | GPU kernels {gpu_total / iters:8.1f} µs"
                                                                     if cuda else ""))
    for part in PARTS:
        if part in host:
            print(f"   host in {part:<15} {host[part] / iters:8.1f} µs/iteration")
    if cuda:
        print("   top GPU kernels (µs per iteration):")
        for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:8]:
            print(f"     {e.self_device_time_total / iters:7.1f}  x{e.count / iters:5.1f}  {e.key[:90]}")
    if os.environ.get("OUT"):
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        Path(os.environ["OUT"], f"profile_{name}.txt").write_text(events.table(sort_by=sort, row_limit=60))
    trainer.close()


if __name__ == "__main__":
    main()
