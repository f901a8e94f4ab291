"""The one training loop: collect → store → update → log → evaluate → checkpoint.

The trainer owns time, step counters, seeds/RNG state, logging, evaluation, checkpoints, signals and the
progress bar. The agent owns how to act and how to learn from a batch; the storage owns sampling; the
collector owns the environments. Off-policy (replay), on-policy (rollout) and LLM agents all run here.

K seeds trained as one batch (``trainer.num_seeds``): the step counter, ``total_steps`` and every interval count one
seed's env steps; each seed logs to its own TensorBoard run, ``<run_dir>/seed_<s>/`` (the same tags as a single
run), and one checkpoint unit in ``<run_dir>`` holds all K. Metrics and evaluations then carry one value per seed
(a list of K floats where a single run has a float).
"""

from __future__ import annotations

import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rl import checkpoint, distributed
from rl.background_eval import BackgroundEvaluator, InlineEvaluator
from rl.buffers import ReplayBuffer
from rl.collector import TorchEnvCollector, VectorEnvCollector, evaluate_policy
from rl.config import Config, ConfigError, flat, to_yaml
from rl.logging import Logger, MetricAccumulator

Evaluator = Callable[[Any], dict[str, Any]]  # plain values, or lists of one value per seed


class Diverged(RuntimeError):
    """A loss or a parameter became NaN or infinite: the run stopped and wrote no checkpoint holding it."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device} asked for, but torch sees no CUDA GPU (use device=cpu or auto)")
    return torch.device(device)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
             "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state` (its tensors may have been loaded onto a GPU: RNG states live on the host)."""
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    np.random.set_state(("MT19937", state["numpy"].cpu().numpy().astype(np.uint32), state["numpy_pos"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_values(values: dict[str, Any], k: int) -> dict[str, Any]:
    """Seed k's view of ``values``: a list holds one value per seed; a plain value belongs to every seed."""
    return {tag: v[k] if isinstance(v, list) else v for tag, v in values.items()}


def crossed(before: int, after: int, every: int) -> bool:
    """True when a multiple of ``every`` lies in (before, after]."""
    return every > 0 and after // every > before // every


class Trainer:
    """Runs ``agent`` as configured by ``cfg``; writes TensorBoard events and checkpoints to ``run_dir``."""

    def __init__(self, cfg: Config, agent: Any, run_dir: str | Path | None = None,
                 collector: Any = None, evaluator: Evaluator | None = None) -> None:
        self.cfg, self.agent, self.device = cfg, agent, agent.device
        self.group = getattr(agent, "group", distributed.SINGLE)  # torchrun: rank 0 logs and writes checkpoints
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if cfg.trainer.overlap and not agent.off_policy:
            raise ConfigError(f"trainer.overlap=true needs an off-policy agent (replayed data); {type(agent).__name__} "
                              "learns from its current policy's steps")
        self.collector = collector or agent.make_collector(cfg)
        self.storage = agent.make_storage(cfg)
        if cfg.trainer.fuse:
            from agents.base import check_fuse  # (agents import this module)

            check_fuse(type(agent), cfg)
            agent.fuse_losses()
        if cfg.trainer.compile:
            if agent.use_cuda_graphs():
                for part in (self.storage, self.collector):
                    getattr(part, "use_cuda_graphs", lambda: False)()
            else:
                print(f"trainer.compile: CUDA graphs need device=cuda and a graphable update; {type(agent).__name__} "
                      f"on {agent.device} runs eagerly", file=sys.stderr)
        if evaluator is None:
            evaluator = self._make_evaluator()
        elif not isinstance(evaluator, (InlineEvaluator, BackgroundEvaluator)):  # a plain function: run in line
            evaluator = InlineEvaluator(evaluator)
        self.evaluator = evaluator
        self.video_env = self._video_env() if cfg.trainer.video else None
        on = cfg.logger.tensorboard and self.run_dir is not None and self.group.main
        self.loggers = [Logger(d, enabled=on) for d in self.seed_dirs()]  # one TensorBoard run per seed
        self.logger = self.loggers[0]
        self.metrics = MetricAccumulator()
        self.step = 0  # environment steps (or samples, for LLM runs)
        self.update_credit = 0.0  # fractional gradient updates owed (utd_ratio × steps)
        self.episodes = 0
        self.last_return = math.nan
        self.last_eval: dict[str, float] = {}
        self.last_log_step = 0  # the step of the previous scalar log (the NaN guard names the window)
        self.saved: tuple[int, Path] | None = None  # (step, file) of the newest checkpoint written or loaded
        self._signal: int | None = None  # a SIGINT/SIGTERM this process received
        self._stop: int | None = None  # the signal every rank stops for (after the iteration that saw it)
        self._hparams_logged = False
        self.eval_due: int | None = None  # resumed: the step of a background evaluation the checkpoint did not see end

    # -- the loop ----------------------------------------------------------------------------------
    def run(self, total_steps: int | None = None) -> dict[str, Any]:
        """Train until ``total_steps`` (default ``cfg.trainer.total_steps``) or a SIGINT/SIGTERM. A loss or a
        parameter that turns NaN or infinite stops the run with :class:`Diverged`, before any checkpoint holds it."""
        tc = self.cfg.trainer
        total = total_steps if total_steps is not None else tc.total_steps
        if not self._hparams_logged and self.step == 0 and self.cfg.logger.hparams:
            for seed, logger in zip(self.cfg.seeds, self.loggers):
                logger.hparams(flat(replace(self.cfg, seed=seed)), ["eval/return_mean", "charts/episodic_return"])
            self._hparams_logged = True
        threads, tf32 = torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32
        if tc.threads > 0:  # for this run only: a notebook gets its own settings back afterwards
            torch.set_num_threads(tc.threads)
        torch.backends.cuda.matmul.allow_tf32 = tc.tf32
        previous = self._install_signal_handlers()
        bar = _progress(total, self.step, tc.progress and self.group.main)
        t_log, s_log = time.perf_counter(), self.step
        t_start, s_start = t_log, self.step
        try:
            if self.eval_due is not None and self.eval_due == self.step and self.step < total:
                self._periodic_evaluation()
            self.eval_due = None
            while self.step < total and self._stop is None:
                before = self.step
                self.agent.set_progress(self.step / total)
                warmup = self.agent.random_warmup and self.step < tc.learning_starts
                if tc.overlap and len(self.storage) > 0:  # updates run on the GPU while the host steps the envs
                    n, finished = self.collector.collect(self.agent, self.storage, warmup,
                                                         during=lambda n: self._update(n, self.step + n))
                    self.step += n
                else:
                    n, finished = self.collector.collect(self.agent, self.storage, warmup)
                    self.step += n
                    self._update(n, self.step)
                self._log_episodes(finished)
                bar.update(n)
                if crossed(before, self.step, tc.log_every) or self.step >= total:
                    now = time.perf_counter()
                    sps = (self.step - s_log) / max(now - t_log, 1e-9)
                    t_log, s_log = now, self.step
                    self._log_scalars({"charts/SPS": sps}, bar)
                    self._log_evals(self.evaluator.poll())  # background evaluations that are back
                if crossed(before, self.step, tc.eval_every) and self.step < total:
                    self._periodic_evaluation()
                if self.video_env is not None and crossed(before, self.step, tc.video_every) and self.step < total:
                    self.record_video()
                if crossed(before, self.step, tc.checkpoint_every) and self.step < total:
                    self.save_checkpoint()
                self._share_signal()
            sps = (self.step - s_start) / max(time.perf_counter() - t_start, 1e-9)  # the loop alone
            if self._stop is None:
                self.evaluate()
                if self.video_env is not None:
                    self.record_video()
                self._share_signal()  # a signal during this evaluation is reported below; the checkpoint follows
            path = self.save_checkpoint()
        finally:
            bar.close()
            self._restore_signal_handlers(previous)
            torch.set_num_threads(threads)
            torch.backends.cuda.matmul.allow_tf32 = tf32
        if self._stop is not None:
            name = signal.Signals(self._stop).name
            where = f"; checkpoint saved to {path}; continue with trainer.resume={self.run_dir}" if path else ""
            if self.group.main:
                print(f"interrupted by {name} at step {self.step}{where}", file=sys.stderr)
        for logger in self.loggers:
            logger.flush()
        self.group.barrier()  # under torchrun: every rank ends together (a rank that exits early looks failed)
        # sps: env steps per second, summed over the seeds (the step counter counts one seed's)
        return {"step": self.step, "sps": sps * self.cfg.trainer.num_seeds, "interrupted": self._stop, **self.last_eval}

    def seed_dirs(self) -> list[Path | None]:
        """Where each seed's TensorBoard run goes: the run directory itself for a single seed, else one
        ``seed_<s>`` subdirectory per seed."""
        if self.run_dir is None or self.cfg.trainer.num_seeds == 1:
            return [self.run_dir] * self.cfg.trainer.num_seeds
        return [self.run_dir / f"seed_{s}" for s in self.cfg.seeds]

    def _update(self, n: int, step: int) -> None:
        """The gradient updates owed for ``n`` more env steps (``utd_ratio`` each), once past the warm-up."""
        tc = self.cfg.trainer
        if self.agent.random_warmup and step < tc.learning_starts:
            return
        self.update_credit += tc.utd_ratio * n
        k = int(self.update_credit)
        self.update_credit -= k
        if isinstance(self.storage, ReplayBuffer):  # sampling and update: one CUDA graph where both are graphed
            for _ in range(k):
                self.agent.sample_and_update(self.storage, tc.batch_size, self.metrics)
            return
        for batch in self.storage.batches(k, tc.batch_size):
            self.metrics.add(self.agent.update(batch))

    def _make_evaluator(self) -> InlineEvaluator | BackgroundEvaluator:
        if not self.cfg.trainer.eval_background:
            return InlineEvaluator(self.agent.make_evaluator(self.cfg))
        from agents.base import check_eval_background  # (agents import this module)

        check_eval_background(type(self.agent), self.cfg)
        return BackgroundEvaluator(self.cfg)

    def evaluate(self) -> dict[str, Any]:
        """Evaluate the agent as it is now and log it under eval/ (waiting for the result, also when
        ``trainer.eval_background`` sends it to the evaluator's process)."""
        self._periodic_evaluation()
        self._log_evals(self.evaluator.wait())
        return self.last_eval

    def _periodic_evaluation(self) -> None:
        """The evaluation every ``eval_every`` steps: run here, or with ``trainer.eval_background`` handed to the
        evaluator's process (logged when it is back)."""
        self.check_finite()
        self._log_evals(self.evaluator.submit(self.step, self.agent))

    def _log_evals(self, results: list[tuple[int, dict[str, Any]]]) -> None:
        for step, result in results:
            self.last_eval = result  # plain keys go under eval/, "group/name" keys as they are
            tagged = {k if "/" in k else f"eval/{k}": v for k, v in result.items()}
            for k, logger in enumerate(self.loggers):
                logger.scalars(seed_values(tagged, k), step)

    def _eval_in_flight(self) -> int | None:
        """For a checkpoint: log the background evaluations that are done (waiting for one of an earlier step, whose
        parameters the checkpoint no longer has); the step of one still running for this very step, which a run
        resumed from the checkpoint evaluates again (same parameters, same episodes)."""
        self._log_evals(self.evaluator.poll())
        if self.evaluator.pending is not None and self.evaluator.pending != self.step:
            self._log_evals(self.evaluator.wait())
        return self.evaluator.pending

    def _video_env(self) -> Any:
        from rl.video import make_render_env

        if self.run_dir is None:
            raise ConfigError("trainer.video=true writes the mp4 into the run directory: give one (learn(log_dir=...))")
        return make_render_env(self.cfg.env)

    def record_video(self) -> Path:
        """One greedy evaluation episode → ``<run dir>/videos/step_<N>.mp4`` and TensorBoard's ``eval/video`` GIF."""
        from rl.video import fps_of, record_episode, write_mp4

        frames, ret = record_episode(self.agent, self.video_env, self.cfg.seed + 100_000, self.device)
        path = write_mp4(self.run_dir / "videos" / f"step_{self.step}.mp4", frames, fps_of(self.video_env))
        self.logger.video("eval/video", frames, self.step, fps_of(self.video_env))
        self.logger.scalars({"eval/video_return": ret}, self.step)
        return path

    def _log_episodes(self, finished: list[tuple[float, int, int]]) -> None:
        for ret, length, seed in finished:
            self.episodes += 1
            self.last_return = ret
            self.loggers[seed].scalars({"charts/episodic_return": ret, "charts/episodic_length": length}, self.step)

    def _log_scalars(self, extra: dict[str, float], bar: Any) -> None:
        values = {f"losses/{k}": v for k, v in self.metrics.means().items()}  # the log step's one host sync
        seeds = self.cfg.seeds
        bad = [f"{k} = {x}" + (f" (seed {seeds[i]})" if len(seeds) > 1 else "") for k, v in values.items()
               for i, x in enumerate(v if isinstance(v, list) else [v]) if not math.isfinite(x)]
        if self._any_rank(bool(bad)):
            raise Diverged(self._diverged(", ".join(bad or ["a loss of another process"])
                                          + f" (mean over steps {self.last_log_step}-{self.step})"))
        self.last_log_step = self.step
        values.update(extra)
        if self.device.type == "cuda":  # this process's peak so far (a host-side counter: no sync)
            values["charts/gpu_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if hasattr(self.collector, "pop_logs"):  # collectors with their own statistics (e.g. the LLM's llm/* tags)
            scalars, texts = self.collector.pop_logs()
            values.update(scalars)
            self.last_return = scalars.get("charts/episodic_return", self.last_return)
            for tag, text in texts.items():
                self.logger.text(tag, text, self.step)
        for k, logger in enumerate(self.loggers):
            logger.scalars(seed_values(values, k), self.step)
        bar.set_postfix(SPS=f"{extra['charts/SPS']:.0f}", ret=f"{self.last_return:.1f}", refresh=False)

    # -- signals -----------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict:
        self._signal = self._stop = None
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, self._on_signal)
        return previous

    def _share_signal(self) -> None:
        """Decide whether to stop after this iteration. Under torchrun a signal that reached any rank stops every
        rank after this same iteration (one small all-reduce per iteration), so that all of them take part in the one
        checkpoint."""
        if self.group.world == 1:
            self._stop = self._signal
            return
        flag = torch.tensor([self._signal or 0], device=self.device)
        self.group.all_reduce(flag, "max")
        self._stop = int(flag) or None

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal is not None:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self._signal = signum

    @staticmethod
    def _restore_signal_handlers(previous: dict) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    # -- the NaN/inf guard -------------------------------------------------------------------------
    def check_finite(self) -> None:
        """Raise :class:`Diverged` if a loss accumulated since the last log or a parameter (or buffer) of the agent
        is NaN or infinite. One host sync; called before evaluations and checkpoints, which sync anyway."""
        tensors = {f"losses/{k}": v for k, v in self.metrics.pending().items()}
        tensors.update({f"parameter {k}": v for k, v in self.agent.state_dict().items() if v.is_floating_point()})
        local = [v.to_local() if hasattr(v, "to_local") else v for v in tensors.values()]  # FSDP: this rank's shard
        finite = torch.stack([torch.isfinite(v).all() for v in local]).tolist() if local else []
        bad = [name for name, ok in zip(tensors, finite) if not ok]
        if self._any_rank(bool(bad)):
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise Diverged(self._diverged(", ".join(bad[:3] or ["a tensor of another process"]) + more + " not finite"))

    def _any_rank(self, bad: bool) -> bool:
        """Whether any process saw ``bad``: under torchrun every rank must stop at the same step (one all-reduce,
        at log, evaluation and checkpoint time only)."""
        if self.group.world == 1:
            return bad
        flag = torch.tensor([int(bad)], device=self.device)
        self.group.all_reduce(flag, "max")
        return bool(flag.item())

    def _diverged(self, what: str) -> str:
        last = (f"the last good checkpoint, {self.saved[1]} (step {self.saved[0]}), is untouched"
                if self.saved is not None else "no checkpoint was written")
        return f"training diverged at step {self.step}: {what}; stopped ({last})"

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "version": checkpoint.FORMAT,
            "config": to_yaml(self.cfg),
            "spaces": self.agent.describe_spaces(),
            "agent": self.agent.state(),
            "trainer": {"step": self.step, "update_credit": self.update_credit, "episodes": self.episodes,
                        "last_return": self.last_return},
            "collector": self.collector.state_dict(),
            "rng": rng_state(),
        }

    def save_checkpoint(self) -> Path | None:
        """Write one checkpoint unit for this step into the run directory (:func:`rl.checkpoint.save_unit`):
        refused, with :class:`Diverged`, when a loss or a parameter is not finite. Under torchrun every rank
        gathers its part of the state and rank 0 alone writes."""
        if self.run_dir is None:
            return None
        if self.saved is not None and self.saved[0] == self.step:  # e.g. a signal right after a periodic save
            return self.saved[1]
        self.check_finite()
        state = self.state_dict()
        state["trainer"]["eval_due"] = self._eval_in_flight()
        path = checkpoint.unit_path(self.run_dir, self.step)
        failure: Exception | None = None
        if self.group.main:
            buffer = self.storage.state_dict() if self.cfg.buffer.checkpoint and hasattr(self.storage, "state_dict") \
                else None
            try:
                path = checkpoint.save_unit(self.run_dir, self.step, state, buffer, keep=self.cfg.trainer.keep_checkpoints)
            except Exception as e:  # noqa: BLE001 — every rank must learn of it, or the others wait forever
                failure = e
        message = self.group.broadcast(None if failure is None else str(failure))
        if failure is not None:
            raise failure
        if message is not None:
            raise ConfigError(f"rank 0 could not write the step-{self.step} checkpoint: {message}")
        self.saved = (self.step, path)
        return path

    def load_checkpoint(self, path: str | Path | checkpoint.Unit) -> Path:
        """Continue from a checkpoint unit: one read by :func:`rl.checkpoint.load_for_resume`, or the newest
        complete one under ``path`` (a run directory or a checkpoint file). Returns the file it came from."""
        unit = path if isinstance(path, checkpoint.Unit) else checkpoint.load_for_resume(path, "cpu")
        state = unit.state
        try:
            self.agent.load_state(state["agent"])
            self.collector.load_state_dict(state["collector"])
            if unit.buffer is not None:
                self.storage.load_state_dict(unit.buffer)
        except (RuntimeError, KeyError, ValueError) as e:
            raise ConfigError(f"{unit.path} does not fit this agent and env: {checkpoint.first_line(e)}") from None
        t = state["trainer"]
        self.step, self.update_credit = int(t["step"]), float(t["update_credit"])
        self.episodes, self.last_return = int(t["episodes"]), float(t["last_return"])
        set_rng_state(state["rng"])
        self._hparams_logged = True
        self.saved, self.last_log_step = (self.step, unit.path), self.step
        self.eval_due = t.get("eval_due")  # a background evaluation of this step that was still running
        return unit.path

    def close(self) -> None:
        try:
            self._log_evals(self.evaluator.wait())  # a background evaluation still running
        except RuntimeError as e:  # the evaluator failed: closing still ends every process
            print(f"closing: {e}", file=sys.stderr)
        self.collector.close()
        if self.video_env is not None:
            self.video_env.close()
        self.evaluator.close()
        for logger in self.loggers:
            logger.close()


def env_evaluator(cfg: Config, device: torch.device) -> Evaluator:
    """Mean/std return of ``cfg.trainer.eval_episodes`` deterministic episodes per seed on separate envs: up to 10
    per seed at a time, in one sync vector env, or for K > 1 seeds K × 10 in one vector env vectorized as the
    training envs are (worker processes for MuJoCo); seed s's episodes start from seeds s + 100000, … whatever K is.
    K > 1: lists of K values."""
    from envs.make import make_vec_env

    envs = None
    k = cfg.trainer.num_seeds

    def evaluate(agent: Any) -> dict[str, Any]:
        nonlocal envs
        if envs is None:
            envs = make_vec_env(cfg.env, num_envs=k * min(cfg.trainer.eval_episodes, 10),
                                vectorization="sync" if k == 1 else cfg.env.vectorization,
                                spin_us=0)  # idle between evaluations, and K × 10 workers: they sleep
        returns = evaluate_policy(agent, envs, cfg.trainer.eval_episodes, [s + 100_000 for s in cfg.seeds], device)
        mean, std = returns.mean(axis=1).tolist(), returns.std(axis=1).tolist()
        return {"return_mean": mean[0], "return_std": std[0]} if k == 1 else {"return_mean": mean, "return_std": std}

    evaluate.close = lambda: envs is not None and envs.close()  # type: ignore[attr-defined]
    return evaluate


def env_collector(cfg: Config, device: torch.device) -> VectorEnvCollector | TorchEnvCollector:
    """Gymnasium vector envs stepped on the host (``env.backend=gymnasium``), or batched torch envs that live on
    the run's device (``env.backend=torch``, e.g. ``env=pendulum_gpu``)."""
    from envs.make import make_vec_env

    if cfg.env.backend == "torch":
        from envs.torch_envs import make_torch_env

        env = make_torch_env(cfg.env.id, cfg.env.num_envs, device, max_episode_steps=cfg.env.max_episode_steps,
                             **cfg.env.kwargs)
        return TorchEnvCollector(env, cfg.seed)
    return VectorEnvCollector(make_vec_env(cfg.env, num_envs=cfg.trainer.num_seeds * cfg.env.num_envs), device,
                              cfg.seeds)


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
                mininterval=0.5, smoothing=0.05)


def with_trainer(cfg: Config, **overrides: Any) -> Config:
    """A copy of ``cfg`` with some trainer fields replaced."""
    return replace(cfg, trainer=replace(cfg.trainer, **overrides))
