"""The datasets east knows: shapes, split sizes, normalisation, default augmentation.

Torch-free: the grid validator and the Snakefile read it to check rows and to compute
steps per epoch before anything is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from east.errors import EastError

# The digits test split is cut from the 1,797 embedded images (there is no official one).
DIGITS_TOTAL = 1797
DIGITS_TEST_FRACTION = 0.2
# Evaluating 128k held-out ImageNet images every epoch would cost ~10 % of training.
IMAGENET_MAX_VAL = 10_000


def round_half_up(x: float) -> int:
    """Round to the nearest int, halves up (Python's round() rounds halves to even)."""
    return math.floor(x + 0.5)


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one dataset; sizes are image counts."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    stem: str
    train_pool: int
    test_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int
    in_memory: bool
    max_val: int | None = None
    hflip: bool = True

    def val_size(self, val_fraction: float, pool: int | None = None) -> int:
        """Images held out of a training pool of ``pool`` images (default: the full set's)
        as validation; the split itself is stratified (``east.data.splits``)."""
        if not 0.0 <= val_fraction < 1.0:
            raise EastError(f"data.val_fraction: must be in [0, 1), got {val_fraction!r}")
        pool = self.train_pool if pool is None else pool
        size = round_half_up(val_fraction * pool)
        return size if self.max_val is None else min(size, self.max_val)

    def split_sizes(self, val_fraction: float) -> dict[str, int]:
        val = self.val_size(val_fraction)
        return {"train": self.train_pool - val, "val": val, "test": self.test_size}


_DIGITS_TEST = round_half_up(DIGITS_TEST_FRACTION * DIGITS_TOTAL)


def _resized_digits(size: int, mean: float, std: float, crop_padding: int) -> DatasetInfo:
    """``digits<size>``: digits resized once; mean/std are its pixel statistics."""
    return DatasetInfo(name=f"digits{size}", num_classes=10, in_channels=1, image_size=size,
                       stem="cifar", train_pool=DIGITS_TOTAL - _DIGITS_TEST,
                       test_size=_DIGITS_TEST, mean=(mean,), std=(std,),
                       crop_padding=crop_padding, in_memory=True, hflip=False)

DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        name="digits",
        num_classes=10,
        in_channels=1,
        image_size=8,
        stem="cifar",
        train_pool=DIGITS_TOTAL - _DIGITS_TEST,
        test_size=_DIGITS_TEST,
        # Pixel statistics of all 1,797 images after scaling 0..16 to 0..255.
        mean=(0.3053,),
        std=(0.3759,),
        crop_padding=1,
        in_memory=True,
        hflip=False,  # digits are not mirror-symmetric: flips cost ~6 points of accuracy
    ),
    # Digits resized once (east.data.digits): the same images, labels and splits, at a
    # resolution where ResNet-18's last stage is 2x2 (12, 16 px) or 4x4 (32 px, as CIFAR)
    # instead of 1x1. Crop padding scales with the image (8 px: 1, CIFAR's 32 px: 4).
    **{info.name: info for info in (_resized_digits(12, 0.3053, 0.3223, 2),
                                    _resized_digits(16, 0.3053, 0.3186, 2),
                                    _resized_digits(32, 0.3052, 0.3236, 4))},
    "cifar10": DatasetInfo(
        name="cifar10",
        num_classes=10,
        in_channels=3,
        image_size=32,
        stem="cifar",
        train_pool=50_000,
        test_size=10_000,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        crop_padding=4,
        in_memory=True,
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        num_classes=100,
        in_channels=3,
        image_size=32,
        stem="cifar",
        train_pool=50_000,
        test_size=10_000,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        crop_padding=4,
        in_memory=True,
    ),
    "imagenet": DatasetInfo(
        name="imagenet",
        num_classes=1000,
        in_channels=3,
        image_size=224,
        stem="imagenet",
        train_pool=1_281_167,
        test_size=50_000,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        crop_padding=0,
        in_memory=False,
        max_val=IMAGENET_MAX_VAL,
    ),
}


def digits_size(name: str) -> int | None:
    """The image size of a digits variant (``digits`` 8, ``digits16`` 16, ...), else None."""
    if name == "digits" or (name.startswith("digits") and name in DATASETS):
        return DATASETS[name].image_size
    return None


def dataset_info(name: str, where: str = "data.name") -> DatasetInfo:
    """Look a dataset up by name; an unknown name is a user error naming ``where``."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(DATASETS))
        raise EastError(f"{where}: unknown dataset {name!r} (known: {known})") from None


def dataset_dir(name: str, root: str | Path) -> Path:
    """Where a dataset's files live: ``<root>/<name>``."""
    return Path(root) / name


def fetch_hint(name: str, root: str | Path) -> str:
    """The command that puts a dataset in place (quoted in 'not found' errors)."""
    if name == "imagenet":
        return (
            f"place ImageNet as {Path(root) / 'imagenet'}/{{train,val}}/<wnid>/*.JPEG "
            "(ImageFolder layout; it cannot be downloaded)"
        )
    return f"run `east fetch {name} --root {root}` (or the pipeline's fetch_data rule)"
