"""rl.plot: the statistics on hand-computed numbers, and PNGs from TensorBoard runs and bench JSON."""

import json
import subprocess
import sys

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from rl.plot import bootstrap_band, curves, find_runs, iqm, on_grid, plot_runs
from tests.conftest import ROOT

pytest.importorskip("matplotlib")


def test_iqm_is_the_mean_of_the_middle_half():
    # 8 runs: ⌊8/4⌋ = 2 cut at each end → mean(3, 4, 5, 6) = 4.5; outliers do not matter
    assert iqm(np.array([-100.0, 1, 3, 4, 5, 6, 7, 900])) == 4.5
    assert iqm(np.array([1.0, 2.0, 9.0])) == 4.0  # n < 4: nothing to cut, the mean


def test_bootstrap_band_brackets_the_statistic_and_collapses_for_equal_runs():
    values = np.array([[1.0, 10.0], [2.0, 10.0], [3.0, 10.0], [4.0, 10.0]])  # [runs, points]
    centre, low, high = bootstrap_band(values, "mean", resamples=4000)
    assert centre.tolist() == [2.5, 10.0]
    assert low[1] == high[1] == 10.0  # identical runs: no uncertainty
    # the mean of 4 draws from {1, 2, 3, 4}: σ = 1.118 / 2 = 0.56, so the 95 % band is about 2.5 ± 1.1
    assert 1.25 <= low[0] <= 1.75 and 3.25 <= high[0] <= 3.75


def test_on_grid_interpolates_over_the_common_range():
    grid, values = on_grid([(np.array([0.0, 10.0]), np.array([0.0, 10.0])),
                            (np.array([5.0, 20.0]), np.array([1.0, 1.0]))])
    assert grid[0] == 5.0 and grid[-1] == 10.0  # only where both runs have data
    assert np.allclose(values[0], grid) and np.allclose(values[1], 1.0)


def fake_run(path, agent, env, seed, slope):
    """A run directory as Hydra and the trainer leave it: .hydra/config.yaml and TensorBoard events."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text(f"agent:\n  name: {agent}\nenv:\n  name: {env}\nseed: {seed}\n")
    with SummaryWriter(str(path)) as w:
        for step in range(0, 1001, 100):
            w.add_scalar("charts/episodic_return", slope * step + seed, step)


def test_runs_are_grouped_by_agent_and_env_over_seeds(tmp_path):
    for seed in range(3):
        fake_run(tmp_path / f"{seed}_a2c_cartpole_s{seed}", "a2c", "cartpole", seed, 0.5)
        fake_run(tmp_path / f"{seed + 3}_qac_cartpole_s{seed}", "qac", "cartpole", seed, 0.2)
    groups = curves(find_runs([tmp_path]))
    tag = "charts/episodic_return"
    assert sorted(groups) == [("cartpole", tag, "a2c"), ("cartpole", tag, "qac")]
    grid, values = on_grid(groups[("cartpole", "charts/episodic_return", "a2c")])
    assert values.shape == (3, len(grid)) and np.allclose(values.mean(0), 0.5 * grid + 1)  # seeds 0, 1, 2 → +1
    fig = plot_runs([tmp_path / "*_s*"])
    assert len(fig.axes[0].get_lines()) == 2


def test_cli_writes_learning_curve_and_bench_pngs(tmp_path):
    for seed in range(3):
        fake_run(tmp_path / "multirun" / f"{seed}_ddpg_pendulum_s{seed}", "ddpg", "pendulum", seed, -0.1)
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"command": ["scripts/bench.py", "agent=a2c", "env=cartpole"], "rows": [
        {"seed": s, "variant": v, "sps": sps, "return_mean": 500.0} for s in range(2)
        for v, sps in (("sb3", 9000.0 + s), ("ours", 11000.0 + s))]}))
    proc = subprocess.run([sys.executable, "-m", "rl.plot", str(tmp_path / "multirun"), str(bench), "--x", "time",
                           "--out", str(tmp_path / "plots")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    written = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert written == ["bench.png", "pendulum_charts_episodic_return.png"]
    assert all((tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in written)


def test_cli_refuses_a_missing_run_dir(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rl.plot", str(tmp_path / "nothing")], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 2 and "no such run directory" in proc.stderr and "Traceback" not in proc.stderr
