"""Fewer, fused kernels in a Hugging Face model's training forward.

The Llama family's RMSNorm (Llama, Qwen2, Qwen3, Mistral) is written in ``transformers`` as eight tensor operations
in float32 (cast, square, mean, add ε, rsqrt, multiply, cast back, multiply by the weight), each a pass over the
activations, and its backward as more. :func:`fuse_rms_norms` makes every such module one ``F.rms_norm`` call (a
single fused kernel forward and backward on CUDA) with the same weight and ε: the same function up to rounding
(float32 inside; the weight is applied before the single rounding to the model's dtype instead of after). The fast
decoder (``rl.lm.decoders``) computes its norms the same way, so the learner and the sampler agree more closely.
"""

from __future__ import annotations

import types
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

LLAMA_FAMILY = ("llama", "qwen2", "qwen3", "mistral")


def rms_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """A Llama-family RMSNorm module applied as one ``F.rms_norm`` (its weight and ε); any other norm as itself."""
    eps = getattr(norm, "variance_epsilon", None)
    if eps is None:
        return norm(x)
    return F.rms_norm(x, (x.shape[-1],), norm.weight, eps)


def _rms_forward(self: nn.Module, x: Tensor) -> Tensor:
    return rms_norm(self, x)


def fuse_rms_norms(model: nn.Module) -> int:
    """Route the forward of every Llama-family RMSNorm in ``model`` through ``F.rms_norm``; returns how many. A
    model of another family (whose norm may differ, e.g. Gemma's ``1 + weight``) is left as it is (0)."""
    config: Any = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in LLAMA_FAMILY:
        return 0
    count = 0
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon") \
                and isinstance(getattr(module, "weight", None), Tensor):
            module.forward = types.MethodType(_rms_forward, module)
            count += 1
    return count
