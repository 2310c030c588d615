"""Training one cell: ``train_cell`` / ``east train`` (run.py), the loop (loop.py),
checkpoints (checkpoint.py), optimizer and lr schedule (optim.py), history and summary
files (history.py), multi-process data parallelism (distributed.py) and the torchvision
export (export.py). Names load lazily so ``import east.train`` stays cheap."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "train_cell": "east.train.run",
    "read_cell": "east.train.run",
    "cmd_train": "east.train.run",
    "Trainer": "east.train.loop",
    "TrainOutcome": "east.train.loop",
    "NonFiniteLoss": "east.train.loop",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'east.train' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
