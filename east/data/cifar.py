"""CIFAR-10/100 from torchvision's on-disk format, md5-checked; loading never downloads."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100

from east.data.registry import dataset_dir, dataset_info, fetch_hint
from east.errors import EastError

CLASSES: dict[str, type[CIFAR10]] = {"cifar10": CIFAR10, "cifar100": CIFAR100}


def torchvision_class(name: str) -> type[CIFAR10]:
    try:
        return CLASSES[name]
    except KeyError:
        raise EastError(f"data.name: {name!r} is not a CIFAR dataset") from None


def file_table(name: str, md5s: Mapping[str, str] | None = None) -> dict[str, str]:
    """File name → expected md5 of every file of the set (torchvision's table by default)."""
    base = torchvision_class(name)
    table = {f: md5 for f, md5 in base.train_list + base.test_list}
    table[base.meta["filename"]] = base.meta["md5"]
    if md5s is None:
        return table
    missing = sorted(set(table) - set(md5s))
    if missing:
        raise ValueError(f"md5s lacks {missing} for {name}")
    return {f: md5s[f] for f in table}


def data_folder(name: str, root: str | Path) -> Path:
    """``<root>/<name>/<torchvision base folder>``, e.g. data/cifar10/cifar-10-batches-py."""
    return dataset_dir(name, root) / torchvision_class(name).base_folder


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(name: str, root: str | Path, md5s: Mapping[str, str] | None = None) -> dict[str, str]:
    """Check every file exists and matches its md5; one-line EastError naming the first bad
    file. Returns path relative to ``<root>/<name>`` → md5."""
    folder = data_folder(name, root)
    table = file_table(name, md5s)
    missing = [f for f in table if not (folder / f).is_file()]
    if missing:
        what = "not found" if len(missing) == len(table) else f"incomplete ({missing[0]} missing)"
        raise EastError(
            f"dataset {name} {what} under {Path(root)}/: expected {folder}/; "
            f"{fetch_hint(name, root)}"
        )
    verified = {}
    for file_name, expected in table.items():
        actual = md5_of(folder / file_name)
        if actual != expected:
            raise EastError(
                f"dataset {name} is corrupt: {folder / file_name} has md5 {actual}, expected "
                f"{expected}; delete {folder} and {fetch_hint(name, root)}"
            )
        verified[str((folder / file_name).relative_to(dataset_dir(name, root)))] = actual
    return verified


def _checked_class(name: str, md5s: Mapping[str, str] | None) -> type[CIFAR10]:
    """torchvision's class, or a subclass whose md5 table is ``md5s`` (same loading code)."""
    base = torchvision_class(name)
    if md5s is None:
        return base
    table = file_table(name, md5s)
    return type(
        f"{base.__name__}WithMd5s",
        (base,),
        {
            "train_list": [[f, table[f]] for f, _ in base.train_list],
            "test_list": [[f, table[f]] for f, _ in base.test_list],
            "meta": {**base.meta, "md5": table[base.meta["filename"]]},
        },
    )


def _to_tensors(dataset: CIFAR10, name: str, num_classes: int) -> tuple[torch.Tensor, ...]:
    # torchvision holds (N, 32, 32, 3) HWC; the loaders want (N, 3, 32, 32).
    images = torch.from_numpy(np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2)))
    labels = torch.as_tensor(np.asarray(dataset.targets, dtype=np.int64))
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise EastError(f"dataset {name}: labels outside 0..{num_classes - 1}")
    return images, labels


def load_cifar(
    name: str, root: str | Path, *, md5s: Mapping[str, str] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, test images, test labels): uint8 (N, 3, 32, 32), int64.

    Never downloads. Missing files and md5 mismatches are one-line EastErrors.
    """
    info = dataset_info(name)
    folder = dataset_dir(name, root)
    cls = _checked_class(name, md5s)
    table = file_table(name, md5s)
    if not all((data_folder(name, root) / f).is_file() for f in table):
        verify(name, root, md5s)  # raises the precise 'not found' error
    try:
        train = cls(str(folder), train=True, download=False)
        test = cls(str(folder), train=False, download=False)
    except RuntimeError as error:
        verify(name, root, md5s)  # names the corrupt file
        raise EastError(f"dataset {name}: {error}; {fetch_hint(name, root)}") from None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as error:
        raise EastError(
            f"dataset {name}: cannot read {data_folder(name, root)} ({type(error).__name__}: "
            f"{error}); delete it and {fetch_hint(name, root)}"
        ) from None
    return (*_to_tensors(train, name, info.num_classes), *_to_tensors(test, name, info.num_classes))
