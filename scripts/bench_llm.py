"""Speed, side by side: our Kimi iteration vs TRL's GRPOTrainer on the same tiny HF model, in one command.

    python3 scripts/bench_llm.py                     # on the GPU if there is one (else the CPU)
    python3 scripts/bench_llm.py --device cpu --layers 1 --hidden 32 --prompts 4 --k 2 --max-new-tokens 8 \\
        --iterations 2 --warmup 1                    # a smoke test (tests/test_scripts.py runs this)

Both sides get the same randomly initialized Llama-style model (made here, offline, and saved to a temp dir with a
character-level tokenizer: ``rl.lm.hf``), the same prompts (arithmetic training problems) and reward (our verifier,
``ArithmeticTask.reward``), the same k (``num_generations``), batch (prompts × k completions per iteration), maximum
completion length, sampling (temperature 1, no top-p / top-k cut), learning rate, gradient steps per generation
(TRL's ``num_iterations``), dtype and optimizer family (Adam). TRL runs with its defaults otherwise (beta = 0: no
reference model). The random model rarely emits EOS, so both sides generate about ``max_new_tokens`` per completion
(and repetition detection is off on ours so that it cannot cut rollouts short).

Ours runs twice on a GPU: eager, and with each decoding step replayed from a CUDA graph (``trainer.compile=true``;
``rl.lm.hf.StaticDecoder``). Measured after ``--warmup`` iterations: samples/s of whole iterations (generate + score + update), generation
tokens/s (completion tokens / time inside generation), GPU memory peak. Prints both, the ratio, and writes JSON to
``--json`` (default: ``$OUT/bench_llm.json`` when ``OUT`` is set). TRL is optional: without it (or ``datasets``)
its half is skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

TASK = {"max_digits": 4, "num_train": 2000, "num_test": 0, "seed": 0}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def bench_ours(args: argparse.Namespace, model_dir: Path, device: torch.device, cuda_graphs: bool = False) -> dict:
    """Kimi through the same collector/update calls the trainer makes, one iteration at a time (``cuda_graphs``: as
    with ``trainer.compile=true``, each decoding step replayed from a CUDA graph)."""
    from agents.kimi import Kimi

    reset_memory(device)
    agent = Kimi.from_task("arithmetic", device=str(device), seed=args.seed, task_kwargs=TASK, policy="hf",
                           model_path=str(model_dir), dtype=args.dtype, k=args.k, prompts_per_iteration=args.prompts,
                           max_response_tokens=args.max_new_tokens, grad_steps=args.grad_steps, lr=args.lr,
                           temperature=1.0, top_p=1.0, repetition_repeats=0, prioritized=False)
    if cuda_graphs and not agent.use_cuda_graphs():
        raise RuntimeError("CUDA graphs are not available for this policy on this device")
    collector, storage = agent.make_collector(agent.run_config), agent.make_storage(agent.run_config)
    samples, tokens, gen_seconds, start = 0, 0, 0.0, 0.0
    generate = agent.policy.generate

    def timed_generate(*a, **kw):  # generation time and completion tokens (EOS included), as measured for TRL
        nonlocal tokens, gen_seconds
        sync(device)
        t = time.perf_counter()
        out = generate(*a, **kw)
        tokens += int(out.lengths.sum())
        gen_seconds += time.perf_counter() - t
        return out

    agent.policy.generate = timed_generate
    for i in range(args.warmup + args.iterations):
        if i == args.warmup:
            sync(device)
            samples, tokens, gen_seconds, start = 0, 0, 0.0, time.perf_counter()
        n, _ = collector.collect(agent, storage, False)
        samples += n
        for batch in storage.batches():
            agent.update(batch)
    sync(device)
    seconds = time.perf_counter() - start
    return {"samples": samples, "seconds": seconds, "samples_per_s": samples / seconds,
            "gen_tokens_per_s": tokens / gen_seconds, "gen_fraction": gen_seconds / seconds,
            "peak_gib": peak_gib(device)}


def bench_trl(args: argparse.Namespace, model_dir: Path, device: torch.device) -> dict:
    """TRL's GRPOTrainer: one optimizer step per generation of prompts × k completions (× grad_steps steps)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from envs.text_tasks import make_task

    task = make_task("arithmetic", **TASK)
    by_prompt = {p.prompt: p for p in task.train}

    def arithmetic_reward(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
        return [task.reward(by_prompt[p], c) for p, c in zip(prompts, completions)]

    reset_memory(device)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, args.dtype))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    steps_per_iteration = args.grad_steps
    out_dir = tempfile.mkdtemp(prefix="bench_trl_")
    config = GRPOConfig(
        output_dir=out_dir, per_device_train_batch_size=args.prompts * args.k, gradient_accumulation_steps=1,
        num_generations=args.k, max_completion_length=args.max_new_tokens, num_iterations=args.grad_steps,
        max_steps=(args.warmup + args.iterations) * steps_per_iteration, learning_rate=args.lr, beta=0.0,
        temperature=1.0, top_p=1.0, top_k=0, max_grad_norm=1.0, bf16=args.dtype == "bfloat16",
        fp16=args.dtype == "float16", use_cpu=device.type == "cpu", seed=args.seed, report_to="none",
        save_strategy="no", logging_steps=10**9, disable_tqdm=True, dataloader_num_workers=0, log_completions=False)
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *a, **kw):
            sync(device)
            stamps.append(time.perf_counter())

    trainer = GRPOTrainer(model=model, reward_funcs=arithmetic_reward, args=config,
                          train_dataset=Dataset.from_dict({"prompt": [p.prompt for p in task.train]}),
                          processing_class=tokenizer, callbacks=[Stamp()])
    generated: list[tuple[int, float]] = []  # (completion tokens, seconds) per generate call
    generate = trainer.model.generate
    eos = tokenizer.eos_token_id

    def timed_generate(*a, **kw):
        sync(device)
        t = time.perf_counter()
        out = generate(*a, **kw)
        sync(device)
        completion = out[:, kw["input_ids"].shape[1]:]
        is_eos = completion == eos
        lengths = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, completion.shape[1])
        generated.append((int(lengths.sum()), time.perf_counter() - t))
        return out

    trainer.model.generate = timed_generate
    trainer.train()
    first = args.warmup * steps_per_iteration - 1  # the stamp that ends the warm-up
    seconds = stamps[-1] - (stamps[first] if first >= 0 else stamps[0])
    timed = generated[args.warmup:]
    samples = args.iterations * args.prompts * args.k
    return {"samples": samples, "seconds": seconds, "samples_per_s": samples / seconds,
            "gen_tokens_per_s": sum(n for n, _ in timed) / sum(s for _, s in timed),
            "gen_fraction": sum(s for _, s in timed) / seconds, "peak_gib": peak_gib(device)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k", type=int, default=8, help="completions per prompt (TRL: num_generations)")
    ap.add_argument("--prompts", type=int, default=32, help="prompts per iteration (batch = prompts × k)")
    ap.add_argument("--max-new-tokens", type=int, default=48, help="maximum completion length")
    ap.add_argument("--grad-steps", type=int, default=1, help="gradient steps per generation (TRL: num_iterations)")
    ap.add_argument("--iterations", type=int, default=20, help="timed iterations (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-trl", action="store_true", help="measure ours only")
    ap.add_argument("--json", type=Path, default=None, help="results file (default: $OUT/bench_llm.json if OUT is set)")
    args = ap.parse_args(argv)
    for key in ("k", "prompts", "max_new_tokens", "grad_steps", "iterations", "layers", "hidden", "heads"):
        if getattr(args, key) < 1:
            ap.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.k < 2:
        ap.error("--k must be >= 2 (a group baseline needs two completions)")
    try:
        import transformers
    except ImportError:
        ap.error("needs `transformers` (pip install 'actorzoo[llm]')")
    from rl.lm.hf import save_tiny_model

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    model_dir = save_tiny_model(Path(tempfile.mkdtemp(prefix="bench_llm_")) / "model", arch="llama",
                                layers=args.layers, hidden=args.hidden, heads=args.heads, context=128, seed=args.seed)
    params = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_pretrained(model_dir).parameters())
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({args.threads} thread(s))"
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    print(f"{hardware}; " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"model: Llama-style, {args.layers} layers × {args.hidden}, {params / 1e6:.2f}M parameters, {args.dtype}; "
          f"k={args.k}, {args.prompts} prompts → {args.prompts * args.k} samples/iteration, "
          f"≤{args.max_new_tokens} new tokens, {args.grad_steps} gradient step(s) per iteration; "
          f"{args.iterations} timed iterations after {args.warmup}")
    results: dict = {"hardware": hardware, "versions": versions, "args": {k: str(v) if isinstance(v, Path) else v
                                                                           for k, v in vars(args).items()},
                     "params": params}
    runs = {"ours": bench_ours}
    if device.type == "cuda":
        runs["ours_graphs"] = lambda *a: bench_ours(*a, cuda_graphs=True)
    if args.no_trl:
        print("TRL: skipped (--no-trl)")
    else:
        try:
            import datasets  # noqa: F401
            import trl

            versions["trl"] = trl.__version__
            runs["trl"] = bench_trl
        except ImportError as e:
            print(f"TRL: skipped, cannot import it ({e}); pip install trl to compare")
    for name, fn in runs.items():
        label = {"ours": "ours (Kimi)", "ours_graphs": "ours, CUDA graphs"}.get(name, f"TRL {versions.get('trl')} GRPOTrainer")
        try:
            r = results[name] = fn(args, model_dir, device)
        except Exception as e:  # one side failing must not lose the other's numbers
            traceback.print_exc()
            results[name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"{label}: FAILED ({type(e).__name__}: {e})")
            continue
        memory = f"   GPU memory peak {r['peak_gib']:.2f} GiB" if r["peak_gib"] is not None else ""
        print(f"{label:>24}: {r['samples_per_s']:9.1f} samples/s   {r['gen_tokens_per_s']:10.0f} generation tokens/s"
              f"   ({r['gen_fraction']:.0%} of the time generating){memory}   "
              f"[{r['samples']} samples in {r['seconds']:.2f}s]")
    for name in ("ours", "ours_graphs"):
        if "samples_per_s" in results.get(name, {}) and "samples_per_s" in results.get("trl", {}):
            ratio = results[f"ratio_{name}"] = {k: results[name][k] / results["trl"][k]
                                                for k in ("samples_per_s", "gen_tokens_per_s")}
            print(f"{name.replace('_', ' + ') + ' / TRL':>24}: {ratio['samples_per_s']:9.2f}x samples/s "
                  f"{ratio['gen_tokens_per_s']:9.2f}x generation tokens/s")
    path = args.json or (Path(os.environ["OUT"]) / "bench_llm.json" if os.environ.get("OUT") else None)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2))
        print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
