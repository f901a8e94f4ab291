"""Network builders: MLPs, policy heads and critics. Shapes: obs [B, obs_dim], act [B, act_dim]."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """``in_dim → hidden… → out_dim`` with ``activation`` between layers and none after the last."""
    dims, layers = [in_dim, *hidden], []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), activation()]
    layers.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*layers)


class DeterministicActor(nn.Module):
    """``μ(s) = center + half_range · tanh(f(s))``: actions always inside the Box ``[low, high]``."""

    def __init__(self, obs_dim: int, low: Tensor, high: Tensor, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp(obs_dim, hidden, low.numel())
        self.register_buffer("center", ((high + low) / 2).float().flatten())
        self.register_buffer("half_range", ((high - low) / 2).float().flatten())

    def forward(self, obs: Tensor) -> Tensor:
        return self.center + self.half_range * torch.tanh(self.net(obs))


class QCritic(nn.Module):
    """``q(s, a)``: an MLP on the concatenation, returning [B]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp(obs_dim + act_dim, hidden, 1)

    def forward(self, obs: Tensor, act: Tensor) -> Tensor:
        return self.net(torch.cat([obs, act], dim=-1)).squeeze(-1)
