"""Side-by-side speed: our agent and Stable-Baselines3's on the same env and settings, in one command.

    # DDPG on HalfCheetah-v5, 1 env, 1 update per step, 256x256, batch 256 — eager, CUDA graphs, graphs + overlap
    python scripts/bench.py agent=ddpg env=halfcheetah trainer.total_steps=100000 trainer.learning_starts=10000 \\
        agent.actor_lr=3e-4 agent.critic_lr=3e-4 device=cuda \\
        --variant eager trainer.compile=false trainer.total_steps=30000 \\
        --variant graphs trainer.compile=true --variant overlap trainer.compile=true trainer.overlap=true \\
        --sb3-steps 15000 --seeds 0 1

    # A2C on CartPole-v1, 8 envs, on a CPU
    python scripts/bench.py agent=a2c env=cartpole env.num_envs=8 trainer.total_steps=100000 device=cpu

Positional arguments are Hydra overrides of our run (exactly as ``python -m rl.train`` takes them); each
``--variant NAME [overrides...]`` adds a run of ours with more overrides (default: one run, "ours"). SB3 gets
the same env id, number of envs, network sizes, batch size, learning rates, γ, τ, exploration noise,
warm-up and update-to-data ratio, read from our composed config (SB3 can only use gymnasium envs: with
``env.backend=torch`` it runs the gymnasium version of the same env, with ``--sb3-num-envs`` copies).

For every run it prints (as soon as that run ends) env steps per second over the timed phase — the steps
after the random warm-up, where updates happen, with no evaluation inside (``trainer.eval_every=0``; SB3's
``learn()`` evaluates nothing either) — the mean eval return at the end, and our ratio to SB3. SPS is a
rate, so SB3 may be timed over fewer steps (``--sb3-steps``) as long as both are past the warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

import agents  # noqa: E402,F401
from agents.base import build_agent  # noqa: E402
from rl.config import Config, to_config  # noqa: E402
from rl.trainer import Trainer, resolve_device  # noqa: E402


def compose(overrides: list[str]) -> Config:
    from hydra import compose as hydra_compose, initialize_config_module

    from rl.train import expand_env_ids

    with initialize_config_module("conf", version_base="1.3"):
        cfg = hydra_compose("config", overrides=expand_env_ids(overrides))
    return to_config(cfg)


def ours(cfg: Config) -> dict:
    """One run of ours; SPS over the steps after ``trainer.learning_starts``."""
    agent = build_agent(cfg)
    trainer = Trainer(cfg, agent, run_dir=None)
    tc = cfg.trainer
    t0 = time.perf_counter()
    warm = tc.learning_starts if agent.random_warmup else 0
    if warm:
        trainer.run(warm)  # random warm-up (and its eval), untimed
    if agent.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    start = trainer.step
    result = trainer.run(tc.total_steps)
    wall = time.perf_counter() - t0
    trainer.close()
    out = {"sps": result["sps"], "timed_steps": trainer.step - start, "steps": trainer.step, "wall_s": wall,
           "return_mean": result.get("return_mean", float("nan")), "timed_wall_s": time.perf_counter() - t1}
    if agent.device.type == "cuda":
        out["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def sb3(cfg: Config, steps: int, num_envs: int, seed: int, learning_starts: int | None = None) -> dict | None:
    """SB3's version of ``cfg`` (DDPG/TD3 or A2C) on the gymnasium env, timed the same way."""
    try:
        import stable_baselines3 as sb
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.evaluation import evaluate_policy
        from stable_baselines3.common.noise import NormalActionNoise
    except ImportError:
        return None
    a, tc = cfg.agent, cfg.trainer
    warm_steps = tc.learning_starts if learning_starts is None else learning_starts
    env = make_vec_env(cfg.env.id, n_envs=num_envs, seed=seed)
    device = str(resolve_device(cfg.device))
    if a.name in ("ddpg", "td3"):
        n = env.action_space.shape[0]
        half = (env.action_space.high - env.action_space.low) / 2
        kw = dict(learning_rate=a.actor_lr, buffer_size=max(steps, 1000), learning_starts=warm_steps,
                  batch_size=tc.batch_size, tau=a.tau, gamma=a.gamma, train_freq=1,
                  gradient_steps=max(1, round(tc.utd_ratio * num_envs)),
                  action_noise=NormalActionNoise(np.zeros(n), a.exploration_noise * half),
                  policy_kwargs=dict(net_arch=list(a.hidden_sizes)), seed=seed, device=device, verbose=0)
        if a.name == "td3":
            kw.update(policy_delay=a.policy_delay, target_policy_noise=a.target_policy_noise,
                      target_noise_clip=a.target_noise_clip)
        model = (sb.TD3 if a.name == "td3" else sb.DDPG)("MlpPolicy", env, **kw)
        warm = warm_steps
    elif a.name == "a2c":
        model = sb.A2C("MlpPolicy", env, n_steps=a.n_steps, gamma=a.gamma, ent_coef=a.ent_coef,
                       max_grad_norm=a.max_grad_norm or 1e9, learning_rate=a.actor_lr,
                       policy_kwargs=dict(net_arch=list(a.hidden_sizes)), seed=seed, device=device, verbose=0)
        warm = 0
    else:
        return None
    t0 = time.perf_counter()
    if warm:
        model.learn(warm)
    t1 = time.perf_counter()
    model.learn(steps - warm, reset_num_timesteps=not warm)
    t2 = time.perf_counter()
    eval_env = make_vec_env(cfg.env.id, n_envs=1, seed=seed + 100_000)
    mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=cfg.trainer.eval_episodes, deterministic=True)
    return {"sps": (steps - warm) / (t2 - t1), "timed_steps": steps - warm, "steps": steps, "wall_s": t2 - t0,
            "return_mean": float(mean), "timed_wall_s": t2 - t1}


def fmt(r: dict) -> str:
    mem = f", GPU peak {r['gpu_peak_mib']:.0f} MiB" if "gpu_peak_mib" in r else ""
    return (f"{r['sps']:>12,.0f} SPS  return {r['return_mean']:8.1f}  ({r['steps']:,} steps, "
            f"{r['timed_steps']:,} timed in {r['timed_wall_s']:.1f} s{mem})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides of our run, as for python -m rl.train")
    p.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "OVERRIDE"),
                   help="a run of ours with extra overrides (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--sb3-steps", type=int, default=0, help="SB3's total steps (default: ours)")
    p.add_argument("--sb3-num-envs", type=int, default=0, help="SB3's envs (default: ours)")
    p.add_argument("--sb3-learning-starts", type=int, default=None, help="SB3's random warm-up (default: ours)")
    p.add_argument("--no-sb3", action="store_true")
    p.add_argument("--json", default=None, help="write every result here (default: $OUT/bench_<agent>_<env>.json "
                                                 "when $OUT is set)")
    args = p.parse_args()
    variants = args.variant or [["ours"]]
    # no evaluation inside the timed loop (SB3's learn() evaluates nothing either): one evaluation at the end
    fixed = ["trainer.progress=false", "logger.tensorboard=false", "trainer.eval_every=0"]
    base = compose(args.overrides + fixed)
    device = resolve_device(base.device)
    if device.type == "cpu":
        torch.set_num_threads(max(base.trainer.threads, 1))
    hw = torch.cuda.get_device_name() if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} UTC, {hw}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"python {platform.python_version()}", flush=True)
    print(f"# ours: python -m rl.train {' '.join(args.overrides)}", flush=True)
    rows: list[dict] = []
    for seed in args.seeds:
        b = None
        if not args.no_sb3:  # the baseline first: its figure survives a time-out of ours
            b = sb3(base, args.sb3_steps or base.trainer.total_steps, args.sb3_num_envs or base.env.num_envs, seed,
                    args.sb3_learning_starts)
            print(f"seed {seed}  {'SB3':<10}" + (fmt(b) if b else " not installed (pip install stable-baselines3)"),
                  flush=True)
            rows.append({"seed": seed, "variant": "sb3", **(b or {})})
        for name, *extra in variants:
            cfg = compose(args.overrides + list(extra) + [f"seed={seed}", *fixed])
            a = ours(cfg)
            ratio = f"  {a['sps'] / b['sps']:6.2f}x SB3" if b else ""
            print(f"seed {seed}  {name:<10}" + fmt(a) + ratio, flush=True)
            rows.append({"seed": seed, "variant": name, "overrides": list(extra), **a})
    print("\nmean over seeds:")
    names = (["sb3"] if not args.no_sb3 else []) + [v[0] for v in variants]
    sb3_sps = np.mean([r["sps"] for r in rows if r["variant"] == "sb3" and "sps" in r] or [np.nan])
    for name in names:
        rs = [r for r in rows if r["variant"] == name and "sps" in r]
        if rs:
            sps, ret = np.mean([r["sps"] for r in rs]), np.mean([r["return_mean"] for r in rs])
            print(f"  {name:<10} {sps:>12,.0f} SPS  return {ret:8.1f}  ({sps / sb3_sps:.2f}x SB3)")
    path = args.json or (os.path.join(os.environ["OUT"], f"bench_{base.agent.name}_{base.env.name}.json")
                         if os.environ.get("OUT") else None)
    if path:
        with open(path, "w") as f:
            json.dump({"command": sys.argv, "hardware": hw, "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
