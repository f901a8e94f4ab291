"""The benchmark and profiling scripts run end to end (tiny settings, CPU): what the GPU runs rely on."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT

TINY = ["agent=ddpg", "env=pendulum", "trainer.total_steps=400", "trainer.learning_starts=200",
        "trainer.eval_episodes=1", "agent.hidden_sizes=[16,16]", "buffer.capacity=1000", "device=cpu"]


def script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_bench_prints_every_variant_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = script("scripts/bench.py", *TINY, "--variant", "a", "--variant", "b", "trainer.utd_ratio=0.5",
                  "--no-sb3", "--seeds", "0", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("seed 0  a ") == 1 and proc.stdout.count("seed 1  b ") == 1
    rows = json.loads(out.read_text())["rows"]
    assert [(r["seed"], r["variant"]) for r in rows] == [(0, "a"), (0, "b"), (1, "a"), (1, "b")]
    assert all(r["timed_steps"] == 200 and r["sps"] > 0 for r in rows)


def test_shm_latency_times_both_settings_and_the_raw_step():
    """Each round trip includes at least one raw step of the env, so no figure may fall below zero or be missing;
    a bad argument is one line and exit code 2."""
    import re

    proc = script("scripts/shm_latency.py", "--steps", "200", "--gap-us", "50")
    assert proc.returncode == 0, proc.stderr
    trips = [float(x) for x in re.findall(r"spin_us=(?:0|2000)\s+step round trip\s+([\d.]+) µs", proc.stdout)]
    raw = float(re.search(r"raw step in this process\s+([\d.]+) µs", proc.stdout).group(1))
    assert len(trips) == 2 and raw > 0 and min(trips) > 0
    bad = script("scripts/shm_latency.py", "--workers", "0")
    assert bad.returncode == 2 and "--workers and --steps must be >= 1" in bad.stderr


def test_bench_of_batched_seeds_leaves_evaluations_out_and_prints_the_reference(tmp_path):
    out = tmp_path / "bench.json"
    proc = script("scripts/bench.py", *TINY, "agent=td3", "trainer.num_seeds=2", "--eval-every", "100", "--no-sb3",
                  "--reference", "LeanRL TD3, 1 seed, H100 (published)=936", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "SPS summed over 2 seeds" in proc.stdout and "x LeanRL TD3, 1 seed, H100 (published)" in proc.stdout
    assert [line.split(":")[1].strip() for line in proc.stdout.splitlines() if "SPS so far" in line] == [
        "step 300", "step 400"]  # the timed phase's evaluations (the warm-up's at step 200 is before the clock)
    row = json.loads(out.read_text())["rows"][0]
    assert row["num_seeds"] == 2 and len(row["return_mean"]) == 2 and [e["step"] for e in row["evals"]] == [300, 400]
    assert row["eval_s"] > 0 and row["sps"] == pytest.approx(2 * 200 / row["timed_wall_s"])


def test_mujoco_table_stops_at_its_time_limit_continues_and_reports(tmp_path):
    """The table script on Pendulum (the protocol's machinery without MuJoCo): stopped by its time limit (exit 75),
    continued by the same command to the end, then the statistics of the curves it read back from TensorBoard."""
    args = ["scripts/mujoco_table.py", "td3", "pendulum", "device=cpu", "env.vectorization=shm",  # the device's envs
            "trainer.learning_starts=100", "trainer.eval_every=100", "trainer.eval_episodes=2",
            "agent.hidden_sizes=[16,16]", "buffer.capacity=5000", "--seeds", "2", "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "out")]
    proc = script(*args, "--steps", "100000", "--minutes", "0.001")  # the time limit (at least 1 s of training)
    assert proc.returncode == 75, proc.stderr
    stopped = int(proc.stdout.split("stopped at step ")[1].split(" ")[0].replace(",", ""))
    total = (stopped // 100 + 4) * 100
    proc = script(*args, "--steps", str(total))
    assert proc.returncode == 0, proc.stderr
    assert f"continuing {tmp_path / 'run'} from step {stopped:,}" in proc.stdout
    r = json.loads((tmp_path / "out" / "td3_pendulum.json").read_text())
    curves = np.array(r["eval_return_mean"])
    assert r["eval_steps"] == list(range(100, total + 1, 100)) and curves.shape == (2, total // 100)
    best = int(curves.mean(axis=0).argmax())  # the paper's statistic: the top of the seed-averaged curve, ± its std
    assert r["max_average_return"]["mean"] == pytest.approx(curves.mean(axis=0).max())
    assert r["max_average_return"]["std"] == pytest.approx(curves[:, best].std())
    assert r["max_average_return"]["step"] == r["eval_steps"][best]
    later = int(curves[:, 1:].mean(axis=0).argmax()) + 1  # the first evaluation is at step 100, before any update
    assert r["max_average_return_after_random_steps"]["per_seed"] == curves[:, later].tolist()
    assert r["mean_of_seed_maxima"]["per_seed"] == curves.max(axis=1).tolist()
    assert r["last10_average_return"]["mean"] == pytest.approx(curves[:, -10:].mean())
    assert [s["to_step"] for s in r["segments"]] == [stopped, total] and r["paper"] is None
    assert len(r["training_return_last10"]["per_seed"]) == 2  # CleanRL's metric: training episodes (200 steps)
    assert (tmp_path / "out" / "td3_pendulum.png").exists() == (importlib.util.find_spec("matplotlib") is not None)
    proc = script("scripts/mujoco_table.py", "--report", str(tmp_path / "out"))
    assert proc.returncode == 0 and f"| TD3 | Pendulum-v1 | {r['max_average_return']['mean']:,.0f} ± " in proc.stdout


def test_mujoco_table_of_a_run_within_its_random_steps_and_its_names(tmp_path):
    """A run that ends before its first update (here 300 steps against 25k random ones) still gets its JSON and
    row: no evaluation comes after the random steps, and the row says so. ``--name`` prints the results' name for
    the settings asked for, the pair's preset's by default (TD3 on Hopper, DDPG on Ant: the paper's, ``_2018``)."""
    args = ["scripts/mujoco_table.py", "td3", "pendulum", "device=cpu", "trainer.eval_every=100",
            "trainer.eval_episodes=2", "agent.hidden_sizes=[16,16]", "--seeds", "2", "--steps", "300",
            "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "out")]
    proc = script(*args)
    assert proc.returncode == 0, proc.stderr
    r = json.loads((tmp_path / "out" / "td3_pendulum.json").read_text())
    assert r["hyperparameters"]["random_steps"] == 25_000 and r["max_average_return_after_random_steps"] is None
    assert f"at {r['max_average_return']['step']:,} steps (untrained actor); no evaluation after the random steps" \
        in proc.stdout
    names = {extra: script("scripts/mujoco_table.py", "td3", "hopper", *extra, "--name").stdout.strip()
             for extra in [(), ("--settings", "reference"), ("--settings", "2018")]}
    assert list(names.values()) == ["td3_hopper_2018", "td3_hopper", "td3_hopper_2018"]
    assert [script("scripts/mujoco_table.py", "ddpg", env, "--name").stdout.strip() for env in ("ant", "hopper")] \
        == ["ddpg_ant_2018", "ddpg_hopper"]


def test_profile_reports_the_parts_of_the_loop():
    proc = script("scripts/profile_run.py", *TINY, "--steps", "100")
    assert proc.returncode == 0, proc.stderr
    assert "total" in proc.stdout
    for part in ("explore", "env.step", "storage.add", "agent.update"):
        assert f"{part}" in proc.stdout


def test_soak_samples_memory_and_stops_the_run_itself(tmp_path, monkeypatch, capsys):
    """In this process (the script's SIGINT reaches the trainer's handler, as in a process of its own)."""
    import pytest

    from scripts import soak

    out = tmp_path / "soak.json"
    overrides = [a for a in TINY if not a.startswith("trainer.total_steps")]
    monkeypatch.setattr(sys, "argv", ["soak.py", *overrides, "--minutes", "0.04", "--every", "0.4", "--run-dir",
                                      str(tmp_path / "run"), "--json", str(out)])
    with pytest.raises(SystemExit) as exit_:
        soak.main()
    assert exit_.value.code in (0, 1)  # 1: not flat, which two seconds need not be
    record = json.loads(out.read_text())
    assert record["steps"] > 400 and record["end"]["t"] >= 2.4 and len(record["samples"]) >= 5
    assert record["start"]["rss_mib"] > 0 and set(record["second_half_drift"]) == {"rss_mib"}
    captured = capsys.readouterr()
    assert "interrupted by SIGINT" in captured.err and "rss_mib: start" in captured.out
    assert (tmp_path / "run" / "checkpoint.pt").exists()


def mujoco_table():
    """scripts/mujoco_table.py as a module (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location("mujoco_table", ROOT / "scripts" / "mujoco_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    return table


def test_max_average_return_is_the_papers_statistic():
    """The paper's own TD3 curves (10 trials per task, stored in docs/) give its Table 1 numbers, ± included, under
    the statistic the table script computes: the top of the trial-averaged curve, ± the std over trials there."""
    table = mujoco_table()
    for env, (mean, std) in table.PAPER["td3"].items():
        steps, trials = table.paper_curves("td3", env)
        assert trials.shape == (10, 201) and steps[0] == 0 and steps[-1] == 1_000_000
        best = table.summary(trials, steps, random_steps=0)["max_average_return"]
        assert (best["mean"], best["std"]) == (pytest.approx(mean, abs=0.01), pytest.approx(std, abs=0.01)), env
        assert table.summary(trials, steps, 0)["mean_of_seed_maxima"]["mean"] > mean + 50  # the other reading: 61-197 higher


@pytest.mark.parametrize("agent", ["td3", "ddpg"])
def test_mujoco_table_2018_settings_are_the_papers(agent):
    """--settings 2018: Fujimoto et al. (2018) and its code's first version: 400x300, Adam 1e-3 for both networks,
    batch 100, purely random first steps 10k on HalfCheetah and Ant, 1k on Hopper and Walker2d; TD3's three fixes
    (or none, for "Our DDPG") as in the later settings. The results are named apart from the reference settings'."""
    table = mujoco_table()
    for env, random_steps in [("halfcheetah", 10_000), ("hopper", 1_000), ("walker2d", 1_000), ("ant", 10_000)]:
        cfg = table.compose([*table.settings_overrides(agent, env, "2018"), f"env={env}"])
        reference = table.compose([*table.settings_overrides(agent, env, "reference"), f"env={env}"])
        assert (list(cfg.agent.hidden_sizes), cfg.agent.actor_lr, cfg.agent.critic_lr, cfg.trainer.batch_size,
                cfg.trainer.learning_starts) == ([400, 300], 1e-3, 1e-3, 100, random_steps)
        assert (list(reference.agent.hidden_sizes), reference.agent.actor_lr, reference.trainer.batch_size,
                reference.trainer.learning_starts) == ([256, 256], 3e-4, 256, 25_000)
        assert (cfg.agent.twin_critics, cfg.agent.policy_delay, cfg.agent.target_policy_noise) == (
            (True, 2, 0.2) if agent == "td3" else (False, 1, 0.0))
        assert (cfg.agent.tau, cfg.agent.exploration_noise, cfg.agent.gamma) == (0.005, 0.1, 0.99)
        assert cfg.trainer.total_steps == 1_000_000 and cfg.env.id.endswith("-v5")
    assert table.name(agent, "hopper", "2018") == f"{agent}_hopper_2018" and table.name(agent, "hopper",
                                                                                       "reference") == f"{agent}_hopper"
