"""Hugging Face causal LMs made offline: tokenizers (character-level, or byte-level BPE trained on the task's text),
randomly initialized models of a given shape (Llama / Qwen2 / GPT-2; the Qwen2.5 shapes of
``QWEN25_SHAPES``), saved to a directory that ``agent.policy=hf`` (and TRL, beside it) loads.

Needs the optional ``transformers`` and ``tokenizers`` packages (``pip install 'actorzoo[llm]'``); nothing is
downloaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from rl.lm.tokenizer import DEFAULT_CHARS, SPECIAL_TOKENS

ARCHS = ("llama", "qwen2", "gpt2")

# The published Qwen2.5 shapes (their config.json files), for randomly initialized stand-ins.
QWEN25_SHAPES: dict[str, dict[str, Any]] = {
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151_936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960, vocab_size=151_936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
               intermediate_size=18_944, vocab_size=152_064, tie_word_embeddings=False),
}

# A ChatML template (the Qwen family's) for tokenizers made here.
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


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


def bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1000, chat_template: str | None = CHATML):
    """A byte-level BPE tokenizer trained here on ``texts`` (Qwen-style specials: ``<|endoftext|>`` pads,
    ``<|im_end|>`` ends a response; no BOS), with a ChatML ``chat_template``. Any byte string encodes."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
                            show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    tok.chat_template = chat_template
    return tok


def model_config(arch: str = "llama", layers: int = 2, hidden: int = 64, heads: int = 2, context: int = 128,
                 vocab: int = 32, kv_heads: int | None = None, intermediate: int | None = None, **extra: Any):
    """A ``transformers`` config: ``llama`` / ``qwen2`` (RoPE, RMSNorm, SwiGLU, grouped-query attention; Qwen2 has
    q/k/v biases) or ``gpt2``; ``extra`` keys go to the config as they are."""
    import transformers

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if arch == "gpt2":
        return transformers.GPT2Config(vocab_size=vocab, n_positions=context, n_embd=hidden, n_layer=layers,
                                       n_head=heads, **extra)
    cls = transformers.LlamaConfig if arch == "llama" else transformers.Qwen2Config
    return cls(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or 4 * hidden,
               num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
               max_position_embeddings=context, **{"tie_word_embeddings": True, **extra})


def qwen25_config(shape: str):
    """A ``Qwen2Config`` of one of :data:`QWEN25_SHAPES` (32,768 positions, RMSNorm epsilon 1e-6, q/k/v biases)."""
    import transformers

    if shape not in QWEN25_SHAPES:
        raise ValueError(f"shape must be one of {sorted(QWEN25_SHAPES)}, got {shape!r}")
    return transformers.Qwen2Config(**QWEN25_SHAPES[shape], max_position_embeddings=32_768, rms_norm_eps=1e-6)


def random_model(config: Any, seed: int = 0, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """A randomly initialized causal LM of ``config``, built directly on ``device`` in ``dtype`` (the same
    ``seed`` and device give the same weights)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def save_model(path: str | Path, model: Any, tokenizer: Any) -> Path:
    """``save_pretrained`` of both, with the tokenizer's special ids written into the model's configs."""
    ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
           "bos_token_id": tokenizer.bos_token_id}
    model.config.update(ids)
    model.generation_config.update(**ids)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_model(path: str | Path, arch: str = "llama", layers: int = 2, hidden: int = 64, heads: int = 2,
                    context: int = 128, seed: int = 0, model_vocab: int | None = None,
                    chars: str = DEFAULT_CHARS, kv_heads: int | None = None) -> Path:
    """Write a random ``arch`` model of ``layers`` × ``hidden`` (``heads`` heads, ``context`` positions) and
    :func:`char_tokenizer` to ``path``. ``model_vocab`` (default: the tokenizer's size) lets a test make a model
    that does not fit its tokenizer."""
    tokenizer = char_tokenizer(chars)
    config = model_config(arch, layers, hidden, heads, context, model_vocab or len(tokenizer), kv_heads)
    return save_model(path, random_model(config, seed), tokenizer)
