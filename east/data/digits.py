"""scikit-learn's embedded digits: 1,797 8x8 grayscale images, 10 classes, no download."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

DIGITS_LEVELS = 16  # load_digits pixel values are integers 0..16


def _embedded_csv() -> Path | None:
    """The CSV that ``sklearn.datasets.load_digits`` reads, located without importing
    scikit-learn (its import costs ~4 s per process, paid by every training job)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets/data/digits.csv.gz"
    return path if path.is_file() else None


def _digits_levels() -> tuple[np.ndarray, np.ndarray]:
    csv = _embedded_csv()
    if csv is not None:
        table = np.loadtxt(csv, delimiter=",")
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # layout changed: the public loader

    bunch = load_digits()
    return np.asarray(bunch.images, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)


def load_digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 images as uint8 (N, 1, 8, 8) scaled 0..16 → 0..255, and int64 labels."""
    levels, target = _digits_levels()
    # round half up: 8 → 127.5 → 128; 16 → 255.
    scaled = np.floor(levels * 255.0 / DIGITS_LEVELS + 0.5).astype(np.uint8)
    images = torch.from_numpy(scaled).unsqueeze(1).contiguous()
    labels = torch.from_numpy(target)
    return images, labels
