"""It learns, on a GPU: SFT warm start of the TinyLM, then Kimi RL on arithmetic, all inside a wall-clock budget.

    python3 scripts/kimi_gpu_run.py                  # on a CUDA machine: ≤ 8.5 minutes in all (target: ≥ +30 points)
    python3 scripts/kimi_gpu_run.py --device cpu --minutes 1 --sft-steps 30 --prompts 4 --k 2 --eval-problems 16
                                                     # a smoke test (tests/test_kimi.py runs one like it)

Runs through the notebook API (``Kimi.from_task`` + ``learn``: the same trainer, collector, logger as
``python -m rl.train agent=kimi env=arithmetic``), in chunks of RL sized from the measured speed so that the whole
run — start-up, SFT, RL and the last evaluation — ends within ``--minutes``. Prints the held-out greedy accuracy
(the whole test split, 400 problems) after the SFT warm start and after every chunk, the RL samples/s and
generation tokens/s, and the GPU memory peak; writes TensorBoard events to ``<out>/tb`` and the results to
``<out>/kimi_gpu_run.json``, where ``<out>`` is ``--out``, else ``$OUT`` when set, else ``outputs/kimi_gpu_run``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

T0 = time.perf_counter()  # the budget counts from here (imports included)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from agents.kimi import Kimi  # noqa: E402
from rl.lm.sft import WARM_START_STEPS  # noqa: E402

TASK = {"max_digits": 4, "num_train": 6000, "num_test": 400}  # as conf/env/arithmetic.yaml


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=8.5, help="wall-clock budget for everything")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sft-steps", type=int, default=WARM_START_STEPS["arithmetic"],
                    help="SFT warm start steps (the default gives about 40%% held-out accuracy)")
    ap.add_argument("--prompts", type=int, default=128, help="prompts per iteration")
    ap.add_argument("--k", type=int, default=8, help="responses per prompt")
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--grad-steps", type=int, default=2)
    ap.add_argument("--tau", type=float, default=0.1)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--length-penalty", type=float, default=0.0)
    ap.add_argument("--chunk-seconds", type=float, default=60.0, help="RL between evaluations")
    ap.add_argument("--eval-problems", type=int, default=0, help="held-out problems per evaluation (0: all 400)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else Path("outputs/kimi_gpu_run"))
    out.mkdir(parents=True, exist_ok=True)
    budget = 60 * args.minutes
    torch.set_num_threads(args.threads)

    agent = Kimi.from_task("arithmetic", device=args.device, seed=args.seed, task_kwargs=TASK,
                           sft_steps=args.sft_steps, prompts_per_iteration=args.prompts, k=args.k, lr=args.lr,
                           grad_steps=args.grad_steps, tau=args.tau, temperature=args.temperature,
                           length_penalty=args.length_penalty, eval_problems=args.eval_problems)
    device = agent.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}; torch {torch.__version__}; {sum(p.numel() for p in agent.model.parameters()):,} parameters; "
          f"{args.prompts} prompts × k={args.k} per iteration; budget {args.minutes:g} min", flush=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    t = time.perf_counter()
    start = agent.evaluate()  # the SFT warm start happens here, then the held-out accuracy
    sft_seconds = time.perf_counter() - t
    print(f"[{time.perf_counter() - T0:5.0f}s] after SFT ({args.sft_steps} steps, {sft_seconds:.0f}s): held-out "
          f"accuracy {start['accuracy']:.1%}, correct response length {start['correct_length_mean']:.1f}", flush=True)

    per_iteration = args.prompts * args.k
    curve = [{"seconds": time.perf_counter() - T0, "rl_samples": 0, **start}]
    rl_seconds, samples, rate, first = 0.0, 0, None, True
    t_eval = time.perf_counter()
    agent.held_out(agent.task)
    eval_seconds = time.perf_counter() - t_eval  # what one evaluation costs (each chunk ends with one)
    while True:
        left = budget - (time.perf_counter() - T0) - 2 * eval_seconds - 5  # keep room for the last evaluation
        if rate is None:  # a first short chunk measures the speed
            iterations = 3
        else:
            iterations = int(min(args.chunk_seconds, left) * rate / per_iteration)
        if iterations < 1 or left <= 0:
            break
        t = time.perf_counter()
        kwargs = {"log_dir": out / "tb", "progress": False, "eval_every": 0, "log_every": per_iteration,
                  "checkpoint_every": 0} if first else {}
        result = agent.learn(iterations * per_iteration, **kwargs)
        first = False
        seconds = time.perf_counter() - t
        rl_seconds += seconds
        samples += iterations * per_iteration
        rate = samples / rl_seconds  # samples/s of whole chunks (their closing evaluation included)
        curve.append({"seconds": time.perf_counter() - T0, "rl_samples": samples,
                      **{k: result[k] for k in ("accuracy", "response_length_mean", "correct_length_mean")}})
        print(f"[{time.perf_counter() - T0:5.0f}s] RL {samples:7d} samples ({agent.iteration} iterations): held-out "
              f"accuracy {result['accuracy']:.1%}, correct response length {result['correct_length_mean']:.1f}, "
              f"{rate:.0f} samples/s", flush=True)

    trainer = agent._trainer
    tokens_per_s = None
    if trainer is not None:  # the run's generation tokens/s, read back from its TensorBoard events
        trainer.logger.flush()
        tokens_per_s = read_mean(out / "tb", "llm/tokens_per_s")
    final = curve[-1]
    results = {"device": name, "torch": torch.__version__, "args": {k: str(v) for k, v in vars(args).items()},
               "start_accuracy": start["accuracy"], "end_accuracy": final["accuracy"],
               "gain_points": 100 * (final["accuracy"] - start["accuracy"]),
               "start_correct_length": start["correct_length_mean"], "end_correct_length": final["correct_length_mean"],
               "rl_samples": samples, "rl_seconds": rl_seconds, "rl_samples_per_s": samples / max(rl_seconds, 1e-9),
               "generation_tokens_per_s": tokens_per_s, "sft_seconds": sft_seconds,
               "total_seconds": time.perf_counter() - T0,
               "gpu_peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
               "curve": curve}
    (out / "kimi_gpu_run.json").write_text(json.dumps(results, indent=2))
    memory = f", GPU memory peak {results['gpu_peak_gib']:.2f} GiB" if results["gpu_peak_gib"] is not None else ""
    tps = f", generation {tokens_per_s:.0f} tokens/s" if tokens_per_s else ""
    print(f"held-out accuracy {results['start_accuracy']:.1%} → {results['end_accuracy']:.1%} "
          f"({results['gain_points']:+.1f} points) in {results['total_seconds']:.0f}s "
          f"(SFT {sft_seconds:.0f}s, RL {rl_seconds:.0f}s); RL {results['rl_samples_per_s']:.0f} samples/s{tps}{memory}"
          f"\nwrote {out / 'kimi_gpu_run.json'}", flush=True)
    return results


def read_mean(log_dir: Path, tag: str) -> float | None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    ea.Reload()
    if tag not in ea.Tags()["scalars"]:
        return None
    values = [e.value for e in ea.Scalars(tag)]
    return sum(values) / len(values)


if __name__ == "__main__":
    main()
