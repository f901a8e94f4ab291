"""Learning curves from TensorBoard event files, and benchmark bars (``pip install '.[plot]'``).

    python -m rl.plot multirun/2026-11-29/12-00-00            # every run below it, grouped by agent and env
    python -m rl.plot 'outputs/*/*_a2c_cartpole_s*' --x time --stat mean --out plots/
    python -m rl.plot docs/results/bench_a2c_cartpole_cpu.json  # scripts/bench.py results: ours beside the peer

One PNG per env and tag: a curve per agent over its seeds, the interquartile mean (or the mean) at each step with
a 95 % percentile-bootstrap band over the seeds (docs/algorithms.md §5). Runs are put on a common grid of env
steps (or of seconds since each run's first event) covering the range that every run of the group reached.

From a notebook: ``plot_runs(["runs/ddpg"])`` returns a matplotlib Figure, which Jupyter shows inline.
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rl.config import ConfigError

DEFAULT_TAG = "charts/episodic_return"  # the training episodes' returns; --tag eval/return_mean: the evaluations
GRID = 200  # points of the common x grid


# -- statistics (docs/algorithms.md §5) ----------------------------------------------------------------------
def iqm(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Interquartile mean: the mean of the middle half along ``axis`` (``⌊n/4⌋`` values cut at each end; the
    plain mean for n < 4)."""
    x = np.sort(x, axis=axis)
    cut = x.shape[axis] // 4
    return np.take(x, np.arange(cut, x.shape[axis] - cut), axis=axis).mean(axis=axis)


def bootstrap_band(values: np.ndarray, stat: str = "iqm", resamples: int = 2000, level: float = 0.95,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``values`` [runs, points] → (statistic, lower, upper) [points]: the statistic over the runs, and the
    percentile bootstrap interval from ``resamples`` draws of the runs with replacement."""
    f = iqm if stat == "iqm" else np.mean
    n = values.shape[0]
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    boot = f(values[draws], axis=1)  # [resamples, points]
    alpha = (1 - level) / 2
    return f(values, axis=0), np.quantile(boot, alpha, axis=0), np.quantile(boot, 1 - alpha, axis=0)


# -- reading runs ----------------------------------------------------------------------------------------
def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Every directory holding TensorBoard event files at or below ``paths`` (globs allowed)."""
    runs: set[Path] = set()
    for pattern in paths:
        matches = glob.glob(str(pattern)) or ([] if glob.has_magic(str(pattern)) else [str(pattern)])
        for m in map(Path, matches):
            if not m.exists():
                raise ConfigError(f"no such run directory: {m}")
            runs.update(e.parent for e in ([m] if m.is_file() else m.rglob("events.out.tfevents.*")))
    if not runs:
        raise ConfigError(f"no TensorBoard event files under {', '.join(map(str, paths))}")
    return sorted(runs)


def run_label(run: Path) -> tuple[str, str]:
    """(agent, env) of a run: from Hydra's record, else the checkpoint's config, else the run directory's name."""
    from omegaconf import OmegaConf

    hydra = run / ".hydra" / "config.yaml"
    if hydra.exists():
        cfg = OmegaConf.load(hydra)
        return str(cfg.agent.name), str(cfg.env.name)
    if (run / "checkpoint.pt").exists():
        from rl import checkpoint

        cfg = OmegaConf.create(checkpoint.load(run / "checkpoint.pt")["config"])
        return str(cfg.agent.name), str(cfg.env.name)
    m = re.search(r"_([a-z0-9]+(?:_[a-z0-9]+)*?)_([a-z0-9_]+)_s\d+$", run.name)
    return (m[1], m[2]) if m else (run.name, "")


def read_scalars(run: Path, tag: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(steps, seconds since the run's first event, values) of ``tag`` in ``run``; None if the run lacks it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run), size_guidance={"scalars": 0})
    ea.Reload()
    if tag not in ea.Tags()["scalars"]:
        return None
    events = ea.Scalars(tag)
    start = min(ea.Scalars(t)[0].wall_time for t in ea.Tags()["scalars"])
    steps, wall, values = (np.array([getattr(e, k) for e in events], dtype=float)
                           for k in ("step", "wall_time", "value"))
    keep = np.isfinite(values)
    return steps[keep], wall[keep] - start, values[keep]


def curves(runs: Sequence[Path], tags: Sequence[str] = (DEFAULT_TAG,), x: str = "steps"
           ) -> dict[tuple[str, str, str], list[tuple[np.ndarray, np.ndarray]]]:
    """{(env, tag, agent): [(x, y) per run]}: x in env steps or seconds (``x="time"``)."""
    out: dict[tuple[str, str, str], list] = defaultdict(list)
    for run in runs:
        agent, env = run_label(run)
        for tag in tags:
            data = read_scalars(run, tag)
            if data is not None and len(data[0]):
                out[(env, tag, agent)].append((data[0] if x == "steps" else data[1], data[2]))
    return dict(out)


def on_grid(series: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Each run's (x, y) linearly interpolated onto one grid [GRID] over the x range that every run covers
    (a single x when the runs share only one point); returns (grid, values [runs, GRID])."""
    lo, hi = max(s[0][0] for s in series), min(s[0][-1] for s in series)
    grid = np.linspace(lo, hi, GRID) if hi > lo else np.array([hi])
    return grid, np.stack([np.interp(grid, xs, ys) for xs, ys in series])


# -- drawing ---------------------------------------------------------------------------------------------
def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install '.[plot]'") from None
    return plt


def plot_runs(paths: Sequence[str | Path], tag: str = DEFAULT_TAG, x: str = "steps", stat: str = "iqm",
              env: str | None = None) -> Any:
    """A matplotlib Figure of the learning curves of the runs at ``paths`` for one env (the first one found
    unless ``env`` is given): per agent, ``stat`` over seeds with its 95 % bootstrap band."""
    groups = curves(find_runs(paths), [tag], x)
    envs = sorted({e for e, _, _ in groups})
    if not envs:
        raise ConfigError(f"none of the runs has {tag}")
    env = env or envs[0]
    return figure({k: v for k, v in groups.items() if k[0] == env}, x, stat)


def figure(groups: dict[tuple[str, str, str], list], x: str, stat: str) -> Any:
    """One axes: a curve (and band) per (env, tag, agent) group."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for (env, tag, agent), series in sorted(groups.items()):
        grid, values = on_grid(series)
        centre, low, high = bootstrap_band(values, stat)
        label = f"{agent} ({len(series)} seed{'s' * (len(series) > 1)})"
        line, = ax.plot(grid, centre, label=label, marker="o" if len(grid) == 1 else None)
        ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.25, linewidth=0)
    envs, tags = sorted({g[0] for g in groups}), sorted({g[1] for g in groups})
    ax.set_title(f"{', '.join(envs)}: {stat.upper() if stat == 'iqm' else stat} over seeds, 95 % bootstrap CI",
                 fontsize=10)
    ax.set_xlabel("env steps" if x == "steps" else "wall time (s)")
    ax.set_ylabel(", ".join(tags))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def bench_figure(path: str | Path) -> Any:
    """scripts/bench.py's JSON: env steps/s and final evaluation return per variant (bars: mean over seeds, dots:
    the seeds), ours beside the peer."""
    plt = _pyplot()
    data = json.loads(Path(path).read_text())
    by_variant: dict[str, list[dict]] = defaultdict(list)
    for row in data["rows"]:
        by_variant[row["variant"]].append(row)
    names = list(by_variant)
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.2), dpi=100)
    for ax, key, label in zip(axes, ("sps", "return_mean"), ("env steps / s", "eval return at the end")):
        for i, name in enumerate(names):
            vals = [r[key] for r in by_variant[name] if r.get(key) is not None]
            if vals:
                ax.bar(i, np.mean(vals), color=f"C{i}", alpha=0.7)
                ax.scatter([i] * len(vals), vals, color="k", s=12, zorder=3)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    what = " ".join(a for a in data.get("command", [])[1:] if a.startswith(("agent=", "env=")))
    fig.suptitle(f"scripts/bench.py {what} ({len(data['rows'])} runs)", fontsize=10)
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m rl.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="run directories or globs (every run below them), or bench JSON files")
    p.add_argument("--tag", action="append", help=f"scalar tag(s) to plot (default: {DEFAULT_TAG})")
    p.add_argument("--x", choices=("steps", "time"), default="steps", help="x axis: env steps or wall time")
    p.add_argument("--stat", choices=("iqm", "mean"), default="iqm")
    p.add_argument("--out", default="plots", help="directory for the PNGs (default: plots/)")
    args = p.parse_intermixed_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for bench in [a for a in args.paths if a.endswith(".json")]:
            written.append(save(bench_figure(bench), out / f"{Path(bench).stem}.png"))
        run_paths = [a for a in args.paths if not a.endswith(".json")]
        groups = curves(find_runs(run_paths), args.tag or [DEFAULT_TAG], args.x) if run_paths else {}
        for env, tag in sorted({(e, t) for e, t, _ in groups}):
            name = re.sub(r"[^A-Za-z0-9]+", "_", f"{env}_{tag}").strip("_")
            written.append(save(figure({k: v for k, v in groups.items() if k[:2] == (env, tag)}, args.x, args.stat),
                                out / f"{name}.png"))
        if run_paths and not groups:
            raise ConfigError(f"none of the runs has {' or '.join(args.tag or [DEFAULT_TAG])}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for path in written:
        print(path)


def save(fig: Any, path: Path) -> Path:
    fig.savefig(path)
    _pyplot().close(fig)
    return path


if __name__ == "__main__":
    main()
