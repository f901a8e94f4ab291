"""Async vector envs train through the same loop (and keep exact snapshots across processes)."""

import torch

from agents.ddpg import DDPGConfig
from rl.config import BufferConfig, Config, EnvConfig, LoggerConfig, TrainerConfig
from rl.train import run


def test_async_vector_env_trains_and_resumes(tmp_path):
    def cfg(total, resume=None):
        return Config(agent=DDPGConfig(hidden_sizes=[16]), env=EnvConfig(num_envs=2, vectorization="async"),
                      buffer=BufferConfig(capacity=2000), logger=LoggerConfig(tensorboard=False), seed=1,
                      device="cpu", trainer=TrainerConfig(total_steps=total, learning_starts=100, eval_every=0,
                                                          eval_episodes=2, progress=False, resume=resume))
    full = run(cfg(400), run_dir=tmp_path / "full")
    run(cfg(200), run_dir=tmp_path / "half")
    resumed = run(cfg(400, resume=str(tmp_path / "half")), total_steps=400)
    assert full["step"] == resumed["step"] == 400
    assert resumed["return_mean"] == full["return_mean"]
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["agent"]["modules"]
    b = torch.load(tmp_path / "half" / "checkpoint.pt", weights_only=True)["agent"]["modules"]
    assert all(torch.equal(a[k], b[k]) for k in a)
