"""The language models Kimi trains, behind the few calls the agent makes.

:class:`TinyPolicy` is the built-in character-level TinyLM; :class:`HFPolicy` a Hugging Face causal LM from a local
directory, optionally with LoRA adapters (``peft``), gradient checkpointing, and fast decoding
(``rl.lm.decoders``). Both give:

    encode(problem or text) -> prompt ids      decode(ids) -> text
    generate(prompts, n, temperature, uniforms) -> GenerationOutput (with the log-probs of what it drew)
    hidden(ids) -> final hidden states [N, W, H]       head(hidden) -> logits      head_weight() -> W or None

:class:`Scorer` is the learner's forward — ``log π_T(segment | context)`` per response — and the module that DDP or
FSDP wraps in a torchrun run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from agents.kimi.config import KimiConfig
from rl.config import ConfigError, check
from rl.lm import CharTokenizer, GenerationOutput, TinyLM, TinyLMConfig, decode
from rl.lm.fused import fuse_rms_norms
from rl.lm.logprobs import response_logprobs
from rl.lm.sampling import TinyDecoder

ADAPTER_FILE = "adapter"  # what a LoRA run's checkpoints keep of the model (the base stays at model_path)


def _text(problem: Any) -> str:
    return problem if isinstance(problem, str) else problem.prompt


class TinyPolicy:
    """TinyLM + CharTokenizer (prompts start with BOS)."""

    def __init__(self, model: TinyLM, tokenizer: CharTokenizer) -> None:
        if tokenizer.vocab_size != model.config.vocab_size:
            raise ConfigError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary is "
                              f"{model.config.vocab_size}: they were not saved together")
        self.module, self.tokenizer = model, tokenizer
        self.eos_id, self.pad_id, self.context = tokenizer.eos_id, tokenizer.pad_id, model.config.max_len

    def encode(self, problem: Any) -> list[int]:
        if getattr(problem, "messages", None):
            raise ConfigError("a chat row (\"messages\") needs a tokenizer with a chat template: the built-in TinyLM "
                              "has none (use agent.policy=hf, or rows with a plain \"prompt\")")
        return self.tokenizer.encode(_text(problem), add_bos=True)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def use_cuda_graphs(self) -> bool:
        return False

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float,
                 uniforms: Tensor | None = None) -> GenerationOutput:
        return decode(TinyDecoder(self.module), prompts, max_new_tokens, temperature, uniforms, (self.eos_id,),
                      self.pad_id, self.module.tok.weight.device)

    def hidden(self, ids: Tensor) -> Tensor:
        return self.module.hidden_states(ids)

    def head(self, hidden: Tensor) -> Tensor:
        return self.module.head(hidden)

    def head_weight(self) -> Tensor:
        return self.module.head.weight

    def state(self) -> dict[str, Tensor]:
        return self.module.state_dict()

    def load_state(self, state: dict[str, Tensor]) -> None:
        self.module.load_state_dict(state)


def disable_dropout(model: nn.Module) -> None:
    """π_θ must be the same function when sampling and when learning (the update runs in train mode)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    if hasattr(getattr(model, "config", None), "attention_dropout"):
        model.config.attention_dropout = 0.0


def set_checkpointing(model: nn.Module, on: bool) -> None:
    """Activation (gradient) checkpointing of a ``transformers`` model on or off (transformers >= 5.20 renamed it)."""
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


class HFPolicy:
    """A ``transformers`` causal LM + tokenizer from a local directory; prompts start with BOS when it has one,
    chat rows go through the tokenizer's chat template."""

    def __init__(self, cfg: KimiConfig, device: torch.device) -> None:
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise ConfigError("agent.policy=hf needs the optional `transformers` package: "
                              "pip install 'actorzoo[llm]'") from None
        path = str(cfg.model_path)
        if not Path(path).is_dir():
            raise ConfigError(f"agent.model_path={path}: no such directory (give a local Hugging Face model)")
        if cfg.lora.r > 0:
            try:
                import peft  # noqa: F401
            except ImportError:
                raise ConfigError("agent.lora.r > 0 needs the optional `peft` package: pip install 'actorzoo[llm]'"
                                  ) from None
        dtype = torch.float32 if cfg.fsdp else getattr(torch, cfg.dtype)  # FSDP2 computes in cfg.dtype itself
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        except (OSError, ValueError) as e:
            raise ConfigError(f"agent.model_path={path}: cannot load a causal LM + tokenizer ({e})") from None
        vocab = model.get_input_embeddings().num_embeddings
        if len(self.tokenizer) > vocab:
            raise ConfigError(f"agent.model_path={path}: the tokenizer has {len(self.tokenizer)} tokens but the model "
                              f"embeds only {vocab}: tokenizer and model do not match")
        if self.tokenizer.eos_token_id is None:
            raise ConfigError(f"agent.model_path={path}: the tokenizer has no EOS token to end responses with")
        disable_dropout(model)
        fuse_rms_norms(model)
        if cfg.gradient_checkpointing:
            set_checkpointing(model, True)
        if cfg.lora.r > 0:
            model = self._add_lora(model, cfg)
        self.module = model.eval()
        self.lm = model.get_base_model() if cfg.lora.r > 0 else model
        self.lora = cfg.lora.r > 0
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        config = self.lm.config
        self.context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.cuda_graphs = False
        self.compile_decoder = cfg.compile_decoder
        self._decoder: Any = None

    @staticmethod
    def _add_lora(model: nn.Module, cfg: KimiConfig) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        targets = cfg.lora.target_modules
        try:
            return get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                                    lora_dropout=cfg.lora.dropout, task_type="CAUSAL_LM",
                                                    target_modules="all-linear" if list(targets) == ["all-linear"]
                                                    else list(targets)))
        except ValueError as e:
            raise ConfigError(f"agent.lora: {e}") from None

    # -- text ----------------------------------------------------------------------------------------
    def encode(self, problem: Any) -> list[int]:
        if getattr(problem, "messages", None):
            check(bool(getattr(self.tokenizer, "chat_template", None)),
                  "a chat row (\"messages\") needs a tokenizer with a chat template; the tokenizer in "
                  "agent.model_path has none (set tokenizer.chat_template, or give rows a plain \"prompt\")")
            out = self.tokenizer.apply_chat_template(problem.chat(), add_generation_prompt=True, tokenize=True)
            return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)
        ids = self.tokenizer(_text(problem), add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        return ([bos] if bos is not None else []) + ids

    def decode(self, ids: Sequence[int]) -> str:
        ids = list(ids)
        return self.tokenizer.decode(ids[:ids.index(self.eos_id)] if self.eos_id in ids else ids,
                                     skip_special_tokens=True)

    # -- sampling --------------------------------------------------------------------------------------
    def use_cuda_graphs(self) -> bool:
        """Replay each decoding step from a CUDA graph (Llama-family models on CUDA; ``rl.lm.decoders``)."""
        self.cuda_graphs = self.lm.device.type == "cuda"
        self._decoder = None
        return self.cuda_graphs

    def decoder(self) -> Any:
        if self._decoder is None:
            from rl.lm.decoders import make_decoder

            self._decoder = make_decoder(self.module, self.cuda_graphs, compile=None if self.compile_decoder else False)
        return self._decoder

    def forget_weights(self) -> None:
        """The parameters moved to other storage (FSDP resharding): cached decoding graphs are stale."""
        if hasattr(self._decoder, "reset"):
            self._decoder.reset()

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float,
                 uniforms: Tensor | None = None) -> GenerationOutput:
        return decode(self.decoder(), prompts, max_new_tokens, temperature, uniforms, (self.eos_id,), self.pad_id,
                      self.lm.get_input_embeddings().weight.device)

    # -- learning --------------------------------------------------------------------------------------
    def hidden(self, ids: Tensor) -> Tensor:
        """Final hidden states on right-padded ids (causal attention: padding after a token cannot change it)."""
        backbone = getattr(self.lm, self.lm.base_model_prefix)
        return backbone(input_ids=ids, use_cache=False).last_hidden_state

    def head(self, hidden: Tensor) -> Tensor:
        logits = self.lm.get_output_embeddings()(hidden)
        return logits if not self.softcap else self.softcap * torch.tanh(logits / self.softcap)

    def head_weight(self) -> Tensor | None:
        """The output projection's weight when the head is a plain bias-free linear map (no soft cap, no adapter):
        the learner then scores with ``rl.lm.logprobs.LinearLogprob``; None otherwise."""
        out = self.lm.get_output_embeddings()
        if type(out) is nn.Linear and out.bias is None and not self.softcap:
            return out.weight
        return None

    # -- storage ---------------------------------------------------------------------------------------
    def state(self) -> dict[str, Tensor]:
        """What checkpoints keep: the adapters only with LoRA (the base model stays at model_path), else all."""
        if self.lora:
            from peft import get_peft_model_state_dict

            return dict(get_peft_model_state_dict(self.module))
        return self.module.state_dict()

    def load_state(self, state: dict[str, Tensor]) -> None:
        if self.lora:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.module, state)
        else:
            self.module.load_state_dict(state)
        self.forget_weights()

    def export(self, path: str | Path, merge: bool = True) -> Path:
        """Write a Hugging Face model directory: with LoRA and ``merge``, the adapters merged into a plain model;
        with LoRA and not ``merge``, the adapter alone (``peft`` format); without LoRA, the model."""
        path = Path(path)
        model = self.module
        if self.lora and merge:
            import copy

            model = copy.deepcopy(self.module).merge_and_unload()
        model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path


class Scorer(nn.Module):
    """``log π_T(ids[i, start_i:end_i] | ids[i, :start_i])`` per row, summed over the segment, with logits / T —
    the distribution the sampler drew from (docs/algorithms.md §4). The learner's forward: DDP or FSDP wrap it."""

    def __init__(self, policy: TinyPolicy | HFPolicy, temperature: float, chunk: int) -> None:
        super().__init__()
        self.model = policy.module  # registered, so that this module's parameters are the policy's
        self.policy, self.temperature, self.chunk = policy, temperature, chunk

    def forward(self, ids: Tensor, start: Tensor, end: Tensor) -> Tensor:
        weight = self.policy.head_weight()  # read here: FSDP swaps in the whole parameter for the forward
        seq, _, _ = response_logprobs(self.policy.hidden(ids), self.policy.head if weight is None else weight, ids,
                                      start, end, self.temperature, self.chunk)
        return seq


def load_policy(cfg: KimiConfig, device: torch.device) -> tuple[TinyPolicy | HFPolicy, bool]:
    """(policy, warm): ``warm`` is False for a fresh TinyLM that still needs its SFT warm start."""
    if cfg.policy == "hf":
        return HFPolicy(cfg, device), True
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

