"""Storage for experience, kept on the run's device.

- :class:`ReplayBuffer` — a ring of tensors for off-policy agents (DDPG, off-policy AC) and partial rollouts;
  uniform sampling on the device, ``terminated`` and ``truncated`` kept apart.
- :class:`RolloutBuffer` — a [T, N] on-policy rollout for A2C / QAC, handed over whole and then cleared.

Both speak the same small protocol the trainer uses: ``add(step)`` then ``batches(...)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor

from rl.checkpoint import atomic_save, load as load_file

# name -> (shape of one item, dtype)
Spec = Mapping[str, tuple[tuple[int, ...], torch.dtype]]
PathLike = Union[str, Path]


def _alloc(spec: Spec, lead: tuple[int, ...], device: torch.device) -> dict[str, Tensor]:
    return {k: torch.zeros(lead + tuple(shape), dtype=dtype, device=device) for k, (shape, dtype) in spec.items()}


def _check_keys(spec: Spec, step: Mapping[str, Tensor]) -> None:
    if set(step) != set(spec):
        raise KeyError(f"buffer expects keys {sorted(spec)}, got {sorted(step)}")


class ReplayBuffer:
    """A ring buffer of ``capacity`` transitions, each a dict of tensors described by ``spec``.

    Memory is ``capacity × Σ item bytes`` allocated once on ``device``; see :attr:`nbytes`.
    """

    def __init__(self, capacity: int, spec: Spec, device: str | torch.device = "cpu") -> None:
        if capacity <= 0:
            raise ValueError(f"replay capacity must be > 0, got {capacity}")
        self.capacity, self.spec, self.device = int(capacity), dict(spec), torch.device(device)
        self.data = _alloc(self.spec, (self.capacity,), self.device)
        self.pos = 0  # next write index
        self.size = 0
        self.size_on_device = torch.zeros((), dtype=torch.float64, device=self.device)  # read by sample()
        self._graphed_sample: Any = None

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.data.values())

    def add(self, step: Mapping[str, Tensor]) -> None:
        """Append a batch of transitions: every value has the same leading size n (e.g. ``num_envs``)."""
        _check_keys(self.spec, step)
        n = next(iter(step.values())).shape[0]
        if n > self.capacity:
            raise ValueError(f"cannot add {n} transitions to a buffer of capacity {self.capacity}")
        first = min(n, self.capacity - self.pos)  # rows before the ring wraps: slice copies, no index kernels
        keys = list(step)
        src = [step[k].reshape(n, *self.spec[k][0]) for k in keys]
        torch._foreach_copy_([self.data[k][self.pos:self.pos + first] for k in keys], [v[:first] for v in src],
                             non_blocking=True)  # one launch for every key when all sit on the buffer's device
        if first < n:
            torch._foreach_copy_([self.data[k][:n - first] for k in keys], [v[first:] for v in src],
                                 non_blocking=True)
        self.pos = (self.pos + n) % self.capacity
        if self.size < self.capacity:
            self.size = min(self.size + n, self.capacity)
            self.size_on_device.fill_(self.size)

    def sample(self, batch_size: int) -> dict[str, Tensor]:
        """``batch_size`` transitions drawn uniformly with replacement, on the buffer's device.

        The index is ``floor(u · size)`` with ``u ~ U[0, 1)`` (float64) and ``size`` read from a device tensor,
        so sampling makes no host sync and can be captured in a CUDA graph that is replayed as the buffer grows.
        """
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        if self._graphed_sample is not None:
            return self._graphed_sample(batch_size, {})
        return self._sample(batch_size)

    def _sample(self, batch_size: int) -> dict[str, Tensor]:
        u = torch.rand(batch_size, device=self.device, dtype=torch.float64)
        idx = (u * self.size_on_device).long()
        return {k: v[idx] for k, v in self.data.items()}

    def use_cuda_graphs(self) -> bool:
        """Sample from a CUDA graph (one replay instead of ~10 launches); its outputs are the same tensors every
        time, so a graphed update reads them without a copy. Off CUDA: False, nothing changes."""
        if self.device.type != "cuda":
            return False
        from rl.graphs import Graphed

        self._graphed_sample = self._graphed_sample or Graphed(lambda batch_size, _: self._sample(batch_size))
        return True

    def batches(self, num_updates: int, batch_size: int) -> Iterator[dict[str, Tensor]]:
        """The trainer's view: ``num_updates`` independent uniform minibatches."""
        for _ in range(num_updates):
            yield self.sample(batch_size)

    # -- persistence -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "capacity": self.capacity,
            "pos": self.pos,
            "size": self.size,
            "spec": {k: (list(s), str(d).removeprefix("torch.")) for k, (s, d) in self.spec.items()},
            "data": {k: v[: self.size].clone().cpu() for k, v in self.data.items()},  # clone: save only the filled part
        }

    def load_state_dict(self, state: Mapping) -> None:
        if state["capacity"] != self.capacity or set(state["data"]) != set(self.spec):
            raise ValueError(
                f"saved buffer (capacity {state['capacity']}, keys {sorted(state['data'])}) does not match "
                f"this one (capacity {self.capacity}, keys {sorted(self.spec)})"
            )
        self.pos, self.size = int(state["pos"]), int(state["size"])
        self.size_on_device.fill_(self.size)
        for k, v in state["data"].items():
            self.data[k][: self.size] = v.to(self.device)

    def save(self, path: PathLike) -> None:
        atomic_save(self.state_dict(), path)

    @classmethod
    def load(cls, path: PathLike, device: str | torch.device = "cpu") -> "ReplayBuffer":
        state = load_file(path)
        spec = {k: (tuple(s), getattr(torch, d)) for k, (s, d) in state["spec"].items()}
        buf = cls(state["capacity"], spec, device)
        buf.load_state_dict(state)
        return buf


class RolloutBuffer:
    """A fixed [T, N] block of on-policy steps (T vector steps of N envs), consumed whole."""

    def __init__(self, num_steps: int, num_envs: int, spec: Spec, device: str | torch.device = "cpu") -> None:
        if num_steps <= 0:
            raise ValueError(f"rollout length must be > 0, got {num_steps}")
        self.num_steps, self.num_envs, self.spec = int(num_steps), int(num_envs), dict(spec)
        self.device = torch.device(device)
        self.data = _alloc(self.spec, (self.num_steps, self.num_envs), self.device)
        self.t = 0

    def __len__(self) -> int:
        return self.t * self.num_envs

    @property
    def full(self) -> bool:
        return self.t == self.num_steps

    def add(self, step: Mapping[str, Tensor]) -> None:
        _check_keys(self.spec, step)
        if self.full:
            raise RuntimeError("rollout buffer is full: consume it with batches() first")
        keys = list(step)
        torch._foreach_copy_([self.data[k][self.t] for k in keys],
                             [step[k].reshape(self.num_envs, *self.spec[k][0]) for k in keys], non_blocking=True)
        self.t += 1

    def batches(self, num_updates: int = 1, batch_size: int = 0) -> Iterator[dict[str, Tensor]]:
        """Once full: yields the whole rollout ([T, N, ...] tensors) once, then clears it."""
        if self.full:
            self.t = 0
            yield self.data

    def state_dict(self) -> dict:
        return {"t": self.t, "data": {k: v.cpu() for k, v in self.data.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        self.t = int(state["t"])
        for k, v in state["data"].items():
            self.data[k].copy_(v)
