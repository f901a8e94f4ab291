"""It learns on the Hugging Face path, against TRL on the same work: one command.

    python3 scripts/kimi_vs_trl.py                 # on 2 GPUs: ours on GPU 0 and TRL on GPU 1, at the same time
    python3 scripts/kimi_vs_trl.py --device cpu --minutes 0.2 --layers 1 --hidden 32 --heads 2 --sft-steps 20 \\
        --prompts 4 --k 2 --eval-problems 16 --eval-every 3     # a smoke test (tests/test_kimi.py runs this)

1. A Llama-style Hugging Face model (8 layers × 512 by default: 34M parameters) with a character tokenizer is built
   here and SFT-warm-started on arithmetic (multi-digit addition with worked steps) until its held-out greedy
   accuracy reaches ``--sft-target`` (or ``--sft-steps`` run out), then saved.
2. From that same model, RL for ``--minutes`` of training time with ours (Kimi, ``trainer.compile=true``: CUDA-graph
   decoding) and with TRL's GRPOTrainer (its default loss), the same prompts, reward (our verifier), k, prompts per
   step, maximum completion length, temperature and learning rate; float32 on both sides. With two GPUs the sides run
   at once, one per GPU; otherwise one after the other.
3. Every ``--eval-every`` seconds of training (the clock paused meanwhile), both sides are scored by the same code:
   greedy decoding of the held-out problems (``--eval-problems``, default all 400) with our verifier.

Prints both curves (training seconds → held-out accuracy) and writes them to ``<out>/kimi_vs_trl.json``, where
``<out>`` is ``--out``, else ``$OUT`` when set, else ``outputs/kimi_vs_trl``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

TASK = {"max_digits": 4, "num_train": 6000, "num_test": 400}  # as conf/env/arithmetic.yaml


@torch.no_grad()
def held_out_accuracy(model: torch.nn.Module, task, problems: int, batch_size: int = 400) -> float:
    """Greedy held-out accuracy of a Hugging Face model with the character tokenizer: the same code for both sides."""
    from rl.lm import CharTokenizer, decode
    from rl.lm.decoders import make_decoder

    tok = CharTokenizer()
    tests = task.test[:problems or None]
    was_training = model.training
    model.eval()
    decoder, device = make_decoder(model), next(model.parameters()).device
    hits = 0.0
    for i in range(0, len(tests), batch_size):
        chunk = tests[i:i + batch_size]
        out = decode(decoder, [tok.encode(p.prompt, add_bos=True) for p in chunk], 48, 0.0, None, (tok.eos_id,),
                     tok.pad_id, device)
        hits += sum(task.reward(p, tok.decode(s)) for p, s in zip(chunk, out.sequences()))
    model.train(was_training)
    return hits / len(tests)


def sft_model(args: argparse.Namespace, out: Path, device: torch.device) -> dict:
    """Build the model, SFT it until the held-out target, save it to ``out``."""
    from envs.text_tasks import make_task
    from rl.lm import CharTokenizer, sft
    from rl.lm.hf import char_tokenizer, model_config, random_model, save_model

    task = make_task("arithmetic", **TASK)
    hf_tok = char_tokenizer()
    model = random_model(model_config("llama", args.layers, args.hidden, args.heads, context=128, vocab=len(hf_tok)),
                         seed=args.seed, device=device)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: Llama-style, {args.layers} layers × {args.hidden}, {params / 1e6:.1f}M parameters", flush=True)
    t0, reached = time.perf_counter(), {}

    def until(step: int) -> bool:
        acc = held_out_accuracy(model, task, args.eval_problems)
        print(f"  SFT step {step}: held-out accuracy {acc:.1%}", flush=True)
        reached.update(step=step, accuracy=acc)
        return acc >= args.sft_target

    sft(task, model, CharTokenizer(), args.sft_steps, batch_size=64, lr=args.sft_lr, warmup=50, seed=args.seed,
        log_every=args.sft_check, log=None, until=until)
    save_model(out, model.eval(), hf_tok)
    return {"params": params, "sft_seconds": time.perf_counter() - t0, "sft_steps": reached.get("step"),
            "start_accuracy": reached.get("accuracy")}


class Clock:
    """Training time with the evaluations left out: an evaluation every ``every`` seconds of it."""

    def __init__(self, every: float, budget: float, evaluate) -> None:
        self.every, self.budget, self.evaluate = every, budget, evaluate
        self.trained, self.next, self.samples, self.curve = 0.0, every, 0, []
        self.t = time.perf_counter()

    def tick(self, samples: int) -> bool:
        """Count the time since the last tick as training; evaluate when due. False once the budget is spent."""
        self.trained += time.perf_counter() - self.t
        self.samples += samples
        done = self.trained >= self.budget
        if self.trained >= self.next or done:
            acc = self.evaluate()
            self.curve.append({"seconds": round(self.trained, 1), "samples": self.samples, "accuracy": acc})
            print(f"  [{self.trained:6.1f}s, {self.samples} samples] held-out accuracy {acc:.1%}", flush=True)
            self.next += self.every
        self.t = time.perf_counter()
        return not done


def rl_ours(args: argparse.Namespace, model_dir: Path, device: torch.device) -> dict:
    from agents.kimi import Kimi
    from envs.text_tasks import make_task

    task = make_task("arithmetic", **TASK)
    agent = Kimi.from_task("arithmetic", device=str(device), seed=args.seed, task_kwargs=TASK, policy="hf",
                           model_path=str(model_dir), k=args.k, prompts_per_iteration=args.prompts, lr=args.lr,
                           grad_steps=args.grad_steps, max_response_tokens=48, temperature=1.0)
    agent.use_cuda_graphs()
    agent.task, agent.warm, agent.start_eval = task, True, {"accuracy": 0.0}
    collector, storage = agent.make_collector(agent.run_config), agent.make_storage(agent.run_config)
    clock = Clock(args.eval_every, 60 * args.minutes, lambda: held_out_accuracy(agent.model, task, args.eval_problems))
    clock.curve.append({"seconds": 0.0, "samples": 0, "accuracy": clock.evaluate()})
    clock.t = time.perf_counter()
    while True:
        n, _ = collector.collect(agent, storage, False)
        for batch in storage.batches():
            agent.update(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if not clock.tick(n):
            break
    return {"curve": clock.curve, "samples_per_s": clock.samples / clock.trained}


def rl_trl(args: argparse.Namespace, model_dir: Path, device: torch.device) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from envs.text_tasks import make_task

    task = make_task("arithmetic", **TASK)
    by_prompt = {p.prompt: p for p in task.train}

    def arithmetic_reward(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
        return [task.reward(by_prompt[p], c) for p, c in zip(prompts, completions)]

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="kimi_vs_trl_"), per_device_train_batch_size=args.prompts * args.k,
        num_generations=args.k, max_completion_length=48, num_iterations=args.grad_steps, max_steps=10**6,
        learning_rate=args.lr, temperature=1.0, top_p=1.0, top_k=0, bf16=False, fp16=False,
        use_cpu=device.type == "cpu", seed=args.seed, report_to="none", save_strategy="no", logging_steps=10**9,
        disable_tqdm=True, dataloader_num_workers=0, log_completions=False)
    clock = Clock(args.eval_every, 60 * args.minutes, lambda: held_out_accuracy(model, task, args.eval_problems))
    per_step = args.prompts * args.k // args.grad_steps

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            clock.curve.append({"seconds": 0.0, "samples": 0, "accuracy": clock.evaluate()})
            clock.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if not clock.tick(per_step):
                control.should_training_stop = True

    trainer = GRPOTrainer(model=model, reward_funcs=arithmetic_reward, args=config,
                          train_dataset=Dataset.from_dict({"prompt": [p.prompt for p in task.train] * 50}),
                          processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[Timer()])
    trainer.train()
    return {"curve": clock.curve, "samples_per_s": clock.samples / clock.trained}


SIDES = {"ours": rl_ours, "trl": rl_trl}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="RL training time per side (evaluations excluded)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--sft-steps", type=int, default=3000, help="SFT steps at most")
    ap.add_argument("--sft-target", type=float, default=0.35, help="stop SFT at this held-out accuracy")
    ap.add_argument("--sft-check", type=int, default=25, help="SFT steps between held-out checks")
    ap.add_argument("--sft-lr", type=float, default=1e-3)
    ap.add_argument("--prompts", type=int, default=128, help="prompts per step (both sides)")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-5, help="RL learning rate (both sides)")
    ap.add_argument("--grad-steps", type=int, default=2, help="gradient steps per generation (TRL: num_iterations)")
    ap.add_argument("--eval-every", type=float, default=30.0, help="seconds of training between evaluations")
    ap.add_argument("--eval-problems", type=int, default=0, help="held-out problems per evaluation (0: all 400)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per side")
    ap.add_argument("--side", choices=("both", "ours", "trl"), default="both")
    ap.add_argument("--model-dir", type=Path, default=None, help="start RL from this SFT model (made by a parent run)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else Path("outputs/kimi_vs_trl"))
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    sides = ["ours", "trl"] if args.side == "both" else [args.side]
    torch.set_num_threads(args.threads)  # two sides on one host: torch's default (every core each) oversubscribes it
    results: dict = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                     "hardware": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    model_dir = args.model_dir
    if model_dir is None:
        model_dir = Path(tempfile.mkdtemp(prefix="kimi_vs_trl_")) / "sft"
        results["sft"] = sft_model(args, model_dir, device)
    if len(sides) > 1 and device.type == "cuda" and torch.cuda.device_count() >= 2:
        procs = []
        for gpu, name in enumerate(sides):
            cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--side", name,
                   "--model-dir", str(model_dir), "--out", str(out / name), "--device", "cuda"]
            procs.append((name, subprocess.Popen(cmd, env={**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)})))
        for name, proc in procs:
            proc.wait()
            path = out / name / "kimi_vs_trl.json"
            results[name] = json.loads(path.read_text())[name] if path.exists() else {"error": f"exit {proc.returncode}"}
    else:
        for name in sides:
            print(f"{name}:", flush=True)
            results[name] = SIDES[name](args, model_dir, device)
    for name in sides:
        r = results[name]
        if "curve" in r:
            start, end = r["curve"][0]["accuracy"], r["curve"][-1]["accuracy"]
            print(f"{name:>5}: held-out accuracy {start:.1%} → {end:.1%} ({(end - start) * 100:+.1f} points) in "
                  f"{r['curve'][-1]['seconds']:.0f}s of training, {r['samples_per_s']:.0f} samples/s", flush=True)
    (out / "kimi_vs_trl.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'kimi_vs_trl.json'}")
    return results


if __name__ == "__main__":
    main()
