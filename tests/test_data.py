"""Data layer: registry, fixed splits, CIFAR/ImageNet on-disk formats, resumable loaders."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import write_cifar10, write_cifar100, write_imagenet

from east.cli import main as east_main
from east.config import DataConfig
from east.data import cifar, fetch, registry
from east.data.digits import load_digits_arrays
from east.data.imagenet import ImageFolderLoader, scan_split, validate_imagenet
from east.data.loader import InMemoryLoader, build_loaders, build_test_loader, load_splits
from east.data.splits import allocate, stratified_holdout
from east.data.transforms import random_resized_crop_box, train_image
from east.errors import EastError

CIFAR_MEAN = registry.DATASETS["cifar10"].mean
CIFAR_STD = registry.DATASETS["cifar10"].std


def one_line(error: pytest.ExceptionInfo[EastError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- registry (torch-free)

def test_registry_is_torch_free_and_complete() -> None:
    code = (
        "import sys, east.data, east.data.registry as r; "
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules; "
        "print(sorted(r.DATASETS))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (
        "['cifar10', 'cifar100', 'digits', 'digits12', 'digits16', 'digits32', 'imagenet']")
    expected = {  # num_classes, in_channels, image_size, stem, crop_padding
        "digits": (10, 1, 8, "cifar", 1),
        "digits12": (10, 1, 12, "cifar", 2),
        "digits16": (10, 1, 16, "cifar", 2),
        "digits32": (10, 1, 32, "cifar", 4),
        "cifar10": (10, 3, 32, "cifar", 4),
        "cifar100": (100, 3, 32, "cifar", 4),
        "imagenet": (1000, 3, 224, "imagenet", 0),
    }
    for name, values in expected.items():
        info = registry.dataset_info(name)
        assert (info.num_classes, info.in_channels, info.image_size, info.stem,
                info.crop_padding) == values
        assert len(info.mean) == len(info.std) == info.in_channels


def test_split_sizes_are_exact() -> None:
    sizes = {name: registry.DATASETS[name].split_sizes(0.1) for name in registry.DATASETS}
    assert sizes["digits"] == {"train": 1294, "val": 144, "test": 359}
    assert sizes["cifar10"] == sizes["cifar100"] == {"train": 45000, "val": 5000, "test": 10000}
    assert sizes["imagenet"] == {"train": 1271167, "val": 10000, "test": 50000}
    assert registry.DATASETS["cifar10"].split_sizes(0.0)["val"] == 0
    assert registry.DATASETS["imagenet"].val_size(0.005) == 6406  # under the 10k cap
    with pytest.raises(EastError, match="val_fraction"):
        registry.DATASETS["digits"].split_sizes(1.0)


def test_unknown_dataset_names_the_field() -> None:
    with pytest.raises(EastError) as error:
        registry.dataset_info("mnist", "params/demo.yaml:row1: data.name")
    assert one_line(error) == (
        "params/demo.yaml:row1: data.name: unknown dataset 'mnist' "
        "(known: cifar10, cifar100, digits, digits12, digits16, digits32, imagenet)"
    )


# ---------------------------------------------------------------- stratified splits

def test_allocate_largest_remainder() -> None:
    assert allocate(np.array([3, 2, 1]), 3).tolist() == [2, 1, 0]  # ties → lower class id
    assert allocate(np.array([25] * 10), 25).tolist() == [3] * 5 + [2] * 5
    rng = np.random.default_rng(0)
    for _ in range(50):
        counts = rng.integers(0, 40, size=rng.integers(1, 12))
        total = int(rng.integers(0, counts.sum() + 1))
        shares = allocate(counts, total)
        assert shares.sum() == total
        assert np.all(shares <= counts)
        assert np.all(np.abs(shares - counts * total / max(counts.sum(), 1)) < 1)


def test_stratified_holdout_partitions_and_is_fixed() -> None:
    labels = np.random.default_rng(3).integers(0, 7, size=500)
    keep, held = stratified_holdout(labels, 50)
    assert len(held) == 50 and len(keep) == 450
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(500))
    assert np.array_equal(np.bincount(labels[held], minlength=7),
                          allocate(np.bincount(labels, minlength=7), 50))
    again_keep, again_held = stratified_holdout(labels.copy(), 50)
    assert np.array_equal(held, again_held) and np.array_equal(keep, again_keep)
    _, other = stratified_holdout(labels, 50, seed=12345)
    assert not np.array_equal(held, other)


# ---------------------------------------------------------------- digits

def test_digits_splits_exact_stratified_and_faithful() -> None:
    from sklearn.datasets import load_digits

    splits = load_splits(DataConfig("digits"))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1294, 144, 359)
    assert splits.train.images.shape == (1294, 1, 8, 8)
    assert splits.train.images.dtype == torch.uint8 and splits.train.labels.dtype == torch.int64
    sources = [s.source_index.numpy() for s in (splits.train, splits.val, splits.test)]
    assert np.array_equal(np.sort(np.concatenate(sources)), np.arange(1797))  # a partition
    bunch = load_digits()
    counts = np.bincount(bunch.target)
    test_counts = allocate(counts, 359)
    assert np.array_equal(np.bincount(splits.test.labels.numpy(), minlength=10), test_counts)
    assert np.array_equal(np.bincount(splits.val.labels.numpy(), minlength=10),
                          allocate(counts - test_counts, 144))
    for split in (splits.train, splits.val, splits.test):
        rows = split.source_index.numpy()
        assert np.array_equal(split.labels.numpy(), bunch.target[rows])
        expected = np.floor(bunch.images[rows] * 255 / 16 + 0.5).astype(np.uint8)
        assert np.array_equal(split.images[:, 0].numpy(), expected)
    images, _ = load_digits_arrays()
    assert images.max() == 255 and images.min() == 0
    # The registry's normalisation constants are the pixel statistics of the set.
    pixels = images.double() / 255
    assert abs(pixels.mean().item() - registry.DATASETS["digits"].mean[0]) < 1e-4
    assert abs(pixels.std().item() - registry.DATASETS["digits"].std[0]) < 1e-3


@pytest.mark.parametrize("size", [12, 16, 32])
def test_resized_digits_are_the_same_images_labels_and_splits(size: int) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    name = f"digits{size}"
    assert registry.digits_size(name) == size and registry.digits_size("cifar10") is None
    small, large = load_splits(DataConfig("digits")), load_splits(DataConfig(name))
    bunch = load_digits()
    for part in ("train", "val", "test"):
        a, b = getattr(small, part), getattr(large, part)
        assert torch.equal(a.source_index, b.source_index) and torch.equal(a.labels, b.labels)
        assert b.images.shape == (len(a), 1, size, size) and b.images.dtype == torch.uint8
    # Reference: PIL's bilinear resize of the 0..16 levels (float image), scaled, rounded.
    rows = large.test.source_index.numpy()[:40]
    expected = np.stack([
        np.asarray(Image.fromarray(bunch.images[r].astype(np.float32), mode="F")
                   .resize((size, size), Image.BILINEAR)) for r in rows])
    scaled = np.floor(expected.astype(np.float64) * 255 / 16 + 0.5)
    got = large.test.images[:40, 0].numpy().astype(np.float64)
    # float32 (PIL) vs float64 resampling: a value can land on the other side of .5.
    assert np.abs(got - scaled).max() <= 1 and (got == scaled).mean() > 0.99
    images, _ = load_digits_arrays(size)
    pixels = images.double() / 255
    assert abs(pixels.mean().item() - registry.DATASETS[name].mean[0]) < 1e-4
    assert abs(pixels.std().item() - registry.DATASETS[name].std[0]) < 1e-4
    assert torch.equal(load_digits_arrays(size)[0], images)  # deterministic


def test_digits_split_is_the_same_for_every_run_seed() -> None:
    runs = [build_loaders(DataConfig("digits", crop_padding=1), batch_size=128,
                          eval_batch_size=500, seed=seed) for seed in (0, 1)]
    a, b = runs
    assert len(a.train) == math.ceil(1294 / 128) and len(a.val) == 1 and len(a.test) == 1
    assert torch.equal(next(iter(a.val))[0], next(iter(b.val))[0])
    assert torch.equal(next(iter(a.test))[1], next(iter(b.test))[1])
    assert torch.equal(a.train.windows.storage, b.train.windows.storage)  # same images...
    first_a, first_b = next(iter(a.train))[1], next(iter(b.train))[1]
    assert not torch.equal(first_a, first_b)  # ...in a seed-dependent order
    no_val = build_loaders(DataConfig("digits", val_fraction=0.0), batch_size=64,
                           eval_batch_size=64, seed=0)
    assert no_val.val is None and no_val.train.num_samples == 1438


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def test_test_loader_alone_yields_the_test_split_of_build_loaders() -> None:
    cfg = DataConfig("digits", crop_padding=1)
    reference = _batches(build_loaders(cfg, batch_size=128, eval_batch_size=100, seed=3).test)
    alone = _batches(build_test_loader(cfg, eval_batch_size=100))
    assert [len(y) for _, y in alone] == [100, 100, 100, 59]
    assert all(torch.equal(xa, xr) and torch.equal(ya, yr)
               for (xa, ya), (xr, yr) in zip(alone, reference, strict=True))


# ---------------------------------------------------------------- CIFAR

def _pool_pixel(archive, row: int, c: int, y: int, x: int) -> int:
    return int(archive.train_data[row, c * 1024 + y * 32 + x])  # planar R, G, B rows


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_loads_generated_archive(tmp_path: Path, name: str) -> None:
    archive = (write_cifar10 if name == "cifar10" else write_cifar100)(tmp_path)
    splits = load_splits(DataConfig(name, root=str(tmp_path)), md5s=archive.md5s)
    n_pool, n_test = len(archive.train_labels), len(archive.test_labels)
    n_val = round(0.1 * n_pool)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (
        n_pool - n_val, n_val, n_test)
    assert splits.train.images.shape == (n_pool - n_val, 3, 32, 32)
    assert splits.test.images.dtype == torch.uint8
    train_rows, val_rows = splits.train.source_index.numpy(), splits.val.source_index.numpy()
    assert not set(train_rows) & set(val_rows)
    assert np.array_equal(np.sort(np.concatenate([train_rows, val_rows])), np.arange(n_pool))
    classes = registry.DATASETS[name].num_classes
    assert np.array_equal(np.bincount(splits.val.labels.numpy(), minlength=classes),
                          allocate(np.bincount(archive.train_labels, minlength=classes), n_val))
    for split, rows in ((splits.train, train_rows), (splits.val, val_rows)):
        assert np.array_equal(split.labels.numpy(), archive.train_labels[rows])
        # Whole-image round trip from the pickle's planar rows...
        assert np.array_equal(split.images.reshape(len(split), 3072).numpy(),
                              archive.train_data[rows])
    # ...and one explicit pixel: channel G, row 5, column 17 of the 3rd training image.
    assert int(splits.train.images[2, 1, 5, 17]) == _pool_pixel(archive, train_rows[2], 1, 5, 17)
    assert np.array_equal(splits.test.images.reshape(n_test, 3072).numpy(), archive.test_data)
    assert np.array_equal(splits.test.labels.numpy(), archive.test_labels)
    loaders = build_loaders(DataConfig(name, root=str(tmp_path)), batch_size=32,
                            eval_batch_size=64, seed=3, md5s=archive.md5s, channels_last=True)
    assert len(loaders.train) == math.ceil((n_pool - n_val) / 32)
    x, _ = next(iter(loaders.train))
    assert x.shape == (32, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    assert sorted(torch.cat([y for _, y in loaders.test]).tolist()) == sorted(
        archive.test_labels.tolist())


def test_cifar_corrupt_file_is_one_line_error(tmp_path: Path) -> None:
    archive = write_cifar10(tmp_path)
    batch = tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_3"
    raw = bytearray(batch.read_bytes())
    raw[-5] ^= 0xFF
    batch.write_bytes(bytes(raw))
    with pytest.raises(EastError) as error:
        load_splits(DataConfig("cifar10", root=str(tmp_path)), md5s=archive.md5s)
    message = one_line(error)
    assert message.startswith("dataset cifar10 is corrupt:")
    assert "data_batch_3" in message and archive.md5s["data_batch_3"] in message
    assert f"east fetch cifar10 --root {tmp_path}" in message


def test_cifar_default_checksums_are_torchvisions(tmp_path: Path) -> None:
    write_cifar10(tmp_path)  # a generated archive cannot match the real md5s
    with pytest.raises(EastError) as error:
        load_splits(DataConfig("cifar10", root=str(tmp_path)))
    assert cifar.CIFAR10.train_list[0][1] in one_line(error)


def test_cifar_missing_or_incomplete(tmp_path: Path) -> None:
    with pytest.raises(EastError) as error:
        load_splits(DataConfig("cifar100", root=str(tmp_path / "data")))
    message = one_line(error)
    assert message.startswith(f"dataset cifar100 not found under {tmp_path / 'data'}/:")
    assert message.endswith(
        f"run `east fetch cifar100 --root {tmp_path / 'data'}` (or the pipeline's fetch_data rule)")
    archive = write_cifar10(tmp_path)
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(EastError, match="incomplete \\(test_batch missing\\)"):
        load_splits(DataConfig("cifar10", root=str(tmp_path)), md5s=archive.md5s)


def test_fetch_verifies_and_writes_marker(tmp_path: Path, capsys) -> None:
    archive = write_cifar10(tmp_path)
    marker = fetch.fetch("cifar10", tmp_path, md5s=archive.md5s)
    import json

    content = json.loads(marker.read_text())
    assert marker == tmp_path / "cifar10" / "FETCHED.json"
    assert content["files"] == {f"cifar-10-batches-py/{f}": m for f, m in archive.md5s.items()}
    bad = dict(archive.md5s, batches_meta="0" * 32)
    bad["batches.meta"] = "0" * 32
    with pytest.raises(EastError, match="corrupt"):  # custom md5s never trigger a download
        fetch.fetch("cifar10", tmp_path, md5s=bad)
    assert east_main(["fetch", "digits", "--root", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "digits" / "FETCHED.json").read_text()) == {
        "dataset": "digits", "images": 1797}
    assert east_main(["fetch", "digits16", "--root", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "digits16" / "FETCHED.json").read_text()) == {
        "dataset": "digits16", "images": 1797}
    assert east_main(["fetch", "svhn", "--root", str(tmp_path)]) == 2
    assert "east fetch: unknown dataset 'svhn'" in capsys.readouterr().err
    write_imagenet(tmp_path)
    marker = fetch.fetch("imagenet", tmp_path, expected_classes=3)
    assert json.loads(marker.read_text()) == {
        "dataset": "imagenet", "classes": 3, "train_images": 18, "val_images": 6}


# ---------------------------------------------------------------- ImageNet

def test_imagenet_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(EastError, match="dataset imagenet not found under"):
        validate_imagenet(tmp_path, expected_classes=3)
    write_imagenet(tmp_path)
    assert validate_imagenet(tmp_path, expected_classes=3) == [
        "n01440764", "n01443537", "n01484850"]
    with pytest.raises(EastError) as error:
        validate_imagenet(tmp_path)  # 1000 by default
    assert one_line(error).startswith(
        "imagenet train/ and val/ have 3 class folders, expected 1000")
    val = tmp_path / "imagenet" / "val"
    (val / "n01484850").rename(tmp_path / "moved")
    with pytest.raises(EastError) as error:
        validate_imagenet(tmp_path, expected_classes=3)
    assert one_line(error).startswith(
        "imagenet val/ has 2 class folders, train/ has 3: 1 differ (e.g. n01484850 only in train/)")
    for folder in list(val.iterdir()):  # the official, flat val archive
        for image in folder.iterdir():
            image.rename(val / image.name)
        folder.rmdir()
    with pytest.raises(EastError, match="flat; sort it into val/<wnid>/ folders"):
        validate_imagenet(tmp_path, expected_classes=3)
    for image in val.iterdir():
        image.unlink()
    val.rmdir()
    with pytest.raises(EastError) as error:
        validate_imagenet(tmp_path, expected_classes=3)
    assert one_line(error).startswith("imagenet val/ is missing under")


def test_imagenet_loaders_split_and_shapes(tmp_path: Path) -> None:
    write_imagenet(tmp_path, fmt="JPEG")
    cfg = DataConfig("imagenet", root=str(tmp_path), val_fraction=0.2)
    loaders = build_loaders(cfg, batch_size=4, eval_batch_size=5, seed=0, expected_classes=3)
    # 18 training images: 4 held out (stratified 2/1/1), 14 train; the val/ folder is test.
    assert (loaders.train.num_samples, loaders.val.num_samples, loaders.test.num_samples) == (
        14, 4, 6)
    held_labels = sorted(int(v) for v in loaders.val.dataset.labels)
    assert held_labels == [0, 0, 1, 2]
    train_paths = set(loaders.train.dataset.paths.tolist())
    assert not train_paths & set(loaders.val.dataset.paths.tolist())
    batches = list(loaders.train)
    assert [x.shape for x, _ in batches] == [(4, 3, 224, 224)] * 3 + [(2, 3, 224, 224)]
    assert all(x.dtype == torch.float32 for x, _ in batches)
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == sorted(
        int(v) for v in loaders.train.dataset.labels)
    assert (loaders.train.epoch, loaders.train.batch) == (1, 0)
    with pytest.raises(EastError, match="not an in-memory dataset"):
        load_splits(cfg)


def test_imagenet_test_loader_never_scans_train(tmp_path: Path, monkeypatch) -> None:
    from east.data import imagenet

    write_imagenet(tmp_path, fmt="JPEG")
    cfg = DataConfig("imagenet", root=str(tmp_path))
    reference = _batches(build_loaders(cfg, batch_size=4, eval_batch_size=5, seed=0,
                                       expected_classes=3, workers=0).test)
    scanned: list[str] = []

    def recording_scan(root, split):
        scanned.append(split)
        return scan_split(root, split)

    monkeypatch.setattr(imagenet, "scan_split", recording_scan)
    alone = _batches(build_test_loader(cfg, eval_batch_size=5, expected_classes=3))
    assert scanned == ["val"]
    assert [len(y) for _, y in alone] == [5, 1]
    assert all(torch.equal(xa, xr) and torch.equal(ya, yr)
               for (xa, ya), (xr, yr) in zip(alone, reference, strict=True))


def test_imagenet_eval_pixels_and_resumable_train_stream(tmp_path: Path) -> None:
    written = write_imagenet(tmp_path, fmt="PNG", train_per_class=4)
    mean, std = (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)  # output = raw pixel values
    test = scan_split(tmp_path, "val")
    evaluation = ImageFolderLoader(test, batch_size=4, shuffle=False, augment=False,
                                   mean=mean, std=std, image_size=8, resize_size=8, workers=0)
    x = torch.cat([batch for batch, _ in evaluation])
    expected = np.stack([written["val"][path] for path, _ in test]).transpose(0, 3, 1, 2)
    assert torch.equal(x, torch.from_numpy(expected).float())

    train = scan_split(tmp_path, "train")

    def loader(workers: int) -> ImageFolderLoader:
        return ImageFolderLoader(train, batch_size=5, shuffle=True, augment=True, mean=mean,
                                 std=std, image_size=6, seed=7, workers=workers)

    reference = loader(0)
    stream = [b for _ in range(3) for b in reference]  # 3 epochs × 3 batches
    assert len(stream) == 9 and stream[0][0].shape == (5, 3, 6, 6)
    assert not torch.equal(stream[0][0], stream[3][0])  # epochs differ
    resumed = loader(2)  # worker count does not change the stream
    resumed.set_position(1, 1)
    rest = [b for _ in range(2) for b in resumed]  # persistent workers, two passes
    assert len(rest) == 5
    for (x_a, y_a), (x_b, y_b) in zip(stream[4:], rest, strict=True):
        assert torch.equal(x_a, x_b) and torch.equal(y_a, y_b)


def test_random_resized_crop_box_stays_in_bounds_and_in_range() -> None:
    import random

    from PIL import Image

    for seed in range(300):
        width, height = 40 + seed % 23, 30 + seed % 17
        top, left, h, w = random_resized_crop_box(width, height, random.Random(seed))
        assert 0 <= top <= height - h and 0 <= left <= width - w and h > 0 and w > 0
        if (h, w) != (height, width):  # not the fallback: area and aspect within range
            assert 0.08 * width * height * 0.8 <= h * w <= width * height
            assert 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.25
    # A 100:1 strip never fits a 3/4..4/3 crop: the fallback is its centred 4:3 part.
    assert random_resized_crop_box(400, 4, random.Random(0)) == (0, 197, 4, 5)
    image = Image.new("RGB", (13, 9), (10, 20, 30))
    out = train_image(image, 6, seed=5)
    assert out.shape == (3, 6, 6) and out.dtype == torch.uint8
    assert torch.equal(out, train_image(image, 6, seed=5))
    assert out[:, 2, 2].tolist() == [10, 20, 30]


# ---------------------------------------------------------------- in-memory loader

def _images(n: int, c: int = 3, h: int = 6, w: int = 5, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=generator)


def _raw_loader(images: torch.Tensor, **kwargs) -> InMemoryLoader:
    """A loader whose normalisation is the identity on pixel values (mean 0, std 1/255)."""
    c = images.shape[1]
    options = {"batch_size": 8, "shuffle": True, "augment": True, "crop_padding": 2,
               "mean": (0.0,) * c, "std": (1 / 255,) * c, "seed": 11}
    options.update(kwargs)
    return InMemoryLoader(images, torch.arange(len(images)), **options)


def test_pad_crop_flip_matches_per_sample_reference() -> None:
    images = _images(37)
    loader = _raw_loader(images)
    plan = loader.epoch_plan(0)
    assert set(plan.offset_y.tolist()) == set(range(5)) and set(plan.flip.tolist()) == {0, 1}
    got = torch.cat([x for x, _ in loader])
    pad = 2
    for position in range(37):
        sample = images[int(plan.order[position])].numpy()
        padded = np.zeros((3, 6 + 2 * pad, 5 + 2 * pad), dtype=np.uint8)
        padded[:, pad:pad + 6, pad:pad + 5] = sample
        top, left = int(plan.offset_y[position]), int(plan.offset_x[position])
        crop = padded[:, top:top + 6, left:left + 5]
        if plan.flip[position]:
            crop = crop[:, :, ::-1]
        assert np.array_equal(got[position].numpy(), crop.astype(np.float32)), position


def test_every_sample_once_per_epoch_and_batch_counts() -> None:
    images = _images(37)
    loader = _raw_loader(images)
    assert len(loader) == 5
    for epoch in range(2):
        labels = [y for _, y in loader]
        assert [len(y) for y in labels] == [8, 8, 8, 8, 5]
        assert sorted(torch.cat(labels).tolist()) == list(range(37))
        assert (loader.epoch, loader.batch) == (epoch + 1, 0)
    dropping = _raw_loader(images, drop_last=True)
    labels = torch.cat([y for _, y in dropping])
    assert len(dropping) == 4 and len(labels) == 32 and len(set(labels.tolist())) == 32
    orders = [_raw_loader(images, seed=s).epoch_order(e).tolist() for s, e in
              ((11, 0), (11, 0), (11, 1), (12, 0))]
    assert orders[0] == orders[1] and orders[0] != orders[2] and orders[0] != orders[3]


def test_resume_mid_epoch_reproduces_the_remaining_batches() -> None:
    images = _images(37)
    reference = _raw_loader(images)
    uninterrupted = [b for _ in range(3) for b in reference]  # 3 epochs × 5 batches
    first = _raw_loader(images)
    consumed = []
    for _ in range(2):  # epoch 0 whole, then 2 batches of epoch 1
        for batch in first:
            consumed.append(batch)
            if len(consumed) == 7:
                break
        if len(consumed) == 7:
            break
    state = first.state_dict()
    assert (state["epoch"], state["batch"]) == (1, 2)
    second = _raw_loader(images)
    second.load_state_dict(state)
    rest = [b for _ in range(2) for b in second]
    assert len(consumed) + len(rest) == 15
    for (x_a, y_a), (x_b, y_b) in zip(uninterrupted, consumed + rest, strict=True):
        assert torch.equal(x_a, x_b) and torch.equal(y_a, y_b)
    positioned = _raw_loader(images)
    positioned.set_position(2, 3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(uninterrupted[13:], positioned,
                                                         strict=True))
    other = _raw_loader(images, batch_size=16)
    with pytest.raises(EastError) as error:
        other.load_state_dict(state)
    assert "another configuration" in one_line(error)


def test_normalisation_and_eval_path() -> None:
    images = _images(20, c=3, h=4, w=4)
    loader = InMemoryLoader(images, torch.arange(20), batch_size=6, shuffle=False,
                            augment=False, crop_padding=4, mean=CIFAR_MEAN, std=CIFAR_STD,
                            channels_last=True)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [6, 6, 6, 2]
    x = torch.cat([b for b, _ in batches])
    mean = torch.tensor(CIFAR_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, dtype=torch.float64).view(1, 3, 1, 1)
    expected = (images.double() / 255 - mean) / std
    assert torch.allclose(x.double(), expected, atol=1e-5, rtol=0)
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(20))
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last)


def test_hflip_off_keeps_crops_and_never_flips() -> None:
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    options = dict(batch_size=8, shuffle=True, augment=True, crop_padding=1, mean=(0.5,),
                   std=(0.5,), seed=3)
    flipping = InMemoryLoader(images, torch.arange(40), **options).epoch_plan(2)
    plain = InMemoryLoader(images, torch.arange(40), hflip=False, **options).epoch_plan(2)
    assert flipping.flip.any() and not plain.flip.any()
    assert torch.equal(flipping.order, plain.order)
    assert torch.equal(flipping.offset_y, plain.offset_y)
    assert torch.equal(flipping.offset_x, plain.offset_x)
    assert registry.DATASETS["digits"].hflip is False
    assert registry.DATASETS["cifar10"].hflip is True


# ---------------------------------------------------------------- data-parallel shards

@pytest.mark.parametrize("world", [2, 3, 4])
def test_shard_ranges_tile_each_batch_as_tensor_split_does(world: int) -> None:
    from east.data.positioned import shard_range

    for start, stop in ((0, 10), (10, 13), (13, 14), (5, 5)):
        parts = [shard_range(start, stop, rank, world) for rank in range(world)]
        cut = torch.tensor_split(torch.arange(start, stop), world)
        assert [list(range(a, b)) for a, b in parts] == [c.tolist() for c in cut]


@pytest.mark.parametrize("world", [2, 3])
def test_in_memory_shards_union_to_the_single_process_batch(world: int) -> None:
    # 23 samples, batches of 8: the last batch (7) leaves rank 2 of 3 one short; with
    # drop_last off a 3-sample tail would leave empty parts for larger worlds.
    images = torch.randint(0, 256, (23, 3, 6, 6), dtype=torch.uint8)
    options = dict(batch_size=8, shuffle=True, augment=True, crop_padding=2,
                   mean=(0.5,) * 3, std=(0.25,) * 3, seed=11)
    single = InMemoryLoader(images, torch.arange(23), **options)
    ranks = [InMemoryLoader(images, torch.arange(23), **options) for _ in range(world)]
    for rank, loader in enumerate(ranks):
        loader.set_shard(rank, world)
    for epoch in range(2):
        whole = list(single)
        parts = [list(loader) for loader in ranks]
        assert len(whole) == 3 and all(len(p) == 3 for p in parts)
        for batch, (x, y) in enumerate(whole):
            assert single.batch_size_at(batch) == ranks[0].batch_size_at(batch) == len(y)
            assert torch.equal(torch.cat([p[batch][0] for p in parts]), x), (epoch, batch)
            assert torch.equal(torch.cat([p[batch][1] for p in parts]), y)
            sizes = [len(p[batch][1]) for p in parts]
            assert sizes == [len(c) for c in torch.tensor_split(y, world)]
    resumed = InMemoryLoader(images, torch.arange(23), **options)
    resumed.set_shard(1, world)
    resumed.set_position(2, 1)  # a checkpoint saved at any world size resumes at any
    ranks[1].set_position(2, 1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(resumed, ranks[1], strict=True))


def test_image_folder_ranks_decode_only_their_shard(tmp_path, monkeypatch) -> None:
    from east.data import imagenet

    write_imagenet(tmp_path, fmt="JPEG", train_per_class=5, size=(10, 9))
    train = scan_split(tmp_path, "train")  # 15 images, batches of 4: 4, 4, 4, 3
    decoded: list[int] = []
    original = imagenet.SeededImages.__getitem__

    def counting(self, key):
        decoded.append(key[0])
        return original(self, key)

    monkeypatch.setattr(imagenet.SeededImages, "__getitem__", counting)
    mean, std = (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)

    def loader() -> ImageFolderLoader:
        return ImageFolderLoader(train, batch_size=4, shuffle=True, augment=True, mean=mean,
                                 std=std, image_size=6, seed=3, workers=0)

    single = loader()
    whole = list(single)
    assert sorted(decoded) == list(range(15))
    world = 4  # the 3-image last batch leaves rank 3 an empty part
    per_rank = []
    for rank in range(world):
        decoded.clear()
        part = loader()
        part.set_shard(rank, world)
        per_rank.append(list(part))
        # Each rank decodes its own examples only: 4 + 4 + 4 + 3 = 15 over 4 ranks.
        assert len(decoded) == (4 if rank < 3 else 3), rank
    for batch, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([p[batch][0] for p in per_rank]), x)
        assert torch.equal(torch.cat([p[batch][1] for p in per_rank]), y)
    assert per_rank[3][3][0].shape == (0, 3, 6, 6) and per_rank[3][3][1].shape == (0,)
