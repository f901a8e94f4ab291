"""Resume semantics: settings that only say how long, where and how often (rl.train.RESUME_MAY_CHANGE) are applied
and listed; any other difference from the saved config is refused, naming every differing key, before anything is
written."""

from dataclasses import replace

import pytest
import torch

from agents.ddpg import DDPGConfig
from rl import checkpoint
from rl.config import BufferConfig, Config, ConfigError, EnvConfig, LoggerConfig, TrainerConfig, from_yaml
from rl.train import RESUME_MAY_CHANGE, resume_config, run
from tests.conftest import TINY, run_main


def config(**trainer) -> Config:
    t = dict(total_steps=60, learning_starts=20, batch_size=32, eval_every=0, eval_episodes=1, log_every=30,
             checkpoint_every=0, progress=False)
    return Config(agent=DDPGConfig(hidden_sizes=[16]), env=EnvConfig(max_episode_steps=50),
                  buffer=BufferConfig(capacity=500), trainer=TrainerConfig(**{**t, **trainer}),
                  logger=LoggerConfig(tensorboard=False, hparams=False), seed=0, device="cpu")


def files(d) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_allowed_changes_are_applied_and_listed(tmp_path, capsys):
    run(config(), run_dir=tmp_path)
    result = run(config(total_steps=90, resume=str(tmp_path), log_every=10, eval_episodes=2))
    assert result["step"] == 90
    err = capsys.readouterr().err
    assert (f"resuming {tmp_path} at step 60 (changed: trainer.eval_episodes 1 → 2, trainer.log_every 30 → 10, "
            "trainer.total_steps 60 → 90)") in err
    saved = from_yaml(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["config"])
    assert (saved.trainer.total_steps, saved.trainer.log_every, saved.trainer.eval_episodes) == (90, 10, 2)


def test_other_changes_are_refused_naming_every_key(tmp_path):
    run(config(), run_dir=tmp_path)
    before = files(tmp_path)
    changed = replace(config(total_steps=90, resume=str(tmp_path)), seed=4,
                      agent=DDPGConfig(hidden_sizes=[16], actor_lr=1e-4))
    with pytest.raises(ConfigError) as info:
        run(changed)
    msg = str(info.value)
    assert msg.startswith("a resumed run keeps its settings, and these differ from the saved ones: agent.actor_lr "
                          "(saved 0.001, given 0.0001), seed (saved 0, given 4); on resume only trainer.total_steps")
    assert "trainer.total_steps 60" not in msg  # an allowed change is not listed as a refusal
    assert files(tmp_path) == before


def test_only_the_keys_given_are_compared():
    saved = config()
    composed = replace(config(total_steps=90), agent=DDPGConfig(hidden_sizes=[256, 256]))  # a default, not given
    cfg, changes = resume_config(saved, composed, keys=["trainer.total_steps", "trainer.resume"])
    assert changes == {"trainer.total_steps": (60, 90)} and cfg.agent.hidden_sizes == [16]
    with pytest.raises(ConfigError, match=r"agent\.hidden_sizes \(saved \[16\], given \[256, 256\]\)"):
        resume_config(saved, composed, keys=["agent"])  # agent=ddpg given: the whole group is compared
    with pytest.raises(ConfigError, match="experiment cannot apply to a resumed run"):
        resume_config(saved, composed, keys=["experiment"])
    assert set(RESUME_MAY_CHANGE) >= {"trainer.total_steps", "device", "trainer.progress", "trainer.eval_every",
                                      "trainer.log_every", "trainer.checkpoint_every"}


def test_cli_resume_applies_allowed_overrides_and_refuses_the_rest(tmp_path):
    code, _, err = run_main(*TINY, "trainer.total_steps=250", "hydra.run.dir=run", cwd=tmp_path)
    assert code == 0, err
    before = files(tmp_path / "run")
    code, _, err = run_main("trainer.resume=run", "trainer.total_steps=300", "agent.actor_lr=1e-4", cwd=tmp_path)
    assert code == 2 and err.strip().splitlines() == [
        "error: a resumed run keeps its settings, and these differ from the saved ones: agent.actor_lr (saved "
        f"0.001, given 0.0001); on resume only {', '.join(RESUME_MAY_CHANGE)} may change (start a new run to change "
        "the others)"]
    assert files(tmp_path / "run") == before
    code, out, err = run_main("trainer.resume=run", "trainer.total_steps=300", "trainer.log_every=50", cwd=tmp_path)
    assert code == 0 and "done: step=300" in out, err
    assert "resuming run at step 250 (changed: trainer.log_every 200 → 50, trainer.total_steps 250 → 300)" in err
    assert [s for s, _ in checkpoint.units(tmp_path / "run")] == [300, 250]
