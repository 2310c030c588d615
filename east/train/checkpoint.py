"""Complete, atomic, verifiable training checkpoints in ``<run>/checkpoints/``.

A checkpoint is one ``torch.save`` of a dict of tensors and plain Python values, so that it
loads with ``torch.load(..., weights_only=True)`` (no pickled code runs on resume). It is
written atomically (temp file + rename) and its sha256 goes to a sidecar
``ckpt-<step>.pt.sha256`` written after it. Loading walks the checkpoints newest first and
takes the first one whose bytes match its sidecar (when there is one) and that loads; a bad
one is reported with a warning and renamed ``*.corrupt`` (kept for inspection, never
deleted, no longer counted among the kept checkpoints). A checkpoint that holds pickled
objects other than tensors (code that would run on load) is refused the same way, with
east's own reason (``east.io.torch_load``). Only the newest ``keep`` (2) good checkpoints
are kept.

RNG states are stored as tensors and lists (numpy's state array as a list of ints) because
``weights_only`` loading accepts nothing else.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from east.errors import EastError
from east.io import atomic_write, atomic_write_text, torch_load

CHECKPOINT_DIR = "checkpoints"
KEEP = 2
_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


class _HashingWriter:
    """A write-only file wrapper that hashes what passes through (no second read)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def checkpoint_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def checkpoint_path(run_dir: str | os.PathLike[str], step: int) -> Path:
    return checkpoint_dir(run_dir) / f"ckpt-{step}.pt"


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file, oldest first (corrupt ones excluded)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(
    run_dir: str | os.PathLike[str], step: int, state: dict[str, Any], keep: int = KEEP
) -> Path:
    """Write ``state`` as ``ckpt-<step>.pt`` (+ sha256 sidecar); prune to the newest ``keep``."""
    path = checkpoint_path(run_dir, step)
    digest: dict[str, str] = {}

    def write(handle: IO[bytes]) -> None:
        writer = _HashingWriter(handle)
        torch.save(state, writer)
        digest["sha256"] = writer.sha.hexdigest()

    # A stale sidecar of an older file with this name must not vouch for the new bytes.
    sidecar(path).unlink(missing_ok=True)
    atomic_write(path, write)
    atomic_write_text(sidecar(path), f"{digest['sha256']}  {path.name}\n")
    for _, old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
        sidecar(old).unlink(missing_ok=True)
    return path


@dataclass(frozen=True)
class LoadedCheckpoint:
    step: int
    path: Path
    state: dict[str, Any]
    # Checkpoints newer than ``path`` that could not be read: (path, reason).
    rejected: tuple[tuple[Path, str], ...]


def _read_verified(path: Path) -> dict[str, Any]:
    """Load one checkpoint; raise ValueError with the reason when it is unusable."""
    check = sidecar(path)
    if check.exists():
        expected = check.read_text(encoding="utf-8").split()[:1]
        with path.open("rb") as handle:  # streamed: a checkpoint can be gigabytes
            actual = hashlib.file_digest(handle, "sha256").hexdigest()
        if expected != [actual]:
            raise ValueError(f"sha256 mismatch ({path.stat().st_size} bytes)")
    try:
        state = torch_load(path, what="checkpoint")
    except EastError as error:
        # "<path>: checkpoint holds objects other than tensors; refusing to load": the
        # reason without the path, which the caller's message names already.
        raise ValueError(str(error).removeprefix(f"{path}: ")) from None
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError("not an east checkpoint")
    return state


def load_latest(run_dir: str | os.PathLike[str]) -> LoadedCheckpoint | None:
    """The newest readable checkpoint, or None when there is none at all.

    Raises EastError when checkpoints exist but none of them is readable: starting over
    silently would throw away a run the user may want to inspect.
    """
    candidates = list_checkpoints(run_dir)
    rejected: list[tuple[Path, str]] = []
    for step, path in reversed(candidates):
        try:
            state = _read_verified(path)
        except (OSError, ValueError) as error:
            rejected.append((path, str(error)))
            continue
        return LoadedCheckpoint(step, path, state, tuple(rejected))
    if rejected:
        names = ", ".join(f"{p.name} ({why})" for p, why in rejected)
        raise EastError(
            f"{checkpoint_dir(run_dir)}: no readable checkpoint: {names}; remove the "
            "checkpoints/ folder to train this cell from the start"
        )
    return None


def quarantine(rejected: tuple[tuple[Path, str], ...], resumed_from: Path) -> None:
    """Warn about unreadable checkpoints and rename them ``*.corrupt`` (kept, not counted)."""
    for path, why in rejected:
        print(
            f"east: warning: checkpoint {path} is unreadable ({why}); resuming from "
            f"{resumed_from.name}; kept as {path.name}.corrupt",
            file=sys.stderr,
        )
        if path.exists():
            os.replace(path, path.with_name(path.name + ".corrupt"))
        side = sidecar(path)
        if side.exists():
            os.replace(side, side.with_name(path.name + ".corrupt.sha256"))


def capture_rng() -> dict[str, Any]:
    """Every global RNG state the training process may draw from, weights_only-safe."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [
            str(np_state[0]),
            [int(v) for v in np_state[1]],
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
