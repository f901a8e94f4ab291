"""The benchmark and profiling scripts run end to end (tiny settings, CPU): what the GPU runs rely on."""

import json
import subprocess
import sys

from tests.conftest import ROOT

TINY = ["agent=ddpg", "env=pendulum", "trainer.total_steps=400", "trainer.learning_starts=200",
        "trainer.eval_episodes=1", "agent.hidden_sizes=[16,16]", "buffer.capacity=1000", "device=cpu"]


def script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_bench_prints_every_variant_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = script("scripts/bench.py", *TINY, "--variant", "a", "--variant", "b", "trainer.utd_ratio=0.5",
                  "--no-sb3", "--seeds", "0", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("seed 0  a ") == 1 and proc.stdout.count("seed 1  b ") == 1
    rows = json.loads(out.read_text())["rows"]
    assert [(r["seed"], r["variant"]) for r in rows] == [(0, "a"), (0, "b"), (1, "a"), (1, "b")]
    assert all(r["timed_steps"] == 200 and r["sps"] > 0 for r in rows)


def test_profile_reports_the_parts_of_the_loop():
    proc = script("scripts/profile_run.py", *TINY, "--steps", "100")
    assert proc.returncode == 0, proc.stderr
    assert "total" in proc.stdout
    for part in ("explore", "env.step", "storage.add", "agent.update"):
        assert f"{part}" in proc.stdout


def test_soak_samples_memory_and_stops_the_run_itself(tmp_path, monkeypatch, capsys):
    """In this process (the script's SIGINT reaches the trainer's handler, as in a process of its own)."""
    import pytest

    from scripts import soak

    out = tmp_path / "soak.json"
    overrides = [a for a in TINY if not a.startswith("trainer.total_steps")]
    monkeypatch.setattr(sys, "argv", ["soak.py", *overrides, "--minutes", "0.04", "--every", "0.4", "--run-dir",
                                      str(tmp_path / "run"), "--json", str(out)])
    with pytest.raises(SystemExit) as exit_:
        soak.main()
    assert exit_.value.code in (0, 1)  # 1: not flat, which two seconds need not be
    record = json.loads(out.read_text())
    assert record["steps"] > 400 and record["end"]["t"] >= 2.4 and len(record["samples"]) >= 5
    assert record["start"]["rss_mib"] > 0 and set(record["second_half_drift"]) == {"rss_mib"}
    captured = capsys.readouterr()
    assert "interrupted by SIGINT" in captured.err and "rss_mib: start" in captured.out
    assert (tmp_path / "run" / "checkpoint.pt").exists()
