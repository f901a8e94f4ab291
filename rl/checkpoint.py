"""Checkpoint files: written atomically (temp file + rename), read with ``weights_only=True``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Union

import torch

from rl.config import ConfigError

PathLike = Union[str, Path]
CHECKPOINT_NAME = "checkpoint.pt"


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` to a temp file beside ``path``, fsync, then rename over it: a crash leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a file written by :func:`atomic_save`; only tensors and plain containers are accepted."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)


def resolve(path: PathLike) -> Path:
    """A checkpoint file, or a run directory holding ``checkpoint.pt`` → the checkpoint file."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.is_file():
        raise ConfigError(f"no checkpoint at {path} (expected a run directory with {CHECKPOINT_NAME} or a .pt file)")
    return p
