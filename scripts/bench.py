"""Side-by-side speed: our agent and Stable-Baselines3's on the same env and settings, in one command.

    python scripts/bench.py ddpg --env HalfCheetah-v5 --steps 100000 --learning-starts 10000 --device cuda
    python scripts/bench.py a2c --env CartPole-v1 --num-envs 8 --steps 100000 --device cpu

For each seed it runs ours, then SB3 (when installed), and prints env steps per second measured over the
phase after the random warm-up (the update-bound part), the whole run's wall time, the final mean eval
return, and the ratio. ``--sb3-steps`` limits SB3's timed phase (it is slow on purpose-sized budgets);
SPS is a rate, so it is comparable as long as both phases are past warm-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace

import numpy as np
import torch

import agents  # noqa: F401
from agents.base import build_agent
from rl.config import BufferConfig, Config, EnvConfig, LoggerConfig, TrainerConfig, AGENTS
from rl.trainer import Trainer


def ours(args: argparse.Namespace, seed: int) -> dict:
    agent_cfg = AGENTS[args.algo][1](name=args.algo, **json.loads(args.agent_kwargs))
    cfg = Config(agent=agent_cfg, env=EnvConfig(name=args.env, id=args.env, num_envs=args.num_envs),
                 buffer=BufferConfig(capacity=max(args.steps, 1000), checkpoint=False),
                 trainer=TrainerConfig(total_steps=args.steps, learning_starts=args.learning_starts,
                                       batch_size=args.batch_size, eval_every=0, eval_episodes=args.eval_episodes,
                                       checkpoint_every=0, log_every=max(args.steps // 10, 1), progress=False,
                                       compile=args.compile, threads=args.threads),
                 logger=LoggerConfig(tensorboard=False), seed=seed, device=args.device)
    agent = build_agent(cfg)
    trainer = Trainer(cfg, agent, run_dir=None)
    t0 = time.perf_counter()
    if args.learning_starts:
        trainer.run(args.learning_starts)  # warm-up (random actions) and its final eval, untimed
        trainer.last_eval = {}
    t1 = time.perf_counter()
    result = trainer.run(args.steps)
    wall = time.perf_counter() - t0
    trainer.close()
    return {"sps": result["sps"], "timed_steps": args.steps - args.learning_starts, "wall_s": wall,
            "return_mean": result["return_mean"], "timed_wall_s": time.perf_counter() - t1}


def sb3(args: argparse.Namespace, seed: int) -> dict | None:
    try:
        import stable_baselines3 as sb
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.evaluation import evaluate_policy
        from stable_baselines3.common.noise import NormalActionNoise
    except ImportError:
        return None
    steps = args.sb3_steps or args.steps
    env = make_vec_env(args.env, n_envs=args.num_envs, seed=seed)
    if args.algo in ("ddpg", "td3"):
        cls = sb.DDPG if args.algo == "ddpg" else sb.TD3
        n = env.action_space.shape[0]
        model = cls("MlpPolicy", env, learning_rate=args.lr, buffer_size=max(steps, 1000),
                    learning_starts=args.learning_starts, batch_size=args.batch_size, tau=0.005, gamma=0.99,
                    train_freq=1, gradient_steps=1, action_noise=NormalActionNoise(np.zeros(n), 0.1 * np.ones(n)),
                    policy_kwargs=dict(net_arch=[256, 256]), seed=seed, device=args.device, verbose=0)
    else:
        model = sb.A2C("MlpPolicy", env, n_steps=5, seed=seed, device=args.device, verbose=0)
    t0 = time.perf_counter()
    if args.learning_starts:
        model.learn(args.learning_starts)
    t1 = time.perf_counter()
    model.learn(steps - args.learning_starts, reset_num_timesteps=False)
    t2 = time.perf_counter()
    eval_env = make_vec_env(args.env, n_envs=1, seed=seed + 100_000)
    mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=args.eval_episodes, deterministic=True)
    return {"sps": (steps - args.learning_starts) / (t2 - t1), "timed_steps": steps - args.learning_starts,
            "wall_s": t2 - t0, "return_mean": float(mean), "timed_wall_s": t2 - t1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("algo", choices=["ddpg", "td3", "a2c"])
    p.add_argument("--env", default="HalfCheetah-v5")
    p.add_argument("--num-envs", type=int, default=1)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--sb3-steps", type=int, default=0, help="SB3's total steps (default: --steps)")
    p.add_argument("--learning-starts", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--agent-kwargs", default="{}", help='JSON, e.g. \'{"actor_lr": 3e-4}\'')
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--no-sb3", action="store_true")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(args.threads)
    hw = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    rows = []
    for seed in args.seeds:
        a = ours(args, seed)
        b = None if args.no_sb3 else sb3(args, seed)
        rows.append({"seed": seed, "ours": a, "sb3": b})
        ratio = f"{a['sps'] / b['sps']:.2f}x" if b else "n/a"
        print(f"seed {seed}: ours {a['sps']:.0f} SPS (return {a['return_mean']:.1f}, {a['timed_steps']} timed steps)"
              + (f" | SB3 {b['sps']:.0f} SPS (return {b['return_mean']:.1f}, {b['timed_steps']} timed steps)"
                 if b else " | SB3 not installed") + f" | ratio {ratio}", flush=True)
    ours_sps = np.mean([r["ours"]["sps"] for r in rows])
    line = f"{args.algo} {args.env} num_envs={args.num_envs} device={args.device} ({hw}): ours {ours_sps:.0f} SPS"
    if all(r["sb3"] for r in rows):
        sb_sps = np.mean([r["sb3"]["sps"] for r in rows])
        line += f", SB3 {sb_sps:.0f} SPS, ratio {ours_sps / sb_sps:.2f}x"
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "hardware": hw, "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
