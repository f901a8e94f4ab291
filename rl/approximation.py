"""Stochastic approximation: the value-update machinery shared by every agent (docs/algorithms.md §1).

Pure functions on tensors (or floats) plus step-size schedules. Each line maps to a formula:

- incremental mean      ``w_{k+1} = w_k - a_k (w_k - x_k)``
- Robbins–Monro step    ``a_k = a_0 / (k + k_0)^p``, convergent when ``0.5 < p <= 1``
- TD target             ``r + γ (1 - terminated) v(s')``
- Polyak averaging      ``w' <- τ w + (1 - τ) w'``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor

from rl.config import ConfigError


class StepSizeError(ConfigError):
    """A step-size schedule that cannot do what the user asked for."""


@dataclass(frozen=True)
class ConstantStepSize:
    """``a_k = a`` for every k. Tracks a moving target; never settles (violates Σ a_k² < ∞)."""

    a: float

    def __post_init__(self) -> None:
        if not self.a > 0:
            raise StepSizeError(f"constant step size must be > 0, got {self.a}")

    def __call__(self, k: int | Tensor) -> float | Tensor:
        return self.a + 0 * k if isinstance(k, Tensor) else self.a


@dataclass(frozen=True)
class RobbinsMonroStepSize:
    """``a_k = a0 / (k + k0)^p`` for k = 1, 2, ….

    With ``0.5 < p <= 1`` the sequence meets Robbins–Monro's conditions Σ a_k = ∞ and Σ a_k² < ∞;
    ``convergent=True`` (the default) rejects any other ``p``.
    """

    a0: float = 1.0
    p: float = 1.0
    k0: float = 0.0
    convergent: bool = True

    def __post_init__(self) -> None:
        if not self.a0 > 0:
            raise StepSizeError(f"Robbins–Monro a0 must be > 0, got {self.a0}")
        if self.convergent and not (0.5 < self.p <= 1.0):
            raise StepSizeError(
                f"Robbins–Monro power p={self.p} does not give a convergent schedule: "
                "Σ a_k = ∞ and Σ a_k² < ∞ need 0.5 < p <= 1 (set convergent=false to allow it)"
            )
        if self.k0 < 0:
            raise StepSizeError(f"Robbins–Monro offset k0 must be >= 0, got {self.k0}")

    def __call__(self, k: int | Tensor) -> float | Tensor:
        return self.a0 / (k + self.k0) ** self.p


def step_size(kind: str, **kwargs: float | bool) -> ConstantStepSize | RobbinsMonroStepSize:
    """Build a schedule by name: ``"constant"`` (``a``) or ``"robbins_monro"`` (``a0, p, k0, convergent``)."""
    if kind == "constant":
        return ConstantStepSize(**kwargs)  # type: ignore[arg-type]
    if kind in ("robbins_monro", "rm"):
        return RobbinsMonroStepSize(**kwargs)  # type: ignore[arg-type]
    raise StepSizeError(f"unknown step-size schedule {kind!r}; choose 'constant' or 'robbins_monro'")


def incremental_mean(w: Tensor, x: Tensor, a: float | Tensor) -> Tensor:
    """One SA step towards the mean of the x's: ``w - a (w - x)``. With ``a = 1/k``, the exact sample mean."""
    return w - a * (w - x)


def td_target(reward: Tensor, next_value: Tensor, terminated: Tensor, gamma: float) -> Tensor:
    """``r + γ (1 - terminated) v(s')``: bootstraps through truncation, stops at termination."""
    return reward + gamma * (1.0 - terminated.to(reward.dtype)) * next_value


def n_step_target(
    rewards: Tensor, bootstrap: Tensor, terminated: Tensor, gamma: float
) -> Tensor:
    """n-step target ``r_1 + γ r_2 + … + γ^{n-1} r_n + γ^n v(s_n)`` per row.

    rewards, terminated: [T, ...] along time (``terminated[t]`` ends the return after reward t);
    bootstrap: [...] the value of the state after the last step. Returns [T, ...]: the target for every
    start t, each looking ahead to the end of the window (so row t is a (T - t)-step return).
    """
    out = torch.empty_like(rewards)
    g = bootstrap
    for t in range(rewards.shape[0] - 1, -1, -1):
        g = td_target(rewards[t], g, terminated[t], gamma)
        out[t] = g
    return out


def td_error(value: Tensor, target: Tensor) -> Tensor:
    """``δ = target - v(s)``."""
    return target - value


@torch.no_grad()
def polyak_update(target: Iterable[Tensor], source: Iterable[Tensor], tau: float) -> None:
    """In place ``w' <- τ w + (1 - τ) w'`` for matching parameter lists (one fused foreach kernel)."""
    target, source = list(target), list(source)
    torch._foreach_lerp_(target, source, tau)
