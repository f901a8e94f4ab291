"""Soak test: a long training run whose memory must stay flat.

    nice -n 10 python scripts/soak.py --minutes 10 device=cpu                 # CPU: DDPG on Pendulum-v1
    python scripts/soak.py --minutes 5 +experiment=ddpg_pendulum_gpu          # GPU: 4096 batched Pendulums, graphs

Positional arguments are Hydra overrides (as for ``python -m rl.train``). The run goes through the real trainer,
with its evaluations and checkpoints as configured, into ``--run-dir``; after ``--minutes`` the script sends its own
process SIGINT, so the trainer stops as on Ctrl-C (a checkpoint, then it returns). Meanwhile a thread samples, every
``--every`` seconds, the process's resident memory (VmRSS from /proc/self/status) and, on CUDA,
``torch.cuda.memory_allocated`` and ``memory_reserved``. It prints start / middle / end memory, duration and
steps, writes every sample to ``--json``, and exits 1 when a series moves by more than ``--tolerance`` (5 %) of its
mean over the second half of the run (the first half is warm-up: the replay buffer fills, graphs are captured).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

import agents  # noqa: E402,F401
from agents.base import build_agent  # noqa: E402
from rl.trainer import Trainer  # noqa: E402
from scripts.bench import compose  # noqa: E402

MIB = 2**20


def rss_mib() -> float:
    """Resident memory of this process now (Linux); elsewhere the peak, which can only grow."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sample(trainer: Trainer, t0: float, cuda: bool) -> dict:
    row = {"t": round(time.perf_counter() - t0, 2), "step": trainer.step, "rss_mib": round(rss_mib(), 1)}
    if cuda:
        row["cuda_allocated_mib"] = round(torch.cuda.memory_allocated() / MIB, 1)
        row["cuda_reserved_mib"] = round(torch.cuda.memory_reserved() / MIB, 1)
    return row


def drift(rows: list[dict], key: str) -> float:
    """(max − min) / mean of ``key`` over the second half of the run."""
    half = [r[key] for r in rows if r["t"] >= rows[-1]["t"] / 2]
    return (max(half) - min(half)) / max(sum(half) / len(half), 1e-9)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*")
    p.add_argument("--minutes", type=float, default=10.0, help="how long to train")
    p.add_argument("--every", type=float, default=10.0, help="seconds between memory samples")
    p.add_argument("--tolerance", type=float, default=0.05, help="allowed drift over the second half")
    p.add_argument("--run-dir", default=f"outputs/soak/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    p.add_argument("--json", default=None, help="where to write the samples (default: <run-dir>/soak.json)")
    args = p.parse_args()
    cfg = compose(["trainer.total_steps=1000000000000", "trainer.progress=false", *args.overrides])
    agent = build_agent(cfg)
    trainer = Trainer(cfg, agent, args.run_dir)
    cuda = agent.device.type == "cuda"
    rows: list[dict] = []
    done = threading.Event()
    t0 = time.perf_counter()

    def sampler() -> None:
        while not done.wait(args.every):
            rows.append(sample(trainer, t0, cuda))
            if len(rows) % max(int(60 / args.every), 1) == 0:
                print("soak:", rows[-1], flush=True)

    rows.append(sample(trainer, t0, cuda))
    threading.Thread(target=sampler, daemon=True).start()
    stop = threading.Timer(args.minutes * 60, lambda: os.kill(os.getpid(), signal.SIGINT))
    stop.start()
    try:
        result = trainer.run()
    finally:
        stop.cancel()  # a run that ended by itself gets no late SIGINT
        done.set()
        trainer.close()
    rows.append(sample(trainer, t0, cuda))
    keys = [k for k in rows[0] if k.endswith("_mib")]
    middle = min(rows, key=lambda r: abs(r["t"] - rows[-1]["t"] / 2))
    drifts = {k: drift(rows, k) for k in keys}
    summary = {"overrides": args.overrides, "device": str(agent.device), "duration_s": rows[-1]["t"],
               "steps": trainer.step, "sps": result["sps"], "start": rows[0], "middle": middle, "end": rows[-1],
               "second_half_drift": drifts, "tolerance": args.tolerance,
               "flat": all(d <= args.tolerance for d in drifts.values())}
    out = Path(args.json or Path(args.run_dir) / "soak.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**summary, "samples": rows}, indent=1))
    print(f"soak: {rows[-1]['t'] / 60:.1f} min, {trainer.step:,} steps ({result['sps']:,.0f} SPS) on {agent.device}")
    for k in keys:
        print(f"  {k}: start {rows[0][k]:,.1f}, middle {middle[k]:,.1f}, end {rows[-1][k]:,.1f}; "
              f"second-half drift {100 * drifts[k]:.2f} % (tolerance {100 * args.tolerance:.0f} %)")
    print(f"soak: {'flat' if summary['flat'] else 'NOT flat'}; samples in {out}")
    sys.exit(0 if summary["flat"] else 1)


if __name__ == "__main__":
    main()
