"""Decoding steps of Hugging Face causal LMs (the :class:`rl.lm.sampling.Decoder` protocol).

:class:`HFDecoder` works for any causal LM through its own dynamic KV cache. :class:`LlamaDecoder` serves the
Llama family (Llama, Qwen2, Qwen3, Mistral without sliding window) with a KV cache of its own and the model's
own modules (projections, norms, MLP, rotary embedding — LoRA adapters included), for speed:

- attention of one new token reads each cached key/value head once for its whole group of query heads (one
  ``F.scaled_dot_product_attention`` call whose "query length" is that group; ``attention="bmm"``: two batched
  matrix products and a softmax), instead of copying K/V to every query head;
- each step reads only a window of the cache: the positions written so far, rounded up to ``window``;
- with ``cuda_graphs`` each step is one CUDA-graph replay per (rows, cache length, window): rows are padded up
  to a power of two (≥ 8) so that a few graphs serve every batch;
- fewer, larger matrix products: at each prefill (the weights change between iterations) the query/key/value
  projections are concatenated into one weight, and the MLP's gate and up projections into another; LoRA adapters
  are merged into copies of their layers' weights (``W + s·B·A``, so a step runs no adapter products); the
  residual additions ride on the output projections' products (``addmm``). Memory: those copies (for full
  fine-tuning, the q/k/v and gate/up weights: about 55 % of a Qwen2.5 model's non-embedding weights);
- fewer small kernels per step (``compile``; by default on when steps replay from CUDA graphs): the rotary
  embedding of q and k with the two cache writes is one ``torch.compile``-generated kernel
  (:func:`rope_into_cache`), the MLP's ``act(gate)·up`` another (:func:`swiglu`). With SDPA, a step launches about
  half as many kernels as with eager small operations and two products (docs/benchmarks.md, issue #11).

Both give the logits of the model's own forward pass on the unpadded sequence (tests/test_kimi.py checks it).
Prompts are left-padded; positions count real tokens only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rl.lm.fused import LLAMA_FAMILY, rms_norm


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def _context(config: Any) -> int:
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048


def base_model(model: Any) -> Any:
    """The ``transformers`` model under a ``peft`` wrapper (itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class HFDecoder:
    """Any causal LM, stepped through its own dynamic KV cache (eager)."""

    def __init__(self, model: Any) -> None:
        self.model, self.context = model, _context(base_model(model).config)
        self.cache: Any = None

    def prefill(self, ids: Tensor, mask: Tensor, new_tokens: int) -> Tensor:
        if ids.shape[1] + new_tokens > self.context:
            raise ValueError(f"prompt ({ids.shape[1]}) + new tokens ({new_tokens}) exceed the model's context "
                             f"{self.context}")
        self.mask, self.next_pos = mask.long(), mask.sum(-1, keepdim=True)
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[:, -1]

    def step(self, tok: Tensor, t: int) -> Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(tok), 1)], dim=1)
        out = self.model(input_ids=tok[:, None], attention_mask=self.mask, position_ids=self.next_pos + t,
                         past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[:, -1]


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding of x [B, T, heads, D]; cos, sin [B, T, 1, D], sin with the rotate-half signs folded in
    (first half negative): ``x·cos + roll(x, D/2)·sin`` = the rotate-half convention in three kernels."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


def rope_into_cache(q: Tensor, k: Tensor, v: Tensor, cos_q: Tensor, sin_q: Tensor, cos: Tensor, sin: Tensor,
                    k_cache: Tensor, v_cache: Tensor, slot: Tensor) -> Tensor:
    """One new token per row: q [rows, 1, heads, D], k and v [rows, 1, kv heads, D]; the rotated k and v are written
    at cache position ``slot`` [1] of k_cache, v_cache [rows, kv heads, L, D]; returns q rotated (cos_q, sin_q carry
    the attention's scale) as [rows, kv heads, G, D], each key/value head's group of G query heads."""
    k_cache.index_copy_(2, slot, _rotate(k, cos, sin).transpose(1, 2))
    v_cache.index_copy_(2, slot, v.transpose(1, 2))
    rows, _, heads, D = q.shape
    kv = k_cache.shape[1]
    return _rotate(q, cos_q, sin_q).view(rows, kv, heads // kv, D)


def swiglu(gate_up: Tensor, act: Any) -> Tensor:
    """The gated MLP's hidden activation ``act(gate) · up`` from the concatenated [.., 2F] gate/up product."""
    gate, up = gate_up.chunk(2, dim=-1)
    return act(gate) * up


def attend_one(q: Tensor, keys: Tensor, values: Tensor, bias: Tensor, sdpa: bool) -> Tensor:
    """Attention of one new token: q [rows, kv heads, G, D] (scaled), keys/values [rows, kv heads, W, D], bias
    [rows, 1, 1, W] (0 or −inf) -> [rows, kv heads, G, D]. Each head's G queries read its keys once."""
    if sdpa:
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, scale=1.0)
    scores = (q @ keys.transpose(-1, -2)).add_(bias)
    return scores.softmax(-1, dtype=torch.float32).to(values.dtype) @ values


class Fusable:
    """``fn``, run through ``torch.compile`` (one generated kernel for its elementwise work) once ``enable()`` is
    called; if compiling or running the compiled code fails, it says so once and runs ``fn`` eagerly from then on."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.compiled = fn, None

    def enable(self) -> None:
        if self.compiled is None:
            self.compiled = torch.compile(self.fn, fullgraph=True)  # a second shape: one recompile, shape-generic

    def __call__(self, *args: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as e:  # noqa: BLE001 — no Triton, no C compiler, an unsupported op: run eagerly
                import sys

                print(f"torch.compile of {self.fn.__name__} failed ({type(e).__name__}: {str(e)[:200]}); "
                      "it runs eagerly", file=sys.stderr)
                self.compiled = None
        return self.fn(*args)


def linear_weight(module: Any) -> tuple[Tensor, Tensor | None] | None:
    """(W, b) of the affine map a linear layer computes: an ``nn.Linear``'s own tensors, or for a ``peft`` LoRA layer
    ``W + Σ s·B·A`` over its active adapters (a new tensor); None for anything else (e.g. DoRA)."""
    if type(module) is nn.Linear:
        return module.weight, module.bias
    base = getattr(module, "base_layer", None)
    if type(base) is not nn.Linear or not hasattr(module, "lora_A"):
        return None
    if getattr(module, "disable_adapters", False):  # the base alone (peft would first unmerge merged adapters)
        return None if getattr(module, "merged", False) else (base.weight, base.bias)
    if getattr(module, "merged", False):  # peft then runs the base layer alone: the adapters are in its weight
        return base.weight, base.bias
    weight = base.weight
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        if getattr(module, "use_dora", {}).get(name, False):
            return None
        delta = module.lora_B[name].weight @ module.lora_A[name].weight
        weight = weight + (module.scaling[name] * delta).to(weight.dtype)
    return weight, base.bias


def _cat_bias(weights: list[tuple[Tensor, Tensor | None]]) -> Tensor | None:
    if all(b is None for _, b in weights):
        return None
    return torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in weights])


def fused_layer_weights(layer: Any) -> dict[str, Tensor] | None:
    """One decoder layer's weights for decoding: ``qkv`` (and ``qkv_bias``), ``gate_up``, ``o``, ``down``; None if a
    projection is neither a plain linear layer nor a LoRA one."""
    a, mlp = layer.self_attn, layer.mlp
    if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return None
    parts = [linear_weight(m) for m in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, mlp.gate_proj, mlp.up_proj,
                                        mlp.down_proj)]
    if any(p is None for p in parts) or parts[3][1] is not None or parts[6][1] is not None \
            or parts[4][1] is not None or parts[5][1] is not None:
        return None
    out = {"qkv": torch.cat([w for w, _ in parts[:3]]), "gate_up": torch.cat([parts[4][0], parts[5][0]]),
           "o": parts[3][0], "down": parts[6][0]}
    bias = _cat_bias(parts[:3])
    if bias is not None:
        out["qkv_bias"] = bias
    return out


class LlamaDecoder:
    """Fast decoding of a Llama-family model (see the module docstring). Raises ``ValueError`` for other models."""

    def __init__(self, model: Any, cuda_graphs: bool = False, window: int = 64, fuse: bool = True,
                 compile: bool | None = None, attention: str = "sdpa") -> None:
        lm = base_model(model)
        cfg = lm.config
        if cfg.model_type not in LLAMA_FAMILY:
            raise ValueError(f"{cfg.model_type} is not a Llama-family model ({', '.join(LLAMA_FAMILY)})")
        if getattr(cfg, "use_sliding_window", False) or (cfg.model_type == "mistral" and cfg.sliding_window):
            raise ValueError("sliding-window attention is not supported by the fast decoder")
        self.lm, self.core = lm, lm.model
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.context, self.window, self.cuda_graphs = _context(cfg), window, cuda_graphs
        self.shape: tuple[int, int] | None = None  # (rows, cache length) of the allocated cache
        self.graphed: Any = None
        self.fuse = fuse
        self.fused: list[dict[str, Tensor] | None] | None = None  # per layer (fused_layer_weights), see refresh()
        if attention not in ("sdpa", "bmm"):
            raise ValueError(f"attention must be sdpa or bmm, got {attention!r}")
        self.sdpa = attention == "sdpa"
        self.compile = compile  # None: compile the steps' small operations when they replay from CUDA graphs
        self.rope_into_cache, self.swiglu = Fusable(rope_into_cache), Fusable(swiglu)

    def reset(self) -> None:
        """Free the cache, the graphs and the fused weights (e.g. after the weights moved to other storage)."""
        self.shape, self.graphed, self.fused = None, None, None
        self.k = self.v = []

    @torch.no_grad()
    def refresh(self) -> None:
        """Bring the fused weights up to date with the model's (in place, so that captured graphs stay valid)."""
        if not self.fuse:
            return
        if self.fused is not None:
            for old, layer in zip(self.fused, self.core.layers):  # layer by layer: one layer's copies at a time
                fresh = fused_layer_weights(layer)
                if (old is None) != (fresh is None) or (fresh is not None and any(
                        k not in old or old[k].shape != t.shape or old[k].dtype != t.dtype for k, t in fresh.items())):
                    break  # the model changed shape (e.g. adapters added): build anew
                for key, tensor in (fresh or {}).items():
                    if tensor.data_ptr() != old[key].data_ptr():
                        old[key].copy_(tensor)
            else:
                return
        self.fused, self.graphed = [fused_layer_weights(layer) for layer in self.core.layers], None

    def _allocate(self, rows: int, length: int, device: torch.device) -> None:
        if self.shape == (rows, length):
            return
        dtype = self.core.embed_tokens.weight.dtype
        shape = (rows, self.kv_heads, length, self.head_dim)
        n = len(self.core.layers)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n)]
        self.valid = torch.zeros(rows, length, dtype=torch.bool, device=device)
        self.shape, self.graphed = (rows, length), None

    def _layers(self, x: Tensor, positions: Tensor, attend: Any, mlp: Any = swiglu) -> Tensor:
        """Every decoder layer on x [B, T, hidden]; ``attend(layer_index, q, k, v, rope)`` (each [B, T, heads, D],
        not yet rotated; ``rope`` = (cos_q, sin_q, cos, sin) of :func:`_rotate`, q's carrying 1/sqrt(D)) ->
        [B, T, heads · D]; ``mlp(gate_up, act)``: :func:`swiglu`. Returns the last position's logits [B, V]."""
        cos, sin = self.core.rotary_emb(x, positions)  # [B, T, D], shared by every layer
        half = cos.shape[-1] // 2
        sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)[:, :, None]
        cos = cos[:, :, None]
        scale = self.core.layers[0].self_attn.scaling
        rope = (cos * scale, sin * scale, cos, sin)  # the attention's 1/sqrt(D) rides on q's rotation
        B, T, H = x.shape
        D, heads, kv = self.head_dim, self.heads, self.kv_heads
        for i, layer in enumerate(self.core.layers):
            a, w = layer.self_attn, self.fused[i] if self.fused else None
            h = rms_norm(layer.input_layernorm, x)
            if w is not None:
                q, k, v = F.linear(h, w["qkv"], w.get("qkv_bias")).view(B, T, heads + 2 * kv, D).split(
                    [heads, kv, kv], dim=2)
            else:
                q, k, v = (proj(h).view(B, T, -1, D) for proj in (a.q_proj, a.k_proj, a.v_proj))
            if hasattr(a, "q_norm"):  # Qwen3: RMSNorm of each head's q and k
                q, k = rms_norm(a.q_norm, q), rms_norm(a.k_norm, k)
            out = attend(i, q, k, v, rope)
            if w is None:
                x = x + a.o_proj(out)
                x = x + layer.mlp(rms_norm(layer.post_attention_layernorm, x))
                continue
            x = torch.addmm(x.view(B * T, H), out.reshape(B * T, -1), w["o"].T).view(B, T, H)  # x + out·Woᵀ
            hidden = mlp(F.linear(rms_norm(layer.post_attention_layernorm, x), w["gate_up"]), layer.mlp.act_fn)
            x = torch.addmm(x.view(B * T, H), hidden.view(B * T, -1), w["down"].T).view(B, T, H)
        return self.lm.lm_head(rms_norm(self.core.norm, x[:, -1]))

    @torch.no_grad()
    def prefill(self, ids: Tensor, mask: Tensor, new_tokens: int) -> Tensor:
        B, W = ids.shape
        if W + new_tokens > self.context:
            raise ValueError(f"prompt ({W}) + new tokens ({new_tokens}) exceed the model's context {self.context}")
        rows = max(8, 1 << (B - 1).bit_length()) if self.cuda_graphs else B
        self.refresh()
        self._allocate(rows, _round_up(W + new_tokens, self.window), ids.device)
        self.width, valid = W, self.valid
        valid.zero_()
        valid[:B, :W] = mask
        valid[B:, W - 1] = True  # padding rows: one real token each
        valid[:, W:] = True
        tokens = ids.new_zeros(rows, W)
        tokens[:B] = ids
        positions = (valid[:, :W].long().cumsum(-1) - 1).clamp(min=0)
        self.next_pos = positions[:, -1:] + 1
        q_i = torch.arange(W, device=ids.device)
        allowed = (((q_i[None, :] <= q_i[:, None])[None] & valid[:, None, :W]) | torch.eye(W, dtype=torch.bool,
                                                                                           device=ids.device))[:, None]

        def attend(i: int, q: Tensor, k: Tensor, v: Tensor, rope: tuple[Tensor, ...]) -> Tensor:
            q, k = _rotate(q, rope[0], rope[1]), _rotate(k, rope[2], rope[3])
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # [rows, kv heads, W, D]
            self.k[i][:, :, :W], self.v[i][:, :, :W] = k, v
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=allowed, scale=1.0,
                                                 enable_gqa=self.heads != self.kv_heads)
            return out.transpose(1, 2).reshape(rows, W, -1)

        return self._layers(self.core.embed_tokens(tokens), positions, attend)[:B]

    def _step(self, window: int, inputs: dict[str, Tensor]) -> Tensor:
        """One token per row (a function of fixed buffers: graph-safe). inputs: tok [rows], slot [1] (the cache
        position it goes to), pos [rows, 1] (its rotary position)."""
        slot = inputs["slot"]
        allowed = self.valid[:, :window] & (torch.arange(window, device=slot.device) <= slot)  # [rows, window]
        bias = torch.zeros(allowed.shape, dtype=self.k[0].dtype, device=slot.device).masked_fill_(~allowed, float("-inf"))
        bias = bias[:, None, None]  # [rows, 1, 1, window]
        rows = allowed.shape[0]

        def attend(i: int, q: Tensor, k: Tensor, v: Tensor, rope: tuple[Tensor, ...]) -> Tensor:
            q = self.rope_into_cache(q, k, v, *rope, self.k[i], self.v[i], slot)  # [rows, kv heads, G, D]
            out = attend_one(q, self.k[i][:, :, :window], self.v[i][:, :, :window], bias, self.sdpa)
            return out.reshape(rows, 1, self.heads * self.head_dim)

        return self._layers(self.core.embed_tokens(inputs["tok"][:, None]), inputs["pos"], attend, self.swiglu)

    @torch.no_grad()
    def step(self, tok: Tensor, t: int) -> Tensor:
        rows, length = self.shape
        slot = self.width + t
        if slot >= length:
            raise ValueError(f"decoding position {slot} is past the cache length {length}")
        B = len(tok)
        padded = tok.new_zeros(rows)
        padded[:B] = tok
        inputs = {"tok": padded, "slot": torch.full((1,), slot, dtype=torch.long, device=tok.device),
                  "pos": self.next_pos + t}
        window = min(_round_up(slot + 1, self.window), length)
        graphs = self.cuda_graphs and tok.is_cuda
        if self.compile or (self.compile is None and graphs):  # None: with graphs only (idempotent)
            self.rope_into_cache.enable()
            self.swiglu.enable()
        if graphs:
            if self.graphed is None:
                from rl.graphs import Graphed

                self.graphed = Graphed(lambda key, x: self._step(key[2], x))
            logits = self.graphed((rows, length, window), inputs)
        else:
            logits = self._step(window, inputs)
        return logits[:B]


def make_decoder(model: Any, cuda_graphs: bool = False, compile: bool | None = None) -> LlamaDecoder | HFDecoder:
    """:class:`LlamaDecoder` where it applies, else :class:`HFDecoder` (which ignores ``cuda_graphs``)."""
    try:
        return LlamaDecoder(model, cuda_graphs=cuda_graphs, compile=compile)
    except ValueError:
        return HFDecoder(model)
