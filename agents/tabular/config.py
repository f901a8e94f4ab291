"""Configs of the tabular agents (docs/algorithms.md §1): step-size schedule, exploration, evaluated policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from torch import Tensor

from rl.approximation import step_size
from rl.config import AgentConfig, ConfigError, check, positive


@dataclass
class TabularConfig(AgentConfig):
    gamma: float = 0.9
    step_size: str = "robbins_monro"  # robbins_monro: a_k = a0 / (k + k0)^p  |  constant: a_k = a0
    a0: float = 1.0
    p: float = 0.7  # 0.5 < p <= 1 unless convergent=false; p < 1 forgets the biased early TD targets faster
    k0: float = 0.0
    convergent: bool = True  # reject Robbins–Monro powers that break Σ a_k = ∞, Σ a_k² < ∞
    init: float = 0.0  # every table entry's first value (optimistic, e.g. r_max/(1−γ): untried actions look good)

    def __post_init__(self) -> None:
        check(0 <= self.gamma <= 1, f"agent.gamma must be in [0, 1], got {self.gamma}")
        self.schedule()  # a bad schedule fails here, before training

    def schedule(self) -> Callable[[Tensor], Tensor]:
        if self.step_size == "constant":
            return step_size("constant", a=self.a0)
        return step_size(self.step_size, a0=self.a0, p=self.p, k0=self.k0, convergent=self.convergent)


@dataclass
class EvaluationConfig(TabularConfig):
    # the evaluated policy, the same in every state: "uniform" or comma-separated probabilities "0.5,0.5,0,0,0"
    policy: str = "uniform"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.policy != "uniform":
            probs = parse_policy(self.policy)
            check(all(x >= 0 for x in probs) and abs(sum(probs) - 1) < 1e-6,
                  f"agent.policy must be 'uniform' or probabilities summing to 1, got {self.policy!r}")


@dataclass
class TDConfig(EvaluationConfig):
    name: str = "td"


@dataclass
class MCConfig(EvaluationConfig):
    name: str = "mc"
    p: float = 1.0  # MC targets are unbiased samples: a_k = 1/k makes v(s) their sample mean
    horizon: Optional[int] = None  # rewards summed when no termination comes first; None: smallest H with γ^H ≤ 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.horizon is None:
            check(self.gamma < 1, "agent.horizon must be set when agent.gamma = 1")
        else:
            positive("agent.horizon", self.horizon)

    def return_horizon(self) -> int:
        if self.horizon is not None:
            return self.horizon
        return 1 if self.gamma == 0 else max(1, int(np.ceil(np.log(1e-3) / np.log(self.gamma))))


@dataclass
class ControlConfig(TabularConfig):
    epsilon: float = 1.0  # ε0: exploration at a state's first visit
    epsilon_halflife: Optional[float] = 20.0  # h: ε(s) = ε0 / (1 + n(s)/h) (GLIE); None: ε0 forever

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.epsilon <= 1, f"agent.epsilon must be in [0, 1], got {self.epsilon}")
        if self.epsilon_halflife is not None:
            positive("agent.epsilon_halflife", self.epsilon_halflife)


@dataclass
class SARSAConfig(ControlConfig):
    name: str = "sarsa"


@dataclass
class ExpectedSARSAConfig(ControlConfig):
    name: str = "expected_sarsa"


@dataclass
class NStepSARSAConfig(ControlConfig):
    name: str = "nstep_sarsa"
    n: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        positive("agent.n", self.n)


@dataclass
class QLearningConfig(ControlConfig):
    name: str = "qlearning"
    epsilon_halflife: Optional[float] = None  # uniform behaviour policy: Q-learning is off-policy


def parse_policy(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"agent.policy must be 'uniform' or comma-separated probabilities, got {text!r}") from None


