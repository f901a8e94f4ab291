"""The bad-input catalogue: one table, one row per case. Each ends with one clear line (the last line of stderr on
the command line, with exit code 2; the message of a ConfigError in a notebook), no traceback, and every file that
existed before left as it was. Command-line rows run ``rl.train.main`` inside this process (no interpreter start-up);
only the full-disk row starts a process, in a tiny tmpfs of its own."""

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import gymnasium as gym
import pytest
import torch

from agents import A2C, DDPG
from rl.config import ConfigError
from rl.train import run
from tests.conftest import ROOT, TINY, run_main

BASE = [a for a in TINY if not a.startswith("agent.hidden_sizes")]  # fast settings every agent takes


class SigtermOnEval(gym.Wrapper):
    """Pendulum that sends its own process SIGTERM when the first evaluation resets it (seeds ≥ seed + 100000)."""

    sent = False

    def reset(self, *, seed=None, options=None):
        if seed is not None and seed >= 100_000 and not SigtermOnEval.sent:
            SigtermOnEval.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        return self.env.reset(seed=seed, options=options)


if "SigtermOnEval-v0" not in gym.registry:
    gym.register("SigtermOnEval-v0", entry_point=lambda **kw: SigtermOnEval(gym.make("Pendulum-v1", **kw).unwrapped),
                 max_episode_steps=200)


@dataclass
class Case:
    expect: str  # in the one line
    argv: tuple[str, ...] = ()  # command line: python -m rl.train [BASE] argv
    base: bool = True  # prepend BASE to argv
    call: Optional[Callable[[Path], object]] = None  # notebook: must raise ConfigError
    setup: Optional[Callable[[Path, Path], None]] = None  # (tmp dir, a finished run to copy) → files made first
    code: int = 2
    skip: str = ""  # a reason to skip on this machine, when set
    tmpfs: str = ""  # run in a tmpfs of this size mounted at ./disk (full-disk rows)


# -- setups ------------------------------------------------------------------------------------------
def copy_run(tmp: Path, template: Path) -> None:
    shutil.copytree(template, tmp / "run")


def write(name: str, data: bytes) -> Callable[[Path, Path], None]:
    return lambda tmp, _: (tmp / name).write_bytes(data)


def torch_file(name: str, obj: object) -> Callable[[Path, Path], None]:
    return lambda tmp, _: torch.save(obj, tmp / name)


def altered(edit: Callable[[dict], None]) -> Callable[[Path, Path], None]:
    """The finished run's newest checkpoint, edited, as other.pt."""
    def setup(tmp: Path, template: Path) -> None:
        state = torch.load(template / "checkpoint.pt", weights_only=True)
        del state["buffer_file"]
        edit(state)
        torch.save(state, tmp / "other.pt")
    return setup


def truncate_all(tmp: Path, template: Path) -> None:
    copy_run(tmp, template)
    for p in (tmp / "run").glob("checkpoint-*.pt"):
        p.write_bytes(p.read_bytes()[:200])


def saved_agent(tmp: Path, _: Path) -> None:
    DDPG.from_env("Pendulum-v1", device="cpu", hidden_sizes=[8]).save(tmp / "agent.pt")


def pendulum_agent() -> DDPG:
    return DDPG.from_env("Pendulum-v1", device="cpu", hidden_sizes=[8])


def set_config(old: str, new: str) -> Callable[[dict], None]:
    return lambda state: state.update(config=state["config"].replace(old, new, 1))


CUDA = "this machine has a CUDA GPU" if torch.cuda.is_available() else ""
MUJOCO = "MuJoCo is installed here" if importlib.util.find_spec("mujoco") else ""

CASES: dict[str, Case] = {
    # -- config keys and types (command line) --------------------------------------------------------
    "unknown agent": Case("Could not find 'agent/nosuch'; Available options in 'agent': a2c, ddpg", ("agent=nosuch",)),
    "unknown env preset": Case("Could not find 'env/nosuch'", ("env=nosuch",)),
    "unknown gymnasium id": Case("unknown environment 'NoSuchEnv-v9'", ("env.id=NoSuchEnv-v9",)),
    "unknown gymnasium id, short form": Case("unknown environment 'NoSuchEnv-v3'", ("env=NoSuchEnv-v3",)),
    "unknown key": Case("Could not override 'agent.lerning_rate'; Key 'lerning_rate' not in 'DDPGConfig'",
                        ("agent.lerning_rate=0.1",)),
    "unknown key added with +": Case("unknown config key(s) agent.lerning_rate: no such setting",
                                     ("+agent.lerning_rate=0.1",)),
    "text for an integer": Case("Value 'lots' of type 'str' could not be converted to Integer",
                                ("trainer.total_steps=lots",)),
    "float for an integer": Case("Value '1.5' of type 'float' could not be converted to Integer", ("seed=1.5",)),
    "text for a list": Case("agent.hidden_sizes=abc; Invalid value assigned: str is not a ListConfig",
                            ("agent.hidden_sizes=abc",)),
    "unbalanced bracket": Case("no viable alternative at input '[32,'", ("agent.hidden_sizes=[32,",)),
    "override without =": Case("Error parsing override 'trainer.total_steps'; missing EQUAL",
                               ("trainer.total_steps",)),
    "unknown preset": Case("Could not find 'experiment/nosuch'", ("+experiment=nosuch",)),
    "negative learning rate": Case("agent.critic_lr must be > 0, got -0.001", ("agent.critic_lr=-0.001",)),
    "zero steps": Case("trainer.total_steps must be > 0, got 0", ("trainer.total_steps=0",)),
    "discount above 1": Case("agent.gamma must be in [0, 1], got 1.5", ("agent.gamma=1.5",)),
    "negative hidden width": Case("agent.hidden_sizes must be positive widths", ("agent.hidden_sizes=[32,-1]",)),
    "negative seed": Case("seed must be >= 0, got -1", ("seed=-1",)),
    "unknown device": Case("device must be auto, cpu or cuda[:N], got 'tpu'", ("device=tpu",)),
    "cuda without a GPU": Case("device=cuda asked for, but torch sees no CUDA GPU", ("device=cuda",), skip=CUDA),
    "unknown vectorization": Case("env.vectorization must be 'sync', 'async' or 'shm', got 'threads'",
                                  ("env.vectorization=threads",)),
    "no envs": Case("env.num_envs must be > 0, got 0", ("env.num_envs=0",)),
    "negative polling time": Case("env.spin_us must be >= 0 (0: never poll), got -5", ("env.spin_us=-5",)),
    "no batched version": Case("env.backend=torch has no batched version of 'Acrobot-v1'",
                               ("agent=a2c", "env.id=Acrobot-v1", "env.backend=torch")),
    "env kwarg the env lacks": Case("env.kwargs do not fit Pendulum-v1", ("+env.kwargs.gravity_x=1",)),
    "overlap for an on-policy agent": Case("trainer.overlap=true needs an off-policy agent",
                                           ("agent=a2c", "env=cartpole", "trainer.overlap=true")),
    "unknown optimizer": Case("agent.optimizer must be adam, sgd or rmsprop, got 'lbfgs'",
                              ("agent=a2c", "env=cartpole", "agent.optimizer=lbfgs")),
    "keep no checkpoint": Case("trainer.keep_checkpoints must be > 0, got 0", ("trainer.keep_checkpoints=0",)),
    "no seeds": Case("trainer.num_seeds must be > 0, got 0", ("trainer.num_seeds=0",)),
    "several seeds of an agent that lacks them": Case(
        "trainer.num_seeds=2: agent=a2c trains one seed per process (trainer.num_seeds batches the seeds of ddpg, td3)",
        ("agent=a2c", "env=cartpole", "trainer.num_seeds=2")),
    "fuse with an agent without compiled losses": Case("trainer.fuse=true: agent=a2c has no compiled losses",
                                                       ("agent=a2c", "env=cartpole", "trainer.fuse=true")),
    "several seeds on a batched torch env": Case("trainer.num_seeds=3 needs env.backend=gymnasium",
                                                 ("env=pendulum_gpu", "trainer.num_seeds=3")),
    # -- spaces ----------------------------------------------------------------------------------------
    "DDPG on discrete actions": Case("DDPG needs a continuous (Box) action space, but the env has Discrete(2)",
                                     ("env=cartpole",)),
    "TD3 on the grid world": Case("DDPG needs a continuous (Box) action space, but the env has Discrete(5)",
                                  ("agent=td3", "env=gridworld")),
    "tabular agent on continuous states": Case("tabular agent 'qlearning' needs Discrete observation and action",
                                               ("agent=qlearning", "env=cartpole")),
    "env with a missing dependency": Case("environment 'HalfCheetah-v5' needs an optional dependency",
                                          ("env=halfcheetah",), skip=MUJOCO),
    # -- paths and checkpoints -------------------------------------------------------------------------
    "resume from nowhere": Case("no checkpoint at nowhere", ("trainer.resume=nowhere",)),
    "resume an empty directory": Case("no checkpoint at empty", ("trainer.resume=empty",),
                                      setup=lambda tmp, _: (tmp / "empty").mkdir()),
    "resume a text file": Case("error: notes.txt is not a checkpoint file (not written by torch.save)",
                               ("trainer.resume=notes.txt",), setup=write("notes.txt", b"my notes\n")),
    "resume an empty file": Case("error: x.pt is empty (a copy or a save cut short?)", ("trainer.resume=x.pt",), setup=write("x.pt", b"")),
    "resume a truncated file": Case("x.pt is corrupt or truncated (PytorchStreamReader failed reading zip archive",
                                    ("trainer.resume=x.pt",),
                                    setup=lambda tmp, _: (torch.save({"w": torch.zeros(100)}, tmp / "x.pt"),
                                                          (tmp / "x.pt").write_bytes((tmp / "x.pt").read_bytes()[:300]))),
    "resume someone else's weights": Case("x.pt is not an actorzoo checkpoint (no 'config', 'agent', 'trainer', "
                                          "'collector', 'rng' entry)", ("trainer.resume=x.pt",),
                                          setup=torch_file("x.pt", {"weights": torch.zeros(3)})),
    "resume a file with Python objects": Case("x.pt holds Python objects that torch.load(weights_only=True) refuses",
                                              ("trainer.resume=x.pt",), setup=torch_file("x.pt", {"when": range(3)})),
    "resume an agent saved with save()": Case("agent.pt holds an agent written by save(), without the trainer state",
                                              ("trainer.resume=agent.pt",), setup=saved_agent),
    "checkpoint of a newer version": Case("other.pt was written by a newer actorzoo (checkpoint format 99",
                                          ("trainer.resume=other.pt",),
                                          setup=altered(lambda state: state.update(version=99))),
    "checkpoint of an unknown agent": Case("unknown agent 'ppo'", ("trainer.resume=other.pt",),
                                           setup=altered(set_config("name: ddpg", "name: ppo"))),
    "checkpoint with a key this version lacks": Case(
        "the saved config does not fit this version of actorzoo", ("trainer.resume=other.pt",),
        setup=altered(set_config("trainer:\n", "trainer:\n  warp_drive: true\n"))),
    "resume with another agent": Case("agent.name (saved ddpg, given td3)", ("trainer.resume=run", "agent=td3",
                                      "trainer.total_steps=400"), base=False, setup=copy_run),
    "resume with another learning rate": Case("agent.actor_lr (saved 0.001, given 0.0001); on resume only",
                                              ("trainer.resume=run", "agent.actor_lr=1e-4", "trainer.total_steps=400"),
                                              base=False, setup=copy_run),
    "resume with a preset": Case("experiment cannot apply to a resumed run",
                                 ("trainer.resume=run", "+experiment=ddpg_pendulum_gpu"), base=False, setup=copy_run),
    "resume with another number of seeds": Case("trainer.num_seeds (saved 1, given 2); on resume only",
                                                ("trainer.resume=run", "trainer.num_seeds=2", "trainer.total_steps=400"),
                                                base=False, setup=copy_run),
    "resume a finished run": Case("run already reached trainer.total_steps=200 (step 200)", ("trainer.resume=run",),
                                  base=False, setup=copy_run),
    "resume an older unit than the newest": Case(
        "run holds newer checkpoints (checkpoint-200.pt) than checkpoint-100.pt",
        ("trainer.resume=run/checkpoint-100.pt", "trainer.total_steps=400"), base=False, setup=copy_run),
    "every unit truncated": Case("checkpoint-200.pt is corrupt or truncated", ("trainer.resume=run",
                                 "trainer.total_steps=400"), base=False, setup=truncate_all),
    # -- run directories -------------------------------------------------------------------------------
    "run dir that holds a run": Case("run already holds a run; pick a new directory or resume it with "
                                     "trainer.resume=run", ("hydra.run.dir=run",), setup=copy_run),
    "run dir that is a file": Case("File exists: notes.txt", ("hydra.run.dir=notes.txt",),
                                   setup=write("notes.txt", b"my notes\n")),
    "full disk": Case("No space left on device", ("hydra.run.dir=disk/run", "trainer.checkpoint_every=300"),
                      tmpfs="48k"),
    # -- task files (LLM tasks) ------------------------------------------------------------------------
    "task file missing": Case("env=jsonl: env.kwargs.path=missing.jsonl: no such file",
                              ("agent=kimi", "env=jsonl", "env.kwargs.path=missing.jsonl"), base=False),
    "task file with a bad row": Case("env=jsonl: bad.jsonl:2: expected a JSON object with 'prompt'",
                                     ("agent=kimi", "env=jsonl", "env.kwargs.path=bad.jsonl"), base=False,
                                     setup=write("bad.jsonl", b'{"prompt": "1+1=", "answer": "2"}\nnot json\n')),
    # -- signals ---------------------------------------------------------------------------------------
    "SIGTERM during evaluation": Case("interrupted by SIGTERM at step 200; checkpoint saved to", (
        "env.id=SigtermOnEval-v0", "trainer.eval_every=200", "hydra.run.dir=run"), code=128 + signal.SIGTERM,
        setup=lambda tmp, _: setattr(SigtermOnEval, "sent", False)),
    # -- notebook --------------------------------------------------------------------------------------
    "notebook: discrete env": Case("DDPG needs a continuous (Box) action space",
                                   call=lambda _: DDPG.from_env("CartPole-v1", device="cpu")),
    "notebook: unknown env": Case("unknown environment 'NoSuchEnv-v0'",
                                  call=lambda _: DDPG.from_env("NoSuchEnv-v0", device="cpu")),
    "notebook: unknown hyperparameter": Case("DDPG: Key 'lerning_rate' not in 'DDPGConfig'",
                                             call=lambda _: DDPG.from_env("Pendulum-v1", lerning_rate=0.1)),
    "notebook: text for a float": Case("DDPG: Value 'fast' of type 'str' could not be converted to Float",
                                       call=lambda _: DDPG.from_env("Pendulum-v1", actor_lr="fast")),
    "notebook: negative learning rate": Case("agent.actor_lr must be > 0, got -1",
                                             call=lambda _: DDPG.from_env("Pendulum-v1", actor_lr=-1)),
    "notebook: no seeds": Case("trainer.num_seeds must be > 0, got 0",
                               call=lambda _: DDPG.from_env("Pendulum-v1", device="cpu", num_seeds=0)),
    "notebook: several seeds of an agent that lacks them": Case(
        "trainer.num_seeds=3: agent=a2c trains one seed per process",
        call=lambda _: A2C.from_env("CartPole-v1", device="cpu", num_seeds=3)),
    "notebook: learn with another number of seeds": Case("learn() cannot change num_seeds (this agent holds 1)",
                                                         call=lambda _: pendulum_agent().learn(10, num_seeds=3)),
    "notebook: learn no steps": Case("learn(total_steps) must be a positive number of steps, got 0",
                                     call=lambda _: pendulum_agent().learn(0)),
    "notebook: observation of the wrong shape": Case(
        "predict expects one observation of shape (3,) or a batch of shape (B, 3), got (4,)",
        call=lambda _: pendulum_agent().predict([0.0, 1.0, 0.0, 2.0])),
    "notebook: load from nowhere": Case("nowhere.pt (expected a run directory with checkpoint.pt or a .pt file)", call=lambda tmp: DDPG.load(tmp / "nowhere.pt")),
    "notebook: load another agent's run": Case("holds a DDPG, not a A2C", setup=copy_run,
                                               call=lambda tmp: A2C.load(tmp / "run")),
    "notebook: load a truncated file": Case("is corrupt or truncated", setup=truncate_all,
                                            call=lambda tmp: DDPG.load(tmp / "run" / "checkpoint-200.pt")),
    "notebook: save where a file is in the way": Case("cannot write notes.txt/agent.pt", setup=write("notes.txt", b"x"),
                                                      call=lambda tmp: pendulum_agent().save(Path("notes.txt/agent.pt"))),
    "notebook: run into a dir that holds a run": Case("already holds a run", setup=copy_run,
                                                      call=lambda tmp: run(tiny_cfg(), run_dir=tmp / "run")),
    "notebook: learn into a dir that holds a run": Case("already holds a run; pick a new log_dir", setup=copy_run,
                                                        call=lambda tmp: pendulum_agent().learn(10, log_dir=tmp / "run")),
}


def tiny_cfg():
    from tests.test_train import tiny_config

    return tiny_config()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny DDPG run (units at 100 and 200) that rows copy."""
    d = tmp_path_factory.mktemp("template")
    code, _, err = run_main(*TINY, "trainer.total_steps=200", "trainer.checkpoint_every=100", "hydra.run.dir=run",
                            cwd=d)
    assert code == 0, err
    return d / "run"


def files(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.read_bytes(), p.stat().st_mtime_ns) for p in d.rglob("*") if p.is_file()}


def run_in_tmpfs(argv: list[str], size: str, cwd: Path):
    (cwd / "disk").mkdir()
    script = f'mount -t tmpfs -o size={size} tmpfs disk && exec "$0" -m rl.train "$@"'
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, sys.executable, *argv], cwd=cwd, text=True,
                          capture_output=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if "mount" in proc.stderr and proc.returncode != 2:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()[:200]}")
    return proc.returncode, proc.stdout, proc.stderr


def test_catalogue_is_large_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, finished_run, monkeypatch):
    case = CASES[name]
    if case.skip:
        pytest.skip(case.skip)
    if case.tmpfs and not shutil.which("unshare"):
        pytest.skip("needs unshare to mount a tiny tmpfs")
    if case.setup:
        case.setup(tmp_path, finished_run)
    before = files(tmp_path)
    if case.call is not None:
        monkeypatch.chdir(tmp_path)
        with pytest.raises(ConfigError) as info:
            case.call(tmp_path)
        line = str(info.value)
        assert "\n" not in line and case.expect in line, line
    else:
        argv = [*(BASE if case.base else []), *case.argv]
        if case.tmpfs:
            code, out, err = run_in_tmpfs(argv, case.tmpfs, tmp_path)
        else:
            previous = signal.signal(signal.SIGTERM, _refuse_sigterm)  # were the trainer's handler missing
            try:
                code, out, err = run_main(*argv, cwd=tmp_path)
            finally:
                signal.signal(signal.SIGTERM, previous)
        lines = err.strip().splitlines()
        assert code == case.code, err
        assert "Traceback" not in err and lines and case.expect in lines[-1], err
        if case.code == 2:  # nothing but the error (and warnings about checkpoints it tried) on stderr
            assert lines[-1].startswith("error: ") and all(l.startswith("warning: ") for l in lines[:-1]), err
    after = files(tmp_path)
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert not changed, f"{name}: changed or removed {changed}"
    if case.code == 2:  # and nothing new (a full disk may keep the files it managed to write)
        assert case.tmpfs or set(after) == set(before), sorted(set(after) - set(before))


def _refuse_sigterm(*_):
    raise AssertionError("SIGTERM reached the test process: the trainer's handler was not installed")


def test_sigterm_during_evaluation_resumes(tmp_path, monkeypatch):
    """The row above leaves a checkpoint at step 200 (taken after the evaluation it interrupted): it resumes."""
    SigtermOnEval.sent = False
    code, _, err = run_main(*BASE, *CASES["SIGTERM during evaluation"].argv, cwd=tmp_path)
    assert code == 128 + signal.SIGTERM, err
    code, out, err = run_main("trainer.resume=run", "trainer.total_steps=400", cwd=tmp_path)
    assert code == 0 and "resuming run at step 200" in err and "done: step=400" in out, err
