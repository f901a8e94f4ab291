import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m rl.train args...`` in ``cwd``; returns the finished process (text output)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "rl.train", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


# Small, fast settings for integration tests (seconds on a CPU).
TINY = ["trainer.total_steps=600", "trainer.learning_starts=200", "trainer.eval_every=0",
        "trainer.eval_episodes=2", "trainer.log_every=200", "trainer.progress=false", "device=cpu",
        "agent.hidden_sizes=[32,32]", "buffer.capacity=5000"]


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)


def run_main(*args: str, cwd: Path) -> tuple[int, str, str]:
    """``python -m rl.train args...`` inside this process (no interpreter start-up): (exit code, stdout, stderr)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from rl import train

    out, err = io.StringIO(), io.StringIO()
    argv, here = sys.argv, os.getcwd()
    sys.argv = ["rl.train", *args]
    os.chdir(cwd)
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            train.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        sys.argv = argv
        os.chdir(here)
    return code, out.getvalue(), err.getvalue()
