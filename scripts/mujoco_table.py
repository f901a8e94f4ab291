"""The TD3 paper's MuJoCo table (Fujimoto et al., 2018, Table 1) for one agent on one task: K seeds as one batch.

    python scripts/mujoco_table.py td3 halfcheetah                   # 5 seeds x 1M steps, device=cuda, CUDA graphs,
                                                                     # the settings of the pair's preset
    python scripts/mujoco_table.py td3 hopper --minutes 9            # stop cleanly after 9 min; the same command again
                                                                     # continues the run from its checkpoint
    python scripts/mujoco_table.py td3 hopper --settings reference   # the reference implementation's (below)
    python scripts/mujoco_table.py --report docs/results/mujoco      # the markdown rows (and PNGs) of every JSON there
    python scripts/mujoco_table.py td3 hopper --name                 # the results' name: td3_hopper_2018

The protocol of the paper: 1M environment steps per seed, an evaluation every 5,000 steps of 10 deterministic
episodes (no exploration noise) per seed, on envs of their own (K x 10 in one vector env), played by a process of
their own while training goes on (``trainer.eval_background``; TD3 HalfCheetah-v5, the first row, was evaluated in
the training loop: the same episodes from the same parameters, the actions then computed on the GPU). Reported: the paper's "max
average return", the maximum over the evaluations of the curve averaged over the seeds, +- the std over the seeds at
that evaluation (the statistic that gives Table 1's numbers, +- included, from the paper's own published curves:
docs/results/mujoco/paper_td3_curves.json); also per seed the maximum and the average of the last 10 evaluations,
mean +- std over the seeds. Beside them, the paper's numbers and CleanRL's (average training-episode return at the
end, 3 seeds, v4 envs) with ours by CleanRL's metric.

The run goes through the trainer (``trainer.num_seeds``; positional arguments are more Hydra overrides), into
``--run-dir``, with one of two settings. ``--settings reference``: ``+experiment=<agent>_mujoco``, Adam 3e-4, batch
256, 256x256, 25k random steps, the reference implementation's later settings. ``--settings 2018``:
``+experiment=<agent>_mujoco_2018``, the paper's own, 400x300, Adam 1e-3, batch 100, 10k random steps on HalfCheetah
and Ant and 1k on the others; results named ``<agent>_<env>_2018``. The default, ``preset``, is the one that the
pair's preset (conf/agent_env/<agent>_<env>.yaml, what ``python -m rl.train agent=... env=...`` runs) holds, read
from the preset itself (``preset_settings``; the reference settings for a pair whose preset holds neither). The
curves are read back
from each seed's TensorBoard run (``eval/return_mean``), so a run continued over several commands gives one curve.
Once it has reached ``--steps``, the script writes ``<out>/<agent>_<env>.json`` (every evaluation of every seed,
the statistics, the references, the time taken; also CleanRL's metric, the return of the last 10 training episodes)
and, when matplotlib is installed, ``<agent>_<env>.png``: the mean
over the seeds and a 95 % bootstrap interval. ``--out`` defaults to ``$OUT`` when set, else docs/results/mujoco.
Exit codes: 0 done, 75 stopped at the time limit (run the same command again), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

import agents  # noqa: E402,F401
from agents.base import build_agent  # noqa: E402
from rl import checkpoint  # noqa: E402
from rl.config import ConfigError, Config, from_yaml  # noqa: E402
from rl.train import resume_config  # noqa: E402
from rl.trainer import Trainer, with_trainer  # noqa: E402
from scripts.bench import compose  # noqa: E402

# Fujimoto et al. (2018), Table 1: max average return over 10 trials of 1M steps (+- one std over the trials; the
# paper gives it for TD3 only); v1 envs. "ddpg" is the paper's "Our DDPG".
PAPER = {"td3": {"halfcheetah": (9636.95, 859.065), "hopper": (3564.07, 114.74), "walker2d": (4682.82, 539.64),
                 "ant": (4372.44, 1000.33)},
         "ddpg": {"halfcheetah": (8577.29, None), "hopper": (1860.02, None), "walker2d": (3098.11, None),
                  "ant": (888.77, None)}}
# CleanRL's td3_continuous_action.py and ddpg_continuous_action.py (their docs, rl-algorithms/td3 and /ddpg): average
# training-episode return (exploration noise on), 3 seeds, v4 envs; no Ant. Ours by the same metric:
# training_return_last10.
CLEANRL = {"td3": {"halfcheetah": (9583.22, 126.09), "hopper": (3134.61, 360.18), "walker2d": (4057.59, 658.78)},
           "ddpg": {"halfcheetah": (10374.07, 157.37), "hopper": (1576.78, 818.98), "walker2d": (1240.16, 390.10)}}
PROTOCOL = ["trainer.eval_every=5000", "trainer.eval_episodes=10", "trainer.eval_background=true",
            "trainer.progress=false"]
GPU = ["device=cuda", "trainer.compile=true", "trainer.overlap=true", "env.vectorization=shm"]
# The paper's settings (--settings 2018): its purely random first steps, 10k on HalfCheetah and Ant, 1k elsewhere
PAPER_RANDOM_STEPS = {"halfcheetah": 10_000, "ant": 10_000}
STOPPED = 75  # EX_TEMPFAIL: stopped at the time limit, continue with the same command


# -- statistics --------------------------------------------------------------------------------------------------
def over_seeds(per_seed: np.ndarray) -> dict:
    return {"mean": float(per_seed.mean()), "std": float(per_seed.std()), "per_seed": per_seed.tolist()}


def max_average_return(curves: np.ndarray, steps: np.ndarray) -> dict:
    """The paper's "max average return": the highest point of the curve averaged over the seeds (``curves``
    [seeds, evaluations]), ± the std over the seeds at that evaluation (population std, as the paper's)."""
    i = int(curves.mean(axis=0).argmax())
    return {**over_seeds(curves[:, i]), "step": int(steps[i])}


def summary(curves: np.ndarray, steps: np.ndarray, random_steps: int) -> dict:
    """``curves`` [seeds, evaluations] of average returns at ``steps`` → the paper's statistic, and per seed the
    maximum and the average of the last 10 evaluations (mean ± std over the seeds). Also the paper's statistic over
    the evaluations after the ``random_steps`` alone: the paper's counts the evaluations of the untrained actor too,
    whose near-zero actions score well where standing still pays (on Ant about +1 a step for staying healthy, ≈ 985
    over 1,000 steps; the paper's own TD3 curves start there); None for a run that ended within its random steps."""
    steps = np.asarray(steps)
    after = steps > random_steps
    return {"max_average_return": max_average_return(curves, steps),
            "max_average_return_after_random_steps": max_average_return(curves[:, after], steps[after])
            if after.any() else None,
            "mean_of_seed_maxima": over_seeds(curves.max(axis=1)),
            "last10_average_return": over_seeds(curves[:, -10:].mean(axis=1))}


def paper_curves(agent: str, env: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, trials [10, evaluations]) of the paper's own learning curves (TD3 only, gym v1 envs), if stored."""
    path = Path(__file__).resolve().parents[1] / "docs" / "results" / "mujoco" / "paper_td3_curves.json"
    if agent != "td3" or not path.exists():
        return None
    data = json.loads(path.read_text())
    return (np.array(data["steps"]), np.array(data["trials"][env])) if env in data["trials"] else None


def bootstrap_interval(curves: np.ndarray, level: float = 0.95, resamples: int = 2000, seed: int = 0
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean over the seeds, at every evaluation: ``curves`` [seeds, points]."""
    n = curves.shape[0]
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    means = curves[draws].mean(axis=1)  # [resamples, points]
    return np.quantile(means, (1 - level) / 2, axis=0), np.quantile(means, (1 + level) / 2, axis=0)


# -- the run -----------------------------------------------------------------------------------------------------
def train(cfg: Config, run_dir: Path, deadline: float | None) -> dict:
    """Train (or continue) the run in ``run_dir`` until ``cfg.trainer.total_steps`` or ``deadline``
    (``time.monotonic()``), when it stops as on SIGTERM: the step ends, a checkpoint is written."""
    unit = None
    if checkpoint.holds_run(run_dir):
        unit = checkpoint.load_for_resume(run_dir)
        cfg, changes = resume_config(from_yaml(unit.state["config"]), cfg)
        print(f"continuing {run_dir} from step {unit.state['trainer']['step']:,}"
              + "".join(f"; {k}: {a} → {b}" for k, (a, b) in changes.items()), flush=True)
    start = int(unit.state["trainer"]["step"]) if unit is not None else 0
    if start >= cfg.trainer.total_steps:  # finished by an earlier command: only the JSON and the plot are missing
        return {"step": start, "sps": float("nan"), "interrupted": None, "from_step": start, "seconds": 0.0}
    trainer = Trainer(cfg, build_agent(cfg), run_dir)
    if unit is not None:
        trainer.load_checkpoint(unit)
    t0 = time.monotonic()
    stop = threading.Timer(max(deadline - t0, 1.0), lambda: os.kill(os.getpid(), signal.SIGTERM)) if deadline else None
    if stop is not None:
        stop.start()
    try:
        result = trainer.run()
    finally:
        if stop is not None:
            stop.cancel()  # a run that ended by itself gets no late SIGTERM
        trainer.close()
    return {**result, "from_step": start, "seconds": time.monotonic() - t0}


def read_scalars(run_dir: Path, seeds: list[int], tag: str) -> list[dict[int, float]]:
    """{step: value} of ``tag`` in each seed's TensorBoard run (a value logged twice at one step, by a run continued
    from an older checkpoint, counts once: the later one)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    by_seed = []
    for s in seeds:
        ea = EventAccumulator(str(run_dir / f"seed_{s}" if len(seeds) > 1 else run_dir), size_guidance={"scalars": 0})
        ea.Reload()
        by_seed.append({int(e.step): e.value for e in ea.Scalars(tag)})
    return by_seed


def preset_settings(agent: str, env: str) -> str:
    """The settings that the pair's preset (conf/agent_env/<agent>_<env>.yaml) holds: the one of ``reference`` and
    ``2018`` whose composition gives the same agent, steps, random steps and batch as ``agent=… env=…`` alone;
    ``reference`` where neither does (a pair outside the table, such as Pendulum)."""
    keys = ("total_steps", "learning_starts", "batch_size", "utd_ratio")

    def settings_of(cfg: Config) -> tuple:
        return cfg.agent, cfg.env, tuple(getattr(cfg.trainer, k) for k in keys)

    pair = settings_of(compose([f"agent={agent}", f"env={env}"]))
    for settings in ("2018", "reference"):
        if settings_of(compose([*settings_overrides(agent, env, settings), f"env={env}"])) == pair:
            return settings
    return "reference"


def settings_overrides(agent: str, env: str, settings: str) -> list[str]:
    """The Hydra overrides that pick the agent's MuJoCo settings: the reference implementation's later ones, or the
    paper's own (2018)."""
    if settings == "reference":
        return [f"+experiment={agent}_mujoco"]
    return [f"+experiment={agent}_mujoco_2018", f"trainer.learning_starts={PAPER_RANDOM_STEPS.get(env, 1000)}"]


def name(agent: str, env: str, settings: str) -> str:
    """The results' file name: ``<agent>_<env>``, with ``_2018`` for the paper's settings."""
    return f"{agent}_{env}" + ("" if settings == "reference" else f"_{settings}")


def record(agent: str, env: str, cfg: Config, run_dir: Path, segments: list[dict], settings: str = "reference"
           ) -> dict:
    evals = read_scalars(run_dir, cfg.seeds, "eval/return_mean")
    steps = sorted(set.intersection(*(set(d) for d in evals)))
    curves = np.array([[d[t] for t in steps] for d in evals])
    # CleanRL's own metric, for a like-for-like comparison: the training episodes' return (exploration noise on)
    training = [np.mean([d[t] for t in sorted(d)[-10:]]) for d in read_scalars(run_dir, cfg.seeds,
                                                                               "charts/episodic_return")]
    seconds = sum(s["seconds"] for s in segments)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or platform.machine()
    return {"agent": agent, "env": env, "env_id": cfg.env.id, "settings": settings,
            "hyperparameters": {"hidden_sizes": list(cfg.agent.hidden_sizes), "actor_lr": cfg.agent.actor_lr,
                                "critic_lr": cfg.agent.critic_lr, "batch_size": cfg.trainer.batch_size,
                                "random_steps": cfg.trainer.learning_starts},
            "seeds": cfg.seeds, "steps_per_seed": int(steps[-1]),
            "eval_every": cfg.trainer.eval_every, "eval_episodes": cfg.trainer.eval_episodes,
            "evaluation": ("a background process, actions on the CPU" if cfg.trainer.eval_background
                           else f"in the training loop, actions on {cfg.device}"),
            "eval_steps": steps, "eval_return_mean": curves.tolist(),
            **summary(curves, np.array(steps), cfg.trainer.learning_starts),
            "training_return_last10": {"mean": float(np.mean(training)), "std": float(np.std(training)),
                                       "per_seed": [float(x) for x in training]},
            "paper": PAPER.get(agent, {}).get(env), "cleanrl": CLEANRL.get(agent, {}).get(env),
            "wall_s": seconds, "segments": segments, "device": device, "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


# -- the report --------------------------------------------------------------------------------------------------
def fmt(mean_std: tuple[float, float | None] | dict | None) -> str:
    if mean_std is None:
        return "–"
    mean, std = (mean_std["mean"], mean_std["std"]) if isinstance(mean_std, dict) else mean_std
    return f"{mean:,.0f}" + (f" ± {std:,.0f}" if std is not None else "")


def label(r: dict) -> str:
    """``TD3``, or ``TD3 (2018 settings)`` for a run of the paper's own settings."""
    return r["agent"].upper() + ("" if r["settings"] == "reference" else f" ({r['settings']} settings)")


def max_cell(r: dict) -> str:
    """The paper's statistic; where its maximum is an evaluation before the first update, the same after them."""
    best = r["max_average_return"]
    if best["step"] > r["hyperparameters"]["random_steps"]:
        return fmt(best)
    later = r["max_average_return_after_random_steps"]
    return (f"{fmt(best)} at {best['step']:,} steps (untrained actor); "
            + (f"{fmt(later)} after the random steps" if later else "no evaluation after the random steps"))


def row(r: dict) -> str:
    """One markdown row of docs/benchmarks.md's table."""
    k, minutes = len(r["seeds"]), r["wall_s"] / 60
    cleanrl = f"{fmt(r['cleanrl'])} (ours {fmt(r['training_return_last10'])})" if r["cleanrl"] else "–"
    return (f"| {label(r)} | {r['env_id']} | {max_cell(r)} | {fmt(r['mean_of_seed_maxima'])} | "
            f"{fmt(r['last10_average_return'])} | {fmt(r['paper'])} | {cleanrl} | "
            f"{k} × {r['steps_per_seed']:,} steps, {minutes:.1f} min, {r['device']} |")


def plot(r: dict, path: Path) -> Path | None:
    """Mean over the seeds and its 95 % bootstrap interval, the random steps shaded; the paper's figure as a dashed
    line, and for TD3 the paper's own mean curve."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"no matplotlib here (pip install matplotlib): plot later with --report {path.parent}", file=sys.stderr)
        return None
    steps, curves = np.array(r["eval_steps"]), np.array(r["eval_return_mean"])
    lo, hi = bootstrap_interval(curves)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.axvspan(0, r["hyperparameters"]["random_steps"], color="0.9", label="random steps (no update yet)")
    ax.plot(steps, curves.mean(axis=0), label=f"ours, mean of {len(curves)} seeds")
    ax.fill_between(steps, lo, hi, alpha=0.25, label="95 % bootstrap interval")
    theirs = paper_curves(r["agent"], r["env"])
    if theirs is not None:
        ax.plot(theirs[0], theirs[1].mean(axis=0), c="gray", lw=1,
                label=f"paper's {r['agent'].upper()}, mean of {len(theirs[1])} trials (v1)")
    if r["paper"]:
        ax.axhline(r["paper"][0], ls="--", c="gray", label="paper: max average return")
    ax.set(title=f"{label(r)} on {r['env_id']}", xlabel="env steps (per seed)",
           ylabel=f"average return ({r['eval_episodes']} deterministic episodes)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report(directory: Path) -> None:
    results = [r for r in (json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))) if "agent" in r]
    if not results:
        raise ConfigError(f"no table results (*.json) in {directory}")
    print("| agent | env | max average return (ours) | mean of the seeds' maxima (ours) | last 10 evaluations (ours) "
          "| paper (max average return) | CleanRL, v4 (ours by its metric) | run |\n|---|---|---|---|---|---|---|---|")
    for r in results:
        print(row(r))
        plot(r, directory / f"{name(r['agent'], r['env'], r['settings'])}.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("agent", nargs="?", choices=["td3", "ddpg"])
    p.add_argument("env", nargs="?", help="an env preset: halfcheetah, hopper, walker2d, ant (or any other)")
    p.add_argument("overrides", nargs="*", help="more Hydra overrides (e.g. device=cpu for a smoke test)")
    p.add_argument("--seeds", type=int, default=5, help="K: seeds seed … seed+K−1 as one batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1_000_000, help="env steps per seed")
    p.add_argument("--settings", choices=["preset", "reference", "2018"], default="preset",
                   help="reference: the reference implementation's later settings; 2018: the paper's own; preset "
                        "(default): the one that the pair's preset, conf/agent_env/<agent>_<env>.yaml, holds")
    p.add_argument("--minutes", type=float, default=None, help="stop cleanly (with a checkpoint) after this long")
    p.add_argument("--run-dir", default=None, help="default: outputs/table/<agent>_<env>_s<seed>")
    p.add_argument("--out", default=None, help="JSON and PNG go here (default: $OUT, else docs/results/mujoco)")
    p.add_argument("--report", metavar="DIR", default=None, help="print the table rows of DIR's JSONs, make the PNGs")
    p.add_argument("--name", action="store_true", help="print the results' name (<agent>_<env>[_2018]) and exit")
    args = p.parse_intermixed_args()  # options and overrides in any order
    t0 = time.monotonic()
    try:
        if args.report:
            return report(Path(args.report))
        if not (args.agent and args.env):
            p.error("give an agent and an env (or --report DIR)")
        gpu = [] if any(o.startswith("device=") for o in args.overrides) else GPU
        if args.settings == "preset":
            args.settings = preset_settings(args.agent, args.env)
        if args.name:
            return print(name(args.agent, args.env, args.settings))
        cfg = compose([*settings_overrides(args.agent, args.env, args.settings), f"env={args.env}",
                       f"trainer.num_seeds={args.seeds}", f"seed={args.seed}", f"trainer.total_steps={args.steps}",
                       *PROTOCOL, *gpu, *args.overrides])
        stem = name(args.agent, args.env, args.settings)
        run_dir = Path(args.run_dir or f"outputs/table/{stem}_s{args.seed}")
        result = train(cfg, run_dir, t0 + 60 * args.minutes if args.minutes else None)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    log = run_dir / "table_segments.json"  # one entry per command that trained this run
    segments = (json.loads(log.read_text()) if log.exists() else []) + [
        {"from_step": result["from_step"], "to_step": result["step"], "seconds": result["seconds"],
         "sps": result["sps"]}]
    log.write_text(json.dumps(segments, indent=1))
    if result["interrupted"]:
        print(f"stopped at step {result['step']:,} of {cfg.trainer.total_steps:,} ({result['seconds'] / 60:.1f} min, "
              f"{result['sps']:,.0f} env steps/s over the seeds): run the same command again to continue")
        sys.exit(STOPPED)
    out = Path(args.out or os.environ.get("OUT") or "docs/results/mujoco")
    out.mkdir(parents=True, exist_ok=True)
    r = record(args.agent, args.env, cfg, run_dir, segments, args.settings)
    path = out / f"{stem}.json"
    path.write_text(json.dumps(r, indent=1))
    png = plot(r, out / f"{stem}.png")
    print(f"{args.agent} {cfg.env.id}, {len(cfg.seeds)} seeds x {cfg.trainer.total_steps:,} steps: max average return "
          f"{fmt(r['max_average_return'])}, last 10 evaluations {fmt(r['last10_average_return'])} (paper "
          f"{fmt(r['paper'])}); last 10 training episodes {fmt(r['training_return_last10'])} (CleanRL "
          f"{fmt(r['cleanrl'])}); {r['wall_s'] / 60:.1f} min in {len(segments)} command(s)")
    print(row(r))
    print(f"wrote {path}" + (f" and {png}" if png else ""))


if __name__ == "__main__":
    main()
