"""Where a Kimi iteration's GPU time goes: decoding (per step, per kernel) and the update (per phase, per op), and
how the update's time and memory move with the micro-batch, the log-prob chunk and gradient checkpointing.

    python3 scripts/profile_kimi.py --shape 1.5b                 # the bench_llm.py settings (32 prompts × k 8, 512 tokens)
    python3 scripts/profile_kimi.py --shape tiny --device cpu --prompts 2 --k 2 --max-new-tokens 8   # a smoke run

Prints tables; ``--json`` keeps the figures. The model is built as scripts/bench_llm.py builds it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

import bench_llm  # noqa: E402
from bench_llm import sync  # noqa: E402


def kernel_table(prof, rows: int = 25, per: int = 1) -> list[dict]:
    """The top GPU kernels / ops by self device time: name, calls, ms (per ``per`` repetitions)."""
    out = []
    events = [e for e in prof.key_averages() if getattr(e, "self_device_time_total", 0) > 0]
    events.sort(key=lambda e: -e.self_device_time_total)
    total = sum(e.self_device_time_total for e in events)
    for e in events[:rows]:
        out.append({"name": e.key[:90], "calls": e.count / per, "ms": e.self_device_time_total / 1e3 / per,
                    "share": e.self_device_time_total / max(total, 1)})
    return out


def print_table(title: str, table: list[dict]) -> None:
    print(f"--- {title}")
    for r in table:
        print(f"  {r['ms']:9.3f} ms  {r['share']:6.1%}  {r['calls']:8.1f}x  {r['name']}")


VARIANTS = {  # name: LlamaDecoder options (rl/lm/decoders.py)
    "bmm": {"attention": "bmm", "compile": False},  # the decoder before issue #11's kernels
    "sdpa": {"attention": "sdpa", "compile": False},
    "bmm+compile": {"attention": "bmm", "compile": True},
    "sdpa+compile": {"attention": "sdpa", "compile": True},  # the default on CUDA
}


def decode_ms(model, ids, mask, steps: int, new_tokens: int, graphs: bool, **options) -> float:
    """ms per decoding step (sampling included) over steps 8..steps, after 8 warm-up steps (graph capture)."""
    from rl.lm.decoders import LlamaDecoder
    from rl.lm.sampling import sample_next

    dec = LlamaDecoder(model, cuda_graphs=graphs, **options)
    logits = dec.prefill(ids, mask, new_tokens)
    tok = logits.argmax(-1)
    for t in range(8):
        logits = dec.step(tok, t)
    sync(ids.device)
    start = time.perf_counter()
    for t in range(8, steps):
        logits = dec.step(tok, t)
        tok, _ = sample_next(logits, 1.0)
    sync(ids.device)
    return (time.perf_counter() - start) / (steps - 8) * 1e3


def profile_decode(agent, args, device) -> dict:
    """Graph-replayed ms/step of each decoder variant at each row count, then the kernels of one eager step."""
    from rl.lm.decoders import LlamaDecoder
    from rl.lm.sampling import pad_left, sample_next

    model = agent.model
    steps = min(args.max_new_tokens - 1, 128)
    result: dict = {"ms_per_step": {}}
    cuda = device.type == "cuda"
    for rows in args.decode_rows or [args.prompts * args.k]:
        train = agent.task.train
        prompts = [agent.policy.encode(train[i % len(train)]) for i in range(rows)]
        ids, mask = pad_left(prompts, agent.policy.pad_id, device)
        for name in (args.variants if cuda else ["bmm", "sdpa"]):
            ms = decode_ms(model, ids, mask, steps, args.max_new_tokens, cuda, **VARIANTS[name])
            result["ms_per_step"][f"{name}@{rows}"] = ms
            print(f"decode {name:13s} {'CUDA graphs' if cuda else 'eager'}: {ms:.3f} ms/step at {rows} rows "
                  f"(steps 8..{steps}, sampling included)", flush=True)
    rows = args.prompts * args.k
    prompts = [agent.policy.encode(p) for p in agent.task.train[:rows]]
    ids, mask = pad_left(prompts, agent.policy.pad_id, device)
    reps = 4
    for name in ("bmm", args.variants[-1]) if cuda else ("bmm",):
        dec = LlamaDecoder(model, cuda_graphs=False, **VARIANTS[name])
        logits = dec.prefill(ids, mask, args.max_new_tokens)
        tok = logits.argmax(-1)
        dec.step(tok, 0)  # compiles, where asked
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            for t in range(1, reps + 1):
                with record_function("step"):
                    logits = dec.step(tok, t)
                with record_function("sample"):
                    tok, _ = sample_next(logits, 1.0)
            sync(device)
        kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA
                   and getattr(e, "self_device_time_total", 0) > 0]
        launches = sum(e.count for e in kernels) / reps
        kernel_ms = sum(e.self_device_time_total for e in kernels) / 1e3 / reps
        table = kernel_table(prof, rows=30, per=reps)
        print_table(f"{name}, eager decode step + sampling at {rows} rows, per step: {launches:.0f} kernels, "
                    f"{kernel_ms:.3f} ms of kernel time", table)
        result[name] = {"kernels_per_step": launches, "kernel_ms_per_step": kernel_ms, "kernels": table}
    return result


def timed_update(agent, batch, device) -> tuple[float, float]:
    """Seconds of one update and the peak memory (GiB) during it."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t = time.perf_counter()
    agent.update(dict(batch))
    sync(device)
    return time.perf_counter() - t, (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0)


def profile_update(agent, args, device) -> dict:
    import agents.kimi.policies as policies
    from agents.kimi.policies import set_checkpointing

    collector, storage = agent.make_collector(agent.run_config), agent.make_storage(agent.run_config)
    sync(device)
    t = time.perf_counter()
    collector.collect(agent, storage, False)
    sync(device)
    collect_s = time.perf_counter() - t
    batch = next(storage.batches())
    tokens = int((batch["end"] - batch["start"]).sum())
    width = int(batch["end"].max())
    print(f"collect: {collect_s:.2f} s; batch {len(batch['end'])} rows, width {width}, {tokens} response tokens, "
          f"{int(batch['end'].sum())} tokens in all")
    result: dict = {"collect_s": collect_s, "rows": len(batch["end"]), "width": width}
    secs, peak = timed_update(agent, batch, device)  # warm-up
    base = {"micro_batch_size": agent.cfg.micro_batch_size, "chunk": agent.learner.chunk}
    print(f"update (first): {secs:.2f} s, peak {peak:.2f} GiB, {len(agent.micro_batches(batch))} micro-batches")

    variants = []
    grid = [(mb, ch, ck) for ck in ((True, False) if args.no_checkpointing_variant else (True,))
            for mb in args.micro_tokens for ch in args.chunks]
    for tokens_per_pass, chunk, checkpointing in grid:
        agent.cfg.micro_batch_size = max(1, tokens_per_pass // width)
        agent.learner.chunk = chunk
        lm = getattr(agent.policy, "lm", None)
        if lm is None:  # the TinyLM has no checkpointing to switch
            if not checkpointing:
                continue
        else:
            set_checkpointing(lm, checkpointing)
        try:
            timed_update(agent, batch, device)
            secs, peak = timed_update(agent, batch, device)
            row = {"tokens_per_pass": tokens_per_pass, "micro_batch_size": agent.cfg.micro_batch_size, "chunk": chunk,
                   "checkpointing": checkpointing, "update_s": secs, "peak_gib": peak}
        except torch.OutOfMemoryError:
            row = {"tokens_per_pass": tokens_per_pass, "chunk": chunk, "checkpointing": checkpointing, "error": "OOM"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        variants.append(row)
        print("  variant " + json.dumps(row), flush=True)
    agent.cfg.micro_batch_size, agent.learner.chunk = base["micro_batch_size"], base["chunk"]
    result["variants"] = variants
    # per-phase and per-op profile of one update
    hidden, logprobs, step = agent.policy.hidden, policies.response_logprobs, agent.opt.step

    def wrap(name, fn):
        def inner(*a, **kw):
            with record_function(name):
                return fn(*a, **kw)
        return inner

    agent.policy.hidden, policies.response_logprobs, agent.opt.step = (wrap("backbone", hidden),
                                                                       wrap("logprobs", logprobs), wrap("optimizer", step))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        agent.update(dict(batch))
        sync(device)
    agent.policy.hidden, policies.response_logprobs, agent.opt.step = hidden, logprobs, step
    phases = {e.key: e.device_time_total / 1e3 for e in prof.key_averages() if e.key in ("backbone", "logprobs", "optimizer")}
    print("update phases (device ms, forward only for backbone/logprobs): " +
          ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
    table = kernel_table(prof, rows=30)
    print_table("update, by self device time", table)
    result.update({"phases_ms": phases, "ops": table})

    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=("tiny", "0.5b", "1.5b", "7b"), default="1.5b")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--micro-tokens", type=int, nargs="+", default=[16384], help="update variants: tokens per pass")
    ap.add_argument("--chunks", type=int, nargs="+", default=[1024], help="update variants: log-prob chunks")
    ap.add_argument("--no-checkpointing-variant", action="store_true", help="also time the update without it")
    ap.add_argument("--what", nargs="+", default=["decode", "update"])
    ap.add_argument("--decode-rows", type=int, nargs="+", default=None, help="rows to time decoding at "
                    "(default: prompts × k)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="decoder variants to time (CUDA; the last one's kernels are also profiled)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (as scripts/bench_llm.py)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    bargs = bench_llm.parse(["--shape", args.shape, "--dtype", args.dtype, "--layers", "2", "--hidden", "64",
                             "--heads", "2"])
    model_dir = Path(tempfile.mkdtemp(prefix="profile_kimi_")) / "model"
    info = bench_llm.build_model(bargs, model_dir, device)
    print(f"{args.shape}: {info['params'] / 1e6:.1f}M parameters on {device}", flush=True)

    from agents.kimi import Kimi

    agent = Kimi.from_task("arithmetic", device=str(device), seed=0, task_kwargs=bench_llm.TASK, policy="hf",
                           model_path=str(model_dir), dtype=args.dtype, k=args.k, prompts_per_iteration=args.prompts,
                           max_response_tokens=args.max_new_tokens, temperature=1.0, repetition_repeats=0,
                           prioritized=False, gradient_checkpointing=True)
    if device.type == "cuda":
        agent.use_cuda_graphs()
    agent.make_collector(agent.run_config)  # sets agent.task
    out: dict = {"shape": args.shape, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "rows": args.prompts * args.k, "max_new_tokens": args.max_new_tokens}
    if "update" in args.what:  # first: a profiler session can leave launch overhead behind
        out["update"] = profile_update(agent, args, device)
    if "decode" in args.what:
        out["decode"] = profile_decode(agent, args, device)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
