"""SFT warm start of TinyLM on a task's worked solutions, to partial competence (a starting policy for RL).

    python scripts/sft_warmstart.py                       # arithmetic, a few minutes on CPU
    python scripts/sft_warmstart.py --task countdown --out outputs/sft/countdown

Prints the loss while training, then held-out accuracy (greedy and sampled at temperature 1, overall and per
difficulty level), and saves the model (``config.json``, ``model.pt``), ``tokenizer.json`` and ``sft.json``
(the task's arguments and the accuracies) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from envs.text_tasks import make_task  # noqa: E402
from rl.lm import CharTokenizer, TinyLM, TinyLMConfig, evaluate, sft  # noqa: E402
from rl.lm.sft import WARM_START_STEPS  # noqa: E402

# The task arguments of conf/env/<task>.yaml; step counts (rl.lm.sft.WARM_START_STEPS) tuned for partial competence.
TASK_ARGS = {"arithmetic": {"max_digits": 4, "num_train": 6000, "num_test": 400},
             "countdown": {"num_train": 6000, "num_test": 400}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=sorted(TASK_ARGS), default="arithmetic")
    ap.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default: {WARM_START_STEPS})")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-layers", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="output directory (default: outputs/sft/<task>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads for torch (the matrices are tiny; extra threads mostly spin on a shared machine)")
    args = ap.parse_args(argv)
    out = args.out or Path("outputs/sft") / args.task
    steps = WARM_START_STEPS[args.task] if args.steps is None else args.steps
    if steps < 1:
        ap.error(f"--steps must be >= 1, got {args.steps}")

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    task = make_task(args.task, seed=args.seed, **TASK_ARGS[args.task])
    tokenizer = CharTokenizer()
    model = TinyLM(TinyLMConfig(tokenizer.vocab_size, d_model=args.d_model, n_layers=args.n_layers, max_len=64))
    model.to(args.device)
    print(f"{task}\nTinyLM: {sum(p.numel() for p in model.parameters()):,} parameters on {args.device}")

    sft(task, model, tokenizer, steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    results = {}
    for name, temperature in (("greedy", 0.0), ("sampled_t1", 1.0)):
        results[name] = evaluate(model, tokenizer, task, temperature=temperature, seed=args.seed)
        levels = "  ".join(f"L{k}: {v:.0%}" for k, v in results[name]["by_level"].items())
        print(f"held-out accuracy ({name}): {results[name]['accuracy']:.1%}   [{levels}]  "
              f"finished {results[name]['finished']:.0%}")

    model.save_pretrained(out)
    tokenizer.save(out)
    meta = {"task": args.task, "task_args": {**TASK_ARGS[args.task], "seed": args.seed}, "steps": steps,
            "results": results, "seconds": time.perf_counter() - start}
    (out / "sft.json").write_text(json.dumps(meta, indent=2))
    print(f"saved to {out}  ({meta['seconds']:.0f}s)")
    return meta


if __name__ == "__main__":
    main()
