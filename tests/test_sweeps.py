"""Many runs at once through Hydra's launcher and sweeper plugins (pip install 'actorzoo[sweep]'): seeds in parallel
with joblib, the SLURM launcher's composition, an Optuna search that reports its best trial, and a missing plugin."""

import importlib.util
import sys

import pytest

from rl.train import check_plugins
from tests.conftest import TINY, run_cli

pytest.importorskip("hydra_plugins.hydra_joblib_launcher")


def test_joblib_runs_three_seeds_in_parallel(tmp_path):
    out = run_cli("-m", "hydra/launcher=joblib", "seed=0,1,2", *TINY, "trainer.total_steps=300",
                  f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Joblib.Parallel(n_jobs=-1" in out.stdout + out.stderr  # every core: the jobs run at once
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if (p / "checkpoint.pt").exists())
    assert runs == ["0_ddpg_pendulum_s0", "1_ddpg_pendulum_s1", "2_ddpg_pendulum_s2"]


def test_slurm_launcher_config_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    out = run_cli("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in out.stdout
    assert "partition: gpu" in out.stdout and "gpus_per_node: 1" in out.stdout and "timeout_min: 240" in out.stdout
    both = run_cli("-m", "hydra/launcher=slurm", "--cfg", "hydra", cwd=tmp_path)  # Hydra's own flag check: one line
    assert both.returncode == 2 and both.stderr.strip().count("\n") == 0 and "Only one of" in both.stderr


def test_optuna_preset_reports_the_best_trial(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    out = run_cli("+experiment=sweep_ddpg_pendulum", "hydra/launcher=basic", "device=cpu", "agent.hidden_sizes=[32,32]",
                  "trainer.total_steps=300", "trainer.learning_starts=100", "trainer.eval_episodes=2",
                  "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    log = out.stdout + out.stderr
    assert "Best parameters: {'agent.actor_lr':" in log and "Best value: -" in log
    results = (tmp_path / "sweep" / "optimization_results.yaml").read_text()
    assert "best_params" in results and "agent.tau" in results


@pytest.mark.parametrize("arg", ["hydra/launcher=joblib", "hydra/launcher=slurm", "hydra/sweeper=optuna",
                                 "+experiment=sweep_ddpg_pendulum"])
def test_a_missing_plugin_is_one_line(monkeypatch, capsys, arg):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("hydra_plugins") else 1)
    with pytest.raises(SystemExit) as exit_:
        check_plugins([arg])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "pip install 'actorzoo[sweep]'" in err, err
