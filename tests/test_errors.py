"""Bad input: one clear message, non-zero exit, no traceback, nothing overwritten. One test per case."""

from pathlib import Path

import pytest

from tests.conftest import TINY, run_cli


def check_refused(proc, *needles: str) -> None:
    assert proc.returncode != 0
    err = proc.stderr
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def no_runs(cwd: Path) -> bool:
    return not any(cwd.glob("outputs/*/*/checkpoint.pt")) and not any(cwd.glob("outputs/*/*/events*"))


def test_unknown_agent(tmp_path):
    proc = run_cli("agent=nosuchagent", *TINY[:-3], cwd=tmp_path)
    check_refused(proc, "Could not find 'agent/nosuchagent'", "ddpg")
    assert no_runs(tmp_path)


def test_unknown_env(tmp_path):
    proc = run_cli(*TINY, "env.id=NoSuchEnv-v9", cwd=tmp_path)
    check_refused(proc, "error: unknown environment 'NoSuchEnv-v9'")
    assert proc.returncode == 2 and no_runs(tmp_path) and not any(tmp_path.glob("outputs/*/*"))


def test_discrete_env_for_ddpg(tmp_path):
    proc = run_cli(*TINY, "env=cartpole", cwd=tmp_path)
    check_refused(proc, "error: DDPG needs a continuous (Box) action space", "Discrete(2)")
    assert proc.returncode == 2 and no_runs(tmp_path)


def test_negative_learning_rate(tmp_path):
    proc = run_cli(*TINY, "agent.critic_lr=-0.001", cwd=tmp_path)
    check_refused(proc, "error: agent.critic_lr must be > 0, got -0.001")
    assert proc.returncode == 2 and no_runs(tmp_path)


def test_unknown_config_key(tmp_path):
    proc = run_cli(*TINY, "agent.lerning_rate=0.1", cwd=tmp_path)
    check_refused(proc, "lerning_rate")
    assert no_runs(tmp_path)


def test_wrong_type(tmp_path):
    proc = run_cli(*TINY, "trainer.total_steps=lots", cwd=tmp_path)
    check_refused(proc, "total_steps")
    assert no_runs(tmp_path)


def test_missing_resume_path(tmp_path):
    proc = run_cli(*TINY, f"trainer.resume={tmp_path / 'nowhere'}", cwd=tmp_path)
    check_refused(proc, "error: no checkpoint at", "nowhere")
    assert proc.returncode == 2 and no_runs(tmp_path)


def test_existing_run_is_not_overwritten(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"precious")
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text("the original run's config")
    proc = run_cli(*TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    check_refused(proc, "already holds a run", "trainer.resume=")
    assert proc.returncode == 2
    assert (run_dir / "checkpoint.pt").read_bytes() == b"precious"
    assert (run_dir / ".hydra" / "config.yaml").read_text() == "the original run's config"
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "checkpoint.pt"]
