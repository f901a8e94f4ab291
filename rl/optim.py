"""Two Adams: :class:`MasterAdam`, with float32 master weights for models that run in bfloat16 / float16, and
:class:`WideAdam`, PyTorch's fused Adam spread over the whole GPU for the small networks of the control agents.

A low-precision weight cannot take a small step: in bfloat16 (8 significant bits) a weight of 0.02 moves in steps
of 1.2e-4, so an update of 1e-6 rounds away every time. :class:`MasterAdam` keeps a float32 copy of each
low-precision parameter and Adam's moments in float32, steps the copies, and writes them back rounded to the
model's dtype (the standard mixed-precision recipe). Float32 parameters are their own masters. Memory per
low-precision parameter: 2 (weight) + 2 (gradient) + 4 (master) + 8 (moments) bytes.

The step runs chunk by chunk (one ``torch.optim.Adam`` per chunk of about ``chunk_elements`` elements), so the
float32 copies of the gradients exist for one chunk at a time.
"""

from __future__ import annotations

import math
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


def default_piece(numel: int, pieces: int = 30) -> int:
    """WideAdam's elements per view for a group of ``numel`` elements: ``numel / pieces``, rounded up to 64."""
    return max(64, math.ceil(numel / pieces / 64) * 64)


class WideAdam(torch.optim.Adam):
    """``torch.optim.Adam(params, lr, fused=True, capturable=...)`` whose kernel runs on more of the GPU.

    The fused kernel gives one thread block to each 65,536 elements of each tensor. TD3's critics at 5 seeds (10
    ensemble members of 256×256) hold 0.7M parameters: about 14 blocks on an H200's 132 SMs, each looping 32 times.
    This optimizer hands the same kernel flat views of ``piece`` elements instead, one block each. A launch of the
    kernel takes at most 36 tensors (``multi_tensor_apply`` with 4 lists), so the default piece is a group's size
    over 30, rounded up to 64 elements (:func:`default_piece`): about one launch of 30-36 blocks. Each element goes
    through the same arithmetic with the same step count, so the result is bitwise that of
    ``torch.optim.Adam(fused=True)`` (tests/test_optim.py); the state and ``state_dict`` are Adam's own, so
    checkpoints move between the two.
    Plain Adam only: no AMSGrad, maximize or weight decay. ``python scripts/bench_adam.py`` times it on a GPU.
    """

    def __init__(self, params, lr: float, piece: int | None = None, capturable: bool = True) -> None:
        if piece is not None and (piece < 1 or piece % 64):
            raise ValueError(f"piece must be a positive multiple of 64 elements, got {piece}")
        super().__init__(params, lr=lr, fused=True, capturable=capturable)
        self.piece = piece

    def __getstate__(self) -> dict:  # Optimizer's own keeps only defaults, state and groups (deepcopy, pickle)
        return {**super().__getstate__(), "piece": self.piece}

    def piece_for(self, params: list[Tensor]) -> int:
        """Elements per view for a group of these parameters."""
        return self.piece or default_piece(sum(p.numel() for p in params))

    @torch.no_grad()
    def step(self, closure=None) -> None:
        if closure is not None:
            raise ValueError("WideAdam.step takes no closure")
        for group in self.param_groups:
            if group["amsgrad"] or group["maximize"] or group["weight_decay"]:
                raise ValueError("WideAdam is plain Adam: no amsgrad, maximize or weight_decay")
            params: list[Tensor] = []
            grads: list[Tensor] = []
            exp_avgs: list[Tensor] = []
            exp_avg_sqs: list[Tensor] = []
            steps: list[Tensor] = []
            self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, [], steps)
            if not params:
                continue
            torch._foreach_add_(steps, 1)
            piece = self.piece_for(params)

            def pieces(tensors: list[Tensor]) -> list[Tensor]:
                return [v for t in tensors for v in t.view(-1).split(piece)]

            beta1, beta2 = group["betas"]
            torch._fused_adam_(pieces(params), pieces([g.contiguous() for g in grads]), pieces(exp_avgs),
                               pieces(exp_avg_sqs), [],
                               [s for p, s in zip(params, steps) for _ in range(math.ceil(p.numel() / piece))],
                               amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=0.0,
                               eps=group["eps"], maximize=False, grad_scale=None, found_inf=None)


def low_precision(params: Iterable[Tensor]) -> bool:
    """True if any parameter is stored in fewer than 32 bits (bfloat16 or float16)."""
    return any(p.dtype in (torch.bfloat16, torch.float16) for p in params)
