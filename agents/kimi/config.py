"""``agent=kimi``'s settings (every key checked before a run starts; docs/algorithms.md §4 for the math)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from rl.config import AgentConfig, check, non_negative, positive


@dataclass
class LoRAConfig:
    """Low-rank adapters through ``peft`` (``pip install 'actorzoo[llm]'``) for ``policy=hf``; ``r=0``: off (the
    whole model trains). ``target_modules``: module names, or ``[all-linear]``."""

    r: int = 0
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: List[str] = field(default_factory=lambda: ["all-linear"])

    def __post_init__(self) -> None:
        non_negative("agent.lora.r", self.r)
        positive("agent.lora.alpha", self.alpha)
        check(0 <= self.dropout < 1, f"agent.lora.dropout must be in [0, 1), got {self.dropout}")
        check(len(self.target_modules) > 0, "agent.lora.target_modules must name at least one module")


@dataclass
class KimiConfig(AgentConfig):
    name: str = "kimi"
    # the policy: the built-in TinyLM (warm-started from model_path, or by a quick SFT on the task when None),
    # or policy=hf: a Hugging Face causal LM + tokenizer in the local directory model_path (needs `transformers`)
    policy: str = "tiny"  # tiny | hf
    model_path: Optional[str] = None
    dtype: str = "float32"  # hf weights: float32 | bfloat16 | float16 (low precision trains float32 master weights)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    chars: Optional[str] = None  # a fresh TinyLM's alphabet (None: rl.lm.tokenizer.DEFAULT_CHARS, the shipped tasks')
    d_model: int = 128  # built-in TinyLM sizes (when model_path is None)
    n_layers: int = 3
    n_heads: int = 4
    context: int = 64  # tokens of prompt + response the TinyLM can see
    sft_steps: Optional[int] = None  # quick SFT warm start of a fresh TinyLM to partial competence (when model_path is
    #                                    None); None: rl.lm.sft.WARM_START_STEPS for the shipped tasks, 300 otherwise
    sft_batch_size: int = 32
    sft_lr: float = 2e-3
    # the iteration (docs/algorithms.md §4)
    k: int = 8  # responses per prompt; r̄ is their mean reward (k >= 2)
    prompts_per_iteration: int = 32  # over all ranks of a torchrun run
    tau: float = 0.1  # weight of the log-ratio against the iteration's reference policy
    lr: float = 3e-5
    grad_steps: int = 2  # gradient steps per iteration on the same samples
    max_grad_norm: float = 1.0  # 0: no clipping
    max_response_tokens: int = 48
    rollout_budget: Optional[int] = None  # new tokens per rollout per iteration (partial rollouts); None: no cut
    temperature: float = 1.0  # sampling AND scoring distribution: softmax(logits / temperature)
    top_p: float = 1.0  # must stay 1: see __post_init__
    # memory (docs/benchmarks.md: what they cost and save)
    micro_batch_size: int = 0  # responses per forward/backward pass (gradients accumulate); 0: as many as fit in
    #                            about 16,384 tokens
    gradient_checkpointing: bool = True  # hf: recompute each layer's activations in the backward pass
    logprob_chunk: int = 1024  # response tokens per chunk of the output projection + log-softmax
    compile_decoder: bool = True  # hf on CUDA: fuse each decoding step's small operations with torch.compile
    #                               (rl/lm/decoders.py); false: eager PyTorch kernels inside the CUDA graphs
    fsdp: bool = False  # torchrun: shard parameters, gradients and optimizer state with FSDP2 (else DDP)
    # rewards and sampling of prompts
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
        for key in ("d_model", "n_layers", "n_heads", "context", "sft_batch_size", "sft_lr", "prompts_per_iteration",
                    "tau", "lr", "grad_steps", "max_response_tokens", "temperature", "logprob_chunk"):
            positive(f"agent.{key}", getattr(self, key))
        for key in ("max_grad_norm", "length_penalty", "length_penalty_warmup", "unlock_every", "repetition_repeats",
                    "repetition_penalty", "eval_problems", "success_step_size", "micro_batch_size"):
            non_negative(f"agent.{key}", getattr(self, key))
        if self.rollout_budget is not None:
            positive("agent.rollout_budget", self.rollout_budget)
        if self.sft_steps is not None:
            positive("agent.sft_steps", self.sft_steps)
        check(self.top_p == 1.0, f"agent.top_p={self.top_p}: training samples must come from the policy the loss "
                                 "scores, softmax(logits / temperature); nucleus truncation is not supported (set "
                                 "agent.top_p=1, lower agent.temperature instead)")
        check(self.micro_batch_size <= self.prompts_per_iteration * self.k,
              f"agent.micro_batch_size={self.micro_batch_size} is larger than the batch of "
              f"{self.prompts_per_iteration * self.k} responses (prompts_per_iteration × k)")
        check(self.lora.r == 0 or self.policy == "hf", "agent.lora.r > 0 needs agent.policy=hf (a Hugging Face model)")
        check(0 <= self.unlock_pass_rate <= 1, f"agent.unlock_pass_rate must be in [0, 1], got {self.unlock_pass_rate}")
        check(self.success_step_size <= 1, f"agent.success_step_size must be in [0, 1], got {self.success_step_size}")
        check(self.repetition_repeats != 1, "agent.repetition_repeats must be 0 (off) or >= 2")
        positive("agent.repetition_ngram", self.repetition_ngram)
