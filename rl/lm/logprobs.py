"""Response log-probabilities ``log π_T(y_t | x, y_<t)`` from a model's last hidden states, without a full-vocabulary
tensor for the batch: the output projection and the log-softmax run over chunks of response tokens, so memory
holds ``chunk × V`` floats at a time instead of ``N × W × V`` (docs/algorithms.md §4: scored under
``softmax(logits / T)``, the distribution that sampled them).

Two ways, same numbers:

- the output projection given as its weight ``W`` [V, H] (a bias-free linear head, the usual LM head):
  :class:`LinearLogprob`, a hand-written forward and backward. Forward keeps only each token's log-sum-exp; the
  backward recomputes a chunk's logits once and forms ``∂/∂z = g · (onehot(y) − softmax(z)) / T`` in place, then
  the two products for ``∂h`` and ``∂W`` (``∂W`` summed over chunks in float32 on CUDA). About half the kernels
  of differentiating the forward through autograd, and no second forward;
- any other head (a callable ``hidden -> logits``, e.g. with a soft cap): each chunk is recomputed in the
  backward pass (activation checkpointing).
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


def _scaled_logits(h: Tensor, weight: Tensor, temperature: float) -> Tensor:
    """``(h Wᵀ) / T`` in float32 (float64 for float64 inputs): [chunk, V]."""
    z = (h @ weight.T).to(torch.promote_types(h.dtype, torch.float32))
    return z.div_(temperature) if temperature != 1 else z


_MIXED_ADDMM = [True]  # False once this torch has shown it lacks addmm(..., out_dtype=) on CUDA


def _add_product(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """``acc += a @ b`` with acc in float32 and a, b maybe bf16/fp16: on CUDA without rounding ``a @ b`` first."""
    if acc.dtype != a.dtype and a.is_cuda and _MIXED_ADDMM[0]:
        try:
            torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
            return
        except (RuntimeError, TypeError):
            _MIXED_ADDMM[0] = False
    acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


class LinearLogprob(torch.autograd.Function):
    """``log softmax((h Wᵀ) / T)[y]`` per row of h [M, H], for a bias-free linear head W [V, H], chunk by chunk."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor, temperature: float, chunk: int) -> Tensor:
        out_dtype = torch.promote_types(h.dtype, torch.float32)
        out = torch.empty(len(targets), dtype=out_dtype, device=h.device)
        lse = torch.empty_like(out)
        for i in range(0, len(targets), chunk):
            z = _scaled_logits(h[i:i + chunk], weight, temperature)
            lse[i:i + chunk] = torch.logsumexp(z, -1)
            out[i:i + chunk] = z.gather(-1, targets[i:i + chunk, None]).squeeze(-1) - lse[i:i + chunk]
        ctx.save_for_backward(h, weight, targets, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        h, weight, targets, lse = ctx.saved_tensors
        T, chunk = ctx.temperature, ctx.chunk
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if want_h else None
        acc = torch.zeros(weight.shape, dtype=torch.promote_types(weight.dtype, torch.float32),
                          device=weight.device) if want_w else None
        for i in range(0, len(targets), chunk):
            g = grad[i:i + chunk, None]
            z = _scaled_logits(h[i:i + chunk], weight, T)
            dz = z.sub_(lse[i:i + chunk, None]).exp_().mul_(-g)  # −g · softmax(z)
            dz.scatter_add_(-1, targets[i:i + chunk, None], g)  # + g · onehot(y)
            dz = (dz.div_(T) if T != 1 else dz).to(h.dtype)  # ∂/∂logits
            if want_h:
                torch.mm(dz, weight, out=grad_h[i:i + chunk])
            if want_w:
                _add_product(acc, dz.T, h[i:i + chunk])
        return grad_h, (acc.to(weight.dtype) if want_w else None), None, None, None


def response_logprobs(hidden: Tensor, head: Head | Tensor, ids: Tensor, start: Tensor, end: Tensor,
                      temperature: float = 1.0, chunk: int = 1024) -> tuple[Tensor, Tensor, Tensor]:
    """Log-probs of the tokens ``ids[i, start_i:end_i]`` given everything before them.

    hidden [N, W, H]: the model's final hidden states on ids [N, W] (right-padded; position p predicts token
    p + 1); ``head``: the output projection's weight [V, H] (bias-free linear head: :class:`LinearLogprob`) or a
    callable hidden -> logits; start, end [N]. Returns (per-sequence sums [N], per-token log-probs [M], their row
    index [M]) with M = Σ (end − start), tokens in row-major order. Differentiable; float32 (float64 for a float64
    model).
    """
    if not 1 <= chunk:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    W = ids.shape[1]
    t = torch.arange(W, device=ids.device)[None]
    keep = (t >= start[:, None].clamp(min=1)) & (t < end[:, None])  # token t is predicted by position t − 1
    rows, cols = keep.nonzero(as_tuple=True)
    selected, targets = hidden[rows, cols - 1], ids[rows, cols]
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    if isinstance(head, Tensor):
        token = LinearLogprob.apply(selected, head, targets, float(temperature), chunk)
    else:
        parts = []
        for i in range(0, len(targets), chunk):
            h, y = selected[i:i + chunk], targets[i:i + chunk]
            parts.append(checkpoint(_chunk_logprobs, h, y, head, temperature, use_reentrant=False)
                         if torch.is_grad_enabled() and h.requires_grad else _chunk_logprobs(h, y, head, temperature))
        token = torch.cat(parts) if parts else hidden.new_zeros(0, dtype=dtype)
    seq = torch.zeros(len(ids), dtype=token.dtype, device=ids.device).index_add(0, rows, token)
    return seq, token, rows
