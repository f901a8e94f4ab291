"""Adam with float32 master weights for models that run in bfloat16 / float16.

A low-precision weight cannot take a small step: in bfloat16 (8 significant bits) a weight of 0.02 moves in steps
of 1.2e-4, so an update of 1e-6 rounds away every time. :class:`MasterAdam` keeps a float32 copy of each
low-precision parameter and Adam's moments in float32, steps the copies, and writes them back rounded to the
model's dtype (the standard mixed-precision recipe). Float32 parameters are their own masters. Memory per
low-precision parameter: 2 (weight) + 2 (gradient) + 4 (master) + 8 (moments) bytes.

The step runs chunk by chunk (one ``torch.optim.Adam`` per chunk of about ``chunk_elements`` elements), so the
float32 copies of the gradients exist for one chunk at a time.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


class MasterAdam:
    """``MasterAdam(params, lr=...)``: ``zero_grad``, ``step``, ``state_dict`` / ``load_state_dict`` as an optimizer.

    ``lr`` can be changed through ``param_groups`` like any optimizer's (every chunk shares one value).
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, chunk_elements: int = 1 << 27) -> None:
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("no trainable parameters")
        self.masters = [p if p.dtype == torch.float32 else p.detach().float().clone() for p in self.params]
        chunks: list[list[int]] = [[]]
        size = 0
        for i, p in enumerate(self.params):
            if chunks[-1] and size + p.numel() > chunk_elements:
                chunks.append([])
                size = 0
            chunks[-1].append(i)
            size += p.numel()
        fused = all(p.is_cuda for p in self.params)
        self.chunks = chunks
        self.optimizers = [torch.optim.Adam([self.masters[i] for i in chunk], lr=lr, betas=betas, eps=eps,
                                            weight_decay=weight_decay, fused=fused or None) for chunk in chunks]

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for chunk, opt in zip(self.chunks, self.optimizers):
            for i in chunk:
                p, m = self.params[i], self.masters[i]
                if m is not p:
                    m.grad = None if p.grad is None else p.grad.float()
            opt.step()
            low = [i for i in chunk if self.masters[i] is not self.params[i]]
            for i in low:
                self.masters[i].grad = None
            if low:
                torch._foreach_copy_([self.params[i] for i in low], [self.masters[i] for i in low])

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers],
                "masters": [m.detach() for m, p in zip(self.masters, self.params) if m is not p]}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for opt, s in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)
        low = [m for m, p in zip(self.masters, self.params) if m is not p]
        for m, saved in zip(low, state["masters"], strict=True):
            m.copy_(saved)
        for m, p in zip(self.masters, self.params):
            if m is not p:
                p.copy_(m)


def low_precision(params: Iterable[Tensor]) -> bool:
    """True if any parameter is stored in fewer than 32 bits (bfloat16 or float16)."""
    return any(p.dtype in (torch.bfloat16, torch.float16) for p in params)
