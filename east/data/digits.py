"""scikit-learn's embedded digits: 1,797 8x8 grayscale images, 10 classes, no download.

The ``digits12``/``digits16``/``digits32`` variants are the same images resized once
(bilinear, pixel centres aligned as in PIL and torchvision) so that a CIFAR-style ResNet's
last stage runs at 2x2 / 2x2 / 4x4 instead of 1x1, where 3x3 taps see padding only.
"""

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


def load_digits_arrays(size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 images as uint8 (N, 1, size, size) scaled 0..16 → 0..255, and int64 labels.

    ``size`` > 8 resizes the 0..16 levels bilinearly in float64 before scaling and
    rounding, so every variant is a deterministic function of the embedded file.
    """
    levels, target = _digits_levels()
    grid = torch.from_numpy(np.ascontiguousarray(levels, dtype=np.float64)).unsqueeze(1)
    if size != grid.shape[-1]:
        # align_corners=False with edge clamping: the half-pixel-centre convention.
        grid = torch.nn.functional.interpolate(grid, size=(size, size), mode="bilinear",
                                               align_corners=False)
    # round half up: 8 → 127.5 → 128; 16 → 255.
    scaled = torch.floor(grid * (255.0 / DIGITS_LEVELS) + 0.5).to(torch.uint8)
    return scaled.contiguous(), torch.from_numpy(target)
