"""Datasets and loaders (see docs/design.md, "Data").

Importing ``east.data`` is torch-free: the registry is loaded eagerly, everything that
needs torch is imported on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

from east.data.registry import DATASETS, DatasetInfo, dataset_dir, dataset_info

_LAZY = {
    "TensorSplit": "east.data.loader",
    "Splits": "east.data.loader",
    "EpochPlan": "east.data.loader",
    "PositionedLoader": "east.data.loader",
    "InMemoryLoader": "east.data.loader",
    "Loaders": "east.data.loader",
    "load_splits": "east.data.loader",
    "build_loaders": "east.data.loader",
    "build_test_loader": "east.data.loader",
    "ImageFolderLoader": "east.data.imagenet",
    "validate_imagenet": "east.data.layout",
    "fetch": "east.data.fetch",
}

__all__ = ["DATASETS", "DatasetInfo", "dataset_dir", "dataset_info", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'east.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
