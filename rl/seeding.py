"""Random streams of a run, one generator per seed and role (docs/algorithms.md §5).

A run with seed ``s`` draws each kind of randomness from its own generator:

- ``init``    network initialization: seeded with ``s`` itself (the stream of ``torch.manual_seed(s)``)
- ``noise``   the agent's exploration and target-policy noise
- ``replay``  the replay buffer's minibatch indices
- ``warmup``  the collector's uniform random warm-up actions

The other streams' seeds are derived from ``(s, role)`` with numpy's SeedSequence, so that no two streams of one
run, nor of runs with different seeds, repeat each other's numbers. K seeds trained as one batch (``trainer.
num_seeds``) keep K generators per role, seed ``s + k``'s being exactly the ones a single run with seed ``s + k``
has: member k of the batch draws the same numbers, in the same order, as that run.
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


def randn(gens: Sequence[torch.Generator], shape: Sequence[int]) -> Tensor:
    """``[K, *shape]`` standard normal draws, row k from ``gens[k]`` (on the generators' device)."""
    return torch.stack([torch.randn(tuple(shape), generator=g, device=g.device) for g in gens])


def rand(gens: Sequence[torch.Generator], shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
    """``[K, *shape]`` uniform draws in [0, 1), row k from ``gens[k]``."""
    return torch.stack([torch.rand(tuple(shape), generator=g, device=g.device, dtype=dtype) for g in gens])


def get_states(gens: Sequence[torch.Generator]) -> Tensor:
    """The generators' states as one [K, n] byte tensor (for checkpoints)."""
    return torch.stack([g.get_state() for g in gens])


def set_states(gens: Sequence[torch.Generator], states: Tensor) -> None:
    """Restore :func:`get_states` (a single state, as older checkpoints hold, counts as K = 1)."""
    states = states.cpu().reshape(len(gens), -1)
    for g, state in zip(gens, states):
        g.set_state(state.clone())
