"""TinyLM: a small pre-LN decoder-only transformer with a preallocated KV cache.

Shapes: ids [B, T] token ids; attention_mask [B, S] with 1 for real tokens and 0 for padding, where S counts
every position seen so far (cached + new, S = cache.length + T); logits [B, T, vocab_size].
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rl.checkpoint import atomic_save, load

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.pt"


@dataclass
class TinyLMConfig:
    """Sizes of a :class:`TinyLM`. ``max_len`` bounds prompt + response length (learned positions)."""

    vocab_size: int
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    max_len: int = 128
    dropout: float = 0.0
    mlp_ratio: int = 4
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if min(self.vocab_size, self.d_model, self.n_layers, self.n_heads, self.max_len) < 1:
            raise ValueError(f"every size of TinyLMConfig must be >= 1, got {self}")


class KVCache:
    """Keys and values of every layer, preallocated to [B, H, max_len, Dh]; positions ``< length`` are filled.

    All rows share ``length`` (prompts are left-padded), so one write per step serves the whole batch.
    """

    def __init__(self, config: TinyLMConfig, batch_size: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        shape = (batch_size, config.n_heads, config.max_len, config.d_model // config.n_heads)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.length = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v [B, H, T, Dh] at ``length`` (advanced by the caller) and return all keys/values so far."""
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Block(nn.Module):
    """Pre-LN block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, cfg: TinyLMConfig) -> None:
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model), nn.GELU(),
                                 nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor, cache: KVCache | None, layer: int) -> Tensor:
        """x [B, T, D], mask [B, 1, T, S] (True = may attend) -> [B, T, D]."""
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, T, D)))
        return x + self.drop(self.mlp(self.ln2(x)))


class TinyLM(nn.Module):
    """Decoder-only transformer with learned positions; ``forward`` runs on a full sequence or incrementally."""

    def __init__(self, config: TinyLMConfig) -> None:
        super().__init__()
        self.config = config
        self.tok = nn.Embedding(config.vocab_size, config.d_model)
        self.pos = nn.Embedding(config.max_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init)
        for block in self.blocks:  # GPT-2: scale the residual projections by depth
            for lin in (block.proj, block.mlp[2]):
                nn.init.normal_(lin.weight, std=0.02 / (2 * config.n_layers) ** 0.5)
        if config.tie_embeddings:
            self.head.weight = self.tok.weight

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def new_cache(self, batch_size: int) -> KVCache:
        """An empty :class:`KVCache` on this model's device and dtype."""
        p = self.tok.weight
        return KVCache(self.config, batch_size, p.device, p.dtype)

    def forward(self, ids: Tensor, attention_mask: Tensor | None = None, kv_cache: KVCache | None = None,
                positions: Tensor | None = None) -> Tensor | tuple[Tensor, KVCache]:
        """ids [B, T] -> logits [B, T, V]; with ``kv_cache``, returns (logits, the same cache advanced by T).

        ``attention_mask`` [B, S] (S = cached + T) masks padded keys; every query may still attend to itself so that
        padded rows stay finite. ``positions`` [B, T] default to the count of real tokens before each one
        (``cumsum(mask) - 1``), which makes left- and right-padded rows see the same positions as unpadded ones.
        """
        logits = self.head(self.hidden_states(ids, attention_mask, kv_cache, positions))
        if kv_cache is None:
            return logits
        kv_cache.length += ids.shape[1]
        return logits, kv_cache

    def hidden_states(self, ids: Tensor, attention_mask: Tensor | None = None, kv_cache: KVCache | None = None,
                      positions: Tensor | None = None) -> Tensor:
        """The final (normalized) hidden states [B, T, d_model] that :meth:`forward` projects to logits; the cache's
        length is left for the caller to advance."""
        B, T = ids.shape
        past = kv_cache.length if kv_cache is not None else 0
        S = past + T
        if S > self.config.max_len:
            raise ValueError(f"sequence of {S} tokens exceeds max_len={self.config.max_len}")
        if attention_mask is None:
            attention_mask = torch.ones(B, S, dtype=torch.bool, device=ids.device)
        if attention_mask.shape != (B, S):
            raise ValueError(f"attention_mask must be [B, cached + T] = {[B, S]}, got {list(attention_mask.shape)}")
        attention_mask = attention_mask.bool()
        if positions is None:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
        q_idx = torch.arange(past, S, device=ids.device)[:, None]
        k_idx = torch.arange(S, device=ids.device)[None, :]
        mask = ((k_idx <= q_idx) & attention_mask[:, None, :]) | (k_idx == q_idx)  # [B, T, S]
        x = self.drop(self.tok(ids) + self.pos(positions))
        for i, block in enumerate(self.blocks):
            x = block(x, mask[:, None], kv_cache, i)
        return self.ln_f(x)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.pt`` (a state dict, loadable with ``weights_only=True``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))
        atomic_save(self.state_dict(), directory / WEIGHTS_FILE)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "TinyLM":
        """Rebuild a model saved by :meth:`save_pretrained`."""
        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{directory} has no {CONFIG_FILE} + {WEIGHTS_FILE}; save one with save_pretrained")
        model = cls(TinyLMConfig(**json.loads((directory / CONFIG_FILE).read_text())))
        model.load_state_dict(load(directory / WEIGHTS_FILE, map_location))
        return model.to(map_location)
