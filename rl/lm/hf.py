"""A tiny randomly initialized Hugging Face causal LM + character-level tokenizer, made offline and saved to a
directory: what tests and ``scripts/bench_llm.py`` load through ``agent.policy=hf`` (and what TRL loads beside it).

Needs the optional ``transformers`` package (``pip install 'actorzoo[llm]'``); nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

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
