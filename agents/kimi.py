"""Kimi k1.5-style policy optimization for LLMs on verifiable tasks (ALGORITHMS.md §4).

One trainer iteration = one ``collect`` (sample prompts and k responses each) + one ``update`` (several steps).
With π_θi the policy at the start of iteration i — the reference, refreshed every iteration:

    prompts   x ~ ProblemSampler: curriculum over difficulty levels, P(x_i) ∝ 1 − s_i (s_i: success rate)
    samples   y_1..y_k ~ π_θi(·|x)                           (batched KV-cache sampler, temperature / top-p)
    reward    r_j = verifier(x, y_j)  (−repetition_penalty instead if y_j degenerates into repeated text)
                    + w · length_penalty_j                   (w = 0 for the first length_penalty_warmup iterations)
    loss      L(θ) = mean_x (1/k) Σ_j ( r_j − r̄ − τ (log π_θ(y_j|x) − log π_θi(y_j|x)) )²,   r̄ = (1/k) Σ_j r_j
    update    grad_steps Adam steps on L with the same samples; no value network, no reward model.

Its gradient, exactly and at every θ (r and r̄ do not depend on θ):
    ∇L = −2τ · (1/k) Σ_j [ ∇ log π_θ(y_j|x) (r_j − r̄) − (τ/2) ∇ (log π_θ(y_j|x) − log π_θi(y_j|x))² ],
i.e. gradient descent on L is ascent on §4's "policy gradient with a mean-reward baseline + l2 penalty on the
log-ratio", scaled by 2τ. At θ = θ_i (the first step of an iteration) the penalty term vanishes.

Partial rollouts. Each iteration a rollout generates at most ``rollout_budget`` new tokens. A prompt's group of k
rollouts is trained in the iteration in which its last rollout finishes (EOS, ``max_response_tokens`` reached, or
repetition detected); until then the whole group waits in an ``rl.buffers.ReplayBuffer`` (prompt + response ids
so far, lengths, problem index), and the next iteration continues its unfinished rollouts first, with the
current policy. When trained, rollout j contributes ``log π_θ(y_j^cur | x, y_j^earlier)``: the summed log-probs of
the tokens it generated in *this* iteration (on-policy), conditioned on the prompt and its earlier segments. A
rollout that finished in an earlier iteration while its group waited has an empty current segment (log-prob 0, no
gradient) but its reward still counts in r̄ and in the length penalty. Rewards and lengths use the whole response.

Long2short tools: :func:`merge_weights`, :func:`shortest_rejection_sampling`, :func:`dpo_pairs` (+ JSONL export)
and :func:`dpo_loss`; a long2short RL phase is this agent with ``length_penalty > 0`` and a smaller
``max_response_tokens``.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import gymnasium as gym
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.base import Agent
from rl import checkpoint
from rl.approximation import incremental_mean
from rl.buffers import ReplayBuffer
from rl.config import (AgentConfig, BufferConfig, Config, ConfigError, EnvConfig, LoggerConfig, TrainerConfig,
                       check, from_yaml, non_negative, positive, register_agent)
from rl.lm import CharTokenizer, GenerationOutput, TinyLM, TinyLMConfig, decode, generate, sft
from rl.lm.sft import WARM_START_STEPS
from rl.logging import MetricAccumulator
from rl.trainer import resolve_device


@dataclass
class KimiConfig(AgentConfig):
    name: str = "kimi"
    # the policy: the built-in TinyLM (warm-started from model_path, or by a quick SFT on the task when None),
    # or policy=hf: a Hugging Face causal LM + tokenizer in the local directory model_path (needs `transformers`)
    policy: str = "tiny"  # tiny | hf
    model_path: Optional[str] = None
    dtype: str = "float32"  # hf weights: float32 | bfloat16 | float16
    chars: Optional[str] = None  # a fresh TinyLM's alphabet (None: rl.lm.tokenizer.DEFAULT_CHARS, the shipped tasks')
    d_model: int = 128  # built-in TinyLM sizes (when model_path is None)
    n_layers: int = 3
    n_heads: int = 4
    context: int = 64  # tokens of prompt + response the TinyLM can see
    sft_steps: Optional[int] = None  # quick SFT warm start of a fresh TinyLM to partial competence (when model_path is
    #                                    None); None: rl.lm.sft.WARM_START_STEPS for the shipped tasks, 300 otherwise
    sft_batch_size: int = 32
    sft_lr: float = 2e-3
    # the iteration (ALGORITHMS.md §4)
    k: int = 8  # responses per prompt; r̄ is their mean reward (k >= 2)
    prompts_per_iteration: int = 32
    tau: float = 0.1  # weight of the log-ratio against the iteration's reference policy
    lr: float = 3e-5
    grad_steps: int = 2  # gradient steps per iteration on the same samples
    max_grad_norm: float = 1.0  # 0: no clipping
    max_response_tokens: int = 48
    rollout_budget: Optional[int] = None  # new tokens per rollout per iteration (partial rollouts); None: no cut
    temperature: float = 1.0
    top_p: float = 1.0
    length_penalty: float = 0.0  # weight of the length reward; 0: off
    length_penalty_warmup: int = 0  # iterations before the length penalty is switched on
    curriculum: bool = False  # start with the easiest difficulty level, unlock harder ones
    unlock_every: int = 0  # iterations between unlocks (0: only by pass rate)
    unlock_pass_rate: float = 0.6  # unlock when the hardest open level's mean success rate reaches this (0: never)
    prioritized: bool = True  # P(problem i) ∝ 1 − s_i
    success_step_size: float = 0.0  # step of the s_i incremental mean; 0: 1/n (the exact running mean)
    repetition_ngram: int = 8  # repeated-text detection: an n-gram (n <= this) ...
    repetition_repeats: int = 6  # ... repeated this many times in a row ends the rollout (0: off)
    repetition_penalty: float = 0.5  # the reward of such a rollout is −repetition_penalty
    eval_problems: int = 0  # held-out problems per evaluation (0: the whole test split)

    def __post_init__(self) -> None:
        check(self.policy in ("tiny", "hf"), f"agent.policy must be tiny or hf, got {self.policy!r}")
        check(self.policy == "tiny" or bool(self.model_path),
              "agent.policy=hf needs agent.model_path=<a local Hugging Face model directory>")
        check(self.dtype in ("float32", "bfloat16", "float16"),
              f"agent.dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        check(self.k >= 2, f"agent.k={self.k}: need k >= 2 responses per prompt — with one there is no baseline "
                           "(r̄ is the mean reward of the k responses)")
        for key in ("d_model", "n_layers", "n_heads", "context", "sft_batch_size", "sft_lr",
                    "prompts_per_iteration", "tau", "lr", "grad_steps", "max_response_tokens", "temperature"):
            positive(f"agent.{key}", getattr(self, key))
        for key in ("max_grad_norm", "length_penalty", "length_penalty_warmup", "unlock_every", "repetition_repeats",
                    "repetition_penalty", "eval_problems", "success_step_size"):
            non_negative(f"agent.{key}", getattr(self, key))
        if self.rollout_budget is not None:
            positive("agent.rollout_budget", self.rollout_budget)
        if self.sft_steps is not None:
            positive("agent.sft_steps", self.sft_steps)
        check(0 < self.top_p <= 1, f"agent.top_p must be in (0, 1], got {self.top_p}")
        check(0 <= self.unlock_pass_rate <= 1, f"agent.unlock_pass_rate must be in [0, 1], got {self.unlock_pass_rate}")
        check(self.success_step_size <= 1, f"agent.success_step_size must be in [0, 1], got {self.success_step_size}")
        check(self.repetition_repeats != 1, "agent.repetition_repeats must be 0 (off) or >= 2")
        positive("agent.repetition_ngram", self.repetition_ngram)


# -- the math, as pure functions ---------------------------------------------------------------------
def kimi_loss(logp: Tensor, ref_logp: Tensor, rewards: Tensor, tau: float, k: int) -> tuple[Tensor, dict]:
    """§4's surrogate over groups of k responses (rows grouped prompt by prompt: [G·k] → [G, k]).

    ``L = mean_x (1/k) Σ_j (r_j − r̄ − τ (log π_θ(y_j|x) − log π_θi(y_j|x)))²``; ``ref_logp`` carries no gradient.
    Metrics: ``policy`` (L) and ``log_ratio_sq`` (mean of (log π_θ − log π_θi)²).
    """
    r = rewards.view(-1, k)
    r_bar = r.mean(dim=1, keepdim=True)  # τ log Z ≈ mean reward of the group
    log_ratio = (logp - ref_logp.detach()).view(-1, k)
    loss = (r - r_bar - tau * log_ratio).pow(2).mean()
    return loss, {"policy": loss.detach(), "log_ratio_sq": log_ratio.detach().pow(2).mean()}


def length_penalty(lengths: Tensor, correct: Tensor, weight: float) -> Tensor:
    """§4's length reward for groups [..., k]: ``λ_j = 0.5 − (len_j − min_len)/(max_len − min_len)``; ``λ_j`` if
    response j is correct, ``min(0, λ_j)`` if not; 0 for the whole group when its lengths are all equal; × weight."""
    lengths = lengths.float()
    lo, hi = lengths.amin(-1, keepdim=True), lengths.amax(-1, keepdim=True)
    span = hi - lo
    lam = 0.5 - (lengths - lo) / torch.where(span > 0, span, torch.ones_like(span))
    lam = torch.where(span > 0, lam, torch.zeros_like(lam))
    return weight * torch.where(correct.bool(), lam, lam.clamp(max=0.0))


def segment_logprobs(logits: Tensor, ids: Tensor, start: Tensor, end: Tensor) -> Tensor:
    """``Σ_{start ≤ t < end} log π(ids[t] | ids[<t])`` per row: the log-prob of a response segment given everything
    before it. logits [N, W, V] of the model on ids [N, W] (right-padded); start, end [N] token positions."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # token t = 1..W-1
    t = torch.arange(1, ids.shape[1], device=ids.device)[None]
    keep = (t >= start[:, None]) & (t < end[:, None])
    return torch.where(keep, logp, torch.zeros_like(logp)).sum(-1)


def first_repetition(ids: Sequence[int], max_ngram: int, min_repeats: int, start: int = 0) -> Optional[int]:
    """The smallest ``e > start`` such that ``ids[:e]`` ends with some n-gram (n ≤ max_ngram) repeated ``min_repeats``
    times in a row, or None. ``run[n]`` counts how many tokens in a row have equalled the token n places earlier:
    a tail of m copies of an n-gram is exactly ``run[n] ≥ n (m − 1)``."""
    if min_repeats < 2:
        return None
    run = [0] * (max_ngram + 1)
    for t in range(1, len(ids)):
        for n in range(1, min(max_ngram, t) + 1):
            run[n] = run[n] + 1 if ids[t] == ids[t - n] else 0
            if run[n] >= n * (min_repeats - 1) and t + 1 > start:
                return t + 1
    return None


def dpo_loss(policy_chosen_logp: Tensor, policy_rejected_logp: Tensor, ref_chosen_logp: Tensor,
             ref_rejected_logp: Tensor, beta: float) -> tuple[Tensor, dict]:
    """DPO: ``−mean log σ(β [(log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))])``."""
    chosen = beta * (policy_chosen_logp - ref_chosen_logp)
    rejected = beta * (policy_rejected_logp - ref_rejected_logp)
    margin = chosen - rejected
    loss = -F.logsigmoid(margin).mean()
    return loss, {"dpo": loss.detach(), "reward_margin": margin.detach().mean(),
                  "reward_accuracy": (margin > 0).float().mean().detach()}


# -- long2short ---------------------------------------------------------------------------------------
def merge_weights(state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """Model merging: ``alpha · a + (1 − alpha) · b`` for floating tensors (e.g. a long-CoT and a short-CoT model);
    other tensors (integer buffers) must be equal in both and are copied."""
    if set(state_a) != set(state_b):
        raise ValueError(f"state dicts differ in keys: {sorted(set(state_a) ^ set(state_b))}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    out = {}
    for key, a in state_a.items():
        b = state_b[key]
        if a.shape != b.shape:
            raise ValueError(f"{key}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
        if a.is_floating_point():
            out[key] = alpha * a + (1 - alpha) * b.to(a.dtype)
        elif torch.equal(a, b):
            out[key] = a.clone()
        else:
            raise ValueError(f"{key}: non-floating tensors differ and cannot be averaged")
    return out


Sampler = Callable[[Sequence[Any], int], list[list[str]]]  # (problems, n) -> n responses per problem


def shortest_rejection_sampling(sample: Sampler, reward: Callable[[Any, str], float], problems: Sequence[Any],
                                n: int) -> list[dict]:
    """Sample ``n`` responses per problem and keep the shortest correct one (fine-tuning data for long2short).
    Returns ``[{"prompt", "response"}]`` for the problems with at least one correct response."""
    rows = []
    for problem, responses in zip(problems, sample(problems, n)):
        correct = [r for r in responses if reward(problem, r) > 0]
        if correct:
            rows.append({"prompt": problem.prompt, "response": min(correct, key=len)})
    return rows


def dpo_pairs(sample: Sampler, reward: Callable[[Any, str], float], problems: Sequence[Any], n: int,
              path: str | Path | None = None, length_ratio: float = 1.5) -> list[dict]:
    """DPO preference pairs from ``n`` samples per problem: the shortest correct response is ``chosen``; every wrong
    response, and every correct one at least ``length_ratio`` × as long, is a ``rejected`` partner. Written as JSONL
    rows ``{"prompt", "chosen", "rejected"}`` to ``path`` when given."""
    rows = []
    for problem, responses in zip(problems, sample(problems, n)):
        ok = [reward(problem, r) > 0 for r in responses]
        if not any(ok):
            continue
        chosen = min((r for r, c in zip(responses, ok) if c), key=len)
        for r, c in zip(responses, ok):
            if not c or len(r) >= length_ratio * len(chosen):
                rows.append({"prompt": problem.prompt, "chosen": chosen, "rejected": r})
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return rows


# -- prompt sampling ----------------------------------------------------------------------------------
class ProblemSampler:
    """Curriculum + prioritized sampling of a task's training problems (§4 "Sampling strategies").

    ``s_i`` — each problem's success rate — moves towards each observed fraction of correct responses by
    ``rl.approximation.incremental_mean`` (step 1/n_i, the exact running mean, or a constant ``step_size``).
    P(problem i) ∝ ``1 − s_i`` among the unlocked problems (uniform where that is all zero, or with
    ``prioritized=False``). With ``curriculum``, only the easiest level is open at first; the next one opens every
    ``unlock_every`` iterations and/or when the mean s_i over the visited problems of the hardest open level
    reaches ``unlock_pass_rate``.
    """

    def __init__(self, difficulties: Sequence[int], prioritized: bool = True, curriculum: bool = False,
                 unlock_every: int = 0, unlock_pass_rate: float = 0.0, step_size: float = 0.0) -> None:
        if not difficulties:
            raise ValueError("no problems to sample from")
        self.difficulty = torch.as_tensor(list(difficulties), dtype=torch.long)
        self.levels = sorted(set(self.difficulty.tolist()))
        self.prioritized, self.unlock_every, self.unlock_pass_rate = prioritized, unlock_every, unlock_pass_rate
        self.step_size = step_size
        self.success = torch.zeros(len(difficulties))  # s_i
        self.visits = torch.zeros(len(difficulties))
        self.unlocked = 1 if curriculum else len(self.levels)
        self.since_unlock = 0

    def open(self) -> Tensor:
        return self.difficulty <= self.levels[self.unlocked - 1]

    def probabilities(self) -> Tensor:
        open_ = self.open().float()
        w = open_ * (1 - self.success) if self.prioritized else open_
        return (w if w.sum() > 0 else open_) / (w if w.sum() > 0 else open_).sum()

    def sample(self, n: int, generator: torch.Generator | None = None) -> list[int]:
        """``n`` problem indices (distinct while enough problems have non-zero probability)."""
        if n <= 0:
            return []
        p = self.probabilities()
        return torch.multinomial(p, n, replacement=n > int((p > 0).sum()), generator=generator).tolist()

    def update(self, index: int, success: float) -> None:
        """One incremental-mean step of ``s_index`` towards ``success`` (a fraction of correct responses)."""
        self.visits[index] += 1
        a = self.step_size or 1.0 / float(self.visits[index])
        self.success[index] = incremental_mean(self.success[index], torch.tensor(float(success)), a)

    def level_pass_rate(self, level: int) -> float:
        seen = (self.difficulty == level) & (self.visits > 0)
        return float(self.success[seen].mean()) if seen.any() else 0.0

    def end_iteration(self) -> None:
        """Advance the curriculum (call once per iteration)."""
        self.since_unlock += 1
        if self.unlocked == len(self.levels):
            return
        by_time = self.unlock_every > 0 and self.since_unlock >= self.unlock_every
        by_rate = self.unlock_pass_rate > 0 and self.level_pass_rate(self.levels[self.unlocked - 1]) >= self.unlock_pass_rate
        if by_time or by_rate:
            self.unlocked, self.since_unlock = self.unlocked + 1, 0

    def state_dict(self) -> dict:
        return {"success": self.success.clone(), "visits": self.visits.clone(), "unlocked": self.unlocked,
                "since_unlock": self.since_unlock}

    def load_state_dict(self, state: Mapping) -> None:
        self.success.copy_(state["success"])
        self.visits.copy_(state["visits"])
        self.unlocked, self.since_unlock = int(state["unlocked"]), int(state["since_unlock"])


# -- policies: the built-in TinyLM, or a Hugging Face causal LM ------------------------------------------
class TinyPolicy:
    """TinyLM + CharTokenizer behind the few calls the agent makes (prompts start with BOS)."""

    def __init__(self, model: TinyLM, tokenizer: CharTokenizer) -> None:
        if tokenizer.vocab_size != model.config.vocab_size:
            raise ConfigError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary is "
                              f"{model.config.vocab_size}: they were not saved together")
        self.module, self.tokenizer = model, tokenizer
        self.eos_id, self.pad_id, self.context = tokenizer.eos_id, tokenizer.pad_id, model.config.max_len

    def encode(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt, add_bos=True)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float, top_p: float,
                 generator: torch.Generator | None = None) -> GenerationOutput:
        return generate(self.module, prompts, max_new_tokens, temperature, top_p, stop_ids=(self.eos_id,),
                        pad_id=self.pad_id, generator=generator)

    def logits(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.module(ids, attention_mask=mask)


class HFPolicy:
    """A ``transformers`` causal LM + tokenizer from a local directory (prompts start with BOS when it has one)."""

    def __init__(self, path: str, dtype: str, device: torch.device) -> None:
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise ConfigError("agent.policy=hf needs the optional `transformers` package: "
                              "pip install 'actorzoo[llm]'") from None
        if not Path(path).is_dir():
            raise ConfigError(f"agent.model_path={path}: no such directory (give a local Hugging Face model)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.module = AutoModelForCausalLM.from_pretrained(path).to(device, getattr(torch, dtype))
        except (OSError, ValueError) as e:
            raise ConfigError(f"agent.model_path={path}: cannot load a causal LM + tokenizer ({e})") from None
        vocab = self.module.get_input_embeddings().num_embeddings
        if len(self.tokenizer) > vocab:
            raise ConfigError(f"agent.model_path={path}: the tokenizer has {len(self.tokenizer)} tokens but the model "
                              f"embeds only {vocab}: tokenizer and model do not match")
        if self.tokenizer.eos_token_id is None:
            raise ConfigError(f"agent.model_path={path}: the tokenizer has no EOS token to end responses with")
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        cfg = self.module.config
        self.context = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
        self.static: Any = None  # rl.lm.hf.StaticDecoder, once use_cuda_graphs() is called

    def use_cuda_graphs(self) -> bool:
        """Decode with a static KV cache, each one-token step replayed from a CUDA graph (``rl.lm.hf.StaticDecoder``).
        False (nothing changes) off CUDA or for attention implementations it cannot mask (e.g. flash-attention)."""
        from rl.lm.hf import StaticDecoder

        if self.module.device.type != "cuda":
            return False
        try:
            self.static = StaticDecoder(self.module, cuda_graphs=True)
        except ValueError:
            return False
        return True

    def encode(self, prompt: str) -> list[int]:
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        return ([bos] if bos is not None else []) + ids

    def decode(self, ids: Sequence[int]) -> str:
        ids = list(ids)
        return self.tokenizer.decode(ids[:ids.index(self.eos_id)] if self.eos_id in ids else ids,
                                     skip_special_tokens=True)

    def step(self, ids: Tensor, mask: Tensor, cache: Any) -> tuple[Tensor, Any]:
        """One forward pass with the model's KV cache (``rl.lm.sampling.Step``); positions count real tokens only,
        so that left-padded prompts see the positions they have unpadded (as :meth:`logits` does)."""
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]
        out = self.module(input_ids=ids, attention_mask=mask.long(), position_ids=positions, past_key_values=cache,
                          use_cache=True)
        return out.logits, out.past_key_values

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float, top_p: float,
                 generator: torch.Generator | None = None) -> GenerationOutput:
        """The same sampling loop as the TinyLM's (``rl.lm.decode``: temperature, top-p, EOS stop, seeded by
        ``generator``), with the model's own KV cache."""
        device = self.module.get_input_embeddings().weight.device
        step = self.step if self.static is None else functools.partial(self.static, new_tokens=max_new_tokens)
        return decode(step, prompts, max_new_tokens, temperature, top_p, (self.eos_id,), self.pad_id, device,
                      generator)

    def logits(self, ids: Tensor, mask: Tensor) -> Tensor:
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return self.module(input_ids=ids, attention_mask=mask.long(), position_ids=positions).logits


def load_policy(cfg: KimiConfig, device: torch.device) -> tuple[TinyPolicy | HFPolicy, bool]:
    """(policy, warm): ``warm`` is False for a fresh TinyLM that still needs its SFT warm start."""
    if cfg.policy == "hf":
        return HFPolicy(str(cfg.model_path), cfg.dtype, device), True
    if cfg.model_path is None:
        try:
            tokenizer = CharTokenizer(cfg.chars) if cfg.chars else CharTokenizer()
        except ValueError as e:
            raise ConfigError(f"agent.chars: {e}") from None
        model = TinyLM(TinyLMConfig(tokenizer.vocab_size, d_model=cfg.d_model, n_layers=cfg.n_layers,
                                    n_heads=cfg.n_heads, max_len=cfg.context))
        return TinyPolicy(model.to(device), tokenizer), False
    if not Path(cfg.model_path).is_dir():
        raise ConfigError(f"agent.model_path={cfg.model_path}: no such directory (give the output of "
                          "scripts/sft_warmstart.py, or leave it unset for a quick SFT warm start)")
    try:
        model, tokenizer = TinyLM.from_pretrained(cfg.model_path, device), CharTokenizer.load(cfg.model_path)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"agent.model_path={cfg.model_path}: {e}") from None
    return TinyPolicy(model, tokenizer), True


def task_alphabet(task: Any) -> str:
    """The TinyLM alphabet for ``task``: the shipped tasks' characters, then any other character its prompts and
    solutions use (in order of appearance)."""
    from rl.lm.tokenizer import DEFAULT_CHARS

    extra = dict.fromkeys(c for p in task.train + task.test for c in p.prompt + task.solution(p) if c not in DEFAULT_CHARS)
    return DEFAULT_CHARS + "".join(extra)


def make_text_task(env: EnvConfig) -> Any:
    """The task of ``env`` (``env.id`` = task name, ``env.kwargs`` its arguments), with bad input as ConfigError."""
    from envs.text_tasks import make_task

    try:
        task = make_task(env.id, **env.kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"env={env.id}: {e}") from None
    check(len(task.train) > 0, f"env={env.id}: the task has no training problems (raise env.kwargs.num_train)")
    return task


# -- storage and the collector --------------------------------------------------------------------------
class IterationBatch:
    """Storage for one iteration's samples: ``batches()`` hands them over once, then forgets them."""

    def __init__(self) -> None:
        self.batch: dict[str, Tensor] | None = None

    def add(self, batch: dict[str, Tensor]) -> None:
        self.batch = batch

    def batches(self, num_updates: int = 1, batch_size: int = 0):
        if self.batch is not None:
            batch, self.batch = self.batch, None
            yield batch

    def state_dict(self) -> dict:
        return {"batch": self.batch or {}}

    def load_state_dict(self, state: Mapping) -> None:
        self.batch = dict(state["batch"]) or None


@dataclass
class Rollout:
    ids: list[int]  # prompt + response so far
    prompt_len: int
    problem: int  # index into task.train
    group: int
    start: int  # where this iteration's segment begins (tokens before it are context)
    done: bool = False
    repeated: bool = False


class LLMCollector:
    """One ``collect`` = one iteration's rollouts: continue the waiting partial groups, sample new prompts, generate,
    score, and hand the finished groups to storage. Returns (number of responses trained on, no episodes)."""

    def __init__(self, agent: "Kimi", task: Any, seed: int) -> None:
        cfg = agent.cfg
        self.agent, self.task, self.cfg = agent, task, cfg
        self.sampler = ProblemSampler([p.difficulty for p in task.train], cfg.prioritized, cfg.curriculum,
                                      cfg.unlock_every, cfg.unlock_pass_rate, cfg.success_step_size)
        spec = {"ids": ((agent.policy.context,), torch.long), "prompt_len": ((), torch.long), "length": ((), torch.long),
                "problem": ((), torch.long), "group": ((), torch.long), "done": ((), torch.bool),
                "repeated": ((), torch.bool)}
        self.pending = ReplayBuffer(cfg.prompts_per_iteration * cfg.k, spec, "cpu")  # groups waiting to finish
        self.stats, self.texts = MetricAccumulator(), {}  # rollout statistics and sample completions, until logged
        self.rng = torch.Generator().manual_seed(seed)  # prompt sampling
        self.sample_rng = torch.Generator(device=agent.device).manual_seed(seed + 1)  # token sampling (TinyLM)
        self.iteration = self.next_group = 0

    def _take_pending(self) -> list[Rollout]:
        d = {k: v[: len(self.pending)].tolist() for k, v in self.pending.data.items()}
        self.pending.pos = self.pending.size = 0
        return [Rollout(ids[:n], p, prob, g, n, done, rep) for ids, p, n, prob, g, done, rep in
                zip(d["ids"], d["prompt_len"], d["length"], d["problem"], d["group"], d["done"], d["repeated"])]

    def _put_pending(self, rollouts: list[Rollout]) -> None:
        ids = [r.ids for r in rollouts]
        width = self.agent.policy.context
        self.pending.add({"ids": torch.tensor([x + [0] * (width - len(x)) for x in ids], dtype=torch.long),
                          "prompt_len": torch.tensor([r.prompt_len for r in rollouts]),
                          "length": torch.tensor([len(x) for x in ids]),
                          "problem": torch.tensor([r.problem for r in rollouts]),
                          "group": torch.tensor([r.group for r in rollouts]),
                          "done": torch.tensor([r.done for r in rollouts]),
                          "repeated": torch.tensor([r.repeated for r in rollouts])})

    def collect(self, agent: "Kimi", storage: IterationBatch, random_actions: bool = False) -> tuple[int, list]:
        cfg, policy = self.cfg, agent.policy
        agent.ensure_warm(self.task)
        rollouts = self._take_pending()
        waiting = len({r.group for r in rollouts})
        for index in self.sampler.sample(cfg.prompts_per_iteration - waiting, self.rng):
            prompt = policy.encode(self.task.train[index].prompt)
            rollouts += [Rollout(list(prompt), len(prompt), index, self.next_group, len(prompt)) for _ in range(cfg.k)]
            self.next_group += 1
        # generate this iteration's segment of every unfinished rollout
        active = [r for r in rollouts if not r.done]
        budget = min(cfg.rollout_budget or cfg.max_response_tokens,
                     max(cfg.max_response_tokens - (len(r.ids) - r.prompt_len) for r in active),
                     policy.context - max(len(r.ids) for r in active))
        t0 = time.perf_counter()
        out = policy.generate([r.ids for r in active], budget, cfg.temperature, cfg.top_p, self.sample_rng)
        segments = out.sequences()  # one host sync for the whole batch
        seconds = time.perf_counter() - t0
        for r, seg in zip(active, segments):
            before = len(r.ids) - r.prompt_len
            response = r.ids[r.prompt_len:] + seg[: cfg.max_response_tokens - before]
            cut = first_repetition(response, cfg.repetition_ngram, cfg.repetition_repeats, start=before)
            if cut is not None:
                response, r.repeated = response[:cut], True
            r.ids = r.ids[: r.prompt_len] + response
            r.done = r.repeated or policy.eos_id in response or len(response) >= cfg.max_response_tokens
        # groups whose rollouts have all finished are trained now; the others wait
        groups: dict[int, list[Rollout]] = {}
        for r in rollouts:
            groups.setdefault(r.group, []).append(r)
        ready = [g for g in groups.values() if all(r.done for r in g)]
        waiting_rollouts = [r for g in groups.values() if not all(r.done for r in g) for r in g]
        if waiting_rollouts:
            self._put_pending(waiting_rollouts)
        n = self._store(ready, storage, tokens=sum(len(s) for s in segments), seconds=seconds)
        self.sampler.end_iteration()
        self.iteration += 1
        return n, []

    def _store(self, groups: list[list[Rollout]], storage: IterationBatch, tokens: int, seconds: float) -> int:
        cfg, policy, agent = self.cfg, self.agent.policy, self.agent
        if not groups:
            self.stats.add({"tokens_per_s": torch.tensor(tokens / max(seconds, 1e-9), device=agent.device)})
            return 0
        rows = [r for g in groups for r in g]
        texts = [policy.decode(r.ids[r.prompt_len:]) for r in rows]
        correct = torch.tensor([0.0 if r.repeated else self.task.reward(self.task.train[r.problem], t)
                                for r, t in zip(rows, texts)]).view(-1, cfg.k)
        repeated = torch.tensor([r.repeated for r in rows]).view(-1, cfg.k)
        lengths = torch.tensor([len(r.ids) - r.prompt_len for r in rows], dtype=torch.float32).view(-1, cfg.k)
        weight = cfg.length_penalty if self.iteration >= cfg.length_penalty_warmup else 0.0
        reward = torch.where(repeated, -cfg.repetition_penalty, correct) + length_penalty(lengths, correct > 0, weight)
        for g, success in zip(groups, correct.mean(1).tolist()):
            self.sampler.update(g[0].problem, success)
        width = max(len(r.ids) for r in rows)
        device = agent.device
        storage.add({"ids": torch.tensor([r.ids + [policy.pad_id] * (width - len(r.ids)) for r in rows]).to(device),
                     "start": torch.tensor([r.start for r in rows]).to(device),
                     "end": torch.tensor([len(r.ids) for r in rows]).to(device),
                     "reward": reward.flatten().to(device)})
        stats = {"accuracy": correct.mean(), "reward_mean": reward.mean(), "response_length_mean": lengths.mean(),
                 "tokens_per_s": torch.tensor(tokens / max(seconds, 1e-9)), "repeated_fraction": repeated.float().mean()}
        self.stats.add({k: v.to(device) for k, v in stats.items()})
        shown = [f"    {self.task.train[r.problem].prompt} → {t!r}  (reward {float(x):+.2f})"
                 for r, t, x in zip(rows[:: cfg.k][:4], texts[:: cfg.k][:4], reward[:, 0][:4])]
        self.texts["llm/samples"] = "\n".join(shown)  # indented: TensorBoard renders it as a code block
        return len(rows)

    def pop_logs(self) -> tuple[dict[str, float], dict[str, str]]:
        """What the trainer logs at each log step: ``llm/*`` scalars (means since the last call: this collector's
        rollout statistics and the learner's ``agent.llm_stats``, e.g. log_ratio_sq) and ``llm/samples`` text."""
        scalars = {f"llm/{k}": v for k, v in {**self.stats.means(), **self.agent.llm_stats.means()}.items()}
        if "llm/reward_mean" in scalars:  # a response is a one-step episode (TextTaskEnv): its return is its reward
            scalars["charts/episodic_return"] = scalars["llm/reward_mean"]
        texts, self.texts = self.texts, {}
        return scalars, texts

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "pending": self.pending.state_dict(),
                "rng": self.rng.get_state(), "sample_rng": self.sample_rng.get_state(),
                "iteration": self.iteration, "next_group": self.next_group}

    def load_state_dict(self, state: Mapping) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.pending.load_state_dict(state["pending"])
        self.rng.set_state(state["rng"])
        self.sample_rng.set_state(state["sample_rng"])
        self.iteration, self.next_group = int(state["iteration"]), int(state["next_group"])

    def close(self) -> None:
        pass


# -- the agent ---------------------------------------------------------------------------------------
class Kimi(Agent):
    """Kimi k1.5-style policy optimization of a language model (``agent=kimi env=arithmetic``).

    Notebook::

        from agents import Kimi
        agent = Kimi.from_task("arithmetic", device="cpu", task_kwargs={"max_digits": 4})
        agent.learn(5_000)            # samples (responses); the first call SFT-warm-starts a fresh TinyLM
        agent.evaluate()              # held-out greedy accuracy and mean response length
        agent.predict("37+85=")       # '7+5+0=12;3+8+1=12;=122'
    """

    config_cls = KimiConfig

    def __init__(self, obs_space: Any, action_space: Any, cfg: KimiConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(obs_space, action_space, cfg, device)
        self.policy, self.warm = load_policy(cfg, self.device)
        self.model = self.policy.module.eval()  # no dropout: π_θ is the same function when sampling and learning
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.task: Any = None  # a Task object set by from_task (else built from the run config's env)
        self.iteration = 0
        self.start_eval: dict[str, float] = {}
        self.llm_stats = MetricAccumulator()  # learner statistics (llm/log_ratio_sq), read by LLMCollector.pop_logs

    # -- learner interface ---------------------------------------------------------------------------
    def act(self, obs: Tensor, explore: bool) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError("Kimi acts on text: use predict(prompt) or the collector")

    def use_cuda_graphs(self) -> bool:
        """``trainer.compile=true``: sampling replays each decoding step from a CUDA graph (Hugging Face policies on
        CUDA; the update is a variable-shape forward/backward and stays eager)."""
        return getattr(self.policy, "use_cuda_graphs", lambda: False)()

    def sequence_logprobs(self, batch: Mapping[str, Tensor]) -> Tensor:
        ids = batch["ids"]
        mask = torch.arange(ids.shape[1], device=ids.device)[None] < batch["end"][:, None]
        return segment_logprobs(self.policy.logits(ids, mask), ids, batch["start"], batch["end"])

    def update(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg = self.cfg
        totals: dict[str, Tensor] = {}
        for step in range(cfg.grad_steps):
            logp = self.sequence_logprobs(batch)
            if step == 0:  # θ = θ_i before the first step: its log-probs are π_θi's, the iteration's reference
                ref_logp = logp.detach()
            loss, metrics = kimi_loss(logp, ref_logp, batch["reward"], cfg.tau, cfg.k)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            self.opt.step()
            totals = {k: totals.get(k, 0) + v / cfg.grad_steps for k, v in metrics.items()}
        self.iteration += 1
        self.llm_stats.add({"log_ratio_sq": totals["log_ratio_sq"]})
        return totals

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"policy": self.opt}

    def counters(self) -> dict[str, int]:
        return {"iteration": self.iteration, "warm": int(self.warm)}

    def load_counters(self, counters: dict[str, int]) -> None:
        self.iteration, self.warm = int(counters["iteration"]), bool(counters["warm"])

    def state(self) -> dict:
        return {**super().state(), "start_eval": dict(self.start_eval)}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.start_eval = dict(state.get("start_eval", {}))

    def describe_spaces(self) -> dict:
        return {"obs": {"type": "Text"}, "action": {"type": "Text"}}

    # -- task, warm start, storage, collector, evaluator ---------------------------------------------
    def get_task(self, cfg: Config) -> Any:
        if self.task is None:
            self.task = make_text_task(cfg.env)
        return self.task

    def check_fits(self, task: Any) -> None:
        """Every prompt must encode, and the longest prompt + max_response_tokens must fit the policy's context."""
        try:
            longest = max(len(self.policy.encode(p.prompt)) for p in task.train + task.test)
        except ValueError as e:
            raise ConfigError(f"the policy's tokenizer cannot encode the task's prompts: {e} (a fresh TinyLM takes "
                              "its alphabet from agent.chars)") from None
        room = self.policy.context - longest
        check(room >= self.cfg.max_response_tokens,
              f"agent.max_response_tokens={self.cfg.max_response_tokens} does not fit: the longest prompt has "
              f"{longest} tokens and the policy's context is {self.policy.context}, leaving {max(room, 0)} for a "
              f"response" + (f" (set agent.max_response_tokens <= {room})" if room > 0 else
                             " (use a model with a longer context, or shorter prompts)"))

    def ensure_warm(self, task: Any) -> None:
        """A fresh TinyLM gets its quick SFT warm start on ``task`` (once); then the starting accuracy is measured."""
        if not self.warm:
            steps = self.cfg.sft_steps or WARM_START_STEPS.get(task.name, 300)
            print(f"kimi: SFT warm start of a fresh TinyLM, {steps} steps on {task.name} "
                  "(give agent.model_path to skip)")
            sft(task, self.model, self.policy.tokenizer, steps, batch_size=self.cfg.sft_batch_size,
                lr=self.cfg.sft_lr, seed=self.iteration, log_every=100)
            self.model.eval()
            self.warm = True
        if not self.start_eval and task.test:
            self.start_eval = self.held_out(task)
            print(f"kimi: starting held-out accuracy {self.start_eval['accuracy']:.1%} greedy, "
                  f"{self.start_eval['sampled_accuracy']:.1%} sampled ({self.cfg.eval_problems or len(task.test)} "
                  "problems)")

    def make_storage(self, cfg: Config) -> IterationBatch:
        return IterationBatch()

    def make_collector(self, cfg: Config) -> LLMCollector:
        task = self.get_task(cfg)
        self.check_fits(task)
        return LLMCollector(self, task, cfg.seed)

    def make_evaluator(self, cfg: Config) -> Callable[["Kimi"], dict[str, float]]:
        task = self.get_task(cfg)

        def evaluate(agent: "Kimi") -> dict[str, float]:
            agent.ensure_warm(task)
            result = agent.held_out(task) if task.test else {}
            result.update({f"start_{k}": v for k, v in agent.start_eval.items() if k in ("accuracy", "sampled_accuracy")})
            return result

        return evaluate

    # -- sampling and evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, problems: Sequence[Any], n: int = 1, temperature: float | None = None,
               batch_size: int = 256) -> list[list[str]]:
        """``n`` responses (text) per problem; ``temperature=0`` is greedy (default: the config's)."""
        t = self.cfg.temperature if temperature is None else temperature
        prompts = [self.policy.encode(p.prompt if hasattr(p, "prompt") else p) for p in problems for _ in range(n)]
        texts: list[str] = []
        for i in range(0, len(prompts), batch_size):
            out = self.policy.generate(prompts[i:i + batch_size], self.cfg.max_response_tokens, t, self.cfg.top_p)
            texts += [self.policy.decode(s) for s in out.sequences()]
        return [texts[i * n:(i + 1) * n] for i in range(len(problems))]

    @torch.no_grad()
    def held_out(self, task: Any, limit: int = 0, batch_size: int = 256) -> dict[str, float]:
        """On the first ``limit`` (default ``eval_problems``; 0: all) problems of the task's test split: greedy
        ``accuracy``, mean response length (tokens, EOS counted) and that of the correct responses; and
        ``sampled_accuracy``, one response per problem sampled as in training (temperature, top-p; a fixed seed)."""
        problems = task.test[: limit or self.cfg.eval_problems or None]
        prompts = [self.policy.encode(p.prompt) for p in problems]
        generator = torch.Generator(device=self.device).manual_seed(0)
        hits, sampled_hits, lengths = [], [], []
        for i in range(0, len(problems), batch_size):
            chunk = problems[i:i + batch_size]
            out = self.policy.generate(prompts[i:i + batch_size], self.cfg.max_response_tokens, 0.0, 1.0)
            hits += [task.reward(p, self.policy.decode(s)) for p, s in zip(chunk, out.sequences())]
            lengths += out.lengths.tolist()
            out = self.policy.generate(prompts[i:i + batch_size], self.cfg.max_response_tokens, self.cfg.temperature,
                                       self.cfg.top_p, generator)
            sampled_hits += [task.reward(p, self.policy.decode(s)) for p, s in zip(chunk, out.sequences())]
        good = [n for n, h in zip(lengths, hits) if h > 0]
        return {"accuracy": sum(hits) / len(hits), "response_length_mean": sum(lengths) / len(lengths),
                "correct_length_mean": sum(good) / len(good) if good else 0.0,
                "sampled_accuracy": sum(sampled_hits) / len(sampled_hits)}

    # -- notebook API ----------------------------------------------------------------------------------
    @classmethod
    def from_task(cls, task: Any = "arithmetic", device: str = "auto", seed: int = 0,
                  task_kwargs: Mapping[str, Any] | None = None, **hyperparameters: Any) -> "Kimi":
        """A Kimi agent for a shipped task (by name, with ``task_kwargs``) or any Task object (e.g. a CustomTask)."""
        name = task if isinstance(task, str) else task.name
        if not isinstance(task, str) and hyperparameters.get("policy", "tiny") == "tiny" and "chars" not in hyperparameters:
            hyperparameters["chars"] = task_alphabet(task)  # a fresh TinyLM that can spell the task's text
        cfg = Config(agent=KimiConfig(**hyperparameters), env=EnvConfig(name=name, id=name, kwargs=dict(task_kwargs or {})),
                     buffer=BufferConfig(), trainer=TrainerConfig(), logger=LoggerConfig(), seed=seed, device=device)
        torch.manual_seed(seed)
        agent = cls(None, None, cfg.agent, resolve_device(device))
        agent.run_config = cfg
        if not isinstance(task, str):
            agent.task = task
        return agent

    @classmethod
    def from_env(cls, env: str, device: str = "auto", seed: int = 0, num_envs: int = 1, **hyperparameters: Any) -> "Kimi":
        return cls.from_task(env, device=device, seed=seed, **hyperparameters)

    def evaluate(self, episodes: int = 0) -> dict[str, float]:
        """Held-out greedy accuracy and response lengths (``episodes``: how many test problems; 0 = all)."""
        if self.run_config is None:
            raise ConfigError("this agent has no task: build it with Kimi.from_task(...) or load(...)")
        task = self.get_task(self.run_config)
        self.ensure_warm(task)
        return self.held_out(task, limit=episodes)

    def predict(self, prompt: str | Sequence[str], deterministic: bool = True) -> str | list[str]:
        """The response to one prompt (or a list of them): greedy, or sampled with ``deterministic=False``."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        texts = [r[0] for r in self.sample(prompts, 1, 0.0 if deterministic else None)]
        return texts[0] if isinstance(prompt, str) else texts

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> "Kimi":
        """Load what :meth:`save` or the trainer wrote (a run directory works too)."""
        state = checkpoint.load(checkpoint.resolve(path))
        cfg = replace(from_yaml(state["config"]), device=device)
        if not isinstance(cfg.agent, KimiConfig):
            raise ConfigError(f"{path} holds a {cfg.agent.name} agent, not kimi")
        agent = cls(None, None, cfg.agent, resolve_device(device))
        agent.run_config = cfg
        agent.load_state(state["agent"])
        return agent


# -- a one-step gymnasium view of the text tasks ------------------------------------------------------
class TextTaskEnv(gym.Env):
    """obs: a prompt, action: a response, reward: the verifier's, one step per episode. Registered as ``arithmetic``
    and ``countdown`` so that ``build_agent`` (which probes env spaces) accepts ``env=arithmetic``."""

    def __init__(self, task: str = "arithmetic", **kwargs: Any) -> None:
        from rl.lm.tokenizer import DEFAULT_CHARS

        self.task_name, self.kwargs, self.task, self.problem = task, kwargs, None, None
        self.observation_space = self.action_space = gym.spaces.Text(256, charset=DEFAULT_CHARS)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        if self.task is None:
            self.task = make_text_task(EnvConfig(id=self.task_name, kwargs=self.kwargs))
        self.problem = self.task.train[int(self.np_random.integers(len(self.task.train)))]
        return self.problem.prompt, {}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        return self.problem.prompt, self.task.reward(self.problem, action), True, False, {}


for _name in ("arithmetic", "countdown", "jsonl"):
    if _name not in gym.registry:
        gym.register(_name, entry_point=TextTaskEnv, kwargs={"task": _name})

register_agent("kimi", Kimi, KimiConfig)
