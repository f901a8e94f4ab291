"""A tiny character-level policy that runs offline: tokenizer, transformer, sampling, SFT warm start."""

from rl.lm.model import KVCache, TinyLM, TinyLMConfig
from rl.lm.sampling import GenerationOutput, decode, generate, sample_next, sequence_logprobs, token_logprobs
from rl.lm.sft import encode_prompts, evaluate, sft
from rl.lm.tokenizer import BOS_ID, EOS_ID, PAD_ID, CharTokenizer

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "CharTokenizer",
    "GenerationOutput",
    "KVCache",
    "TinyLM",
    "TinyLMConfig",
    "encode_prompts",
    "evaluate",
    "decode",
    "generate",
    "sample_next",
    "sequence_logprobs",
    "sft",
    "token_logprobs",
]
