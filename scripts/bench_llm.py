"""Speed and memory, side by side: our Kimi iteration vs TRL's GRPOTrainer on the same Hugging Face model.

    python3 scripts/bench_llm.py --shape 1.5b --parallel     # ours on GPU 0 and TRL on GPU 1, at the same time
    python3 scripts/bench_llm.py --shape 7b --lora 16 --parallel
    python3 scripts/bench_llm.py --shape tiny --device cpu --layers 1 --hidden 32 --heads 2 --prompts 4 --k 2 \\
        --max-new-tokens 8 --iterations 2 --warmup 1        # a smoke test (tests/test_kimi.py runs this)

The model is built here, offline, and saved once; both sides load that directory: ``--shape 0.5b|1.5b|7b`` is a
randomly initialized model of the Qwen2.5 architecture and size (``rl.lm.hf.QWEN25_SHAPES``: hidden size, layers,
heads, KV heads, MLP, vocabulary 151,936 / 152,064) with a byte-level BPE tokenizer trained here on the task's text;
``--shape tiny`` a small Llama with a character tokenizer. Both sides get the same prompts (arithmetic training
problems), reward (our verifier), k (``num_generations``), batch (prompts × k completions per iteration), maximum
completion length, sampling (temperature 1, no top-p / top-k cut), learning rate, gradient steps per generation
(TRL's ``num_iterations``), dtype, gradient checkpointing (TRL's default: on) and LoRA (``--lora R``: rank R on every
linear layer, alpha 2R). TRL runs with its defaults otherwise (beta = 0: no reference model); neither uses vLLM. A
random model rarely emits EOS, so both sides generate about ``--max-new-tokens`` per completion (repetition
detection is off on ours so that it cannot cut rollouts short).

Ours runs as ``trainer.compile=true`` runs it on a GPU: each decoding step replayed from a CUDA graph. Measured
after ``--warmup`` iterations: samples/s of whole iterations (generate + score + update), generation tokens/s
(completion tokens / time inside generation), the GPU memory peak (``torch.cuda.max_memory_allocated``), and for our
decoding the fraction of the memory-bandwidth bound: the bytes a decoding step must read (the weights once, plus
the KV cache of every position so far) over its time, against ``--bandwidth`` (4.8 TB/s, the H200's). With
``--parallel`` each side is its own process on its own GPU (the memory peaks are each process's own). Results go to
``--json`` (default ``$OUT/bench_llm_<shape>.json`` when OUT is set).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def build_model(args: argparse.Namespace, directory: Path, device: torch.device) -> dict:
    """Make the model and tokenizer of ``--shape`` on ``device`` and save them to ``directory``."""
    from envs.text_tasks import make_task
    from rl.lm.hf import bpe_tokenizer, char_tokenizer, model_config, qwen25_config, random_model, save_model

    dtype = getattr(torch, args.dtype)
    if args.shape == "tiny":
        tokenizer = char_tokenizer()
        config = model_config("llama", args.layers, args.hidden, args.heads, context=128, vocab=len(tokenizer))
    else:
        task = make_task("arithmetic", **TASK)
        tokenizer = bpe_tokenizer([p.prompt + task.solution(p) for p in task.train], vocab_size=1000)
        config = qwen25_config(args.shape)
    model = random_model(config, seed=args.seed, dtype=dtype, device=device)
    info = {"params": sum(p.numel() for p in model.parameters()), "vocab": config.vocab_size,
            "tokenizer_size": len(tokenizer)}
    save_model(directory, model, tokenizer)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return info


def decode_bytes(model: torch.nn.Module, rows: int, width: int, steps: int) -> float:
    """The bytes ``steps`` decoding steps of ``rows`` rows must read: the weights once per step, and at step t
    the KV cache of all ``width + t`` positions of every row."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    elem = next(model.parameters()).element_size()
    per_position = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * elem
    return steps * weights + rows * per_position * (steps * width + steps * (steps - 1) / 2)


def bench_ours(args: argparse.Namespace, model_dir: Path, device: torch.device) -> dict:
    """Kimi through the same collector/update calls the trainer makes, one iteration at a time."""
    from agents.kimi import Kimi

    torch.cuda.reset_peak_memory_stats(device) if device.type == "cuda" else None
    lora = {"r": args.lora, "alpha": 2.0 * args.lora} if args.lora else {}
    agent = Kimi.from_task("arithmetic", device=str(device), seed=args.seed, task_kwargs=TASK, policy="hf",
                           model_path=str(model_dir), dtype=args.dtype, k=args.k, prompts_per_iteration=args.prompts,
                           max_response_tokens=args.max_new_tokens, grad_steps=args.grad_steps, lr=args.lr,
                           temperature=1.0, repetition_repeats=0, prioritized=False, lora=lora,
                           gradient_checkpointing=not args.no_checkpointing, micro_batch_size=args.micro_batch_size)
    graphs = device.type == "cuda" and agent.use_cuda_graphs()
    collector, storage = agent.make_collector(agent.run_config), agent.make_storage(agent.run_config)
    samples, tokens, gen_seconds, moved, start = 0, 0, 0.0, 0.0, 0.0
    generate = agent.policy.generate

    def timed_generate(prompts, n, *a, **kw):  # generation time, completion tokens (EOS included), bytes to read
        nonlocal tokens, gen_seconds, moved
        sync(device)
        t = time.perf_counter()
        out = generate(prompts, n, *a, **kw)
        tokens += int(out.lengths.sum())
        gen_seconds += time.perf_counter() - t
        moved += decode_bytes(agent.model, len(prompts), max(map(len, prompts)), out.tokens.shape[1])
        return out

    agent.policy.generate = timed_generate
    for i in range(args.warmup + args.iterations):
        if i == args.warmup:
            sync(device)
            samples, tokens, gen_seconds, moved, start = 0, 0, 0.0, 0.0, time.perf_counter()
        n, _ = collector.collect(agent, storage, False)
        samples += n
        for batch in storage.batches():
            agent.update(batch)
    sync(device)
    seconds = time.perf_counter() - start
    return {"samples": samples, "seconds": seconds, "samples_per_s": samples / seconds,
            "gen_tokens_per_s": tokens / gen_seconds, "gen_fraction": gen_seconds / seconds,
            "decode_bytes_per_s": moved / gen_seconds, "bandwidth_fraction": moved / gen_seconds / args.bandwidth,
            "peak_gib": peak_gib(device), "cuda_graphs": graphs, "micro_batches": len(agent.micro_batches(batch))}


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

    torch.cuda.reset_peak_memory_stats(device) if device.type == "cuda" else None
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, args.dtype))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=args.lora, lora_alpha=2 * args.lora, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench_trl_"), per_device_train_batch_size=args.prompts * args.k,
        gradient_accumulation_steps=1, num_generations=args.k, max_completion_length=args.max_new_tokens,
        num_iterations=args.grad_steps, max_steps=(args.warmup + args.iterations) * args.grad_steps,
        learning_rate=args.lr, beta=0.0, temperature=1.0, top_p=1.0, top_k=0, max_grad_norm=1.0,
        bf16=args.dtype == "bfloat16", fp16=args.dtype == "float16", use_cpu=device.type == "cpu", seed=args.seed,
        gradient_checkpointing=not args.no_checkpointing, report_to="none", save_strategy="no", logging_steps=10**9,
        disable_tqdm=True, dataloader_num_workers=0, log_completions=False)
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *a, **kw):
            sync(device)
            stamps.append(time.perf_counter())

    trainer = GRPOTrainer(model=model, reward_funcs=arithmetic_reward, args=config, peft_config=peft_config,
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
    first = args.warmup * args.grad_steps - 1  # the stamp that ends the warm-up
    seconds = stamps[-1] - (stamps[first] if first >= 0 else stamps[0])
    timed = generated[args.warmup:]
    samples = args.iterations * args.prompts * args.k
    return {"samples": samples, "seconds": seconds, "samples_per_s": samples / seconds,
            "gen_tokens_per_s": sum(n for n, _ in timed) / sum(s for _, s in timed),
            "gen_fraction": sum(s for _, s in timed) / seconds, "peak_gib": peak_gib(device)}


SIDES = {"ours": bench_ours, "trl": bench_trl}
LABELS = {"ours": "ours (Kimi)", "trl": "TRL GRPOTrainer"}


def run_side(name: str, args: argparse.Namespace, model_dir: Path, device: torch.device) -> dict:
    try:
        return SIDES[name](args, model_dir, device)
    except Exception as e:  # one side failing must not lose the other's numbers
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {str(e)[:400]}"}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=("tiny", "0.5b", "1.5b", "7b"), default="tiny")
    ap.add_argument("--lora", type=int, default=0, help="LoRA rank on both sides (0: full fine-tuning)")
    ap.add_argument("--k", type=int, default=8, help="completions per prompt (TRL: num_generations)")
    ap.add_argument("--prompts", type=int, default=32, help="prompts per iteration (batch = prompts × k)")
    ap.add_argument("--max-new-tokens", type=int, default=48, help="maximum completion length")
    ap.add_argument("--grad-steps", type=int, default=1, help="gradient steps per generation (TRL: num_iterations)")
    ap.add_argument("--iterations", type=int, default=20, help="timed iterations (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    ap.add_argument("--layers", type=int, default=4, help="--shape tiny: layers")
    ap.add_argument("--hidden", type=int, default=256, help="--shape tiny: hidden size")
    ap.add_argument("--heads", type=int, default=4, help="--shape tiny: attention heads")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--micro-batch-size", type=int, default=0, help="ours: responses per pass (0: automatic)")
    ap.add_argument("--no-checkpointing", action="store_true", help="gradient checkpointing off on both sides")
    ap.add_argument("--bandwidth", type=float, default=4.8e12, help="bytes/s of the GPU's memory (H200: 4.8e12)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--side", choices=("both", "ours", "trl"), default="both")
    ap.add_argument("--parallel", action="store_true", help="each side in its own process on its own GPU, at once")
    ap.add_argument("--no-trl", action="store_true", help="measure ours only")
    ap.add_argument("--model-dir", type=Path, default=None, help="use this saved model (made by a parent run)")
    ap.add_argument("--json", type=Path, default=None, help="results file")
    args = ap.parse_args(argv)
    for key in ("k", "prompts", "max_new_tokens", "grad_steps", "iterations", "layers", "hidden", "heads"):
        if getattr(args, key) < 1:
            ap.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.k < 2:
        ap.error("--k must be >= 2 (a group baseline needs two completions)")
    if args.no_trl:
        args.side = "ours"
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    try:
        import transformers
    except ImportError:
        sys.exit("bench_llm.py needs `transformers` (pip install 'actorzoo[llm]')")
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    sides = ["ours", "trl"] if args.side == "both" else [args.side]
    if "trl" in sides:
        try:
            import datasets  # noqa: F401
            import trl  # noqa: F401
        except ImportError as e:
            print(f"TRL: skipped, cannot import it ({e}); pip install trl to compare")
            sides.remove("trl")
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({args.threads} thread(s))"
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    if "trl" in sides:
        versions["trl"] = __import__("trl").__version__
    model_dir = args.model_dir
    results: dict = {"hardware": hardware, "versions": versions, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    if model_dir is None:
        model_dir = Path(tempfile.mkdtemp(prefix="bench_llm_")) / "model"
        results["model"] = build_model(args, model_dir, device)
        print(f"{hardware}; " + ", ".join(f"{k} {v}" for k, v in versions.items()))
        print(f"model: {args.shape} ({results['model']['params'] / 1e6:.1f}M parameters, vocabulary "
              f"{results['model']['vocab']}), {args.dtype}{f', LoRA r {args.lora}' if args.lora else ''}; k={args.k}, "
              f"{args.prompts} prompts → {args.prompts * args.k} samples/iteration, ≤{args.max_new_tokens} new tokens, "
              f"{args.grad_steps} gradient step(s) per iteration; {args.iterations} timed iterations after {args.warmup}",
              flush=True)
    if args.parallel and len(sides) > 1:
        procs = {}
        for gpu, name in enumerate(sides):
            out = model_dir.parent / f"{name}.json"
            cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--side", name,
                   "--model-dir", str(model_dir), "--json", str(out), "--device", "cuda"]
            cmd = [c for c in cmd if c != "--parallel"]
            procs[name] = (subprocess.Popen(cmd, env={**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)}), out)
        for name, (proc, out) in procs.items():
            proc.wait()
            results[name] = json.loads(out.read_text())[name] if out.exists() else {"error": f"exit {proc.returncode}"}
    else:
        for name in sides:
            results[name] = run_side(name, args, model_dir, device)
    for name in sides:
        r = results[name]
        if "error" in r:
            print(f"{LABELS[name]:>26}: FAILED ({r['error']})")
            continue
        memory = f"   GPU memory peak {r['peak_gib']:.2f} GiB" if r.get("peak_gib") is not None else ""
        bound = f"   decoding at {r['bandwidth_fraction']:.0%} of the bandwidth bound" if "bandwidth_fraction" in r else ""
        label = LABELS[name] + (", CUDA graphs" if r.get("cuda_graphs") else "")
        print(f"{label:>26}: {r['samples_per_s']:9.1f} samples/s   {r['gen_tokens_per_s']:10.0f} generation "
              f"tokens/s   ({r['gen_fraction']:.0%} of the time generating){memory}{bound}   "
              f"[{r['samples']} samples in {r['seconds']:.2f}s]", flush=True)
    if all("samples_per_s" in results.get(n, {}) for n in ("ours", "trl")):
        ratio = results["ratio"] = {k: results["ours"][k] / results["trl"][k] for k in ("samples_per_s", "gen_tokens_per_s")}
        if results["ours"].get("peak_gib") and results["trl"].get("peak_gib"):
            ratio["peak_gib"] = results["ours"]["peak_gib"] / results["trl"]["peak_gib"]
        print(f"{'ours / TRL':>26}: {ratio['samples_per_s']:9.2f}x samples/s {ratio['gen_tokens_per_s']:9.2f}x "
              f"generation tokens/s" + (f"   {ratio['peak_gib']:.2f}x memory" if "peak_gib" in ratio else ""))
    path = args.json or (Path(os.environ["OUT"]) / f"bench_llm_{args.shape}{'_lora' if args.lora else ''}.json"
                         if os.environ.get("OUT") else None)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2))
        print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
