"""Folder layouts checked without torch: the ImageNet ImageFolder tree.

``east fetch imagenet``, the loaders and the grid check (``east grid check`` and the
Snakefile, on the submitting host, before any job is submitted) share this one check, so a
missing or malformed folder is reported the same way wherever it is found.
"""

from __future__ import annotations

import os
from pathlib import Path

from east.data.registry import dataset_dir, fetch_hint
from east.errors import EastError


def _class_folders(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def validate_imagenet(root: str | Path, *, expected_classes: int = 1000) -> list[str]:
    """Check the ImageFolder layout (both splits, the same class folders, the expected
    count); return the sorted class folder names. One-line EastError otherwise."""
    base = dataset_dir("imagenet", root)
    if not base.is_dir():
        raise EastError(
            f"dataset imagenet not found under {Path(root)}/: {fetch_hint('imagenet', root)}"
        )
    for split in ("train", "val"):
        if not (base / split).is_dir():
            raise EastError(
                f"imagenet {split}/ is missing under {base}: expected "
                f"{base}/{{train,val}}/<wnid>/*.JPEG (ImageFolder layout)"
            )
    train, val = _class_folders(base / "train"), _class_folders(base / "val")
    if not val and any(e.is_file() for e in os.scandir(base / "val")):
        raise EastError(
            f"imagenet val/ has image files but no class folders ({base / 'val'}): the "
            "official validation archive is flat; sort it into val/<wnid>/ folders"
        )
    if train != val:
        only_train = sorted(set(train) - set(val))
        only_val = sorted(set(val) - set(train))
        example = (f"{only_train[0]} only in train/" if only_train
                   else f"{only_val[0]} only in val/")
        raise EastError(
            f"imagenet val/ has {len(val)} class folders, train/ has {len(train)}: "
            f"{len(only_train) + len(only_val)} differ (e.g. {example}) under {base}"
        )
    if len(train) != expected_classes:
        raise EastError(
            f"imagenet train/ and val/ have {len(train)} class folders, expected "
            f"{expected_classes} ({base}/{{train,val}}/<wnid>/*.JPEG, one folder per class)"
        )
    return train
