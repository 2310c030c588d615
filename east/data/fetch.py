"""``east fetch``: put a dataset in place and verify it — the only code that downloads.

Training never downloads (loading uses ``download=False``); the pipeline's ``fetch_data``
rule runs ``east fetch <name> --root data`` and depends on the marker file it writes.
"""

from __future__ import annotations

import argparse
import urllib.error
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from east.data.registry import dataset_dir, dataset_info, digits_size
from east.errors import EastError
from east.io import atomic_write_json

MARKER = "FETCHED.json"


def marker_path(name: str, root: str | Path) -> Path:
    """``<root>/<name>/FETCHED.json``: exists once the dataset was fetched and verified."""
    return dataset_dir(name, root) / MARKER


def _fetch_cifar(name: str, root: str | Path, md5s: Mapping[str, str] | None) -> dict[str, Any]:
    from east.data import cifar

    try:
        return {"files": cifar.verify(name, root, md5s)}
    except EastError:
        if md5s is not None:
            raise  # custom checksums describe local files: nothing to download
    folder = dataset_dir(name, root)
    cls = cifar.torchvision_class(name)
    print(f"east fetch: downloading {cls.url} into {folder}", flush=True)
    try:
        # torchvision verifies the archive's md5 and skips files already intact.
        cls(str(folder), train=True, download=True)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        raise EastError(f"could not download {name} from {cls.url}: {error}") from None
    return {"files": cifar.verify(name, root, None)}


def _fetch_imagenet(root: str | Path, expected_classes: int) -> dict[str, Any]:
    from east.data.imagenet import scan_split, validate_imagenet

    classes = validate_imagenet(root, expected_classes=expected_classes)
    return {
        "classes": len(classes),
        "train_images": len(scan_split(root, "train")),
        "val_images": len(scan_split(root, "val")),
    }


def fetch(
    name: str,
    root: str | Path = "data",
    *,
    md5s: Mapping[str, str] | None = None,
    expected_classes: int | None = None,
) -> Path:
    """Make ``name`` available under ``root`` and verify it; write and return the marker.

    digits and its resized variants: embedded in scikit-learn (checked by loading it).
    cifar10/cifar100: verified against torchvision's md5 table (or ``md5s``), downloaded
    only when missing or corrupt and ``md5s`` is None. imagenet: cannot be downloaded; the folder layout is
    validated (``expected_classes`` overrides 1000, for tests).
    """
    info = dataset_info(name, where="east fetch")
    size = digits_size(name)
    if size is not None:
        from east.data.digits import load_digits_arrays

        images, _labels = load_digits_arrays(size)
        content: dict[str, Any] = {"images": int(images.shape[0])}
    elif name == "imagenet":
        classes = info.num_classes if expected_classes is None else expected_classes
        content = _fetch_imagenet(root, classes)
    else:
        content = _fetch_cifar(name, root, md5s)
    return atomic_write_json(marker_path(name, root), {"dataset": name, **content})


def cmd_fetch(args: argparse.Namespace) -> int:
    marker = fetch(args.dataset, args.root)
    print(f"east fetch: {args.dataset} is in place and verified ({marker})")
    return 0
