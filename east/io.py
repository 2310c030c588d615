"""Atomic file writes: a reader never sees a half-written file (temp file + rename)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; results on a shared cluster should get the usual mode.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def torch_load(path: str | os.PathLike[str], *, what: str = "file") -> Any:
    """``torch.load`` of a file east wrote (tensors and plain values only), on the CPU.

    Every failure is one ``EastError`` line naming the file: missing, truncated or garbled,
    or holding pickled objects other than tensors (code could run on load, so east refuses
    it instead of passing on torch's advice to retry with ``weights_only=False``).
    """
    import pickle

    import torch

    from east.errors import EastError

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise EastError(f"{path}: {what} is missing") from None
    except pickle.UnpicklingError as error:
        # A global (class, function) in the pickle stream is what weights_only refuses.
        if "Unsupported global" in str(error):
            raise EastError(
                f"{path}: {what} holds objects other than tensors; refusing to load"
            ) from None
        raise EastError(f"{path}: {what} is not a torch file east wrote (corrupt or "
                        "another format)") from None
    except Exception as error:  # torch raises several types for truncated or garbled zips
        raise EastError(f"{path}: {what} is not readable ({_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    """The first sentence of an error's message (torch's run to several paragraphs)."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return line.split(". ")[0].rstrip(".")
