"""Response log-probabilities ``log π_T(y_t | x, y_<t)`` from a model's last hidden states, without a full-vocabulary
tensor for the batch: the output projection (``head``) and the log-softmax run over chunks of response tokens, and
each chunk is recomputed in the backward pass (activation checkpointing), so memory holds ``chunk × V`` floats at
a time instead of ``N × W × V`` (docs/algorithms.md §4: scored under ``softmax(logits / T)``, the distribution
that sampled them).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

Head = Callable[[Tensor], Tensor]  # hidden [M, H] -> logits [M, V]


def _chunk_logprobs(hidden: Tensor, targets: Tensor, head: Head, temperature: float) -> Tensor:
    logits = head(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


def response_logprobs(hidden: Tensor, head: Head, ids: Tensor, start: Tensor, end: Tensor, temperature: float = 1.0,
                      chunk: int = 1024) -> tuple[Tensor, Tensor, Tensor]:
    """Log-probs of the tokens ``ids[i, start_i:end_i]`` given everything before them.

    hidden [N, W, H]: the model's final hidden states on ids [N, W] (right-padded; position p predicts token
    p + 1); start, end [N]. Returns (per-sequence sums [N], per-token log-probs [M], their row index [M]) with
    M = Σ (end − start), tokens in row-major order. Differentiable; float32 (float64 for a float64 model).
    """
    if not 1 <= chunk:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    W = ids.shape[1]
    t = torch.arange(W, device=ids.device)[None]
    keep = (t >= start[:, None].clamp(min=1)) & (t < end[:, None])  # token t is predicted by position t − 1
    rows, cols = keep.nonzero(as_tuple=True)
    selected, targets = hidden[rows, cols - 1], ids[rows, cols]
    parts = []
    for i in range(0, len(targets), chunk):
        h, y = selected[i:i + chunk], targets[i:i + chunk]
        parts.append(checkpoint(_chunk_logprobs, h, y, head, temperature, use_reentrant=False)
                     if torch.is_grad_enabled() and h.requires_grad else _chunk_logprobs(h, y, head, temperature))
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    token = torch.cat(parts) if parts else hidden.new_zeros(0, dtype=dtype)
    seq = torch.zeros(len(ids), dtype=token.dtype, device=ids.device).index_add(0, rows, token)
    return seq, token, rows
