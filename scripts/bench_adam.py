"""Time one Adam step, replayed from a CUDA graph, on TD3's networks at K seeds: torch's fused Adam against
rl.optim.WideAdam at its default piece (0) and at fixed ones (docs/benchmarks.md, issue #12).

    python scripts/bench_adam.py [--seeds 5] [--obs 17] [--act 6] [--pieces 0 32768 16384 8192 4096]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rl.optim import WideAdam, default_piece  # noqa: E402


def mlp_shapes(members: int, sizes: list[int]) -> list[tuple[int, ...]]:
    """The EnsembleLinear weights [M, out, in] and biases [M, 1, out] of an MLP with these layer sizes."""
    return [s for i, o in zip(sizes, sizes[1:]) for s in ((members, o, i), (members, 1, o))]


def time_step(make, shapes, replays: int = 2000) -> float:
    """Microseconds per replay of a CUDA graph that holds one ``make(params).step()``."""
    ps = [torch.nn.Parameter(torch.randn(s, device="cuda") * 0.05) for s in shapes]
    for p in ps:
        p.grad = torch.randn_like(p)
    opt = make(ps)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for _ in range(50):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / replays


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--obs", type=int, default=17)
    ap.add_argument("--act", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--pieces", type=int, nargs="+", default=[0, 32768, 16384, 8192, 4096], help="0: the default")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_adam.py needs a CUDA GPU")
    h = args.hidden
    nets = {"critics": mlp_shapes(2 * args.seeds, [args.obs + args.act, h, h, 1]),
            "actor": mlp_shapes(args.seeds, [args.obs, h, h, args.act])}
    rows = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.seeds} seeds; µs per Adam step")
    for name, shapes in nets.items():
        numel = sum(torch.Size(s).numel() for s in shapes)
        row = {"net": name, "parameters": numel,
               "fused": time_step(lambda ps: torch.optim.Adam(ps, lr=3e-4, fused=True, capturable=True), shapes)}
        for piece in args.pieces:
            row[f"wide_{piece}"] = time_step(lambda ps: WideAdam(ps, lr=3e-4, piece=piece or None), shapes)
        row["default_piece"] = default_piece(numel)
        rows.append(row)
        print(f"  {name:8s} {numel:>9,} parameters: fused {row['fused']:6.1f}   "
              + "   ".join(f"{p or 'default ' + str(row['default_piece'])} {row[f'wide_{p}']:6.1f}"
                         for p in args.pieces))
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                         "seeds": args.seeds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
