"""Training one cell: ``train_cell`` / ``east train`` (run.py); the state a checkpoint
holds (state.py), built from a cell and resumed (setup.py); one optimizer step (step.py);
the epochs (loop.py) and what happens around them (callbacks.py: divergence, history and
progress, the best model, checkpoints, results); devices and precision (devices.py),
signals (signals.py), progress output (progress.py), checkpoint files (checkpoint.py),
optimizer and lr schedule (optim.py), history and summary files (history.py), the
training-FLOPs account (cost.py), the environment record (environment.py), data
parallelism (distributed.py) and the torchvision export (export.py). Names load lazily so
``import east.train`` stays cheap."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "train_cell": "east.train.run",
    "read_cell": "east.train.run",
    "cmd_train": "east.train.run",
    "Trainer": "east.train.loop",
    "TrainOutcome": "east.train.loop",
    "NonFiniteLoss": "east.train.callbacks",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'east.train' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
