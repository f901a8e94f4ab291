"""Hugging Face causal LMs: a tiny randomly initialized one + character-level tokenizer, made offline and saved to a
directory (what tests and ``scripts/bench_llm.py`` load through ``agent.policy=hf``, and what TRL loads beside it);
and :class:`StaticDecoder`, fixed-buffer decoding steps that a GPU replays from CUDA graphs.

Needs the optional ``transformers`` package (``pip install 'actorzoo[llm]'``); nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rl.lm.tokenizer import DEFAULT_CHARS, SPECIAL_TOKENS

ARCHS = ("llama", "gpt2")


def char_tokenizer(chars: str = DEFAULT_CHARS):
    """A ``PreTrainedTokenizerFast`` with one token per character (ids as :class:`rl.lm.CharTokenizer`'s: ``<pad>``
    0, ``<bos>`` 1, ``<eos>`` 2, then ``chars``), which puts ``<bos>`` before every encoded text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {**{t: i for i, t in enumerate(SPECIAL_TOKENS)}, **{c: i + len(SPECIAL_TOKENS) for i, c in enumerate(chars)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<pad>")


def save_tiny_model(path: str | Path, arch: str = "llama", layers: int = 2, hidden: int = 64, heads: int = 2,
                    context: int = 128, seed: int = 0, model_vocab: int | None = None,
                    chars: str = DEFAULT_CHARS) -> Path:
    """Write a random ``arch`` model (``llama``: Llama/Qwen2-style with RoPE, RMSNorm, SwiGLU; ``gpt2``) of
    ``layers`` × ``hidden`` (``heads`` heads, ``context`` positions) and :func:`char_tokenizer` to ``path``.
    ``model_vocab`` (default: the tokenizer's size) lets a test make a model that does not fit its tokenizer."""
    import transformers

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    tokenizer = char_tokenizer(chars)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    vocab = model_vocab or len(tokenizer)
    if arch == "llama":
        config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden,
                                          num_hidden_layers=layers, num_attention_heads=heads,
                                          num_key_value_heads=heads, max_position_embeddings=context,
                                          tie_word_embeddings=True, **ids)
        cls = transformers.LlamaForCausalLM
    else:
        config = transformers.GPT2Config(vocab_size=vocab, n_positions=context, n_embd=hidden, n_layer=layers,
                                         n_head=heads, **ids)
        cls = transformers.GPT2LMHeadModel
    torch.manual_seed(seed)
    model = cls(config)
    model.generation_config.update(**ids)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


class StaticDecoder:
    """The :data:`rl.lm.sampling.Step` of a Hugging Face causal LM with a preallocated KV cache (transformers'
    ``StaticCache``) and 4-D attention masks built here, so that every one-token step reads and writes the same
    buffers. With ``cuda_graphs`` each such step is then replayed from a CUDA graph (:class:`rl.graphs.Graphed`):
    one replay instead of ~10 kernel launches per layer from Python, which is what bounds a small model's decoding.

    Rows are padded up to a power of two (≥ 8) and the cache length to a multiple of 32, so that a few graphs serve
    every batch (partial rollouts change the batch size from iteration to iteration). The logits are those of the
    model's dynamic-cache path (``tests/test_kimi.py`` checks it): query position i attends to the real tokens at
    positions ≤ i; a left-padding position attends to itself only, so that no row is fully masked.

    Use: ``decode(functools.partial(decoder, new_tokens=n), prompts, n, ...)``.
    """

    def __init__(self, module: torch.nn.Module, cuda_graphs: bool = False, max_slots: int = 8) -> None:
        impl = getattr(module.config, "_attn_implementation", None) or "sdpa"
        if impl not in ("sdpa", "eager"):
            raise ValueError(f"static decoding builds its own masks for sdpa or eager attention, not {impl!r}")
        self.module, self.additive, self.max_slots = module, impl == "eager", max_slots
        cfg = module.config
        self.context = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
        self.cuda_graphs = cuda_graphs
        self.graphed: Any = None
        self.slots: dict[tuple[int, int], dict[str, Any]] = {}  # (rows, cache length) -> cache and valid-key mask

    def _mask(self, allowed: torch.Tensor) -> torch.Tensor:
        """A 4-D boolean "may attend" mask in the form the model's attention takes (sdpa: bool; eager: additive)."""
        if not self.additive:
            return allowed
        dtype = self.module.dtype
        return torch.zeros((), dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)

    def _slot(self, rows: int, length: int, device: torch.device) -> dict[str, Any]:
        key = (rows, length)
        if key not in self.slots:
            from transformers import StaticCache

            if len(self.slots) >= self.max_slots:  # start over rather than hold caches for every shape ever seen
                self.slots.clear()
                self.graphed = None
            self.slots[key] = {"cache": StaticCache(config=self.module.config, max_cache_len=length),
                               "valid": torch.zeros(rows, length, dtype=torch.bool, device=device)}
        return self.slots[key]

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, cache: Any, new_tokens: int) -> tuple[torch.Tensor, Any]:
        """``cache is None``: the prompt block ``ids`` [B, W] (left-padded, ``mask`` [B, W]); else one new token per
        row, ``mask`` [B, S] covering every position so far. Returns (logits [B, T, V], the slot key)."""
        B = ids.shape[0]
        rows = max(8, 1 << (B - 1).bit_length())
        if cache is None:
            return self._prefill(ids, mask, rows, new_tokens), (rows, self._length(ids.shape[1], new_tokens))
        slot = self.slots[cache]
        S = mask.shape[1]
        if S > cache[1]:
            raise ValueError(f"decoding position {S} is past the cache length {cache[1]}")
        slot["valid"][:B, S - 1] = mask[:, -1]
        tok = ids.new_zeros(rows, 1)
        tok[:B] = ids
        pos = ids.new_zeros(rows, 1)
        pos[:B] = mask.sum(-1, keepdim=True) - 1
        pos[B:] = S - 1  # padding rows: a real position of their own, never read
        inputs = {"tok": tok, "pos": pos}
        if self.cuda_graphs and ids.is_cuda:
            if self.graphed is None:
                from rl.graphs import Graphed

                self.graphed = Graphed(self._step)
            logits = self.graphed(cache, inputs)
        else:
            logits = self._step(cache, inputs)
        return logits[:B], cache

    def _length(self, width: int, new_tokens: int) -> int:
        """The cache length for a ``width``-token prompt block and ``new_tokens`` more: rounded up to 32 (≤ context)."""
        if width + new_tokens > self.context:
            raise ValueError(f"prompt ({width}) + new tokens ({new_tokens}) exceed the model's context {self.context}")
        return min(_round_up(width + new_tokens, 32), self.context)

    def _prefill(self, ids: torch.Tensor, mask: torch.Tensor, rows: int, new_tokens: int) -> torch.Tensor:
        B, W = ids.shape
        length = self._length(W, new_tokens)
        slot = self._slot(rows, length, ids.device)
        slot["cache"].reset()
        valid = slot["valid"]
        valid.zero_()
        valid[:B, :W] = mask
        valid[B:, W - 1] = True  # padding rows: one real token each
        tokens = ids.new_zeros(rows, W)
        tokens[:B] = ids
        q = torch.arange(W, device=ids.device)[:, None]
        k = torch.arange(length, device=ids.device)[None]
        allowed = ((k <= q)[None] & valid[:, None, :]) | (k == q)[None]  # [rows, W, length]
        positions = (valid[:, :W].long().cumsum(-1) - 1).clamp(min=0)
        out = self.module(input_ids=tokens, attention_mask=self._mask(allowed[:, None]), position_ids=positions,
                          past_key_values=slot["cache"], use_cache=True)
        return out.logits[:B]

    def _step(self, key: tuple[int, int], inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """One token per row against the slot's cache: a function of fixed buffers only (graph-safe)."""
        slot = self.slots[key]
        allowed = slot["valid"][:, None, None, :]  # [rows, 1, 1, length]
        return self.module(input_ids=inputs["tok"], attention_mask=self._mask(allowed), position_ids=inputs["pos"],
                           past_key_values=slot["cache"], use_cache=True).logits
