"""CUDA-graph capture of the hot path: one replay per update (sample → losses → backward → optimizer → Polyak)
and one per action, instead of a hundred kernel launches from Python.

A :class:`Graphed` wraps a function of static tensors. Per ``key`` (e.g. TD3's "actor step or not") it runs
the function eagerly a few times on a side stream (so cuBLAS handles, autograd streams and optimizer state
exist), then captures it once, then replays: each call is exactly one real execution, whichever way it runs,
so a graphed run performs the same sequence of updates as an eager one. Requirements on the function: it
reads only tensors that stay at the same address (parameters, optimizer state, the replay buffer's storage,
the ``inputs`` given here), keeps no host-side state of its own, makes no host sync, and draws random
numbers from the default CUDA generator or from the ``generators`` given (graph-safe; each replay then refills
every such generator's state from the host), or takes them from :class:`rl.seeding.Bank` objects (drawn ahead:
the graph remembers which banks it takes from, and each replay accounts for one use of each). Optimizers must be
``capturable`` (see :func:`rl.networks.adam`).

If a capture fails (an op that cannot be captured), it says so once and that key runs eagerly from then on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor

from rl import seeding

Outputs = Any  # a tensor, or a (nested) tuple / dict of tensors


class Graphed:
    """``Graphed(fn, warmup=3)``; ``g(key, inputs)`` runs ``fn(key, inputs)``: eagerly for the first ``warmup``
    calls of a key, then from its graph, after copying ``inputs`` into the tensors it was captured with (an input
    that *is* that tensor, such as another graph's output, is not copied).

    ``fn`` returns its outputs as tensors (or tuples / dicts of them); a replay overwrites them in place, so
    read (or clone) them before the next call.
    """

    def __init__(self, fn: Callable[[Hashable, dict[str, Tensor]], Outputs], warmup: int = 3,
                 generators: tuple[torch.Generator, ...] = ()) -> None:
        self.fn, self.warmup, self.generators = fn, warmup, generators  # generators: non-default ones fn draws from
        self.graphs: dict[Hashable, tuple[torch.cuda.CUDAGraph, dict[str, Tensor], Outputs]] = {}
        self.eager_calls: dict[Hashable, int] = {}
        self.failed: set[Hashable] = set()
        self.pool: Any = None  # one memory pool shared by every key's graph (they never run at the same time)
        self.side = torch.cuda.Stream()

    def __call__(self, key: Hashable, inputs: dict[str, Tensor]) -> Outputs:
        if key in self.graphs:
            graph, static, out, banks = self.graphs[key]
            fresh = [k for k in static if inputs[k] is not static[k]]  # a graph's own outputs come back as they are
            if fresh:
                torch._foreach_copy_([static[k] for k in fresh], [inputs[k] for k in fresh])  # one launch
            for bank in banks:  # random numbers drawn ahead (rl.seeding.Bank): refilled here when spent
                bank.reserve()
            graph.replay()
            return out
        if key in self.failed or self.eager_calls.get(key, 0) < self.warmup:
            self.eager_calls[key] = self.eager_calls.get(key, 0) + 1
            return self._on_side_stream(key, inputs)
        return self._capture(key, inputs)

    def _on_side_stream(self, key: Hashable, inputs: dict[str, Tensor]) -> Outputs:
        main = torch.cuda.current_stream()
        self.side.wait_stream(main)
        with torch.cuda.stream(self.side):
            out = self.fn(key, inputs)
        main.wait_stream(self.side)
        return out

    def _capture(self, key: Hashable, inputs: dict[str, Tensor]) -> Outputs:
        static = dict(inputs)  # kept alive here: later calls copy their inputs into these very tensors
        graph = torch.cuda.CUDAGraph()
        try:
            for generator in self.generators:  # so that each replay advances them, as an eager call would
                graph.register_generator_state(generator)
            seeding._capture_log = banks = []  # the rl.seeding.Bank objects the function takes from
            with torch.cuda.graph(graph, pool=self.pool):
                out = self.fn(key, static)
        except Exception as e:  # noqa: BLE001 — any capture failure: fall back to eager for this key
            seeding._capture_log = None
            torch.cuda.synchronize()
            self.failed.add(key)
            name = getattr(self.fn, "__qualname__", repr(self.fn))
            print(f"CUDA-graph capture of {name} (key {key!r}) failed ({type(e).__name__}: {e}); it runs eagerly",
                  file=sys.stderr)
            return self._on_side_stream(key, inputs)
        seeding._capture_log = None
        self.pool = graph.pool()
        self.graphs[key] = (graph, static, out, banks)
        for bank in banks:
            bank.reserve()
        graph.replay()  # the capture recorded the work without doing it: this is the real execution
        return out
