"""Crash-safe checkpoints: a writer killed (SIGKILL) at every point of the save sequence, corrupt and truncated
files, and the exact resume that follows each. A run's final parameters must equal those of a run that was never
interrupted (CPU, fixed seed): that is what "resumes from the last complete checkpoint" means here."""

import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from agents import DDPG
from agents.ddpg import DDPGConfig
from rl import checkpoint
from rl.config import BufferConfig, Config, ConfigError, EnvConfig, LoggerConfig, TrainerConfig
from rl.train import run
from rl.trainer import Trainer
from agents.base import build_agent

TOTAL, EVERY = 120, 30  # units at 30, 60, 90 (the save that gets killed), then the resumed run's 120


def config(total: int = TOTAL, resume: str | None = None, **trainer) -> Config:
    t = dict(total_steps=total, learning_starts=20, batch_size=32, eval_every=0, eval_episodes=1, log_every=EVERY,
             checkpoint_every=EVERY, progress=False, resume=resume)
    return Config(agent=DDPGConfig(hidden_sizes=[16]), env=EnvConfig(max_episode_steps=50),
                  buffer=BufferConfig(capacity=500), trainer=TrainerConfig(**{**t, **trainer}),
                  logger=LoggerConfig(tensorboard=False, hparams=False), seed=0, device="cpu")


def params(path) -> torch.Tensor:
    state = torch.load(path, weights_only=True)["agent"]["modules"]
    return torch.cat([v.flatten() for v in state.values() if v.is_floating_point()])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> torch.Tensor:
    """The parameters of an uninterrupted run to TOTAL steps."""
    d = tmp_path_factory.mktemp("reference")
    run(config(), run_dir=d)
    return params(d / "checkpoint.pt")


def _die(*_: object, **__: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _die_mid_file(original):
    """``_FullWriter.write`` that writes half of its first large chunk (a tensor's data), then dies."""
    def write(self, data):
        if len(data) > 256:
            os.write(self.fd, bytes(memoryview(data)[: len(data) // 2]))
            _die()
        return original(self, data)
    return write


def _trap(monkeypatch, point: str) -> None:
    """Arrange for this process to be SIGKILLed at ``point`` of the next ``save_unit``."""
    real_save = checkpoint.atomic_save

    def atomic_save(obj, path):  # which file is being written decides where to die
        buffer = Path(path).name.endswith(".buffer.pt")
        if point == "between files" and not buffer:
            _die()
        if point in ("mid buffer file", "mid checkpoint file") and (point == "mid buffer file") == buffer:
            monkeypatch.setattr(checkpoint._FullWriter, "write", _die_mid_file(checkpoint._FullWriter.write))
        if point.startswith("before rename") and (point == "before rename of the buffer") == buffer:
            monkeypatch.setattr(checkpoint.os, "replace", _die)
        return real_save(obj, path)

    monkeypatch.setattr(checkpoint, "atomic_save", atomic_save)
    if point == "before checkpoint.pt":
        monkeypatch.setattr(checkpoint.os, "link", _die)
    if point == "before pruning":
        monkeypatch.setattr(checkpoint, "prune", _die)
    if point == "mid pruning":  # the old unit's checkpoint is gone, its buffer file not yet
        real_unlink = Path.unlink
        monkeypatch.setattr(Path, "unlink", lambda p, missing_ok=False: (real_unlink(p, missing_ok), _die())
                            if p.name.endswith(".pt") else real_unlink(p, missing_ok))


def _killed_run(run_dir: Path, point: str, monkeypatch) -> int:
    """Fork; the child trains to 90 with units at 30 and 60 and is SIGKILLed at ``point`` of the save at 90.
    Returns the child's wait status."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            trainer = Trainer(config(), build_agent(config()), run_dir)
            trainer.run(60)
            _trap(monkeypatch, point)
            trainer.run(90)
        finally:
            os._exit(1)
    return os.waitpid(pid, 0)[1]


# where the writer dies, and the step the resumed run must start from: before the checkpoint file's rename the
# save at 90 never happened (60); from the rename on, the unit at 90 is complete (90)
KILL_POINTS = {
    "mid buffer file": 60,
    "before rename of the buffer": 60,
    "between files": 60,
    "mid checkpoint file": 60,
    "before rename of the checkpoint": 60,
    "before checkpoint.pt": 90,
    "before pruning": 90,
    "mid pruning": 90,
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_writer_resumes_from_the_last_complete_unit(point, tmp_path, reference, monkeypatch, capsys):
    status = _killed_run(tmp_path, point, monkeypatch)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "the trap did not fire"
    for _, path in checkpoint.units(tmp_path):  # every unit left behind reads with weights_only=True
        torch.load(path, weights_only=True)
    result = run(config(resume=str(tmp_path)))
    assert f"resuming {tmp_path} at step {KILL_POINTS[point]}" in capsys.readouterr().err
    assert result["step"] == TOTAL
    assert torch.equal(params(tmp_path / "checkpoint.pt"), reference)  # exact: as if never killed
    # the resumed run's saves cleaned up the temp files and the buffer files the killed one left
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-120.buffer.pt", "checkpoint-120.pt", "checkpoint-90.buffer.pt", "checkpoint-90.pt",
        "checkpoint.pt"]


def _three_units(d: Path) -> None:
    run(config(total=90), run_dir=d)
    assert [s for s, _ in checkpoint.units(d)] == [90, 60]


@pytest.mark.parametrize("damage", ["truncated checkpoint", "empty checkpoint", "truncated buffer",
                                    "missing buffer"])
def test_corrupt_newest_unit_falls_back_to_the_one_before(damage, tmp_path, reference, capsys):
    _three_units(tmp_path)
    victim = tmp_path / ("checkpoint-90.buffer.pt" if "buffer" in damage else "checkpoint-90.pt")
    data = victim.read_bytes()
    if damage == "missing buffer":
        victim.unlink()
    else:
        victim.unlink()  # checkpoint.pt is a hard link to checkpoint-90.pt: damage this file only
        victim.write_bytes(b"" if damage == "empty checkpoint" else data[: len(data) // 2])
    result = run(config(resume=str(tmp_path)))
    err = capsys.readouterr().err
    assert "warning: " in err and "checkpoint-90" in err and f"resuming {tmp_path} at step 60" in err
    assert result["step"] == TOTAL and torch.equal(params(tmp_path / "checkpoint.pt"), reference)
    assert (tmp_path / "checkpoint-90.pt.corrupt").exists()  # kept for the user, out of the way


def test_only_unit_corrupt_is_one_clear_error(tmp_path):
    run(config(total=30), run_dir=tmp_path)
    for p in tmp_path.glob("checkpoint*.pt"):
        p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ConfigError, match=r"checkpoint-30\.pt is corrupt or truncated \(PytorchStreamReader"):
        run(config(resume=str(tmp_path)))
    with pytest.raises(ConfigError, match="corrupt or truncated"):
        DDPG.load(tmp_path)


def test_older_unit_named_on_purpose_is_refused_when_newer_ones_exist(tmp_path):
    _three_units(tmp_path)
    with pytest.raises(ConfigError, match=r"holds newer checkpoints \(checkpoint-90\.pt\).*mix two histories"):
        run(config(resume=str(tmp_path / "checkpoint-60.pt")))
    assert [s for s, _ in checkpoint.units(tmp_path)] == [90, 60]


def test_unit_files_load_with_weights_only_and_keep_limits_the_count(tmp_path):
    run(config(total=150, keep_checkpoints=3), run_dir=tmp_path)
    assert [s for s, _ in checkpoint.units(tmp_path)] == [150, 120, 90]
    for p in tmp_path.glob("*.pt"):
        state = torch.load(p, weights_only=True)
        assert state["step"] == int(p.name.split("-")[1].split(".")[0]) if p.name.endswith(".buffer.pt") else \
            state["version"] == checkpoint.FORMAT
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["trainer"]["step"] == 150


def test_save_unit_and_load_newest_without_a_trainer(tmp_path):
    """The unit API on its own (as a rank-0-only writer in a distributed run calls it)."""
    state = {"config": "agent: {name: ddpg}", "agent": {"w": torch.arange(3.0)}, "trainer": {"step": 5}}
    checkpoint.save_unit(tmp_path, 5, state, buffer={"x": torch.ones(2)}, keep=1)
    checkpoint.save_unit(tmp_path, 9, {**state, "trainer": {"step": 9}}, buffer={"x": torch.zeros(2)}, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-9.buffer.pt", "checkpoint-9.pt", "checkpoint.pt"]
    unit = checkpoint.load_newest(tmp_path, with_buffer=True)
    assert unit.path.name == "checkpoint-9.pt" and unit.state["trainer"]["step"] == 9
    assert torch.equal(unit.buffer["x"], torch.zeros(2))


def test_full_disk_keeps_the_previous_unit(tmp_path):
    """A save that cannot be written (here: the file-size limit, EFBIG, as a full disk gives ENOSPC) is one clear
    error; the previous unit stays byte for byte, and no temp file is left."""
    resource = pytest.importorskip("resource")
    run(config(total=60), run_dir=tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(ConfigError, match=r"cannot write the step-90 checkpoint to .*File too large \(the newest "
                                              r"complete checkpoint, .*checkpoint-60\.pt, is untouched\)"):
            run(config(total=90, resume=str(tmp_path)))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert run(config(total=90, resume=str(tmp_path)))["step"] == 90  # and it resumes from there
