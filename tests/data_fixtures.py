"""Tiny datasets in the real on-disk formats, for tests that run the real loading code.

CIFAR archives are the pickles torchvision reads (uint8 (N, 3072) planar RGB rows); the
ImageNet tree is an ImageFolder of small PNG/JPEG files.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class CifarArchive:
    root: Path                  # the --root directory (holds cifar10/ or cifar100/)
    md5s: dict[str, str]        # file name → md5 of the generated files
    train_data: np.ndarray      # uint8 (N, 3072), the concatenated training rows
    train_labels: np.ndarray    # int64 (N,)
    test_data: np.ndarray
    test_labels: np.ndarray


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _dump(path: Path, obj: dict) -> None:
    with path.open("wb") as handle:
        pickle.dump(obj, handle, protocol=2)


def _balanced_labels(rng: np.random.Generator, n: int, classes: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % classes).astype(np.int64)


def write_cifar10(
    root: Path, per_batch: int = 50, n_test: int = 40, seed: int = 0
) -> CifarArchive:
    """``root/cifar10/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    md5s = {}
    datas, labels = [], []
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        label = _balanced_labels(rng, n, 10)
        _dump(folder / name, {
            "batch_label": f"{name} of 6",
            "labels": [int(v) for v in label],  # the real files hold Python lists
            "data": data,
            "filenames": [f"img_{name}_{i}.png" for i in range(n)],
        })
        md5s[name] = _md5(folder / name)
        datas.append(data)
        labels.append(label)
    _dump(folder / "batches.meta", {
        "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                        "horse", "ship", "truck"],
        "num_cases_per_batch": per_batch,
        "num_vis": 3072,
    })
    md5s["batches.meta"] = _md5(folder / "batches.meta")
    return CifarArchive(root, md5s, np.concatenate(datas[:5]), np.concatenate(labels[:5]),
                        datas[5], labels[5])


def write_cifar100(
    root: Path, n_train: int = 1000, n_test: int = 100, seed: int = 1
) -> CifarArchive:
    """``root/cifar100/cifar-100-python/{train,test,meta}`` with fine and coarse labels."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    md5s, parts = {}, {}
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = _balanced_labels(rng, n, 100)
        _dump(folder / name, {
            "filenames": [f"{name}_{i}.png" for i in range(n)],
            "batch_label": f"{name} batch",
            "fine_labels": [int(v) for v in fine],
            "coarse_labels": [int(v) // 5 for v in fine],
            "data": data,
        })
        md5s[name] = _md5(folder / name)
        parts[name] = (data, fine)
    _dump(folder / "meta", {
        "fine_label_names": [f"fine{i}" for i in range(100)],
        "coarse_label_names": [f"coarse{i}" for i in range(20)],
    })
    md5s["meta"] = _md5(folder / "meta")
    return CifarArchive(root, md5s, *parts["train"], *parts["test"])


def write_imagenet(
    root: Path,
    classes: tuple[str, ...] = ("n01440764", "n01443537", "n01484850"),
    train_per_class: int = 6,
    val_per_class: int = 2,
    size: tuple[int, int] = (8, 8),
    fmt: str = "PNG",
    seed: int = 2,
) -> dict[str, dict[str, np.ndarray]]:
    """``root/imagenet/{train,val}/<wnid>/*`` of random RGB images (width, height = size).

    Returns split → file path → the uint8 (H, W, 3) pixels written (exact for PNG).
    """
    rng = np.random.default_rng(seed)
    suffix = {"PNG": ".png", "JPEG": ".JPEG"}[fmt]
    written: dict[str, dict[str, np.ndarray]] = {"train": {}, "val": {}}
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for wnid in classes:
            folder = root / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                path = folder / f"{wnid}_{i}{suffix}"
                Image.fromarray(pixels).save(path, format=fmt)
                written[split][str(path)] = pixels
    return written
