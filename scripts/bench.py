"""Side-by-side speed: our agent and Stable-Baselines3's on the same env and settings, in one command.

    # DDPG on HalfCheetah-v5, 1 env, 1 update per step, 256x256, batch 256 — eager, CUDA graphs, graphs + overlap
    python scripts/bench.py agent=ddpg env=halfcheetah trainer.total_steps=100000 trainer.learning_starts=10000 \\
        agent.actor_lr=3e-4 agent.critic_lr=3e-4 device=cuda \\
        --variant eager trainer.compile=false trainer.total_steps=30000 \\
        --variant graphs trainer.compile=true --variant overlap trainer.compile=true trainer.overlap=true \\
        --sb3-steps 15000 --seeds 0 1

    # A2C on CartPole-v1, 8 envs, on a CPU
    python scripts/bench.py agent=a2c env=cartpole env.num_envs=8 trainer.total_steps=100000 device=cpu

    # TD3 on HalfCheetah-v5, 5 seeds as one batch (trainer.num_seeds), 1M steps per seed, evaluated every 100k steps
    # outside the timed figure; SB3 (one seed) over a timed slice; LeanRL's published figure as the outside reference
    python scripts/bench.py +experiment=td3_mujoco trainer.num_seeds=5 env.vectorization=shm device=cuda \
        trainer.compile=true trainer.overlap=true --eval-every 100000 --sb3-steps 27000 \
        --reference "LeanRL TD3, 1 seed, H100 (published)=936"

Positional arguments are Hydra overrides of our run (exactly as ``python -m rl.train`` takes them); each
``--variant NAME [overrides...]`` adds a run of ours with more overrides (default: one run, "ours"). SB3 gets
the same env id, number of envs, network sizes, batch size, learning rates, γ, τ, exploration noise,
warm-up and update-to-data ratio, read from our composed config (SB3 can only use gymnasium envs: with
``env.backend=torch`` it runs the gymnasium version of the same env, with ``--sb3-num-envs`` copies).

For every run it prints (as soon as that run ends) env steps per second over the timed phase — the steps
after the random warm-up, where updates happen, with no evaluation inside (``trainer.eval_every=0``; SB3's
``learn()`` evaluates nothing either) — the mean eval return at the end, and our ratio to SB3. SPS is a
rate, so SB3 may be timed over fewer steps (``--sb3-steps``) as long as both are past the warm-up.
``--eval-every N`` evaluates ours every N steps (per seed) and leaves those evaluations out of the timed figure,
printing a line at each (a run cut short by a time limit still shows its rate so far). With ``trainer.num_seeds=K``
our SPS is env steps per second summed over the K seeds (K × one seed's rate), beside SB3's one seed;
``--reference LABEL=SPS`` prints a published figure beside ours.
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


def ours(cfg: Config, name: str = "ours") -> dict:
    """One run of ours; env steps per second (summed over ``trainer.num_seeds``) over the steps after
    ``trainer.learning_starts``, evaluations left out."""
    agent = build_agent(cfg)
    trainer = Trainer(cfg, agent, run_dir=None)
    tc, k = cfg.trainer, cfg.trainer.num_seeds
    t0 = time.perf_counter()
    warm = tc.learning_starts if agent.random_warmup else 0
    if warm:
        trainer.run(warm)  # random warm-up (and its eval), untimed
    if agent.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    start = trainer.step
    evals: list[dict] = []
    evaluate = trainer.evaluator.evaluate  # in the training process (bench.py sets trainer.eval_background=false)

    def timed_evaluate(agent) -> dict:  # the trainer's evaluations, timed and left out of the figure
        t = time.perf_counter()
        result = evaluate(agent)
        evals.append({"step": trainer.step, "seconds": time.perf_counter() - t, "return_mean": result["return_mean"]})
        busy = time.perf_counter() - t1 - sum(e["seconds"] for e in evals)
        print(f"  {name}: step {trainer.step:,}: {k * (trainer.step - start) / busy:,.0f} SPS so far, eval return "
              f"{fmt_return(result['return_mean'])} ({evals[-1]['seconds']:.1f} s)", flush=True)
        return result

    trainer.evaluator.evaluate = timed_evaluate
    result = trainer.run(tc.total_steps)
    timed_wall = time.perf_counter() - t1
    trainer.close()
    eval_s = sum(e["seconds"] for e in evals)
    out = {"sps": k * (trainer.step - start) / (timed_wall - eval_s), "num_seeds": k, "timed_steps": trainer.step - start,
           "steps": trainer.step, "wall_s": time.perf_counter() - t0, "timed_wall_s": timed_wall - eval_s,
           "eval_s": eval_s, "return_mean": result.get("return_mean", float("nan")), "evals": evals}
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


def fmt_return(value: float | list[float]) -> str:
    """One return, or K returns (one per seed) as their mean ± std over the seeds."""
    if isinstance(value, list):
        return f"{np.mean(value):8.1f} ± {np.std(value):.1f} over {len(value)} seeds"
    return f"{value:8.1f}"


def fmt(r: dict) -> str:
    mem = f", GPU peak {r['gpu_peak_mib']:.0f} MiB" if "gpu_peak_mib" in r else ""
    seeds = f" summed over {r['num_seeds']} seeds" if r.get("num_seeds", 1) > 1 else ""
    evals = f", {len(r['evals'])} evaluations in {r['eval_s']:.1f} s not timed" if r.get("evals") else ""
    return (f"{r['sps']:>12,.0f} SPS{seeds}  return {fmt_return(r['return_mean'])}  ({r['steps']:,} steps per seed, "
            f"{r['timed_steps']:,} timed in {r['timed_wall_s']:.1f} s{evals}{mem})")


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
    p.add_argument("--eval-every", type=int, default=0, help="evaluate ours every N steps per seed, outside the timed "
                                                              "figure (default: only at the end)")
    p.add_argument("--reference", action="append", default=[], metavar="LABEL=SPS",
                   help="a published figure to print beside ours, e.g. 'LeanRL TD3, 1 seed, H100=936' (repeatable)")
    p.add_argument("--json", default=None, help="write every result here (default: $OUT/bench_<agent>_<env>.json "
                                                 "when $OUT is set)")
    args = p.parse_args()
    variants = args.variant or [["ours"]]
    # no evaluation inside the timed loop (SB3's learn() evaluates nothing either): one evaluation at the end
    fixed = ["trainer.progress=false", "logger.tensorboard=false", f"trainer.eval_every={args.eval_every}",
             "trainer.eval_background=false"]  # evaluations timed in the loop, then left out of the figure
    references = [(label.strip(), float(sps)) for label, sps in (r.rsplit("=", 1) for r in args.reference)]
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
            a = ours(cfg, name)
            ratio = f"  {a['sps'] / b['sps']:6.2f}x SB3" if b else ""
            print(f"seed {seed}  {name:<10}" + fmt(a) + ratio, flush=True)
            rows.append({"seed": seed, "variant": name, "overrides": list(extra), **a})
    print("\nmean over seeds:")
    names = (["sb3"] if not args.no_sb3 else []) + [v[0] for v in variants]
    sb3_sps = np.mean([r["sps"] for r in rows if r["variant"] == "sb3" and "sps" in r] or [np.nan])
    for name in names:
        rs = [r for r in rows if r["variant"] == name and "sps" in r]
        if rs:
            sps, ret = np.mean([r["sps"] for r in rs]), np.mean([np.mean(r["return_mean"]) for r in rs])
            ratios = [f"{sps / ref:.2f}x {label}" for label, ref in [("SB3", sb3_sps), *references] if ref > 0]
            print(f"  {name:<10} {sps:>12,.0f} SPS  return {ret:8.1f}  ({', '.join(ratios)})")
    for label, ref in references:
        print(f"  {label}: {ref:,.0f} SPS")
    path = args.json or (os.path.join(os.environ["OUT"], f"bench_{base.agent.name}_{base.env.name}.json")
                         if os.environ.get("OUT") else None)
    if path:
        with open(path, "w") as f:
            json.dump({"command": sys.argv, "hardware": hw, "torch": torch.__version__, "rows": rows,
                       "references": dict(references)}, f, indent=1)


if __name__ == "__main__":
    main()
