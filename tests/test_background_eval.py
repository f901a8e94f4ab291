"""trainer.eval_background: the evaluations of a process of their own are those the trainer runs in line, logged at
their steps; one still running at a checkpoint is run again by the resumed run; a dead evaluator is one clear error."""

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.base import build_agent
from agents.ddpg import DDPGConfig
from rl.background_eval import BackgroundEvaluator
from rl.config import BufferConfig, Config, ConfigError, EnvConfig, LoggerConfig, TrainerConfig
from rl.trainer import Trainer


def config(background: bool, **trainer) -> Config:
    t = dict(total_steps=600, learning_starts=100, eval_every=200, eval_episodes=2, log_every=200,
             checkpoint_every=0, progress=False, num_seeds=2, eval_background=background)
    t.update(trainer)
    return Config(agent=DDPGConfig(name="td3", hidden_sizes=[32, 32], twin_critics=True, target_policy_noise=0.2,
                                   policy_delay=2),
                  env=EnvConfig(name="pendulum", id="Pendulum-v1", vectorization="sync"),
                  buffer=BufferConfig(capacity=5000), trainer=TrainerConfig(**t), logger=LoggerConfig(hparams=False),
                  seed=4, device="cpu")


def evals(run_dir: Path, seed: int) -> dict[int, float]:
    ea = EventAccumulator(str(run_dir / f"seed_{seed}"), size_guidance={"scalars": 0})
    ea.Reload()
    return {e.step: e.value for e in ea.Scalars("eval/return_mean")}


def train(cfg: Config, run_dir: Path, evaluator=None, steps: int | None = None) -> Trainer:
    trainer = Trainer(cfg, build_agent(cfg), run_dir=run_dir, evaluator=evaluator)
    trainer.run(steps)
    trainer.close()
    return trainer


def test_background_evaluations_are_the_in_line_ones_at_their_steps(tmp_path):
    inline = train(config(False), tmp_path / "inline")
    background = train(config(True), tmp_path / "background")
    assert background.last_eval == inline.last_eval  # the final evaluation (waited for)
    for seed in (4, 5):
        logged = evals(tmp_path / "background", seed)
        assert sorted(logged) == [200, 400, 600]
        assert logged == evals(tmp_path / "inline", seed)


class Slow(BackgroundEvaluator):
    """Never reports a finished evaluation before it is waited for (an evaluation slower than the checkpoint)."""

    def poll(self):
        return []


def test_an_evaluation_still_running_at_a_checkpoint_is_run_again_on_resume(tmp_path):
    # 400 steps with a checkpoint every 200: the evaluation of step 200 is in flight when checkpoint 200 is written.
    run_dir = tmp_path / "run"
    cfg = config(True, checkpoint_every=200, total_steps=400)
    first = Trainer(cfg, build_agent(cfg), run_dir=run_dir, evaluator=Slow(cfg))
    first.run(201)  # past step 200 (its evaluation and checkpoint), then the end-of-run evaluation and checkpoint
    assert first.saved[0] == 201
    first.close()
    (run_dir / "checkpoint-201.pt").unlink()  # as if the run had died after checkpoint 200
    from rl import checkpoint
    unit = checkpoint.load_for_resume(run_dir / "checkpoint-200.pt", "cpu")
    assert unit.state["trainer"]["eval_due"] == 200
    for seed in (4, 5):  # drop what the first run logged, to see what the resumed run logs
        for f in (run_dir / f"seed_{seed}").glob("events.*"):
            f.unlink()
    resumed = Trainer(cfg, build_agent(cfg), run_dir=run_dir)
    resumed.load_checkpoint(unit)
    assert resumed.eval_due == 200
    resumed.run()
    resumed.close()
    reference = train(config(True, total_steps=400), tmp_path / "reference")
    assert reference.last_eval == resumed.last_eval
    for seed in (4, 5):
        logged, expected = evals(run_dir, seed), evals(tmp_path / "reference", seed)
        assert sorted(logged) == [200, 400] and logged == expected


def test_a_dead_evaluator_is_one_clear_error(tmp_path):
    cfg = config(True)
    trainer = Trainer(cfg, build_agent(cfg), run_dir=None)
    trainer.evaluator.process.kill()
    trainer.evaluator.process.join()
    with pytest.raises(RuntimeError, match="the background evaluator died"):
        trainer.evaluate()
    trainer.close()


def test_background_evaluation_of_an_agent_that_evaluates_its_own_way_is_refused():
    from agents.base import Agent, check_eval_background

    class Own(Agent):
        def make_evaluator(self, cfg):
            return lambda agent: {}

    cfg = config(True)
    cfg.agent.name = "own"
    with pytest.raises(ConfigError, match="trainer.eval_background=true plays gymnasium evaluation episodes"):
        check_eval_background(Own, cfg)


def test_the_evaluator_exits_when_the_trainer_is_killed():
    """A trainer killed with SIGKILL cannot close its evaluator: the evaluator sees its pipe close and exits."""
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT
    from tests.test_shm_vector import running

    script = ("import sys, time\nsys.path.insert(0, %r)\nfrom tests.test_background_eval import config\n"
              "from agents.base import build_agent\nfrom rl.trainer import Trainer\n"
              "cfg = config(True)\ntrainer = Trainer(cfg, build_agent(cfg))\ntrainer.evaluate()\n"
              "print(trainer.evaluator.process.pid, flush=True)\ntime.sleep(60)\n" % str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    pid = int(proc.stdout.readline())
    assert running(pid)
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and running(pid):
        time.sleep(0.2)
    assert not running(pid)


def test_a_wrapped_in_line_evaluator_still_closes_its_env_workers():
    """scripts/bench.py wraps ``trainer.evaluator.evaluate`` to time it; closing the trainer must still end the
    evaluation envs' worker processes (it did not: a wrapped function has no ``close``)."""
    import multiprocessing as mp

    cfg = config(False)
    cfg.env.vectorization = "shm"
    trainer = Trainer(cfg, build_agent(cfg), run_dir=None)
    inner = trainer.evaluator.evaluate
    trainer.evaluator.evaluate = lambda agent: inner(agent)
    trainer.evaluate()
    assert len(mp.active_children()) >= 2 + 4  # the training envs' 2 workers and the evaluation envs' 2 × 2
    trainer.close()
    assert mp.active_children() == []


def test_closing_with_an_evaluation_in_flight_ends_the_evaluator_at_once():
    """The evaluator ignores SIGTERM (a stop sent to the whole process group is the trainer's to handle), so
    ``close()`` with an evaluation still running kills it rather than asking it to terminate."""
    import time

    cfg = config(True, eval_episodes=1000)  # an evaluation of minutes
    trainer = Trainer(cfg, build_agent(cfg), run_dir=None)
    deadline = time.time() + 30
    while not ignores_sigterm(trainer.evaluator.process.pid) and time.time() < deadline:  # started serving
        time.sleep(0.05)
    trainer.evaluator.submit(0, trainer.agent)
    t = time.perf_counter()
    trainer.evaluator.close()
    assert not trainer.evaluator.process.is_alive()
    assert time.perf_counter() - t < 5


def ignores_sigterm(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    return bool(mask >> (15 - 1) & 1)
