"""A fixed character-level tokenizer for the shipped text tasks (no download, no training)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
DEFAULT_CHARS = "0123456789+-*/=(),;:> c"
TOKENIZER_FILE = "tokenizer.json"


class CharTokenizer:
    """One id per character: ``<pad>``=0, ``<bos>``=1, ``<eos>``=2, then ``chars`` in order from id 3.

    The default alphabet covers the arithmetic and countdown tasks; pass ``chars`` for a custom task.
    """

    def __init__(self, chars: str = DEFAULT_CHARS) -> None:
        if len(set(chars)) != len(chars) or not chars:
            raise ValueError(f"chars must be a non-empty string of distinct characters, got {chars!r}")
        self.chars = chars
        self._to_id = {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(chars)}
        self.pad_id, self.bos_id, self.eos_id = PAD_ID, BOS_ID, EOS_ID

    @property
    def vocab_size(self) -> int:
        return len(SPECIAL_TOKENS) + len(self.chars)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """``text`` -> ids (``[bos] + chars + [eos]`` as asked). Unknown characters raise ``ValueError``."""
        try:
            ids = [self._to_id[c] for c in text]
        except KeyError as e:
            bad = sorted({c for c in text if c not in self._to_id})
            raise ValueError(f"characters {bad} of {text!r} are not in the tokenizer's alphabet {self.chars!r}; "
                             f"build CharTokenizer(chars=...) with them") from e
        return [self.bos_id] * add_bos + ids + [self.eos_id] * add_eos

    def decode(self, ids: Iterable[int], stop_at_eos: bool = True) -> str:
        """ids -> text; special tokens are dropped, and with ``stop_at_eos`` nothing after the first EOS is kept."""
        out = []
        for i in map(int, ids):
            if i == self.eos_id and stop_at_eos:
                break
            if i < len(SPECIAL_TOKENS):
                continue
            if i >= self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
            out.append(self.chars[i - len(SPECIAL_TOKENS)])
        return "".join(out)

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` into ``directory`` (created if needed); returns its path."""
        path = Path(directory) / TOKENIZER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"special_tokens": list(SPECIAL_TOKENS), "chars": self.chars}))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "CharTokenizer":
        """Read the ``tokenizer.json`` written by :meth:`save`."""
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {TOKENIZER_FILE} in {directory}")
        data = json.loads(path.read_text())
        if data.get("special_tokens") != list(SPECIAL_TOKENS):
            raise ValueError(f"{path}: special tokens {data.get('special_tokens')} differ from {list(SPECIAL_TOKENS)}")
        return cls(data["chars"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other.chars == self.chars

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, chars={self.chars!r})"
