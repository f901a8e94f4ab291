"""Kimi across processes with torchrun, on a CPU (gloo): data-parallel (DDP) and sharded (FSDP2) runs equal a
single-process run with the same global batch and seed; two "nodes" on one host; SIGTERM on one rank checkpoints
and stops every rank, and the run resumes under torchrun to the same step count (docs/distributed.md)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, run_cli

HELPER = str(ROOT / "tests" / "dist_kimi.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(cmd: list[str], timeout: float = 240) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("single") / "single.pt"
    launch([sys.executable, HELPER, str(out), "ddp"])
    return torch.load(out)


def assert_same_run(got: dict, want: dict) -> None:
    """The same parameters (to 1e-5) and the same logged statistics, iteration by iteration."""
    assert got["world"] == 2 and set(got["params"]) == set(want["params"])
    diff = max((got["params"][k] - want["params"][k]).abs().max().item() for k in want["params"])
    assert diff < 1e-5, diff
    moved = max(v.abs().max().item() for v in want["params"].values())
    assert moved > 0.01
    assert len(got["logs"]) == len(want["logs"]) == 2
    for a, b in zip(got["logs"], want["logs"]):
        for key in ("llm/reward_mean", "llm/response_length_mean", "llm/log_ratio_sq", "llm/accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), key
    assert want["logs"][0]["llm/log_ratio_sq"] > 0  # the policy did move within the iteration


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_equal_one(tmp_path, single, mode):
    out = tmp_path / f"{mode}.pt"
    launch([*TORCHRUN, "--nproc_per_node=2", HELPER, str(out), mode])
    assert_same_run(torch.load(out), single)


def test_two_nodes_on_one_host(tmp_path, single):
    out, port = tmp_path / "nodes.pt", free_port()
    nodes = [subprocess.Popen([*TORCHRUN, "--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=1",
                               "--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{port}", "--rdzv-id=nodes",
                               HELPER, str(out), "ddp"], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    errors = [node.communicate(timeout=240)[1] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    assert_same_run(torch.load(out), single)


CLI = ["agent=kimi", "env=arithmetic", "agent.d_model=32", "agent.n_layers=1", "agent.n_heads=2", "agent.context=32",
       "agent.sft_steps=20", "agent.sft_batch_size=16", "agent.k=2", "agent.prompts_per_iteration=4",
       "agent.max_response_tokens=12", "env.kwargs.num_train=200", "env.kwargs.num_test=8", "env.kwargs.max_digits=2",
       "trainer.eval_every=0", "trainer.log_every=8", "trainer.checkpoint_every=0", "trainer.progress=false",
       "device=cpu"]


def logged_steps(run: Path) -> int:
    """The last step rank 0 has logged llm/reward_mean at (0 before the first log)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not any(run.glob("events.out.tfevents*")):
        return 0
    ea = EventAccumulator(str(run), size_guidance={"scalars": 0})
    ea.Reload()
    return max((e.step for e in ea.Scalars("llm/reward_mean")), default=0) if "llm/reward_mean" in ea.Tags()["scalars"] else 0


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_sigterm_on_one_rank_checkpoints_every_rank_and_resumes(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([*TORCHRUN, "--nproc_per_node=2", "-m", "rl.train", *CLI, "trainer.total_steps=100000",
                             f"hydra.run.dir={run}"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while logged_steps(run) < 16 and time.time() < deadline:  # two iterations in: every rank is in the loop
        time.sleep(0.5)
    workers = children(proc.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGTERM)  # one rank only
    out, err = proc.communicate(timeout=120)
    assert "interrupted by SIGTERM" in err, err[-3000:]
    # what torchrun saw of its ranks' exits: 128 + SIGTERM, after the checkpoint's closing barrier; the rank still
    # shutting down when the first one exits is then stopped by torchrun itself (-15). None crashed (1) or hung.
    codes = re.findall(r"exitcode\s+: (-?\d+)", err)
    assert "143" in codes and set(codes) <= {"143", "-15"}, codes
    assert err.count("Traceback") == 1 and "ChildFailedError" in err  # torchrun's report of the exit codes only
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    step = state["trainer"]["step"]
    assert 0 < step < 100_000 and step % 8 == 0 and len(state["collector"]["pending"]["group"]) == 0
    total = step + 16
    resumed = subprocess.run([*TORCHRUN, "--nproc_per_node=2", "-m", "rl.train", f"trainer.resume={run}",
                              f"trainer.total_steps={total}", "device=cpu"], cwd=ROOT, env=ENV, capture_output=True,
                             text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {run} at step {step}" in resumed.stderr and f"done: step={total}" in resumed.stdout
    assert torch.load(run / "checkpoint.pt", weights_only=True)["trainer"]["step"] == total


def test_bad_input_under_torchrun(tmp_path):
    """One line and exit code 2: FSDP without torchrun; a world size that does not divide the prompts."""
    out = run_cli(*CLI, "agent.fsdp=true", "trainer.total_steps=8", f"hydra.run.dir={tmp_path / 'a'}", cwd=ROOT)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "torchrun" in out.stderr, out.stderr
    proc = subprocess.run([*TORCHRUN, "--nproc_per_node=3", "-m", "rl.train", *CLI, "trainer.total_steps=8",
                           f"hydra.run.dir={tmp_path / 'b'}"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert "error: agent.prompts_per_iteration=4 must be a multiple of the 3 processes" in proc.stderr, proc.stderr
    assert "exitcode  : 2" in proc.stderr  # a rank's bad input: code 2 (torchrun stops the others and reports it)
