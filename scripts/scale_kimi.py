"""Kimi on one GPU and on two, with torchrun: speed, memory, curves, and a SIGTERM + resume — in one command.

    python3 scripts/scale_kimi.py                    # on a host with 2 GPUs (docs/benchmarks.md, docs/distributed.md)
    python3 scripts/scale_kimi.py --shape tiny --device cpu --prompts 4 --k 2 --max-new-tokens 8 --iterations 3
                                                     # a smoke test on a CPU (gloo)

Every run is ``python -m rl.train agent=kimi env=arithmetic agent.policy=hf ...`` (``torchrun --nproc_per_node=2``
for two processes) on the same randomly initialized model (``--shape``: a Qwen2.5 shape of ``rl.lm.hf``, bfloat16,
saved once), the same global batch (``--prompts`` × ``--k`` responses per iteration) and seed, for ``--iterations``
iterations, with CUDA-graph decoding. The reward is the verifier's plus ``brevity`` (shorter responses earn more),
so that a random model gets different rewards within a group and the curves move. The runs:

    1gpu_s0, 1gpu_s1   one GPU each, seeds 0 and 1, side by side (their difference is the run-to-run noise)
    ddp                two GPUs, seed 0, DDP           fsdp   two GPUs, seed 0, FSDP2 (agent.fsdp=true)
    sigterm            two GPUs, a small model of the same family: SIGTERM to one rank after ``--kill-after``
                       iterations, then resumed under torchrun

Read from each run's TensorBoard events: samples/s (after the first iteration), the seconds per iteration and the
part of them spent decoding (``llm/tokens_per_s``: the slowest rank's), the peak GPU memory of rank 0
(``charts/gpu_memory_gib``), and the reward and loss curves. Prints a table; writes ``scale_kimi.json`` to ``--out``
(default ``$OUT``, else ``outputs/scale_kimi``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(args: argparse.Namespace, directory: Path) -> None:
    import torch

    from envs.text_tasks import make_task
    from rl.lm.hf import bpe_tokenizer, model_config, qwen25_config, random_model, save_model

    task = make_task("arithmetic", max_digits=4, num_train=2000, num_test=0)
    tokenizer = bpe_tokenizer([p.prompt + task.solution(p) for p in task.train], vocab_size=1000)
    config = (model_config("qwen2", layers=4, hidden=256, heads=4, kv_heads=2, context=1024, vocab=len(tokenizer))
              if args.shape == "tiny" else qwen25_config(args.shape))
    device = "cuda" if args.device != "cpu" else "cpu"
    save_model(directory, random_model(config, seed=0, dtype=getattr(torch, args.dtype), device=device), tokenizer)


def scalars(run: Path) -> dict[str, list[tuple[float, int, float]]]:
    """(wall time, step, value) of every scalar tag in a run directory's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run), size_guidance={"scalars": 0})
    ea.Reload()
    return {tag: [(e.wall_time, e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def summary(run: Path) -> dict:
    s = scalars(run)
    reward = s.get("llm/reward_mean", [])
    out = {"reward": [round(v, 5) for _, _, v in reward], "loss": [round(v, 6) for _, _, v in s.get("losses/policy", [])],
           "steps": [step for _, step, _ in reward]}
    if len(reward) >= 3:  # samples/s after the first iteration (graph capture, allocations)
        (t0, s0, _), (t1, s1, _) = reward[1], reward[-1]
        out["samples_per_s"] = (s1 - s0) / (t1 - t0)
    speed, length = s.get("llm/tokens_per_s", []), s.get("llm/response_length_mean", [])
    if len(reward) >= 3 and len(speed) == len(length) == len(reward):  # decoding's share of an iteration (slowest rank)
        per_iteration = reward[1][1] - reward[0][1]
        decode = [n * per_iteration / v for (_, _, n), (_, _, v) in zip(length[1:], speed[1:])]
        out["decode_s"] = sum(decode) / len(decode)
        out["iteration_s"] = per_iteration / out["samples_per_s"]
    if "charts/gpu_memory_gib" in s:
        out["peak_gib"] = max(v for _, _, v in s["charts/gpu_memory_gib"])
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="1.5b", choices=("tiny", "0.5b", "1.5b", "7b"))
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--prompts", type=int, default=64, help="prompts per iteration, over all ranks")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--kill-after", type=int, default=4, help="sigterm run: iterations before the SIGTERM")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--runs", default="1gpu,ddp,fsdp,sigterm")
    ap.add_argument("--set", nargs="*", default=[], help="more overrides for every run (e.g. agent.compile_decoder=false)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else Path("outputs/scale_kimi"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="scale_kimi_"))
    model = work / "model"
    build(args, model)
    per_iteration = args.prompts * args.k
    common = ["agent=kimi", "env=arithmetic", "agent.policy=hf", f"agent.model_path={model}", f"agent.dtype={args.dtype}",
              f"agent.prompts_per_iteration={args.prompts}", f"agent.k={args.k}", "agent.grad_steps=1",
              f"agent.max_response_tokens={args.max_new_tokens}", f"agent.lr={args.lr}", "agent.repetition_repeats=0",
              "env.kwargs.num_test=0", "+env.kwargs.rewards={correct:1.0,brevity:1.0}", "trainer.eval_every=0",
              f"trainer.log_every={per_iteration}", "trainer.checkpoint_every=0", "trainer.progress=false",
              "trainer.compile=true", f"device={args.device}", f"trainer.total_steps={args.iterations * per_iteration}",
              *args.set]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "4"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "rl.train"]
    single = [sys.executable, "-m", "rl.train"]
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()},
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    runs = args.runs.split(",")

    def start(name: str, cmd: list[str], gpu: str | None = None, extra: tuple = ()) -> subprocess.Popen:
        e = {**env, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {})}
        log = open(out / f"{name}.log", "w")
        return subprocess.Popen([*cmd, *common, *extra, f"hydra.run.dir={work / name}"], cwd=ROOT, env=e,
                                stdout=log, stderr=subprocess.STDOUT)

    def finish(name: str, proc: subprocess.Popen) -> None:
        code = proc.wait()
        results[name] = {"exit": code, **(summary(work / name) if (work / name).is_dir() else {})}
        print(f"{name}: exit {code} {json.dumps({k: v for k, v in results[name].items() if k != 'steps'})}", flush=True)

    if "1gpu" in runs:  # two seeds at once, one GPU each
        procs = [(f"1gpu_s{s}", start(f"1gpu_s{s}", single, gpu=str(s) if args.device != "cpu" else None,
                                      extra=(f"seed={s}",))) for s in (0, 1)]
        for name, proc in procs:
            finish(name, proc)
    for name, extra in (("ddp", ()), ("fsdp", ("agent.fsdp=true",))):
        if name in runs:
            finish(name, start(name, torchrun, extra=extra))
    if "sigterm" in runs:  # a small model of the same family: the checkpoint of a 1.5B run with its optimizer is 22 GB
        name = "sigterm"
        small = work / "small"
        build(argparse.Namespace(**{**vars(args), "shape": "tiny"}), small)
        proc = start(name, torchrun, extra=(f"agent.model_path={small}",))
        deadline = time.time() + 900
        while time.time() < deadline and proc.poll() is None:
            steps = summary(work / name).get("steps", []) if (work / name).is_dir() else []
            if steps and steps[-1] >= args.kill_after * per_iteration:
                break
            time.sleep(1.0)
        if proc.poll() is None:  # one rank only: the others learn of it through the shared stop flag
            workers = [int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
            os.kill(workers[-1], signal.SIGTERM)
        code = proc.wait()
        import torch

        step = torch.load(work / name / "checkpoint.pt", weights_only=True, map_location="cpu")["trainer"]["step"]
        resumed = subprocess.run([*torchrun, f"trainer.resume={work / name}", f"device={args.device}"],
                                 cwd=ROOT, env=env, capture_output=True, text=True)
        (out / "sigterm_resume.log").write_text(resumed.stdout + resumed.stderr)
        final = torch.load(work / name / "checkpoint.pt", weights_only=True, map_location="cpu")["trainer"]["step"]
        results[name] = {"exit": code, "checkpoint_step": step, "resume_exit": resumed.returncode, "final_step": final,
                         "total_steps": args.iterations * per_iteration}
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    one = [results[n]["samples_per_s"] for n in ("1gpu_s0", "1gpu_s1") if "samples_per_s" in results.get(n, {})]
    if one and "samples_per_s" in results.get("ddp", {}):
        results["speedup_ddp"] = results["ddp"]["samples_per_s"] / (sum(one) / len(one))
    if "fsdp" in results and "peak_gib" in results["fsdp"] and "peak_gib" in results.get("1gpu_s0", {}):
        results["fsdp_memory_ratio"] = results["fsdp"]["peak_gib"] / results["1gpu_s0"]["peak_gib"]
    print(json.dumps({k: v for k, v in results.items() if k in ("speedup_ddp", "fsdp_memory_ratio")}))
    (out / "scale_kimi.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
