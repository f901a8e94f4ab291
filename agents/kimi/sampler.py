"""Which prompts an iteration trains on: curriculum and prioritized sampling (docs/algorithms.md §4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from rl.approximation import incremental_mean


class ProblemSampler:
    """Curriculum + prioritized sampling of a task's training problems (§4 "Sampling strategies").

    ``s_i`` — each problem's success rate — moves towards each observed fraction of correct responses by
    ``rl.approximation.incremental_mean`` (step 1/n_i, the exact running mean, or a constant ``step_size``).
    P(problem i) ∝ ``1 − s_i`` among the unlocked problems (uniform where that is all zero, or with
    ``prioritized=False``). With ``curriculum``, only the easiest level is open at first; the next one opens every
    ``unlock_every`` iterations and/or when the mean s_i over the visited problems of the hardest open level
    reaches ``unlock_pass_rate``.
    """

    def __init__(self, difficulties: Sequence[int], prioritized: bool = True, curriculum: bool = False,
                 unlock_every: int = 0, unlock_pass_rate: float = 0.0, step_size: float = 0.0) -> None:
        if not difficulties:
            raise ValueError("no problems to sample from")
        self.difficulty = torch.as_tensor(list(difficulties), dtype=torch.long)
        self.levels = sorted(set(self.difficulty.tolist()))
        self.prioritized, self.unlock_every, self.unlock_pass_rate = prioritized, unlock_every, unlock_pass_rate
        self.step_size = step_size
        self.success = torch.zeros(len(difficulties))  # s_i
        self.visits = torch.zeros(len(difficulties))
        self.unlocked = 1 if curriculum else len(self.levels)
        self.since_unlock = 0

    def open(self) -> Tensor:
        return self.difficulty <= self.levels[self.unlocked - 1]

    def probabilities(self) -> Tensor:
        open_ = self.open().float()
        w = open_ * (1 - self.success) if self.prioritized else open_
        return (w if w.sum() > 0 else open_) / (w if w.sum() > 0 else open_).sum()

    def sample(self, n: int, generator: torch.Generator | None = None) -> list[int]:
        """``n`` problem indices (distinct while enough problems have non-zero probability)."""
        if n <= 0:
            return []
        p = self.probabilities()
        return torch.multinomial(p, n, replacement=n > int((p > 0).sum()), generator=generator).tolist()

    def update(self, index: int, success: float) -> None:
        """One incremental-mean step of ``s_index`` towards ``success`` (a fraction of correct responses)."""
        self.visits[index] += 1
        a = self.step_size or 1.0 / float(self.visits[index])
        self.success[index] = incremental_mean(self.success[index], torch.tensor(float(success)), a)

    def level_pass_rate(self, level: int) -> float:
        seen = (self.difficulty == level) & (self.visits > 0)
        return float(self.success[seen].mean()) if seen.any() else 0.0

    def end_iteration(self) -> None:
        """Advance the curriculum (call once per iteration)."""
        self.since_unlock += 1
        if self.unlocked == len(self.levels):
            return
        by_time = self.unlock_every > 0 and self.since_unlock >= self.unlock_every
        by_rate = self.unlock_pass_rate > 0 and self.level_pass_rate(self.levels[self.unlocked - 1]) >= self.unlock_pass_rate
        if by_time or by_rate:
            self.unlocked, self.since_unlock = self.unlocked + 1, 0

    def state_dict(self) -> dict:
        return {"success": self.success.clone(), "visits": self.visits.clone(), "unlocked": self.unlocked,
                "since_unlock": self.since_unlock}

    def load_state_dict(self, state: Mapping) -> None:
        self.success.copy_(state["success"])
        self.visits.copy_(state["visits"])
        self.unlocked, self.since_unlock = int(state["unlocked"]), int(state["since_unlock"])
