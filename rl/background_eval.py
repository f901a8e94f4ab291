"""Evaluation in a process of its own (``trainer.eval_background=true``): the training loop hands a copy of the
agent's parameters to a second process and steps on while that process plays the evaluation episodes on CPU cores
of its own.

Why: the TD3 paper's protocol evaluates every 5,000 steps, 10 episodes per seed. On MuJoCo with K = 5 seeds that is
50,000 env steps per evaluation, about a fifth of a 1M-step run's wall time when the loop waits for it
(docs/benchmarks.md, issue #12).

What the process computes is the evaluation the trainer runs in line (``agent.make_evaluator``), for the parameters
of the step it was handed, with the actions computed on the CPU: from a GPU run the returns can differ from an
in-line evaluation by float rounding in the actions, nothing else. Results are logged at the step they belong to.
The process and its env workers run at a lower scheduling priority (``nice`` 10) than the training loop, on the
cores it leaves idle. One evaluation is in flight at a time: handing over the next one first waits for the one
before, so when evaluations take longer than the interval the loop slows to their pace instead of queueing copies.
The run's final evaluation is waited for, and so is the one in flight at ``close``. A checkpoint written while the
evaluation of its own step is still running records that step, and a run resumed from it evaluates it again (same
parameters, same episodes): a crash loses no evaluation.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.util
import os
import signal
import traceback
from dataclasses import replace
from typing import Any

import torch

Result = tuple[int, dict[str, Any]]  # (step, what the evaluator returned)


def _serve(cfg: Any, conn: Any) -> None:
    """The evaluator process: the agent built on the CPU, then evaluate each parameter copy it is sent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and a stop go to the trainer, which closes us when done
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(AttributeError, OSError):  # no os.nice (Windows), or not allowed: normal priority
        os.nice(10)  # the training loop (and its env workers) come first; evaluation takes the cores they leave idle
    torch.set_num_threads(1)
    if "fork" in mp.get_all_start_methods():  # env workers as the trainer starts them (a spawned process would
        mp.set_start_method("fork", force=True)  # otherwise spawn them, and their env makers are closures)
    import agents  # noqa: F401  (registers the agents)
    from agents.base import build_agent

    evaluator = None
    try:
        agent = build_agent(cfg)
        evaluator = InlineEvaluator(agent.make_evaluator(cfg))
        while True:
            try:
                kind, step, state = conn.recv()
            except EOFError:  # the trainer is gone
                return
            if kind == "close":
                return
            try:
                agent.load_state_dict(state)
                conn.send(("ok", step, evaluator.evaluate(agent)))
            except Exception:  # noqa: BLE001 — reported to the trainer, which raises it there
                conn.send(("error", step, traceback.format_exc()))
    except Exception:  # noqa: BLE001 — building the agent or its envs failed: say so at the first evaluation
        with contextlib.suppress(EOFError, OSError):  # unless the trainer is already gone
            kind, step, _ = conn.recv()
            conn.send(("error", step, traceback.format_exc()))
    finally:
        if evaluator is not None:
            evaluator.close()


class InlineEvaluator:
    """The same interface for an evaluator run in the training process (``trainer.eval_background=false``):
    ``submit`` evaluates at once and returns the result; nothing is ever in flight."""

    pending = None

    def __init__(self, evaluate: Any) -> None:
        self.evaluate = evaluate
        # kept apart from ``evaluate``, which a caller may wrap (scripts/bench.py times it): the wrapper must not
        # leave the envs' worker processes open
        self._close = getattr(evaluate, "close", lambda: None)

    def submit(self, step: int, agent: Any) -> list[Result]:
        return [(step, self.evaluate(agent))]

    def poll(self) -> list[Result]:
        return []

    def wait(self) -> list[Result]:
        return []

    def close(self) -> None:
        self._close()  # the evaluator's envs (worker processes, when async or shm)


class BackgroundEvaluator:
    """``submit(step, agent)`` hands over a copy of ``agent``'s parameters (returns the result of the evaluation
    before it, if one was in flight); ``poll()`` returns a finished result without waiting; ``wait()`` waits for
    the one in flight. Results are ``(step, evaluator output)`` pairs."""

    def __init__(self, cfg: Any) -> None:
        ctx = mp.get_context("spawn")  # a fresh interpreter: no CUDA state, no copy of the trainer's memory
        self.conn, theirs = ctx.Pipe()
        # not a daemon: its env workers are processes of its own (a daemon may have none). It ends on close(), at
        # the interpreter's exit (the finalizer below runs before multiprocessing joins its children), or when the
        # trainer's end of the pipe closes (a killed trainer).
        self.process = ctx.Process(target=_serve, args=(replace(cfg, device="cpu"), theirs), name="evaluator")
        self.process.start()
        theirs.close()
        self._finalizer = mp.util.Finalize(self, BackgroundEvaluator._end, args=(self.conn, self.process),
                                           exitpriority=10)
        self.pending: int | None = None  # the step of the evaluation in flight

    def submit(self, step: int, agent: Any) -> list[Result]:
        done = self.wait()
        state = {k: v.detach().to("cpu", copy=True) for k, v in agent.state_dict().items()}
        try:
            self.conn.send(("eval", step, state))
        except OSError:  # a broken pipe: the process is gone
            self.process.join(timeout=1)
            raise self._died() from None
        self.pending = step
        return done

    def poll(self) -> list[Result]:
        return self._receive() if self.pending is not None and self.conn.poll() else []

    def wait(self) -> list[Result]:
        if self.pending is None:
            return []
        while not self.conn.poll(1.0):
            if not self.process.is_alive():
                self.pending = None
                raise self._died()
        return self._receive()

    def _died(self) -> RuntimeError:
        return RuntimeError(f"the background evaluator died (exit code {self.process.exitcode}); "
                            "trainer.eval_background=false evaluates in the training process")

    def _receive(self) -> list[Result]:
        try:
            kind, step, payload = self.conn.recv()
        except EOFError:
            self.pending = None
            self.process.join(timeout=1)
            raise self._died() from None
        self.pending = None
        if kind == "error":
            raise RuntimeError(f"the background evaluation of step {step} failed:\n{payload}")
        return [(step, payload)]

    def close(self) -> None:
        """End the process: at once if an evaluation is still in flight (its result is dropped: the trainer collects
        it first, unless it is closing on an error)."""
        if self.pending is not None:
            self.process.kill()  # it ignores SIGTERM (a stop sent to the whole process group is the trainer's)
        self._finalizer()

    @staticmethod
    def _end(conn: Any, process: Any) -> None:
        with contextlib.suppress(OSError, ValueError):  # the process or the pipe already gone
            conn.send(("close", 0, None))
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join(timeout=2)
        conn.close()
