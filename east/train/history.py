"""The per-epoch history (``history.jsonl``) and the done-marker (``summary.json``).

The history holds one JSON object per finished epoch. It is rewritten atomically on every
append (a few hundred short lines at most), so a reader never sees half a line, and on
resume it is cut back to the number of epochs the checkpoint had finished: the file then
equals the one an uninterrupted run writes (apart from the wall-clock ``time_s`` field).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from east.errors import EastError
from east.io import atomic_write_json, atomic_write_text
from east.rundir import HISTORY_FILE, SUMMARY_FILE

__all__ = ["HISTORY_FILE", "SUMMARY_FILE", "TIMING_KEYS", "append_history", "read_history",
           "read_summary", "truncate_history", "without_timing", "write_history",
           "write_summary"]

# Keys that hold wall-clock measurements: they differ between runs that compute the same
# thing, so comparisons of "the same result" (e.g. resumed vs uninterrupted) skip them.
TIMING_KEYS: frozenset[str] = frozenset({"time_s", "wall_time_s"})


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=True)


def read_history(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record of a history file; a missing file is an empty history."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise EastError(f"{path}:{number}: not a JSON line ({error.msg})") from None
    return records


def write_history(path: str | os.PathLike[str], records: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(_line(r) + "\n" for r in records))


def append_history(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Add one epoch's record (atomic: the whole file is rewritten)."""
    write_history(path, [*read_history(path), record])


def truncate_history(path: str | os.PathLike[str], length: int) -> int:
    """Keep the first ``length`` records (lines of epochs a resumed run will redo go);
    returns how many were dropped. The file is not touched when nothing is dropped."""
    records = read_history(path)
    for number, record in enumerate(records[:length], start=1):
        # Lines are appended once per epoch, in order: anything else is not this run's
        # history (e.g. two trainings appended to it at once, before run locks).
        if record.get("epoch") != number:
            raise EastError(
                f"{path}:{number}: epoch {record.get('epoch')!r} where epoch {number} belongs; "
                "the history does not match the checkpoints (written by two trainings at "
                "once?): remove history.jsonl and checkpoints/ to train the cell again"
            )
    if len(records) <= length:
        return 0
    write_history(path, records[:length])
    return len(records) - length


def write_summary(path: str | os.PathLike[str], summary: dict[str, Any]) -> None:
    atomic_write_json(path, summary)


def read_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EastError(f"{path}: missing (the cell has not finished training)") from None
    except json.JSONDecodeError as error:
        raise EastError(f"{path}: not valid JSON ({error.msg})") from None


def without_timing(record: dict[str, Any]) -> dict[str, Any]:
    """A record minus its wall-clock keys (for comparing two runs of the same cell)."""
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}
