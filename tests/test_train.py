"""The trainer end to end: TensorBoard tags, resume, signals, multirun, notebook and compose APIs."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents import DDPG
from dataclasses import replace

from rl.config import (BufferConfig, Config, ConfigError, EnvConfig, LoggerConfig, TrainerConfig)
from agents.ddpg import DDPGConfig
from rl.train import run
from tests.conftest import ROOT, TINY, run_cli


def tiny_config(**trainer) -> Config:
    t = dict(total_steps=600, learning_starts=200, eval_every=300, eval_episodes=2, log_every=200,
             checkpoint_every=300, progress=False)
    t.update(trainer)
    return Config(agent=DDPGConfig(hidden_sizes=[32, 32]), env=EnvConfig(), buffer=BufferConfig(capacity=5000),
                  trainer=TrainerConfig(**t), logger=LoggerConfig(), seed=0, device="cpu")


def test_tensorboard_tags_and_values(tmp_path):
    result = run(tiny_config(), run_dir=tmp_path)
    ea = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"charts/episodic_return", "charts/episodic_length", "charts/SPS", "losses/critic", "losses/actor",
            "eval/return_mean"} <= tags
    returns = ea.Scalars("charts/episodic_return")
    assert len(returns) == 3 * 1  # 600 steps / 200-step Pendulum episodes, 1 env
    assert all(-2000 < e.value <= 0 for e in returns)  # Pendulum rewards are in [-16.3, 0] per step
    assert [e.value for e in ea.Scalars("charts/episodic_length")] == [200.0] * 3
    evals = ea.Scalars("eval/return_mean")
    assert [e.step for e in evals] == [300, 600]
    assert evals[-1].value == pytest.approx(result["return_mean"], rel=1e-6)
    assert all(e.value > 0 for e in ea.Scalars("charts/SPS"))
    # losses are logged from step learning_starts (first update at step 200) on, as window means
    assert [e.step for e in ea.Scalars("losses/critic")] == [200, 400, 600]
    assert "hparams" in ea.PluginTagToContent("hparams") or ea.PluginTagToContent("hparams")
    # one unit per checkpoint (300 and the final 600), checkpoint.pt = the newest one, under a stable name
    assert sorted(p.name for p in tmp_path.glob("checkpoint*")) == [
        "checkpoint-300.buffer.pt", "checkpoint-300.pt", "checkpoint-600.buffer.pt", "checkpoint-600.pt",
        "checkpoint.pt"]
    assert (tmp_path / "checkpoint.pt").samefile(tmp_path / "checkpoint-600.pt")


def params(agent):
    return torch.cat([p.detach().flatten() for p in agent.state_dict().values() if p.is_floating_point()])


def test_resume_matches_uninterrupted_run(tmp_path):
    full = run(tiny_config(total_steps=700), run_dir=tmp_path / "full")
    half = run(tiny_config(total_steps=350), run_dir=tmp_path / "resumed")
    assert half["step"] == 350
    cfg = tiny_config(total_steps=700, resume=str(tmp_path / "resumed"))
    resumed = run(cfg, total_steps=700)
    assert resumed["step"] == 700
    a = DDPG.load(tmp_path / "full" / "checkpoint.pt", device="cpu")
    b = DDPG.load(tmp_path / "resumed", device="cpu")
    assert torch.equal(params(a), params(b))
    assert resumed["return_mean"] == full["return_mean"]


def test_sigint_checkpoints_and_exits_cleanly(tmp_path):
    cmd = [sys.executable, "-m", "rl.train", *TINY, "trainer.total_steps=1000000", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while not (tmp_path / "events.out.tfevents").exists() and time.time() < deadline:
        if any(tmp_path.glob("events.out.tfevents*")):
            break
        time.sleep(0.2)
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "interrupted by SIGINT" in err and "Traceback" not in err
    assert (tmp_path / "checkpoint.pt").exists()
    agent = DDPG.load(tmp_path, device="cpu")
    assert agent.num_updates > 0


def test_multirun_three_seeds_three_dirs(tmp_path):
    proc = run_cli("-m", "seed=0,1,2", *TINY, "trainer.total_steps=250", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    runs = sorted(p.name for p in tmp_path.glob("multirun/*/*/*/") if (p / "checkpoint.pt").exists())
    assert runs == ["0_ddpg_pendulum_s0", "1_ddpg_pendulum_s1", "2_ddpg_pendulum_s2"]


def test_notebook_api(tmp_path):
    # the sequence of the issue (smaller networks and budget: examples/quickstart.ipynb runs the full one)
    agent = DDPG.from_env("Pendulum-v1", device="cpu", hidden_sizes=[64, 64])
    agent.learn(2_000)
    result = agent.evaluate(episodes=5)
    assert set(result) >= {"return_mean", "return_std"} and -1700 < result["return_mean"] <= 0
    p = tmp_path / "ddpg.pt"
    agent.save(p)
    loaded = DDPG.load(p)
    single = loaded.predict([1.0, 0.0, 0.0])
    batch = loaded.predict([[1.0, 0.0, 0.0], [0.0, 1.0, 0.5]])
    assert single.shape == (1,) and batch.shape == (2, 1)
    assert (abs(batch) <= 2.0).all()
    assert batch[0] == pytest.approx(agent.predict([1.0, 0.0, 0.0]))
    assert loaded.evaluate(episodes=5)["return_mean"] == pytest.approx(result["return_mean"])


def test_compose_api_from_notebook(tmp_path):
    from hydra import compose, initialize_config_module

    with initialize_config_module("conf", version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, "trainer.total_steps=250", "agent=td3"])
    result = run(cfg, run_dir=tmp_path)
    assert result["step"] == 250 and "return_mean" in result
    assert DDPG.load(tmp_path).cfg.twin_critics


def test_noneditable_install_runs_from_any_directory(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT)], check=True, capture_output=True, timeout=300)
    assert (target / "conf" / "config.yaml").exists() and (target / "bin" / "rl-train").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(target)}
    proc = run_cli(*TINY, "trainer.total_steps=250", cwd=elsewhere, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "done: step=250" in proc.stdout
    runs = list(elsewhere.glob("outputs/*/*_ddpg_pendulum_s0/checkpoint.pt"))
    assert len(runs) == 1
    where = subprocess.run([sys.executable, "-c", "import rl, conf; print(rl.__file__, conf.__file__)"],
                           cwd=elsewhere, env={**os.environ, **env}, capture_output=True, text=True)
    assert where.stdout.startswith(str(target))


def test_cli_resume_continues_in_the_run_dir(tmp_path):
    first = run_cli(*TINY, "trainer.total_steps=250", "hydra.run.dir=run", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    proc = run_cli(*TINY, "trainer.total_steps=400", "trainer.resume=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "resuming run at step 250" in proc.stderr and "done: step=400" in proc.stdout
    assert DDPG.load(tmp_path / "run").num_updates == 400 - 200 + 1  # one update per step from step 200 on
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.yaml"))


def test_overlap_runs_the_same_number_of_updates(tmp_path):
    plain = run(tiny_config(total_steps=500), run_dir=tmp_path / "plain")
    overlapped = run(tiny_config(total_steps=500, overlap=True), run_dir=tmp_path / "overlap")
    assert plain["step"] == overlapped["step"] == 500
    assert DDPG.load(tmp_path / "plain").num_updates == DDPG.load(tmp_path / "overlap").num_updates == 301


def test_overlap_refused_for_on_policy_agents():
    from agents.qac import A2CConfig

    cfg = replace(tiny_config(overlap=True), agent=A2CConfig(), env=EnvConfig(name="cartpole", id="CartPole-v1"))
    with pytest.raises(ConfigError, match="trainer.overlap=true needs an off-policy agent"):
        run(cfg)


def test_threads_setting_holds_for_the_run_only():
    from agents.base import build_agent
    from rl.trainer import Trainer

    seen = []
    cfg = tiny_config(total_steps=5, threads=2)  # warm-up steps only: two threads on a busy machine are slow
    torch.set_num_threads(1)
    trainer = Trainer(cfg, build_agent(cfg), None, evaluator=lambda agent: seen.append(torch.get_num_threads()) or {})
    assert torch.get_num_threads() == 1  # building a trainer (or an agent) leaves the process's setting alone
    trainer.run()
    assert seen == [2] and torch.get_num_threads() == 1  # the run used its own, then gave the old one back


def test_tf32_is_the_runs_setting_and_the_callers_afterwards():
    from agents.base import build_agent
    from rl.trainer import Trainer

    before = torch.backends.cuda.matmul.allow_tf32
    cfg = tiny_config(total_steps=250, tf32=not before)
    trainer = Trainer(cfg, build_agent(cfg), run_dir=None)
    seen, collect = [], trainer.collector.collect

    def collect_and_look(*args, **kwargs):
        seen.append(torch.backends.cuda.matmul.allow_tf32)
        return collect(*args, **kwargs)

    trainer.collector.collect = collect_and_look
    trainer.run()
    trainer.close()
    assert set(seen) == {not before} and torch.backends.cuda.matmul.allow_tf32 == before


def test_metric_sums_keep_their_tensors_and_restart_from_zero():
    """What lets a CUDA graph sum its update's metrics: the sums stay the same tensors across reads (zeroed in place),
    and a metric not added since the last read is left out of the next means."""
    from rl.logging import MetricAccumulator

    acc = MetricAccumulator()
    for x in (1.0, 2.0, 6.0):
        acc.add({"critic": torch.tensor(x), "actor": torch.tensor([x, -x])})
    sums = dict(acc.sums)
    assert acc.means() == {"critic": 3.0, "actor": [3.0, -3.0]}
    assert all(acc.sums[k] is sums[k] for k in sums) and float(sums["critic"]) == 0.0
    acc.tally(acc.sum_in({"critic": torch.tensor(5.0)}))  # the two halves of add(), as the graphed update calls them
    acc.add({"critic": torch.tensor(7.0)})
    assert acc.pending().keys() == {"critic"} and acc.means() == {"critic": 6.0} and acc.means() == {}
