"""Where the time of a run goes: host wall time per part of the loop, and (``--kernels``) the GPU kernels.

    python scripts/profile_run.py agent=ddpg env=halfcheetah device=cuda trainer.compile=true --steps 2000
    python scripts/profile_run.py +experiment=a2c_cartpole_gpu --steps 2000000 --kernels

Positional arguments are Hydra overrides (as for ``python -m rl.train``). It trains past the warm-up (and past
CUDA-graph capture), then times ``--steps`` env steps and prints, per loop iteration, the host wall time spent
inside each part (acting — which includes waiting for the GPU to finish earlier work —, env stepping, storing,
sampling, updating) and the rest of the loop. ``--kernels`` repeats the stretch under the torch profiler and
prints the GPU time of all kernels and the top ones (the profiler itself slows the host down); the full
table goes to ``$OUT/profile_<agent>_<env>.txt`` when ``$OUT`` is set.
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
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import agents  # noqa: E402,F401
from agents.base import build_agent  # noqa: E402
from rl.trainer import Trainer  # noqa: E402
from scripts.bench import compose  # noqa: E402

class Timers:
    """Host wall time accumulated per part; each part is a method wrapped on its instance."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, obj: object, attr: str, label: str) -> None:
        fn = getattr(obj, attr)
        self.seconds[label] = 0.0

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - t

        setattr(obj, attr, timed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*")
    p.add_argument("--steps", type=int, default=2000, help="env steps to time")
    p.add_argument("--kernels", action="store_true", help="also run the torch profiler (GPU kernel table)")
    args = p.parse_args()
    cfg = compose(args.overrides + ["trainer.progress=false", "logger.tensorboard=false", "trainer.eval_every=0",
                                    "trainer.checkpoint_every=0"])
    agent = build_agent(cfg)
    trainer = Trainer(cfg, agent, run_dir=None)
    n = cfg.env.num_envs
    warm = (cfg.trainer.learning_starts if agent.random_warmup else 0) + 100 * n * getattr(agent.cfg, "n_steps", 1)
    trainer.evaluate = lambda: {}  # no evaluation inside the profiled stretch
    trainer.run(warm)  # warm-up, first updates, graph capture
    timers = Timers()
    timers.wrap(agent, "explore", "explore")
    timers.wrap(agent, "update", "agent.update")
    timers.wrap(agent, "sample_and_update", "sample+update")  # includes agent.update where not one graph
    timers.wrap(trainer.storage, "add", "storage.add")
    if hasattr(trainer.storage, "sample"):
        timers.wrap(trainer.storage, "sample", "storage.sample")
    envs = getattr(trainer.collector, "envs", None) or getattr(trainer.collector, "env", None)
    timers.wrap(envs, "step", "env.step")
    for part in ("step_async", "step_wait"):  # worker processes: the collector sends, launches updates, then waits
        if hasattr(envs, part):
            timers.wrap(envs, part, f"env.{part}")
    cuda = agent.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    t0, s0 = time.perf_counter(), trainer.step
    trainer.run(warm + args.steps)
    sync()
    wall = time.perf_counter() - t0
    iters = (trainer.step - s0) / n
    name = f"{cfg.agent.name}_{cfg.env.name}" + ("_graphs" if cfg.trainer.compile else "_eager") + (
        "_overlap" if cfg.trainer.overlap else "")
    print(f"== {name}: {trainer.step - s0:,} env steps in {wall:.2f} s ({(trainer.step - s0) / wall:,.0f} SPS, "
          f"{iters:,.0f} loop iterations of {n} env steps); host wall time per iteration:")
    inner = ["storage.sample"] + (["agent.update"] if timers.seconds.get("sample+update") else [])
    parts = sum(timers.seconds.values()) - sum(timers.seconds.get(k, 0.0) for k in inner)  # nested timers
    for label, sec in timers.seconds.items():
        print(f"   {label:<15} {sec / iters * 1e6:9.1f} µs")
    print(f"   {'rest of loop':<15} {(wall - parts) / iters * 1e6:9.1f} µs")
    print(f"   {'total':<15} {wall / iters * 1e6:9.1f} µs")
    if args.kernels:
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            trainer.run(warm + 2 * args.steps)
            sync()
        events = prof.key_averages()
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        gpu_total = sum(e.self_device_time_total for e in kernels)
        print(f"   GPU kernel time {gpu_total / iters:9.1f} µs per iteration; top kernels (µs per iteration, count):")
        for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:8]:
            print(f"     {e.self_device_time_total / iters:7.1f}  x{e.count / iters:5.1f}  {e.key[:90]}")
        if os.environ.get("OUT"):
            sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
            Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
            Path(os.environ["OUT"], f"profile_{name}.txt").write_text(events.table(sort_by=sort, row_limit=120,
                                                                                max_name_column_width=400))
    trainer.close()


if __name__ == "__main__":
    main()
