"""scikit-learn's embedded digits: 1,797 8x8 grayscale images, 10 classes, no download."""

from __future__ import annotations

import numpy as np
import torch

DIGITS_LEVELS = 16  # load_digits pixel values are integers 0..16


def load_digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 images as uint8 (N, 1, 8, 8) scaled 0..16 → 0..255, and int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    levels = np.asarray(bunch.images, dtype=np.float64)
    # round half up: 8 → 127.5 → 128; 16 → 255.
    scaled = np.floor(levels * 255.0 / DIGITS_LEVELS + 0.5).astype(np.uint8)
    images = torch.from_numpy(scaled).unsqueeze(1).contiguous()
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return images, labels
