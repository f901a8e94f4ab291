"""Batched sampling with a KV cache, and the log-probability of what was sampled (docs/algorithms.md §4).

Prompts are lists of token ids (usually ``[bos] + encode(prompt)``); a response is what the model emits after
the prompt, the stop token included when it was hit.

**Which distribution.** At temperature ``T > 0`` a token is drawn from ``softmax(logits / T)``, and
:class:`GenerationOutput` carries ``log softmax(logits / T)`` of every drawn token: the learner must score
responses under that same distribution (``rl.lm.logprobs.response_logprobs`` with the same ``T``). Nucleus
(top-p) truncation is not offered: it would make π depend on a θ-dependent support (docs/algorithms.md §4).

**Reproducible draws.** Token ``t`` of a response is drawn by inverse-CDF sampling with the uniform number
``u(seed, stream, t)`` (:func:`stream_uniforms`, a counter-based hash): the same stream gives the same response
whatever else shares its batch — how the prompts are split into batches, micro-batches or ranks, or whether a
rollout is continued in a later iteration (the offset ``t`` counts from the start of the response).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rl.lm.model import KVCache, TinyLM
from rl.lm.tokenizer import EOS_ID, PAD_ID


@dataclass
class GenerationOutput:
    """``tokens`` [B, N] responses padded with pad_id; ``lengths`` [B] (stop token counted); ``finished`` [B]
    True where a stop token ended the row; ``logprobs`` [B, N]: log-prob of each drawn token under the sampling
    distribution (``softmax(logits / T)``; ``softmax(logits)`` when greedy), 0 on padding."""

    tokens: Tensor
    lengths: Tensor
    finished: Tensor
    logprobs: Tensor

    def sequences(self) -> list[list[int]]:
        """Each row's response ids, trimmed to its length."""
        return [row[:n] for row, n in zip(self.tokens.tolist(), self.lengths.tolist())]


_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer: a bijective mix of 64-bit counters into well-spread 64-bit values."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        return x ^ (x >> np.uint64(31))


def stream_uniforms(seed: int, streams: Sequence[int], offsets: Sequence[int], n: int,
                    device: torch.device | str = "cpu") -> Tensor:
    """``u[i, j] = U(seed, streams[i], offsets[i] + j)`` in (0, 1), float32 [len(streams), n]: a pure function of
    its three integers (splitmix64 of a mixed counter), so any split of the rows draws the same numbers."""
    s = _splitmix64(np.asarray(streams, dtype=np.uint64) ^ _splitmix64(np.full(len(streams), seed, dtype=np.uint64)))
    t = np.asarray(offsets, dtype=np.uint64)[:, None] + np.arange(n, dtype=np.uint64)[None]
    bits = _splitmix64(_splitmix64(t) ^ s[:, None]) >> np.uint64(40)  # the top 24 bits
    return torch.from_numpy((bits.astype(np.float64) + 0.5) / 2.0**24).to(device, torch.float32)


def sample_next(logits: Tensor, temperature: float, u: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """logits [B, V] -> (token ids [B], their log-probs [B]).

    ``temperature == 0``: greedy, log-prob under ``softmax(logits)``. Otherwise inverse-CDF sampling from
    ``p = softmax(logits / T)`` with one uniform per row ``u`` [B] (fresh ``torch.rand`` when None): the first
    token whose cumulative probability exceeds ``u`` (times the total, against rounding).
    """
    if temperature == 0:
        tok = logits.argmax(-1)
        logp = F.log_softmax(logits.float(), dim=-1).gather(-1, tok[:, None]).squeeze(-1)
        return tok, logp
    probs = torch.softmax(logits if temperature == 1 else logits.float() / temperature, -1, dtype=torch.float32)
    if u is None:
        u = torch.rand(len(logits), device=logits.device)
    tok = inverse_cdf(probs, u)
    return tok, probs.gather(-1, tok[:, None]).squeeze(-1).log()


def inverse_cdf(probs: Tensor, u: Tensor, block: int = 1024) -> Tensor:
    """The first index whose cumulative probability exceeds ``u`` × the total, per row of probs [B, V]: the block
    of ``block`` entries that holds it (a cumulative sum of block sums), then the entry inside that block (a
    cumulative sum of one block) — two short scans instead of one over the whole vocabulary."""
    B, V = probs.shape
    nb = -(-V // block)
    padded = F.pad(probs, (0, nb * block - V)) if nb * block != V else probs
    blocks = padded.view(B, nb, block)
    sums = blocks.sum(-1)  # [B, nb]
    cum = sums.cumsum(-1)
    target = u.to(cum.dtype)[:, None] * cum[:, -1:]
    b = torch.searchsorted(cum, target).clamp_(max=nb - 1)  # [B, 1]
    rest = target - (cum.gather(-1, b) - sums.gather(-1, b))  # what is left to cover inside block b
    inner = blocks.gather(1, b[:, :, None].expand(B, 1, block)).squeeze(1).cumsum(-1)  # [B, block]
    j = torch.searchsorted(inner, rest).clamp_(max=block - 1)
    return (b * block + j).squeeze(-1).clamp_(max=V - 1)


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Left-pad to [B, max_len]: (ids, mask) with mask 1 on real tokens."""
    if not seqs:
        raise ValueError("no prompts given")
    if any(len(s) == 0 for s in seqs):
        raise ValueError("every prompt needs at least one token (start it with the BOS id)")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.as_tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = True
    return ids.to(device), mask.to(device)


class Decoder(Protocol):
    """A model with a KV cache, as :func:`decode` drives it.

    ``prefill(ids, mask, new_tokens)``: the left-padded prompt block ids [B, W] (mask [B, W] True on real
    tokens), room for ``new_tokens`` more; returns the logits [B, V] that predict the first new token.
    ``step(tok, t)``: the ``t``-th new token of every row ([B], t = 0, 1, ...); returns the next logits [B, V].
    Every new position counts as real (finished rows keep feeding padding, whose outputs nobody reads).
    """

    def prefill(self, ids: Tensor, mask: Tensor, new_tokens: int) -> Tensor: ...

    def step(self, tok: Tensor, t: int) -> Tensor: ...


@torch.no_grad()
def decode(decoder: Decoder, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, temperature: float = 1.0,
           uniforms: Tensor | None = None, stop_ids: Sequence[int] = (EOS_ID,), pad_id: int = PAD_ID,
           device: torch.device | str = "cpu", check_every: int = 8) -> GenerationOutput:
    """The batched sampling loop for any :class:`Decoder`: ``uniforms`` [B, max_new_tokens] drive the draws
    (:func:`stream_uniforms`; fresh ``torch.rand`` numbers when None). A row ends when it emits one of
    ``stop_ids``; afterwards it emits ``pad_id``. The loop asks the device whether every row has finished only
    every ``check_every`` tokens (each ask is a host sync)."""
    if temperature < 0:
        raise ValueError(f"need temperature >= 0, got {temperature}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    ids, mask = pad_left(prompt_ids, pad_id, device)
    B = ids.shape[0]
    if uniforms is not None and tuple(uniforms.shape) != (B, max_new_tokens):
        raise ValueError(f"uniforms must be [{B}, {max_new_tokens}], got {list(uniforms.shape)}")
    if uniforms is None and temperature > 0:
        uniforms = torch.rand(B, max_new_tokens, device=device)
    if uniforms is not None:
        uniforms = uniforms.to(device)
    stops = torch.as_tensor(list(stop_ids), dtype=torch.long, device=device)
    out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(B, max_new_tokens, dtype=torch.float32, device=device)
    lengths = torch.zeros(B, dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    logits = decoder.prefill(ids, mask, max_new_tokens)
    for t in range(max_new_tokens):
        tok, logp = sample_next(logits, temperature, None if uniforms is None else uniforms[:, t])
        out[:, t] = tok.masked_fill(finished, pad_id)
        logprobs[:, t] = logp.masked_fill(finished, 0.0)
        lengths += ~finished
        finished |= torch.isin(tok, stops)
        if t + 1 == max_new_tokens or ((t + 1) % check_every == 0 and bool(finished.all())):
            break
        logits = decoder.step(out[:, t], t)
    n = int(lengths.max())
    return GenerationOutput(out[:, :n], lengths, finished, logprobs[:, :n])


class TinyDecoder:
    """:class:`Decoder` of a :class:`TinyLM` with its preallocated :class:`KVCache`. Positions are counted from
    each row's first real token."""

    def __init__(self, model: TinyLM) -> None:
        self.model = model
        self.cache: KVCache | None = None
        self.mask: Tensor | None = None

    def prefill(self, ids: Tensor, mask: Tensor, new_tokens: int) -> Tensor:
        if ids.shape[1] + new_tokens > self.model.config.max_len:
            raise ValueError(f"longest prompt ({ids.shape[1]}) + max_new_tokens ({new_tokens}) exceeds the model's "
                             f"max_len={self.model.config.max_len}")
        self.cache, self.mask = self.model.new_cache(len(ids)), mask
        logits, _ = self.model(ids, attention_mask=mask, kv_cache=self.cache)
        return logits[:, -1]

    def step(self, tok: Tensor, t: int) -> Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(tok), 1)], dim=1)
        logits, _ = self.model(tok[:, None], attention_mask=self.mask, kv_cache=self.cache)
        return logits[:, -1]


def generate(model: TinyLM, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, temperature: float = 1.0,
             stop_ids: Sequence[int] = (EOS_ID,), pad_id: int = PAD_ID, uniforms: Tensor | None = None,
             generator: torch.Generator | None = None) -> GenerationOutput:
    """Sample up to ``max_new_tokens`` after each prompt with a :class:`TinyLM`, all rows at once (:func:`decode`);
    the draws come from ``uniforms``, else from ``generator`` (``torch.rand``), else from torch's default one."""
    device = next(model.parameters()).device
    if uniforms is None and temperature > 0 and generator is not None:
        uniforms = torch.rand(len(prompt_ids), max_new_tokens, generator=generator, device=generator.device)
    return decode(TinyDecoder(model), prompt_ids, max_new_tokens, temperature, uniforms, stop_ids, pad_id, device)


def token_logprobs(model: TinyLM | torch.nn.Module, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                   pad_id: int = PAD_ID) -> tuple[Tensor, Tensor]:
    """Per-token ``log π(y_t | x, y_<t)``: (logp [B, R], mask [B, R]) with R the longest response, 0 on padding.

    Each row is laid out as ``prompt + response`` and right-padded; one forward pass; differentiable. ``model``: a
    :class:`TinyLM` or a Hugging Face causal LM.
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token (start it with the BOS id)")
    device = next(model.parameters()).device
    B, R = len(prompt_ids), max((len(r) for r in response_ids), default=0)
    rows = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids)]
    width = max(len(r) for r in rows)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.as_tensor(row, dtype=torch.long)
    p_len = torch.tensor([len(p) for p in prompt_ids])
    r_len = torch.tensor([len(r) for r in response_ids])
    ids, p_len, r_len = ids.to(device), p_len.to(device), r_len.to(device)
    attention = torch.arange(width, device=device)[None] < (p_len + r_len)[:, None]
    out = model(ids, attention_mask=attention)  # a TinyLM's logits, or a Hugging Face model's output
    logp_all = F.log_softmax(getattr(out, "logits", out).float(), dim=-1)  # [B, W, V]
    next_logp = logp_all[:, :-1].gather(2, ids[:, 1:, None]).squeeze(-1)  # [B, W-1]: log p(ids[t+1] | ids[:t+1])
    j = torch.arange(R, device=device)[None]
    mask = j < r_len[:, None]  # [B, R]
    src = (p_len[:, None] - 1 + j).clamp(max=max(width - 2, 0))  # response token j sits at p_len + j
    return next_logp.gather(1, src).masked_fill(~mask, 0.0), mask


def sequence_logprobs(model: TinyLM, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                      pad_id: int = PAD_ID) -> Tensor:
    """``log π(y|x)`` [B]: the sum of each response's token log-probs given its prompt (differentiable)."""
    logp, _ = token_logprobs(model, prompt_ids, response_ids, pad_id)
    return logp.sum(-1)
