"""Checkpoint files: crash-safe units, written atomically, read with ``weights_only=True``.

A checkpoint *unit* is a run's state at one step: ``checkpoint-<step>.pt`` and, when the replay buffer is saved
too, ``checkpoint-<step>.buffer.pt``. :func:`save_unit` writes the buffer file first and the checkpoint file last;
each goes to a temp file that is fsynced and then renamed, so the checkpoint file's rename is the commit point: a
unit whose checkpoint file exists is complete. Then ``checkpoint.pt`` is pointed at the new unit (a hard link: the
same bytes under a stable name) and only then are older units removed, the newest ``keep`` staying. A writer
killed at any moment therefore leaves the previous complete unit, plus at most a temp file or a buffer file
without its checkpoint, which the next save removes. :func:`load_newest` finds the newest unit that reads back
whole, falling back to the one before (with a warning) when the newest is corrupt or truncated.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch

from rl.config import ConfigError

PathLike = Union[str, Path]
CHECKPOINT_NAME = "checkpoint.pt"  # the newest unit's checkpoint, under a stable name
FORMAT = 2  # 2: step-stamped units; 1: checkpoint.pt + buffer.pt (still read)
_UNIT = re.compile(r"checkpoint-(\d+)\.pt")
_BUFFER = re.compile(r"checkpoint-(\d+)\.buffer\.pt")


class Unreadable(ConfigError):
    """A checkpoint file that exists but does not read back (truncated, corrupt): an older unit may stand in."""


class _FullWriter:
    """A file-like object for ``torch.save`` whose ``write`` either writes every byte or raises ``OSError``
    (through Python's buffered writer, a full disk reaches torch as a short write: a vague RuntimeError)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> int:
        view, done = memoryview(data).cast("B"), 0
        while done < len(view):
            done += os.write(self.fd, view[done:])
        return done

    def flush(self) -> None:
        pass


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` to a temp file beside ``path``, fsync, then rename over it: a crash leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            torch.save(obj, _FullWriter(fd))
            os.fsync(fd)
        except RuntimeError as e:  # torch closing its zip archive after the failed write hides the OSError
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Make renames in ``directory`` durable (a power cut after the rename keeps it); a no-op where unsupported."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- units -------------------------------------------------------------------------------------------
def unit_path(run_dir: PathLike, step: int) -> Path:
    return Path(run_dir) / f"checkpoint-{int(step)}.pt"


def buffer_path(checkpoint_file: Path) -> Path:
    """``checkpoint-600.pt`` → ``checkpoint-600.buffer.pt``."""
    return checkpoint_file.with_name(checkpoint_file.stem + ".buffer.pt")


def units(run_dir: PathLike) -> list[tuple[int, Path]]:
    """The complete units of ``run_dir``: (step, checkpoint file), newest first."""
    d = Path(run_dir)
    found = [(int(m[1]), p) for p in d.glob("checkpoint-*.pt") if (m := _UNIT.fullmatch(p.name))]
    return sorted(found, reverse=True)


def holds_run(run_dir: PathLike) -> bool:
    """True when ``run_dir`` holds a checkpoint of a run (complete or not yet pointed to by ``checkpoint.pt``)."""
    d = Path(run_dir)
    return (d / CHECKPOINT_NAME).exists() or bool(units(d))


def save_unit(run_dir: PathLike, step: int, state: dict, buffer: dict | None = None, keep: int = 2) -> Path:
    """Write one complete unit for ``step`` into ``run_dir``: ``buffer`` (a storage state dict, optional) first,
    then ``state`` (which learns the buffer file's name), then ``checkpoint.pt``; then remove all but the newest
    ``keep`` units. A failed write (full disk, read-only directory) raises :class:`ConfigError` and leaves every
    complete unit as it was. Returns the unit's checkpoint file."""
    run_dir = Path(run_dir)
    path = unit_path(run_dir, step)
    try:
        if buffer is not None:
            atomic_save({"step": int(step), "storage": buffer}, buffer_path(path))
            state = {**state, "buffer_file": buffer_path(path).name}
        atomic_save(state, path)  # the commit point
        _point_latest(path)
        prune(run_dir, keep)
    except OSError as e:
        if not path.exists():  # not committed: the buffer file written for it is garbage (and takes space)
            buffer_path(path).unlink(missing_ok=True)
        newest = units(run_dir)
        kept = f"the newest complete checkpoint, {newest[0][1]}, is untouched" if newest else "no checkpoint was written"
        raise ConfigError(f"cannot write the step-{step} checkpoint to {run_dir}: {e.strerror or e} ({kept})") from None
    return path


def _point_latest(path: Path) -> None:
    """``checkpoint.pt`` ← ``path``, atomically: a hard link renamed into place (a copy where links fail)."""
    tmp = path.parent / f".{CHECKPOINT_NAME}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # a file system without hard links
        shutil.copyfile(path, tmp)
    os.replace(tmp, path.parent / CHECKPOINT_NAME)
    _fsync_dir(path.parent)


def prune(run_dir: PathLike, keep: int) -> None:
    """Remove all but the newest ``keep`` units, buffer files without their checkpoint, and the temp files of
    saves that were killed. A unit's checkpoint file goes before its buffer file: it never dangles."""
    run_dir = Path(run_dir)
    complete = units(run_dir)
    kept = {step for step, _ in complete[:max(keep, 1)]}
    for _, path in complete[max(keep, 1):]:
        path.unlink(missing_ok=True)
    for p in run_dir.glob("checkpoint-*.buffer.pt"):
        m = _BUFFER.fullmatch(p.name)
        if m and int(m[1]) not in kept:
            p.unlink(missing_ok=True)
    for p in run_dir.glob(".checkpoint*.tmp"):
        p.unlink(missing_ok=True)
    if (run_dir / "buffer.pt").exists():  # format 1's buffer, replaced by this run's units
        (run_dir / "buffer.pt").unlink()


# -- reading -----------------------------------------------------------------------------------------
def load(path: PathLike, map_location: str | torch.device = "cpu") -> Any:
    """One file written by :func:`atomic_save`; only tensors and plain containers are accepted. A file that does
    not read back raises :class:`Unreadable` (or :class:`ConfigError`), with one line saying why."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic[:2] != b"PK" and magic[:1] != b"\x80":  # torch.save writes a zip archive (or, long ago, a pickle)
            raise Unreadable(f"{path} is empty (a copy or a save cut short?)" if not magic else
                             f"{path} is not a checkpoint file (not written by torch.save)")
        return torch.load(path, map_location=map_location, weights_only=True)
    except ConfigError:
        raise
    except FileNotFoundError:
        raise ConfigError(f"no checkpoint at {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a checkpoint file") from None
    except PermissionError:
        raise ConfigError(f"cannot read {path}: permission denied") from None
    except pickle.UnpicklingError as e:
        if str(e).startswith("Weights only load failed"):
            raise ConfigError(f"{path} holds Python objects that torch.load(weights_only=True) refuses to load: "
                              "not a checkpoint written by actorzoo") from None
        raise Unreadable(f"{path} is corrupt or truncated ({first_line(e)})") from None
    except (RuntimeError, EOFError, KeyError, ValueError, UnicodeDecodeError, OSError) as e:
        raise Unreadable(f"{path} is corrupt or truncated ({first_line(e) or type(e).__name__})") from None


def first_line(e: BaseException) -> str:
    """The gist of an exception's message: its first sentence, at most 160 characters."""
    text = str(e).strip()
    first = text.split(". ")[0].splitlines()[0] if text else ""
    return first[:160]


def check_format(state: Any, path: Path, need: tuple[str, ...] = ("config", "agent")) -> dict:
    """``state`` if it is an actorzoo checkpoint this version reads; else one line saying what it is not."""
    if not isinstance(state, dict) or not all(k in state for k in need):
        missing = [k for k in need if not isinstance(state, dict) or k not in state]
        if isinstance(state, dict) and "config" in state and "agent" in state:
            raise ConfigError(f"{path} holds an agent written by save(), without the trainer state a run needs to "
                              "resume: load it with <Agent>.load(path)")
        raise ConfigError(f"{path} is not an actorzoo checkpoint (no {', '.join(repr(k) for k in missing)} entry)")
    version = state.get("version", 1)
    if not isinstance(version, int) or version > FORMAT:
        raise ConfigError(f"{path} was written by a newer actorzoo (checkpoint format {version}; this version reads "
                          f"formats 1 to {FORMAT}): upgrade actorzoo to load it")
    return state


def candidates(path: PathLike) -> list[Path]:
    """The files :func:`load_newest` tries for ``path``: a run directory (or its ``checkpoint.pt``) → its units,
    newest first (``checkpoint.pt`` alone for a run without stamped units); any other file → that file."""
    p = Path(path).expanduser()
    if p.is_dir() or (p.name == CHECKPOINT_NAME and p.parent.is_dir()):
        d = p if p.is_dir() else p.parent
        found = [f for _, f in units(d)] or ([d / CHECKPOINT_NAME] if (d / CHECKPOINT_NAME).is_file() else [])
        if found:
            return found
    elif p.is_file():
        return [p]
    raise ConfigError(f"no checkpoint at {path} (expected a run directory with {CHECKPOINT_NAME} or a .pt file)")


def resolve(path: PathLike) -> Path:
    """A checkpoint file, or a run directory → its newest unit's checkpoint file (not read)."""
    return candidates(path)[0]


@dataclass
class Unit:
    path: Path  # the checkpoint file that was read
    state: dict
    buffer: dict | None  # the storage state dict, when asked for and saved


def load_newest(path: PathLike, map_location: str | torch.device = "cpu", with_buffer: bool = False,
                need: tuple[str, ...] = ("config", "agent")) -> Unit:
    """The newest unit under ``path`` that reads back whole (with its buffer, if ``with_buffer``). An unreadable
    unit is reported in one line on stderr and the one before it is tried; a file from another program or a newer
    version stops at once. Raises :class:`ConfigError` when no unit reads."""
    errors: list[str] = []
    files = candidates(path)
    for i, c in enumerate(files):
        try:
            state = check_format(load(c, map_location), c, need)
            buffer = _load_buffer(c, state, map_location) if with_buffer else None
        except Unreadable as e:
            errors.append(str(e))
            if i + 1 < len(files):
                print(f"warning: {e}; trying {files[i + 1].name}, the unit before it", file=sys.stderr)
            continue
        return Unit(c, state, buffer)
    raise Unreadable(errors[0] + ("" if len(errors) == 1 else f" (and {len(errors) - 1} older unit(s) as well)"))


RUN_KEYS = ("config", "agent", "trainer", "collector", "rng")  # what a trainer checkpoint holds


def load_for_resume(path: PathLike, map_location: str | torch.device = "cpu") -> Unit:
    """:func:`load_newest` (with the buffer) for a run that continues in its directory. Newer units that did not
    read back are renamed ``*.corrupt`` (kept, but out of the way of the units this run writes next); an older
    unit named on purpose while newer ones exist is refused: the directory would mix two histories."""
    unit = load_newest(path, map_location, with_buffer=True, need=RUN_KEYS)
    step = int(unit.state["trainer"]["step"])
    newer = [p for s, p in units(unit.path.parent) if s > step]
    if newer and candidates(path) == [unit.path]:
        raise ConfigError(f"{unit.path.parent} holds newer checkpoints ({', '.join(p.name for p in newer)}) than "
                          f"{unit.path.name}: continuing from step {step} there would mix two histories; copy it "
                          "(and its .buffer.pt) into a new directory and resume from that")
    for p in newer:
        with contextlib.suppress(FileNotFoundError):  # under torchrun another rank may have moved it already
            p.rename(p.with_name(p.name + ".corrupt"))
    return unit


def _load_buffer(path: Path, state: dict, map_location: str | torch.device) -> dict | None:
    if "buffer_file" not in state:
        return None
    buf_file = path.parent / state["buffer_file"]
    if not buf_file.is_file():
        raise Unreadable(f"{path}'s buffer file {buf_file.name} is missing")
    buf = load(buf_file, map_location)
    step = state.get("trainer", {}).get("step")
    if not isinstance(buf, dict) or "storage" not in buf or buf.get("step") != step:
        raise Unreadable(f"{buf_file} does not belong to {path.name} (buffer from step "
                         f"{buf.get('step') if isinstance(buf, dict) else '?'}, checkpoint from step {step})")
    return buf["storage"]
