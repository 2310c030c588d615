"""Resumable batch loaders and the one-call factory used by training and evaluation.

``InMemoryLoader`` keeps a whole uint8 dataset on the training device and does the
augmentation batch-wise there. Both it and ``east.data.imagenet.ImageFolderLoader`` share
the position protocol of ``PositionedLoader``: the stream is a function of
(seed, epoch, batch) only, so a restart mid-epoch yields exactly the remaining batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from east.config import DataConfig
from east.data.positioned import (
    AUGMENT_STREAM,
    Loaders,
    PositionedLoader,
    cpu_generator,
)
from east.data.registry import DatasetInfo, dataset_info, digits_size
from east.data.splits import stratified_holdout
from east.data.transforms import CropWindows, Normalizer
from east.errors import EastError


@dataclass(frozen=True)
class TensorSplit:
    """One split held in memory (CPU): uint8 images (N, C, H, W), int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    source_index: torch.Tensor  # row of each image in its source set (train pool / test set)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Splits:
    train: TensorSplit
    val: TensorSplit
    test: TensorSplit
    info: DatasetInfo


def make_splits(
    info: DatasetInfo,
    pool_images: torch.Tensor,
    pool_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    val_fraction: float,
    *,
    pool_index: torch.Tensor | None = None,
    test_index: torch.Tensor | None = None,
) -> Splits:
    """Cut the fixed stratified validation split out of the training pool.

    ``pool_index``/``test_index`` name each row's place in its source set (default: the
    row number); they become the splits' ``source_index``.
    """
    size = info.val_size(val_fraction, pool=len(pool_labels))
    keep, held = stratified_holdout(pool_labels.numpy(), size)
    if pool_index is None:
        pool_index = torch.arange(len(pool_labels), dtype=torch.int64)
    if test_index is None:
        test_index = torch.arange(len(test_labels), dtype=torch.int64)

    def part(rows: np.ndarray) -> TensorSplit:
        index = torch.from_numpy(rows)
        return TensorSplit(pool_images[index].contiguous(), pool_labels[index].contiguous(),
                           pool_index[index])

    return Splits(
        train=part(keep),
        val=part(held),
        test=TensorSplit(test_images.contiguous(), test_labels.contiguous(), test_index),
        info=info,
    )


def load_splits(data_cfg: DataConfig, *, md5s: Mapping[str, str] | None = None) -> Splits:
    """train/val/test of an in-memory dataset (digits, cifar10, cifar100), on the CPU.

    ``md5s`` (CIFAR only): file name → md5; None checks against torchvision's table.
    """
    info = dataset_info(data_cfg.name)
    if not info.in_memory:
        raise EastError(
            f"data.name: {info.name} is not an in-memory dataset; use build_loaders()"
        )
    size = digits_size(info.name)
    if size is not None:
        from east.data.digits import load_digits_arrays

        images, labels = load_digits_arrays(size)
        # A fixed stratified test split, the same for every resolution (it depends on the
        # labels only); source_index is the row among all 1,797 images.
        keep, test = stratified_holdout(labels.numpy(), info.test_size)
        pool_rows, test_rows = torch.from_numpy(keep), torch.from_numpy(test)
        return make_splits(
            info, images[pool_rows], labels[pool_rows], images[test_rows], labels[test_rows],
            data_cfg.val_fraction, pool_index=pool_rows, test_index=test_rows,
        )
    from east.data.cifar import load_cifar

    arrays = load_cifar(info.name, data_cfg.root, md5s=md5s)
    return make_splits(info, *arrays, data_cfg.val_fraction)


@dataclass(frozen=True)
class EpochPlan:
    """All randomness of one epoch, drawn on the CPU: per position, the sample index and its
    crop offsets (0..2*padding) and flip decision."""

    order: torch.Tensor
    offset_y: torch.Tensor
    offset_x: torch.Tensor
    flip: torch.Tensor


class InMemoryLoader(PositionedLoader):
    """Batches of a uint8 tensor dataset held on ``device``, augmented there.

    Yields ``(x, y)``: float32 (B, C, H, W) normalised with ``mean``/``std`` (pixel units
    in [0, 1]) and int64 (B,), both on ``device``. With ``augment``, each sample is
    zero-padded by ``crop_padding``, randomly cropped back and, with ``hflip``, flipped with
    probability 1/2.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        shuffle: bool,
        augment: bool,
        crop_padding: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: str | torch.device = "cpu",
        seed: int = 0,
        drop_last: bool = False,
        channels_last: bool = False,
        hflip: bool = True,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels {tuple(labels.shape)} do not match {images.shape[0]} images")
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        super().__init__(
            int(images.shape[0]), batch_size=batch_size, shuffle=shuffle, seed=seed,
            drop_last=drop_last,
        )
        self.device = torch.device(device)
        self.augment = augment
        self.hflip = hflip
        self.crop_padding = crop_padding
        self.channels_last = channels_last
        # One transfer: on CUDA the whole dataset stays resident on the GPU. Augmenting
        # loaders store it as crop windows (padded, plus a mirrored copy), so a batch of
        # random crops and flips is one index operation.
        images = images.contiguous().to(self.device)
        self.windows = CropWindows(images, crop_padding) if augment else None
        self.images = None if augment else images
        self.labels = labels.to(torch.int64).to(self.device)
        self.normalize = Normalizer(mean, std, self.device)
        self._plan_cache: tuple[int, tuple[torch.Tensor, torch.Tensor | None]] | None = None

    def epoch_plan(self, epoch: int) -> EpochPlan:
        """The order and augmentation of ``epoch``, a function of (seed, epoch) only."""
        n = self.num_samples
        order = self.epoch_order(epoch)
        if self.augment:
            generator = cpu_generator(self.seed, epoch, AUGMENT_STREAM)
            span = 2 * self.crop_padding + 1
            offset_y = torch.randint(0, span, (n,), generator=generator)
            offset_x = torch.randint(0, span, (n,), generator=generator)
            flip = torch.randint(0, 2, (n,), generator=generator).bool()
            if not self.hflip:  # drawn anyway, so the crops do not depend on this switch
                flip.zero_()
        else:
            offset_y = offset_x = torch.full((n,), self.crop_padding, dtype=torch.int64)
            flip = torch.zeros(n, dtype=torch.bool)
        return EpochPlan(order, offset_y, offset_x, flip)

    def _device_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(order, window starts or None) of ``epoch`` on the device, made once per epoch."""
        if self._plan_cache is None or self._plan_cache[0] != epoch:
            plan = self.epoch_plan(epoch)
            starts = None
            if self.windows is not None:
                starts = self.windows.starts(plan.order, plan.offset_y, plan.offset_x,
                                             plan.flip).to(self.device)
            self._plan_cache = (epoch, (plan.order.to(self.device), starts))
        return self._plan_cache[1]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, batches = self.epoch, len(self)
        shuffled = self.shuffle or self.augment
        order, starts = self._device_plan(epoch) if shuffled else (None, None)
        for batch in range(self.batch, batches):
            begin, end = self.shard_bounds(batch)
            if starts is not None:
                x, y = self.windows[starts[begin:end]], self.labels[order[begin:end]]
            elif order is not None:
                index = order[begin:end]
                x, y = self.images[index], self.labels[index]
            else:  # evaluation: contiguous slices, no copy before normalising
                x, y = self.images[begin:end], self.labels[begin:end]
            self.epoch, self.batch = epoch, batch + 1
            yield self.normalize(x, self.channels_last), y
        self.epoch, self.batch = epoch + 1, 0


def build_loaders(
    data_cfg: DataConfig,
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    device: str | torch.device = "cpu",
    workers: int = 0,
    channels_last: bool = False,
    drop_last: bool = False,
    md5s: Mapping[str, str] | None = None,
    expected_classes: int | None = None,
) -> Loaders:
    """Train (shuffled, augmented if ``data_cfg.augment``), val (None when empty) and test
    loaders of one dataset. ``workers`` applies to ImageNet only; ``expected_classes``
    overrides ImageNet's 1000 (tests)."""
    info = dataset_info(data_cfg.name)
    if not info.in_memory:
        from east.data.imagenet import build_imagenet_loaders

        return build_imagenet_loaders(
            data_cfg, info, batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed,
            device=device, workers=workers, channels_last=channels_last, drop_last=drop_last,
            expected_classes=info.num_classes if expected_classes is None else expected_classes,
        )
    splits = load_splits(data_cfg, md5s=md5s)
    common = _in_memory_settings(info, seed=seed, device=device, channels_last=channels_last)
    train = InMemoryLoader(
        splits.train.images, splits.train.labels, batch_size=batch_size, shuffle=True,
        augment=data_cfg.augment, crop_padding=data_cfg.crop_padding, drop_last=drop_last,
        hflip=data_cfg.hflip, **common,
    )
    val = _evaluation_loader(splits.val, eval_batch_size, common) if len(splits.val) else None
    test = _evaluation_loader(splits.test, eval_batch_size, common)
    return Loaders(train=train, val=val, test=test, info=info)


def build_test_loader(
    data_cfg: DataConfig,
    *,
    eval_batch_size: int,
    device: str | torch.device = "cpu",
    workers: int = 0,
    channels_last: bool = False,
    md5s: Mapping[str, str] | None = None,
    expected_classes: int | None = None,
) -> PositionedLoader:
    """The test split's loader alone, for evaluation: the same batches as
    ``build_loaders(...).test`` without building (for ImageNet: scanning) the training set."""
    info = dataset_info(data_cfg.name)
    if not info.in_memory:
        from east.data.imagenet import build_imagenet_test_loader

        return build_imagenet_test_loader(
            data_cfg, info, eval_batch_size=eval_batch_size, device=device, workers=workers,
            channels_last=channels_last,
            expected_classes=info.num_classes if expected_classes is None else expected_classes,
        )
    splits = load_splits(data_cfg, md5s=md5s)
    common = _in_memory_settings(info, seed=0, device=device, channels_last=channels_last)
    return _evaluation_loader(splits.test, eval_batch_size, common)


def _in_memory_settings(info: DatasetInfo, *, seed: int, device: str | torch.device,
                        channels_last: bool) -> dict[str, Any]:
    return {"mean": info.mean, "std": info.std, "device": device, "seed": seed,
            "channels_last": channels_last}


def _evaluation_loader(split: TensorSplit, eval_batch_size: int,
                       common: dict[str, Any]) -> InMemoryLoader:
    return InMemoryLoader(split.images, split.labels, batch_size=eval_batch_size,
                          shuffle=False, augment=False, crop_padding=0, **common)
