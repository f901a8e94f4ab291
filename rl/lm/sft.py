"""Supervised warm start: teacher forcing on a task's worked solutions, loss on response tokens only.

``sft`` gives the RL phase a policy that sometimes succeeds; ``evaluate`` measures held-out accuracy by sampling.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from rl.lm.model import TinyLM
from rl.lm.sampling import generate, token_logprobs
from rl.lm.tokenizer import CharTokenizer

if TYPE_CHECKING:  # any object with train / test / reward / solution will do
    from envs.text_tasks import Problem, Task


# SFT steps that bring the default TinyLM (d_model 128, 3 layers, batch 32, lr 2e-3) to partial competence on the
# shipped tasks with their default arguments — about 40 % held-out greedy accuracy: RL needs a policy that
# sometimes succeeds and often fails. Used by scripts/sft_warmstart.py and by agent=kimi's quick warm start.
WARM_START_STEPS = {"arithmetic": 340, "countdown": 1500}


def encode_prompts(tokenizer: CharTokenizer, problems: Sequence[Problem]) -> list[list[int]]:
    """``[bos] + encode(prompt)`` for each problem — the prompt layout every LM function here expects."""
    return [tokenizer.encode(p.prompt, add_bos=True) for p in problems]


def sft(task: Task, model: TinyLM | torch.nn.Module, tokenizer: CharTokenizer, steps: int, batch_size: int = 64,
        lr: float = 2e-3, weight_decay: float = 0.01, warmup: int = 100, seed: int = 0, log_every: int = 100,
        log: Callable[[str], None] | None = print, until: Callable[[int], bool] | None = None) -> list[dict[str, float]]:
    """Train ``model`` in place for ``steps`` AdamW steps on ``(prompt, task.solution(problem) + eos)`` pairs of
    ``task.train``: loss = mean negative log-likelihood of the response tokens. Learning rate: linear warm-up,
    then cosine decay to 10 %. ``until(step)``, asked at every log step, ends the training early when it returns
    True. ``model``: a :class:`TinyLM`, or a Hugging Face causal LM whose tokenizer gives ``tokenizer``'s ids.
    Returns the logged history: ``[{"step", "loss", "lr", "seconds"}, ...]``.
    """
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need steps >= 1, batch_size >= 1 and lr > 0, got {steps}, {batch_size}, {lr}")
    if not task.train:
        raise ValueError(f"task {task.name!r} has no training problems to fine-tune on")
    prompts = encode_prompts(tokenizer, task.train)
    responses = [tokenizer.encode(task.solution(p), add_eos=True) for p in task.train]
    longest = max(len(p) + len(r) for p, r in zip(prompts, responses))
    context = getattr(model.config, "max_len", None) or model.config.max_position_embeddings
    if longest > context:
        raise ValueError(f"a prompt + solution has {longest} tokens, more than the model's context {context}")

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))

    model.train()
    history, start = [], time.perf_counter()
    for step in range(steps):
        idx = torch.randint(len(prompts), (batch_size,), generator=gen).tolist()
        logp, mask = token_logprobs(model, [prompts[i] for i in idx], [responses[i] for i in idx], tokenizer.pad_id)
        loss = -logp.sum() / mask.sum()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            row = {"step": step + 1, "loss": loss.item(), "lr": lr_at(step), "seconds": time.perf_counter() - start}
            history.append(row)
            if log is not None:
                log(f"step {row['step']:5d}  loss {row['loss']:.4f}  lr {row['lr']:.2e}  {row['seconds']:.0f}s")
            if until is not None and until(step + 1):
                break
    opt.zero_grad(set_to_none=True)  # leave no gradients behind for whoever trains the model next
    model.eval()
    return history


def evaluate(model: TinyLM, tokenizer: CharTokenizer, task: Task, problems: Sequence[Problem] | None = None,
             temperature: float = 0.0, max_new_tokens: int | None = None, batch_size: int = 256,
             seed: int = 0) -> dict:
    """Sample one response per problem (default: ``task.test``) and score it with ``task.reward``.

    ``max_new_tokens`` defaults to the longest worked solution + 8, within the model's ``max_len``.
    Returns ``{"accuracy", "by_level": {level: accuracy}, "mean_length", "finished"}`` (fractions in [0, 1]).
    """
    problems = list(task.test if problems is None else problems)
    if not problems:
        raise ValueError(f"no problems to evaluate task {task.name!r} on")
    prompts = encode_prompts(tokenizer, problems)
    if max_new_tokens is None:
        longest = max(len(task.solution(p)) + 1 for p in problems)
        max_new_tokens = min(longest + 8, model.config.max_len - max(map(len, prompts)))
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    was_training, hits, lengths, done = model.training, [], [], []
    model.eval()
    for i in range(0, len(problems), batch_size):
        out = generate(model, prompts[i:i + batch_size], max_new_tokens, temperature,
                       stop_ids=(tokenizer.eos_id,), pad_id=tokenizer.pad_id, generator=gen)
        for p, ids in zip(problems[i:i + batch_size], out.sequences()):
            hits.append(task.reward(p, tokenizer.decode(ids)))
        lengths += out.lengths.tolist()
        done += out.finished.tolist()
    model.train(was_training)
    by_level = defaultdict(list)
    for p, h in zip(problems, hits):
        by_level[p.difficulty].append(h)
    return {"accuracy": sum(hits) / len(hits), "by_level": {k: sum(v) / len(v) for k, v in sorted(by_level.items())},
            "mean_length": sum(lengths) / len(lengths), "finished": sum(done) / len(done)}
