"""Long2short tools (docs/algorithms.md §4): model merging, shortest rejection sampling, DPO preference pairs.

A long2short RL phase is :class:`agents.kimi.Kimi` itself with ``length_penalty > 0`` and a smaller
``max_response_tokens``; the DPO loss is :func:`agents.kimi.losses.dpo_loss`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def merge_weights(state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """Model merging: ``alpha · a + (1 − alpha) · b`` for floating tensors (e.g. a long-CoT and a short-CoT model);
    other tensors (integer buffers) must be equal in both and are copied."""
    if set(state_a) != set(state_b):
        raise ValueError(f"state dicts differ in keys: {sorted(set(state_a) ^ set(state_b))}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    out = {}
    for key, a in state_a.items():
        b = state_b[key]
        if a.shape != b.shape:
            raise ValueError(f"{key}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
        if a.is_floating_point():
            out[key] = alpha * a + (1 - alpha) * b.to(a.dtype)
        elif torch.equal(a, b):
            out[key] = a.clone()
        else:
            raise ValueError(f"{key}: non-floating tensors differ and cannot be averaged")
    return out


Sampler = Callable[[Sequence[Any], int], list[list[str]]]  # (problems, n) -> n responses per problem


def shortest_rejection_sampling(sample: Sampler, reward: Callable[[Any, str], float], problems: Sequence[Any],
                                n: int) -> list[dict]:
    """Sample ``n`` responses per problem and keep the shortest correct one (fine-tuning data for long2short).
    Returns ``[{"prompt", "response"}]`` for the problems with at least one correct response."""
    rows = []
    for problem, responses in zip(problems, sample(problems, n)):
        correct = [r for r in responses if reward(problem, r) > 0]
        if correct:
            rows.append({"prompt": problem.prompt, "response": min(correct, key=len)})
    return rows


def dpo_pairs(sample: Sampler, reward: Callable[[Any, str], float], problems: Sequence[Any], n: int,
              path: str | Path | None = None, length_ratio: float = 1.5) -> list[dict]:
    """DPO preference pairs from ``n`` samples per problem: the shortest correct response is ``chosen``; every wrong
    response, and every correct one at least ``length_ratio`` × as long, is a ``rejected`` partner. Written as JSONL
    rows ``{"prompt", "chosen", "rejected"}`` to ``path`` when given."""
    rows = []
    for problem, responses in zip(problems, sample(problems, n)):
        ok = [reward(problem, r) > 0 for r in responses]
        if not any(ok):
            continue
        chosen = min((r for r, c in zip(responses, ok) if c), key=len)
        for r, c in zip(responses, ok):
            if not c or len(r) >= length_ratio * len(chosen):
                rows.append({"prompt": problem.prompt, "chosen": chosen, "rejected": r})
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return rows
