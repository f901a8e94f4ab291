"""Network builders: MLPs, policy heads and critics. Shapes: obs [B, obs_dim], act [B, act_dim]; ensembles of M
members (``generators`` given) take and return the same with a leading member axis, obs [M, B, obs_dim]."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from rl.optim import WideAdam


def adam(params, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam as the hot path wants it: on CUDA the fused kernel spread over the whole GPU (``rl.optim.WideAdam``),
    with its step count on the device (``capturable``) so that a CUDA graph can replay the step; on a CPU the
    foreach implementation."""
    if device.type == "cuda":
        return WideAdam(params, lr=lr)
    return torch.optim.Adam(params, lr=lr, foreach=True)


class EnsembleLinear(nn.Module):
    """M independent ``nn.Linear(in_dim, out_dim)`` layers as one: ``y_m = x_m W_mᵀ + b_m`` for x [M, B, in_dim],
    one batched matmul (``torch.baddbmm``) for all members (docs/algorithms.md §5). Member m is initialized from
    ``generators[m]`` exactly as ``nn.Linear`` initializes itself (Kaiming-uniform weights, uniform biases, ±1/√in),
    weights before biases, so a generator sees the same draws whatever M is.

    A layer with one output is a dot product per row, computed as such: BLAS takes another path for a
    matrix-vector product of one member than for a batch of them, and member m of M members must compute exactly
    what a single member does (the equality test of K seeds against K single runs)."""

    def __init__(self, in_dim: int, out_dim: int, generators: Sequence[torch.Generator]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(len(generators), out_dim, in_dim))
        self.bias = nn.Parameter(torch.empty(len(generators), 1, out_dim))
        with torch.no_grad():
            for weight, bias, g in zip(self.weight, self.bias, generators):
                nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=g)
                nn.init.uniform_(bias, -1 / math.sqrt(in_dim), 1 / math.sqrt(in_dim), generator=g)

    def forward(self, x: Tensor) -> Tensor:
        if self.weight.shape[1] == 1:
            return (x * self.weight).sum(-1, keepdim=True) + self.bias
        return torch.baddbmm(self.bias, x, self.weight.transpose(1, 2))


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, activation: type[nn.Module] = nn.ReLU,
        generators: Sequence[torch.Generator] | None = None) -> nn.Sequential:
    """``in_dim → hidden… → out_dim`` with ``activation`` between layers and none after the last; an ensemble of
    ``len(generators)`` such MLPs (:class:`EnsembleLinear` layers) when ``generators`` is given."""
    def linear(a: int, b: int) -> nn.Module:
        return nn.Linear(a, b) if generators is None else EnsembleLinear(a, b, generators)

    dims, layers = [in_dim, *hidden], []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [linear(a, b), activation()]
    layers.append(linear(dims[-1], out_dim))
    return nn.Sequential(*layers)


class DeterministicActor(nn.Module):
    """``μ(s) = center + half_range · tanh(f(s))``: actions always inside the Box ``[low, high]``."""

    def __init__(self, obs_dim: int, low: Tensor, high: Tensor, hidden: Sequence[int],
                 generators: Sequence[torch.Generator] | None = None) -> None:
        super().__init__()
        self.net = mlp(obs_dim, hidden, low.numel(), generators=generators)
        self.register_buffer("center", ((high + low) / 2).float().flatten())
        self.register_buffer("half_range", ((high - low) / 2).float().flatten())

    def forward(self, obs: Tensor) -> Tensor:
        return self.center + self.half_range * torch.tanh(self.net(obs))


class QCritic(nn.Module):
    """``q(s, a)``: an MLP on the concatenation, returning [B]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int],
                 generators: Sequence[torch.Generator] | None = None) -> None:
        super().__init__()
        self.net = mlp(obs_dim + act_dim, hidden, 1, generators=generators)

    def forward(self, obs: Tensor, act: Tensor) -> Tensor:
        return self.net(torch.cat([obs, act], dim=-1)).squeeze(-1)


def obs_dim(space) -> int:
    """Width of the network input for a gymnasium space (a Discrete state becomes a one-hot vector)."""
    import gymnasium as gym

    return int(space.n) if isinstance(space, gym.spaces.Discrete) else int(torch.tensor(space.shape).prod())


class RunningNorm(nn.Module):
    """``x ↦ clip((x − m) / √(v + 1e-8), ±clip)`` with m, v the running mean and variance of every sample that
    :meth:`update` has seen. Batches merge by Chan et al.'s parallel rule, so m, v equal the mean and (biased)
    variance of all samples at once; the counts start at 1e-4 (m = 0, v = 1) as in Stable-Baselines3's VecNormalize.
    Updates are in place (a replayed CUDA graph keeps reading the same buffers)."""

    def __init__(self, shape: Sequence[int], clip: float = 10.0) -> None:
        super().__init__()
        self.clip = clip
        self.register_buffer("mean", torch.zeros(tuple(shape)))
        self.register_buffer("var", torch.ones(tuple(shape)))
        self.register_buffer("count", torch.tensor(1e-4))

    def update(self, x: Tensor) -> None:
        """Merge the samples ``x`` [B, *shape]."""
        n = x.shape[0]
        delta = x.mean(0) - self.mean
        total = self.count + n
        m2 = self.var * self.count + x.var(0, unbiased=False) * n + delta.pow(2) * self.count * n / total
        self.mean.add_(delta * n / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def forward(self, x: Tensor) -> Tensor:
        return ((x - self.mean) / torch.sqrt(self.var + 1e-8)).clamp(-self.clip, self.clip)


class Features(nn.Module):
    """Observation → float features: one-hot for Discrete states (so a linear layer is a table), else flatten;
    with ``normalize``, Box observations are standardized by a :class:`RunningNorm` that :meth:`observe` updates."""

    def __init__(self, space, normalize: bool = False) -> None:
        super().__init__()
        import gymnasium as gym

        self.n = int(space.n) if isinstance(space, gym.spaces.Discrete) else 0
        self.norm = RunningNorm((obs_dim(space),)) if normalize and not self.n else None

    def observe(self, obs: Tensor) -> None:
        """Update the running statistics with a batch of raw observations (no-op without ``normalize``)."""
        if self.norm is not None:
            self.norm.update(obs.flatten(1).float())

    def forward(self, obs: Tensor) -> Tensor:
        if self.n:
            return torch.nn.functional.one_hot(obs.long(), self.n).float()
        x = obs.flatten(1).float()
        return x if self.norm is None else self.norm(x)


class CategoricalPolicy(nn.Module):
    """``π(·|s) = softmax(f(s))`` over ``n`` actions."""

    def __init__(self, in_dim: int, n: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp(in_dim, hidden, n, nn.Tanh)

    def forward(self, x: Tensor) -> torch.distributions.Categorical:
        return torch.distributions.Categorical(logits=self.net(x), validate_args=False)  # checks would sync

    @staticmethod
    def mode(dist: torch.distributions.Categorical) -> Tensor:
        return dist.logits.argmax(-1)


class GaussianPolicy(nn.Module):
    """``π(·|s) = N(μ(s), diag σ²)`` with a state-independent learned ``log σ``; log-probs summed over dims."""

    def __init__(self, in_dim: int, act_dim: int, hidden: Sequence[int], log_std: float = 0.0) -> None:
        super().__init__()
        self.net = mlp(in_dim, hidden, act_dim, nn.Tanh)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(log_std)))

    def forward(self, x: Tensor) -> torch.distributions.Independent:
        normal = torch.distributions.Normal(self.net(x), self.log_std.exp(), validate_args=False)  # checks would sync
        return torch.distributions.Independent(normal, 1, validate_args=False)

    @staticmethod
    def mode(dist: torch.distributions.Independent) -> Tensor:
        return dist.mean


class ValueCritic(nn.Module):
    """``v(s)`` → [B]."""

    def __init__(self, in_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp(in_dim, hidden, 1, nn.Tanh)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


class DiscreteQCritic(nn.Module):
    """``q(s, ·)`` → [B, n] for a Discrete action space."""

    def __init__(self, in_dim: int, n: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp(in_dim, hidden, n, nn.Tanh)

    def forward(self, x: Tensor, action: Tensor) -> Tensor:
        return self.net(x).gather(-1, action.long().unsqueeze(-1)).squeeze(-1)
