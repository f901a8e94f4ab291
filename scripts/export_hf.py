"""Write a Kimi run's policy as a plain Hugging Face model directory (LoRA adapters merged into the base model).

    python scripts/export_hf.py outputs/<date>/<run> /models/merged          # a run directory or a checkpoint file
    python scripts/export_hf.py outputs/<date>/<run> /models/adapter --adapter-only   # the peft adapter alone
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a run directory or checkpoint file of agent=kimi agent.policy=hf")
    ap.add_argument("out", type=Path, help="the directory to write")
    ap.add_argument("--adapter-only", action="store_true", help="LoRA runs: write the adapter, do not merge")
    args = ap.parse_args(argv)
    from agents.kimi import Kimi
    from rl.config import ConfigError

    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"error: {args.out} exists and is not empty: pick a new directory")
    try:
        path = Kimi.load(args.run, device="cpu").export(args.out, merge=not args.adapter_only)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
