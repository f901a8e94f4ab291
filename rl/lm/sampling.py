"""Batched sampling with the KV cache, and response log-probabilities ``log π(y|x)`` (ALGORITHMS.md §4).

Prompts are lists of token ids (usually ``[bos] + encode(prompt)``); a response is what the model emits after
the prompt, the stop token included when it was hit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rl.lm.model import KVCache, TinyLM
from rl.lm.tokenizer import EOS_ID, PAD_ID


@dataclass
class GenerationOutput:
    """``tokens`` [B, N] responses padded with pad_id; ``lengths`` [B] (stop token counted); ``finished`` [B]
    True where a stop token ended the row, False where it ran out of ``max_new_tokens``."""

    tokens: Tensor
    lengths: Tensor
    finished: Tensor

    def sequences(self) -> list[list[int]]:
        """Each row's response ids, trimmed to its length."""
        return [row[:n] for row, n in zip(self.tokens.tolist(), self.lengths.tolist())]


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


def sample_next(logits: Tensor, temperature: float = 1.0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> Tensor:
    """logits [B, V] -> token ids [B]: greedy when ``temperature == 0``, else temperature + nucleus sampling.

    Nucleus: keep the most probable tokens until their mass reaches ``top_p`` (the top token always stays).
    """
    if temperature == 0:
        return logits.argmax(-1)
    probs = F.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        drop[:, 0] = False
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p.masked_fill(drop, 0.0))
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# (ids [B, T], attention_mask [B, S] over cached + new positions, cache or None) -> (logits [B, T, V], cache)
Step = Callable[[Tensor, Tensor, Any], tuple[Tensor, Any]]


@torch.no_grad()
def decode(step: Step, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, temperature: float = 1.0,
           top_p: float = 1.0, stop_ids: Sequence[int] = (EOS_ID,), pad_id: int = PAD_ID,
           device: torch.device | str = "cpu", generator: torch.Generator | None = None,
           check_every: int = 8) -> GenerationOutput:
    """The batched sampling loop for any model with a KV cache, reached through ``step`` (see :data:`Step`).

    Prompts are left-padded (masked); the first call gets the whole prompt block and ``cache=None``, each later call
    one new token per row with the cache it returned. A row ends when it emits one of ``stop_ids``; afterwards it
    emits ``pad_id`` and its new positions are masked. The loop asks the device whether every row has finished only
    every ``check_every`` tokens (each ask is a host sync).
    """
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    ids, mask = pad_left(prompt_ids, pad_id, device)
    B = ids.shape[0]
    stops = torch.as_tensor(list(stop_ids), dtype=torch.long, device=device)
    out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    lengths = torch.zeros(B, dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    logits, cache = step(ids, mask, None)
    for t in range(max_new_tokens):
        tok = sample_next(logits[:, -1], temperature, top_p, generator)
        tok = tok.masked_fill(finished, pad_id)
        out[:, t] = tok
        lengths += ~finished
        mask = torch.cat([mask, ~finished[:, None]], dim=1)
        finished |= torch.isin(tok, stops)
        if t + 1 == max_new_tokens or ((t + 1) % check_every == 0 and bool(finished.all())):
            break
        logits, cache = step(tok[:, None], mask, cache)
    n = int(lengths.max())
    return GenerationOutput(out[:, :n], lengths, finished)


def generate(model: TinyLM, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, temperature: float = 1.0,
             top_p: float = 1.0, stop_ids: Sequence[int] = (EOS_ID,), pad_id: int = PAD_ID,
             generator: torch.Generator | None = None) -> GenerationOutput:
    """Sample up to ``max_new_tokens`` after each prompt with a :class:`TinyLM`, all rows at once with its
    preallocated KV cache (:func:`decode`). Positions are counted from each row's first real token."""
    width = max((len(p) for p in prompt_ids), default=0)
    if width + max_new_tokens > model.config.max_len:
        raise ValueError(f"longest prompt ({width}) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                         f"max_len={model.config.max_len}")

    def step(ids: Tensor, mask: Tensor, cache: KVCache | None) -> tuple[Tensor, KVCache]:
        return model(ids, attention_mask=mask, kv_cache=cache if cache is not None else model.new_cache(len(ids)))

    return decode(step, prompt_ids, max_new_tokens, temperature, top_p, stop_ids, pad_id,
                  next(model.parameters()).device, generator)


def token_logprobs(model: TinyLM, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                   pad_id: int = PAD_ID) -> tuple[Tensor, Tensor]:
    """Per-token ``log π(y_t | x, y_<t)``: (logp [B, R], mask [B, R]) with R the longest response, 0 on padding.

    Each row is laid out as ``prompt + response`` and right-padded; one forward pass; differentiable.
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
    logp_all = F.log_softmax(model(ids, attention_mask=attention).float(), dim=-1)  # [B, W, V]
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
