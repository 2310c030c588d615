"""The files of one run directory (``results/runs/<cell_id>/seed<k>/``): their names, and
the model files' format. Every reader and writer of a run directory takes names from here.

| file | writer | content |
|---|---|---|
| ``cell.json`` | pipeline / user | the resolved cell (canonical JSON) |
| ``checkpoints/`` | train | complete training state, newest two kept |
| ``history.jsonl`` | train | one line per finished epoch |
| ``model.pt`` | train | the final model (a model file, below) |
| ``best.pt`` | train | the selected best-validation model (a model file) |
| ``summary.json`` | train | the done-marker |
| ``metrics.json`` | evaluate | test accuracy, counts, FLOPs |
| ``.lock`` | train, evaluate, export | the one-writer lock (``east.runlock``); empty unless held |
| ``model.east`` | export (optional) | the sparse model (``east export --format sparse``) |
| ``inference.json`` | export (optional) | the sparse model's counts and measured speed-up |

A *model file* is one ``torch.save`` of ``{"format": MODEL_FORMAT, "state_dict": {...},
"meta": {...}}``, loadable with ``weights_only=True``. ``meta`` says which model it is
(``epoch``, ``step``, ``beta``, ``nnz``, ``val_acc``, ``selection``) so that readers never
recompute it. Torch-free at import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from east.errors import EastError

CELL_FILE = "cell.json"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.jsonl"
MODEL_FILE = "model.pt"
BEST_FILE = "best.pt"
CHECKPOINT_DIR = "checkpoints"
# A new best model waits here until a checkpoint counts its epoch (then becomes best.pt).
BEST_CANDIDATE = f"{CHECKPOINT_DIR}/best-candidate.pt"
LOCK_FILE = ".lock"
SPARSE_FILE = "model.east"  # east.deploy's format; written only by `east export --format sparse`
INFERENCE_FILE = "inference.json"

MODEL_FORMAT = "east-model/1"


@dataclass(frozen=True)
class ModelFile:
    """A loaded model file: the model's state_dict (masks included) and what it is."""

    state_dict: dict[str, Any]
    meta: dict[str, Any]


def save_model_file(path: str | os.PathLike[str], state_dict: dict[str, Any],
                    meta: dict[str, Any]) -> Path:
    """Write a model file atomically."""
    import torch

    from east.io import atomic_write

    blob = {"format": MODEL_FORMAT, "state_dict": state_dict, "meta": dict(meta)}
    return atomic_write(path, lambda handle: torch.save(blob, handle))


def load_model_file(path: str | os.PathLike[str]) -> ModelFile:
    """Read a model file; every problem is one ``EastError`` line naming the file."""
    from east.io import torch_load

    path = Path(path)
    blob = torch_load(path, what="model file")
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise EastError(f"{path}: not an east model file (format {found!r}, expected "
                        f"{MODEL_FORMAT!r}); retrain the cell with this east")
    state, meta = blob.get("state_dict"), blob.get("meta")
    if not isinstance(state, dict) or not isinstance(meta, dict):
        raise EastError(f"{path}: model file without state_dict/meta")
    return ModelFile(state_dict=state, meta=meta)
