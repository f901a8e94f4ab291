"""Storage for experience, kept on the run's device.

- :class:`ReplayBuffer` — a ring of tensors for off-policy agents (DDPG, off-policy AC) and partial rollouts;
  uniform sampling on the device, ``terminated`` and ``truncated`` kept apart; with K seeds, K rings side by side,
  each sampled by its own seed's generator.
- :class:`RolloutBuffer` — a [T, N] on-policy rollout for A2C / QAC, handed over whole and then cleared.

Both speak the same small protocol the trainer uses: ``add(step)`` then ``batches(...)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor

from rl import seeding
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

    ``seeds``: one ring of ``capacity`` per seed (K independent replay buffers of K agents trained as one batch,
    ``trainer.num_seeds``), stored as consecutive blocks of rows; seed k's transitions are rows k of every batch
    that :meth:`add` takes and :meth:`sample` returns (seed-major). Seed ``s`` draws its minibatches from its own
    generator (:mod:`rl.seeding`, stream ``replay``), so that each block is sampled as a single run with seed ``s``
    samples its buffer. Memory is ``K × capacity × Σ item bytes``, allocated once on ``device``; see :attr:`nbytes`.
    """

    def __init__(self, capacity: int, spec: Spec, device: str | torch.device = "cpu",
                 seeds: Sequence[int] = (0,)) -> None:
        if capacity <= 0:
            raise ValueError(f"replay capacity must be > 0, got {capacity}")
        self.capacity, self.spec, self.device = int(capacity), dict(spec), torch.device(device)
        self.num_seeds = len(seeds)
        self.data = _alloc(self.spec, (self.num_seeds * self.capacity,), self.device)
        self.generators = seeding.generators(seeds, "replay", self.device)
        self.banks: dict[str, seeding.Bank] = {}  # their draws made ahead, for graphs (rl.seeding.Bank)
        self.block_start = torch.arange(self.num_seeds, device=self.device).unsqueeze(1) * self.capacity  # [K, 1]
        self.pos = 0  # next write index (of every seed's ring: they fill in step)
        self.size = 0  # transitions held per seed
        self.size_on_device = torch.zeros((), dtype=torch.float64, device=self.device)  # read by sample()
        self.pos_on_device = torch.zeros((), dtype=torch.long, device=self.device)  # read by the graphed add
        self.rings = {k: v.view(self.num_seeds, self.capacity, *self.spec[k][0])  # data[k] as one ring per seed
                      for k, v in self.data.items()}
        self._graphed_add: Any = None
        self._graphed_sample: Any = None

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.data.values())

    def add(self, step: Mapping[str, Tensor]) -> None:
        """Append a batch of transitions: every value has the same leading size K·n (e.g. ``num_envs`` per seed),
        seed-major. With :meth:`use_cuda_graphs`, one graph replay writes every key (see :meth:`_write`)."""
        if step.keys() != self.spec.keys():
            _check_keys(self.spec, step)
        rows = next(iter(step.values())).shape[0]
        n = rows // self.num_seeds
        if n * self.num_seeds != rows:
            raise ValueError(f"cannot split {rows} transitions evenly over {self.num_seeds} seeds")
        if n > self.capacity:
            raise ValueError(f"cannot add {n} transitions to a buffer of capacity {self.capacity}")
        if self._graphed_add is not None and all(v.is_cuda for v in step.values()):  # (graphs exist on CUDA only)
            self._graphed_add(n, dict(step))
        else:
            first = min(n, self.capacity - self.pos)  # rows before the ring wraps: slice copies, no index kernels
            src = [step[k].reshape(self.num_seeds, n, *self.spec[k][0]) for k in self.rings]
            pos = self.pos
            torch._foreach_copy_([r[:, pos:pos + first] for r in self.rings.values()],
                                 src if first == n else [v[:, :first] for v in src],
                                 non_blocking=True)  # one launch for every key when all sit on the buffer's device
            if first < n:
                torch._foreach_copy_([r[:, :n - first] for r in self.rings.values()], [v[:, first:] for v in src],
                                     non_blocking=True)
            if self.size < self.capacity:
                self.size_on_device.fill_(min(self.size + n, self.capacity))
            if self._graphed_add is not None:
                self.pos_on_device.fill_((self.pos + n) % self.capacity)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def _write(self, n: int, step: Mapping[str, Tensor]) -> None:
        """The graph-safe add: rows ``(pos + 0..n−1) mod capacity`` of every seed's ring, with the position and the
        size kept on the device (so that one captured graph serves every position, the wrap included)."""
        idx = (self.pos_on_device + torch.arange(n, device=self.device)) % self.capacity  # [n]
        rows = (self.block_start + idx).flatten()  # [K·n], seed-major as step's rows
        for k, (shape, dtype) in self.spec.items():
            self.data[k].index_copy_(0, rows, step[k].reshape(-1, *shape).to(dtype))
        self.pos_on_device.copy_((self.pos_on_device + n) % self.capacity)
        self.size_on_device.copy_(torch.clamp(self.size_on_device + n, max=self.capacity))

    def sample(self, batch_size: int) -> dict[str, Tensor]:
        """``batch_size`` transitions per seed (K·batch_size rows, seed-major), drawn uniformly with replacement,
        on the buffer's device.

        The index is ``floor(u · size)`` with ``u ~ U[0, 1)`` (float64) and ``size`` read from a device tensor,
        so sampling makes no host sync and can be captured in a CUDA graph that is replayed as the buffer grows.
        """
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        if self._graphed_sample is not None:
            return self._graphed_sample(batch_size, {})
        return self._sample(batch_size)

    def _sample(self, batch_size: int) -> dict[str, Tensor]:
        u = seeding.bank(self.banks, "replay", self.generators, (batch_size,), normal=False,
                         dtype=torch.float64).take()  # [K, batch_size]
        idx = ((u * self.size_on_device).long() + self.block_start).flatten()
        return {k: v[idx] for k, v in self.data.items()}

    def use_cuda_graphs(self) -> bool:
        """Sample from a CUDA graph (one replay instead of ~10 launches; its outputs are the same tensors every
        time, so a graphed update reads them without a copy) and add through one (one input copy and one replay
        instead of a copy per key and the position bookkeeping). Off CUDA: False, nothing changes."""
        if self.device.type != "cuda":
            return False
        from rl.graphs import Graphed

        self._graphed_sample = self._graphed_sample or Graphed(lambda batch_size, _: self._sample(batch_size))
        if self._graphed_add is None:
            self.pos_on_device.fill_(self.pos)
            self._graphed_add = Graphed(lambda n, step: self._write(n, step))
        return True

    def batches(self, num_updates: int, batch_size: int) -> Iterator[dict[str, Tensor]]:
        """The trainer's view: ``num_updates`` independent uniform minibatches."""
        for _ in range(num_updates):
            yield self.sample(batch_size)

    # -- persistence -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The filled part of every seed's ring ([K·size, ...], seed-major) and the sampling generators."""
        return {
            "capacity": self.capacity,
            "pos": self.pos,
            "size": self.size,
            "num_seeds": self.num_seeds,
            "rng": seeding.get_states(self.generators),
            "banks": seeding.bank_states(self.banks),
            "spec": {k: (list(s), str(d).removeprefix("torch.")) for k, (s, d) in self.spec.items()},
            "data": {k: self.rings[k][:, :self.size].to("cpu", copy=True).reshape(-1, *self.spec[k][0])
                     for k in self.data},  # a copy: only the filled part is saved
        }

    def load_state_dict(self, state: Mapping) -> None:
        num_seeds = int(state.get("num_seeds", 1))
        if state["capacity"] != self.capacity or set(state["data"]) != set(self.spec) or num_seeds != self.num_seeds:
            raise ValueError(
                f"saved buffer (capacity {state['capacity']}, {num_seeds} seed(s), keys {sorted(state['data'])}) does "
                f"not match this one (capacity {self.capacity}, {self.num_seeds} seed(s), keys {sorted(self.spec)})"
            )
        self.pos, self.size = int(state["pos"]), int(state["size"])
        self.size_on_device.fill_(self.size)
        self.pos_on_device.fill_(self.pos)
        for k, v in state["data"].items():
            self.rings[k][:, :self.size] = v.view(self.num_seeds, self.size, *self.spec[k][0]).to(self.device)
        if "rng" in state:
            seeding.set_states(self.generators, state["rng"])
            seeding.load_banks(self.banks, self.generators, state.get("banks", {}))

    def save(self, path: PathLike) -> None:
        atomic_save(self.state_dict(), path)

    @classmethod
    def load(cls, path: PathLike, device: str | torch.device = "cpu") -> "ReplayBuffer":
        state = load_file(path)
        spec = {k: (tuple(s), getattr(torch, d)) for k, (s, d) in state["spec"].items()}
        buf = cls(state["capacity"], spec, device, seeds=range(int(state.get("num_seeds", 1))))
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
