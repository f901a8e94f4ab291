"""Random streams of a run, one generator per seed and role (docs/algorithms.md §5).

A run with seed ``s`` draws each kind of randomness from its own generator:

- ``init``    network initialization: seeded with ``s`` itself (the stream of ``torch.manual_seed(s)``)
- ``noise``   the agent's exploration and target-policy noise
- ``replay``  the replay buffer's minibatch indices
- ``warmup``  the collector's uniform random warm-up actions

The other streams' seeds are derived from ``(s, role)`` with numpy's SeedSequence, so that no two streams of one
run, nor of runs with different seeds, repeat each other's numbers. K seeds trained as one batch (``trainer.
num_seeds``) keep K generators per role, seed ``s + k``'s being exactly the ones a single run with seed ``s + k``
has: member k of the batch draws the same numbers, in the same order, as that run. The agent's and the replay
buffer's draws are made ahead in :class:`Bank` blocks (64 uses at a time), so that CUDA graphs read them instead of
drawing: a graph that draws from K generators pays two host launches per generator at every replay.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

STREAMS = ("init", "noise", "replay", "warmup")


def stream_seed(seed: int, stream: str) -> int:
    """The seed of one stream of the run with seed ``seed`` (32 bits: what a CPU generator keeps)."""
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; known: {', '.join(STREAMS)}")
    if stream == "init":
        return int(seed)
    return int(np.random.SeedSequence([int(seed), STREAMS.index(stream)]).generate_state(1)[0])


def generators(seeds: Sequence[int], stream: str, device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator of ``stream`` per seed, on ``device``."""
    return [torch.Generator(device=device).manual_seed(stream_seed(s, stream)) for s in seeds]


def get_states(gens: Sequence[torch.Generator]) -> Tensor:
    """The generators' states as one [K, n] byte tensor (for checkpoints)."""
    return torch.stack([g.get_state() for g in gens])


def set_states(gens: Sequence[torch.Generator], states: Tensor) -> None:
    """Restore :func:`get_states` (a single state, as older checkpoints hold, counts as K = 1)."""
    states = states.cpu().reshape(len(gens), -1)
    for g, state in zip(gens, states):
        g.set_state(state.clone())


_capture_log: list | None = None  # the banks a graph being captured takes from (rl.graphs.Graphed sets it)


def capturing(t: Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


class Bank:
    """Draws of K per-seed generators made ``size`` uses ahead, for CUDA graphs.

    A graph that draws from a generator refills that generator's seed and offset from the host at every replay
    (two launches per generator): with K seeds, the per-step graphs would spend more host time on that than on
    their own launch. A bank draws ``size`` uses per seed at once (``torch.randn`` / ``torch.rand`` of shape
    ``[size, *shape]`` from generator k), outside any graph; :meth:`take` (graph-safe: the position lives on the
    device) returns the next use, [K, *shape]. Seed k's numbers depend on its generator alone, so member k of a
    batch of K draws what a single run with that seed draws.

    Bookkeeping: every real execution that takes from a bank calls :meth:`reserve` once before it — :meth:`take`
    does so itself when it runs eagerly; a graph replay does it through :class:`rl.graphs.Graphed`, which records
    the banks a graph takes from while capturing it.
    """

    def __init__(self, gens: Sequence[torch.Generator], shape: Sequence[int], normal: bool,
                 dtype: torch.dtype = torch.float32, size: int = 64) -> None:
        self.gens, self.shape, self.normal, self.dtype, self.size = list(gens), tuple(shape), normal, dtype, size
        device = self.gens[0].device
        self.data = torch.zeros((len(self.gens), size, *self.shape), dtype=dtype, device=device)
        self.index = torch.zeros(1, dtype=torch.long, device=device)  # the next use, on the device
        self.used = size  # uses handed out since the last refill (host side): the first reserve draws

    def reserve(self) -> None:
        """Account for one use; draw the next ``size`` uses of every seed first if these are spent."""
        if self.used == self.size:
            draw = torch.randn if self.normal else torch.rand
            for k, g in enumerate(self.gens):
                self.data[k] = draw((self.size, *self.shape), generator=g, device=g.device, dtype=self.dtype)
            self.index.zero_()
            self.used = 0
        self.used += 1

    def take(self) -> Tensor:
        """The next use, [K, *shape]."""
        if capturing(self.data):
            if _capture_log is not None and self not in _capture_log:
                _capture_log.append(self)
        else:
            self.reserve()
        out = self.data.index_select(1, self.index).squeeze(1)
        self.index.add_(1)
        return out

    def state(self) -> dict:
        return {"data": self.data.to("cpu", copy=True), "index": self.index.to("cpu", copy=True), "used": self.used}

    def load(self, state: dict) -> None:
        self.data.copy_(state["data"])
        self.index.copy_(state["index"])
        self.used = int(state["used"])


def bank(banks: dict[str, Bank], name: str, gens: Sequence[torch.Generator], shape: Sequence[int], normal: bool,
         dtype: torch.dtype = torch.float32) -> Bank:
    """``banks[name]``, made on first use (or anew for another shape: the generators go on where the old one
    stopped drawing)."""
    b = banks.get(name)
    if b is None or b.shape != tuple(shape) or b.dtype != dtype:
        b = banks[name] = Bank(gens, shape, normal, dtype)
    return b


def bank_states(banks: dict[str, Bank]) -> dict:
    return {name: {**b.state(), "shape": list(b.shape), "normal": b.normal,
                   "dtype": str(b.dtype).removeprefix("torch.")} for name, b in banks.items()}


def load_banks(banks: dict[str, Bank], gens: Sequence[torch.Generator], states: dict) -> None:
    """Restore :func:`bank_states` into ``banks``: in place where a bank of that shape exists (graphs captured
    before read its tensors); a bank the states do not hold is spent, so that its next use draws from the
    restored generators."""
    for name, b in banks.items():
        if name not in states:
            b.used = b.size
    for name, s in states.items():
        bank(banks, name, gens, s["shape"], s["normal"], getattr(torch, s["dtype"])).load(s)
