"""ImageNet from an existing ImageFolder tree: ``<root>/imagenet/{train,val}/<wnid>/*.JPEG``.

The official ``val/`` folder is the test split; validation is a fixed stratified subset
held out of ``train/`` (see ``DatasetInfo.val_size``). Images are decoded and transformed
in DataLoader workers into uint8 tensors; normalisation runs on the training device.
Every sample's augmentation comes from its own seed, a function of (seed, epoch,
position), so the stream does not depend on the number of workers and can restart at any
batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder

from east.config import DataConfig
from east.data.layout import validate_imagenet
from east.data.positioned import (
    AUGMENT_STREAM,
    Loaders,
    PositionedLoader,
    cpu_generator,
)
from east.data.registry import DatasetInfo, dataset_dir
from east.data.splits import stratified_holdout
from east.data.transforms import Normalizer, eval_image, train_image
from east.errors import EastError

RESIZE_SIZE = 256  # eval: shorter side resized to this, then the centre image_size crop

__all__ = ["ImageFolderLoader", "build_imagenet_loaders", "build_imagenet_test_loader",
           "scan_split", "validate_imagenet"]


def scan_split(root: str | Path, split: str) -> list[tuple[str, int]]:
    """(path, class index) of every image of ``split``, in ImageFolder's sorted order."""
    folder = dataset_dir("imagenet", root) / split
    try:
        return list(ImageFolder(str(folder)).samples)
    except FileNotFoundError as error:
        raise EastError(f"imagenet {split}/: {error}") from None


class SeededImages(Dataset):
    """Maps a key ``(index, seed)`` to (uint8 image (3, S, S), label)."""

    def __init__(
        self, samples: Sequence[tuple[str, int]], *, augment: bool, image_size: int,
        resize_size: int,
    ) -> None:
        # Paths as one bytes array, labels as one int array: no per-sample Python objects
        # whose refcounts would un-share forked workers' memory.
        self.paths = np.array([os.fsencode(path) for path, _ in samples], dtype=np.bytes_)
        self.labels = np.array([label for _, label in samples], dtype=np.int64)
        self.augment = augment
        self.image_size = image_size
        self.resize_size = resize_size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key
        path, label = os.fsdecode(self.paths[index]), int(self.labels[index])
        try:
            with open(path, "rb") as handle:
                image = Image.open(handle).convert("RGB")
        except OSError as error:
            raise EastError(f"imagenet: cannot read image {path}: {error}") from None
        if self.augment:
            return train_image(image, self.image_size, seed), label
        return eval_image(image, self.image_size, self.resize_size), label


class _RemainingBatches:
    """Batch sampler: the keys of this rank's part of batches ``loader.batch ..`` of
    ``loader.epoch`` (only those the rank decodes; empty parts are left out, the loader
    yields them itself).

    Iterated in the main process, so it reads the loader's position each time a
    (persistent-worker) DataLoader iterator starts."""

    def __init__(self, loader: ImageFolderLoader) -> None:
        self.loader = loader

    def _parts(self) -> Iterator[tuple[int, int]]:
        loader = self.loader
        for batch in range(loader.batch, len(loader)):
            start, stop = loader.shard_bounds(batch)
            if stop > start:
                yield start, stop

    def __len__(self) -> int:
        return sum(1 for _ in self._parts())

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order, seeds = self.loader.epoch_keys(self.loader.epoch)
        for start, stop in self._parts():
            yield list(zip(order[start:stop].tolist(), seeds[start:stop].tolist(), strict=True))


class ImageFolderLoader(PositionedLoader):
    """The loader protocol over image files: workers decode and transform, the device
    normalises. Yields (x float32 (B, 3, S, S), y int64 (B,)) on ``device``."""

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        *,
        batch_size: int,
        shuffle: bool,
        augment: bool,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int = 224,
        resize_size: int = RESIZE_SIZE,
        device: str | torch.device = "cpu",
        seed: int = 0,
        drop_last: bool = False,
        workers: int = 8,
        channels_last: bool = False,
    ) -> None:
        super().__init__(len(samples), batch_size=batch_size, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.device = torch.device(device)
        self.augment = augment
        self.channels_last = channels_last
        self.normalize = Normalizer(mean, std, self.device)
        self.dataset = SeededImages(samples, augment=augment, image_size=image_size,
                                    resize_size=resize_size)
        self._dataloader = DataLoader(
            self.dataset,
            batch_sampler=_RemainingBatches(self),
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            # Train workers live across epochs; eval loaders start theirs per pass.
            persistent_workers=workers > 0 and shuffle,
        )

    def epoch_keys(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Order of ``epoch`` and, per position, the seed of that sample's augmentation."""
        order = self.epoch_order(epoch)
        if self.augment:
            generator = cpu_generator(self.seed, epoch, AUGMENT_STREAM)
            seeds = torch.randint(0, 2**62, (self.num_samples,), generator=generator)
        else:
            seeds = torch.zeros(self.num_samples, dtype=torch.int64)
        return order, seeds

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, first, batches = self.epoch, self.batch, len(self)
        if first < batches:
            stream = iter(self._dataloader)
            size = self.dataset.image_size
            for batch in range(first, batches):
                start, stop = self.shard_bounds(batch)
                if stop > start:
                    images, labels = next(stream)
                else:  # this rank's part of a batch smaller than the world
                    images = torch.empty((0, 3, size, size), dtype=torch.uint8)
                    labels = torch.empty((0,), dtype=torch.int64)
                x = images.to(self.device, non_blocking=True)
                y = labels.to(self.device, non_blocking=True)
                self.epoch, self.batch = epoch, batch + 1
                yield self.normalize(x, self.channels_last), y
        self.epoch, self.batch = epoch + 1, 0


def _loader_settings(info: DatasetInfo, *, seed: int, device: str | torch.device,
                     workers: int, channels_last: bool, image_size: int | None,
                     resize_size: int) -> dict[str, Any]:
    return {
        "mean": info.mean, "std": info.std, "device": device, "seed": seed,
        "workers": workers, "channels_last": channels_last,
        "image_size": image_size or info.image_size, "resize_size": resize_size,
    }


def build_imagenet_loaders(
    data_cfg: DataConfig,
    info: DatasetInfo,
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    device: str | torch.device,
    workers: int,
    channels_last: bool,
    drop_last: bool,
    expected_classes: int,
    image_size: int | None = None,
    resize_size: int = RESIZE_SIZE,
) -> Loaders:
    validate_imagenet(data_cfg.root, expected_classes=expected_classes)
    pool = scan_split(data_cfg.root, "train")
    test = scan_split(data_cfg.root, "val")
    labels = torch.tensor([label for _, label in pool], dtype=torch.int64)
    keep, held = stratified_holdout(labels.numpy(), info.val_size(data_cfg.val_fraction,
                                                                   pool=len(pool)))
    common = _loader_settings(info, seed=seed, device=device, workers=workers,
                              channels_last=channels_last, image_size=image_size,
                              resize_size=resize_size)

    def evaluation(samples: list[tuple[str, int]]) -> ImageFolderLoader:
        return ImageFolderLoader(samples, batch_size=eval_batch_size, shuffle=False,
                                 augment=False, **common)

    train = ImageFolderLoader([pool[i] for i in keep], batch_size=batch_size, shuffle=True,
                              augment=data_cfg.augment, drop_last=drop_last, **common)
    val = evaluation([pool[i] for i in held]) if len(held) else None
    return Loaders(train=train, val=val, test=evaluation(test), info=info)


def build_imagenet_test_loader(
    data_cfg: DataConfig,
    info: DatasetInfo,
    *,
    eval_batch_size: int,
    device: str | torch.device,
    workers: int,
    channels_last: bool,
    expected_classes: int,
    image_size: int | None = None,
    resize_size: int = RESIZE_SIZE,
) -> ImageFolderLoader:
    """The test loader alone: scans val/ only, never the 1.28M files of train/."""
    validate_imagenet(data_cfg.root, expected_classes=expected_classes)
    common = _loader_settings(info, seed=0, device=device, workers=workers,
                              channels_last=channels_last, image_size=image_size,
                              resize_size=resize_size)
    return ImageFolderLoader(scan_split(data_cfg.root, "val"), batch_size=eval_batch_size,
                             shuffle=False, augment=False, **common)
