"""Learning checks (slow: minutes). Run with ``python -m pytest -m slow``."""

import pytest

from agents.ddpg import DDPGConfig
from rl.config import BufferConfig, Config, EnvConfig, LoggerConfig, TrainerConfig
from rl.train import run


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ddpg_solves_pendulum_within_20k_steps(tmp_path, seed):
    cfg = Config(agent=DDPGConfig(), env=EnvConfig(), buffer=BufferConfig(), logger=LoggerConfig(),
                 trainer=TrainerConfig(total_steps=20_000, progress=False), seed=seed, device="cpu")
    result = run(cfg, run_dir=tmp_path)
    print(f"seed {seed}: eval return {result['return_mean']:.1f}")
    assert result["step"] == 20_000
    assert result["return_mean"] >= -200
