"""The NaN/inf guard: a NaN reward reaches the critic's loss; the run stops at the next log step, naming the loss
and the step, writes no checkpoint after it, and the command line exits with code 3."""

import math
from dataclasses import replace

import gymnasium as gym
import pytest
import torch

from agents.base import build_agent
from agents.ddpg import DDPGConfig
from rl import checkpoint
from rl.config import BufferConfig, Config, EnvConfig, LoggerConfig, TrainerConfig
from rl.trainer import Diverged, Trainer
from tests.conftest import TINY, run_main

NAN_AT = 450  # the env step whose reward is NaN


class NaNRewardAt(gym.Wrapper):
    """Pendulum whose ``at``-th step (counted over the env's life, across episodes) returns a NaN reward."""

    def __init__(self, env: gym.Env, at: int) -> None:
        super().__init__(env)
        self.at, self.t = at, 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.t += 1
        return obs, (math.nan if self.t == self.at else reward), terminated, truncated, info


if "NaNPendulum-v0" not in gym.registry:
    gym.register("NaNPendulum-v0", entry_point=lambda at=NAN_AT, **kw: NaNRewardAt(
        gym.make("Pendulum-v1", **kw).unwrapped, at), max_episode_steps=200)


def config() -> Config:
    return Config(agent=DDPGConfig(hidden_sizes=[32, 32]), env=EnvConfig(name="nan", id="NaNPendulum-v0"),
                  buffer=BufferConfig(capacity=2000), logger=LoggerConfig(tensorboard=False), seed=0, device="cpu",
                  trainer=TrainerConfig(total_steps=1000, learning_starts=100, log_every=100, checkpoint_every=200,
                                        eval_every=0, eval_episodes=1, progress=False))


def test_nan_reward_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = Trainer(config(), build_agent(config()), tmp_path)
    with pytest.raises(Diverged) as info:
        trainer.run()
    trainer.close()
    # the NaN entered the replay buffer at step 450; the log at step 500 reads the critic's mean loss since 400
    assert str(info.value).startswith("training diverged at step 500: losses/critic = nan, losses/q_mean = nan, "
                                      "losses/actor = nan (mean over steps 400-500)")
    assert f"the last good checkpoint, {tmp_path / 'checkpoint-400.pt'} (step 400), is untouched" in str(info.value)
    assert not all(torch.isfinite(p).all() for p in trainer.agent.parameters())  # the NaN really got in
    assert [s for s, _ in checkpoint.units(tmp_path)] == [400, 200]  # nothing written after it
    assert (tmp_path / "checkpoint.pt").samefile(tmp_path / "checkpoint-400.pt")
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in saved["agent"]["modules"].values() if v.is_floating_point())
    assert torch.isfinite(torch.load(tmp_path / "checkpoint-400.buffer.pt", weights_only=True)["storage"]["data"]
                          ["reward"]).all()  # the buffer at 400 predates the NaN


def test_nan_in_a_parameter_is_caught_before_evaluation_and_checkpoint(tmp_path):
    """A parameter turned infinite between two log steps reaches neither an evaluation nor a checkpoint."""
    cfg = config()
    cfg = replace(cfg, env=EnvConfig(), trainer=replace(cfg.trainer, log_every=1000, checkpoint_every=300))
    trainer = Trainer(cfg, build_agent(cfg), tmp_path)
    trainer.run(200)  # its final log read the losses; its checkpoint is the unit at 200
    with torch.no_grad():
        trainer.agent.actor.net[0].weight[0, 0] = math.inf
    with pytest.raises(Diverged, match=r"at step 200: parameter actor\.net\.0\.weight not finite; stopped \(the "
                                       r"last good checkpoint, .*checkpoint-200\.pt \(step 200\), is untouched\)"):
        trainer.evaluate()
    with pytest.raises(Diverged, match=r"at step 300: losses/critic, losses/q_mean, losses/actor and \d+ more not "
                                       r"finite; stopped \(the last good checkpoint, .*checkpoint-200\.pt"):
        trainer.run(400)  # no log step before the checkpoint at 300: the guard there reads the accumulated losses
    trainer.close()
    assert [s for s, _ in checkpoint.units(tmp_path)] == [200]


def test_cli_exits_3_with_one_line(tmp_path):
    code, out, err = run_main(*TINY, "env.id=NaNPendulum-v0", "env.name=nan", "trainer.total_steps=1000",
                              "trainer.learning_starts=100", "trainer.log_every=100", "trainer.checkpoint_every=200",
                              "hydra.run.dir=run", cwd=tmp_path)
    assert code == 3 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: training diverged at step 500: losses/critic = nan"), err
    assert [s for s, _ in checkpoint.units(tmp_path / "run")] == [400, 200]


@pytest.mark.gpu
def test_no_host_sync_between_log_steps():
    """DDPG on GPU-batched Pendulum with CUDA graphs: with CUDA's sync debug mode set to error, the whole loop runs
    except at the three places that read the host on purpose (the log step, where the guard reads the losses;
    evaluation; checkpoints)."""
    cfg = Config(agent=DDPGConfig(hidden_sizes=[64, 64]), buffer=BufferConfig(capacity=100_000),
                 env=EnvConfig(name="pendulum_gpu", id="Pendulum-v1", backend="torch", num_envs=256),
                 logger=LoggerConfig(tensorboard=False), seed=0, device="cuda",
                 trainer=TrainerConfig(total_steps=256 * 60, learning_starts=256 * 4, log_every=256 * 20,
                                       eval_every=0, checkpoint_every=0, progress=False, compile=True))
    trainer = Trainer(cfg, build_agent(cfg), None)
    trainer.run(256 * 10)  # past warm-up and graph capture
    allowed = {}
    for name in ("_log_scalars", "evaluate", "save_checkpoint"):
        def syncs_allowed(*args, _f=getattr(trainer, name), **kwargs):
            torch.cuda.set_sync_debug_mode("default")
            try:
                return _f(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("error")
                allowed[_f.__name__] = allowed.get(_f.__name__, 0) + 1
        setattr(trainer, name, syncs_allowed)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    trainer.close()
    assert trainer.step == cfg.trainer.total_steps and allowed["_log_scalars"] == 3
