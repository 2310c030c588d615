"""JPEG decode throughput of one ImageNet loader worker (issue 19, "ImageNet at cluster
scale"): today's training path against ``torchvision.io.decode_jpeg``.

    python -m east.bench.jpeg [--images N] [--repeats K] [--size WxH] [--quality Q]
                              [--device cpu|cuda] [--batch B] [--out FILE.json]

It writes N synthetic JPEGs of ImageNet-like size (default 500x375, quality 90; smooth
gradients, multi-octave texture, shapes with edges and noise, so the bytes per pixel are
photograph-like rather than those of flat colour) into a temporary folder, and times, in
one process with one torch thread (what a DataLoader worker gets):

- ``pil_train``: today's path, ``east.data.imagenet.SeededImages`` with ``augment=True``
  (PIL decode, then ``east.data.transforms.train_image``: RandomResizedCrop 224 + flip +
  to-tensor), exactly as a training worker calls it;
- ``decode_jpeg_train``: ``torchvision.io.read_file`` + ``decode_jpeg`` (CPU) and the same
  crop box and flip (drawn by the same ``random_resized_crop_box`` from the same seed) done
  with torchvision's tensor transforms;
- ``pil_decode`` / ``decode_jpeg_decode``: the decode step alone, so its share is visible;
- ``cuda_decode_batched`` (where ``torch.cuda.is_available()``, unless ``--device cpu``):
  read the files, then ``decode_jpeg(list, device='cuda')`` in batches of B (nvjpeg),
  synchronised; its pixels are compared with PIL's too.

One timed unit is one pass over the N files. The arms run in a rotating order (repeat r
starts with arm r mod k, odd repeats backwards; ``east.bench.timing.rotate``) after one
untimed pass each, with the garbage collector paused (``east.bench.timing.time_units``),
as docs/benchmarks.md describes. Reported: images/s per arm (median, IQR, min-max over
the repeats), the per-repeat speed ratio decode_jpeg / PIL, the decode share of each
pipeline, and how far the two decoders' pixels differ. Files are in the page cache: disk or
network reads are not part of these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms.v2 import functional as F2

from east.bench.timing import Arm, rotate, spread
from east.data.imagenet import RESIZE_SIZE, SeededImages
from east.data.registry import dataset_info
from east.data.transforms import random_resized_crop_box
from east.train.devices import torch_threads

IMAGE_SIZE = dataset_info("imagenet").image_size  # 224: the training crop
DEFAULT_SIZE = (500, 375)  # the most common ImageNet training image size
DEFAULT_QUALITY = 90
DEFAULT_BATCH = 256  # params/defaults.yaml: ImageNet batch size

ARMS = {
    "pil_train": "today's training path: PIL decode + RandomResizedCrop 224 + flip + "
                 "to-tensor (SeededImages)",
    "decode_jpeg_train": "read_file + decode_jpeg (CPU) + the same crop and flip as tensor "
                         "ops",
    "pil_decode": "PIL decode only (open + convert RGB)",
    "decode_jpeg_decode": "read_file + decode_jpeg (CPU) only",
    "cuda_decode_batched": "read_file + decode_jpeg(list, device='cuda') in batches",
}
# (variant, baseline) pairs whose per-repeat speed ratio is reported.
RATIOS = {
    "train: decode_jpeg / PIL": ("decode_jpeg_train", "pil_train"),
    "decode: decode_jpeg / PIL": ("decode_jpeg_decode", "pil_decode"),
}

ImagesRun = Callable[[], list[Any]]


# ----------------------------------------------------------------------------- JPEGs


def _octave(rng: np.random.Generator, width: int, height: int, cells: int,
            channels: int) -> np.ndarray:
    """Value noise in [-1, 1] with about ``cells`` features along the longer side: a
    coarse random grid upsampled bicubically (PIL does the interpolation)."""
    grid_w = max(2, round(cells * width / max(width, height)))
    grid_h = max(2, round(cells * height / max(width, height)))
    coarse = rng.integers(0, 256, (grid_h, grid_w, channels), dtype=np.uint8)
    image = Image.fromarray(coarse if channels == 3 else coarse[..., 0])
    up = np.asarray(image.resize((width, height), Image.Resampling.BICUBIC),
                    dtype=np.float32)
    return (up.reshape(height, width, channels) - 127.5) / 127.5


def _field(rng: np.random.Generator, width: int, height: int, texture: float) -> np.ndarray:
    """One 'surface': a base colour, a linear gradient, luminance texture at four scales
    (shared by the channels, as in photographs) and weaker chroma variation."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    ramp = np.cos(angle) * xx / width + np.sin(angle) * yy / height
    gradient = ramp[..., None] * rng.uniform(-60.0, 60.0, 3).astype(np.float32)
    luma = sum(weight * _octave(rng, width, height, cells, 1)
               for cells, weight in ((3, 40.0), (12, 25.0), (48, texture), (150, texture)))
    chroma = sum(weight * _octave(rng, width, height, cells, 3)
                 for cells, weight in ((3, 20.0), (12, 8.0)))
    return rng.uniform(60.0, 190.0, 3).astype(np.float32) + gradient + luma + chroma


def synthetic_photo(rng: np.random.Generator, width: int, height: int,
                    texture: float = 80.0, noise: float = 10.0) -> np.ndarray:
    """A uint8 (height, width, 3) image with photograph-like statistics: a textured
    background, 2-4 ellipses or rectangles of other textures (sharp edges), sensor-like
    Gaussian noise. At 500x375 and quality 90 this gives about 90 KB per file, near
    ImageNet's mean (about 110 KB at a mean of roughly 400x350)."""
    image = _field(rng, width, height, texture)
    for _ in range(int(rng.integers(2, 5))):
        mask = Image.new("L", (width, height))
        draw = ImageDraw.Draw(mask)
        x0, x1 = sorted(int(v) for v in rng.integers(0, width, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, height, 2))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x0, y0, x1, y1], fill=255)
        inside = np.asarray(mask) > 0
        image[inside] = _field(rng, width, height, texture * rng.uniform(0.3, 1.5))[inside]
    image += rng.normal(0.0, noise, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_jpegs(folder: str | Path, count: int, size: tuple[int, int] = DEFAULT_SIZE,
                quality: int = DEFAULT_QUALITY, seed: int = 0) -> list[Path]:
    """``count`` JPEGs of ``size`` (width, height) in ``folder``, as PIL writes them
    (baseline, 4:2:0 chroma subsampling: what most ImageNet files are)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    width, height = size
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:05d}.JPEG"
        Image.fromarray(synthetic_photo(rng, width, height)).save(path, "JPEG",
                                                                  quality=quality)
        paths.append(path)
    return paths


def file_stats(paths: Sequence[Path]) -> dict[str, float]:
    sizes = [p.stat().st_size for p in paths]
    return {"count": len(sizes), "mean_bytes": float(np.mean(sizes)),
            "min_bytes": float(min(sizes)), "max_bytes": float(max(sizes))}


# ----------------------------------------------------------------------------- arms


def augment_seeds(count: int, seed: int = 0) -> list[int]:
    """One augmentation seed per image, in the loader's range (0 <= s < 2**62)."""
    rng = random.Random(seed)
    return [rng.randrange(2**62) for _ in range(count)]


def tensor_train_image(data: Tensor, size: int, seed: int) -> Tensor:
    """``train_image`` with decode_jpeg and tensor ops: the same draws from ``seed`` in the
    same order (crop box, then flip), so both pipelines crop and flip alike.
    Uses transforms.v2's functional ops, which resize uint8 natively (v1 goes via float)."""
    rng = random.Random(seed)
    image = decode_jpeg(data, mode=ImageReadMode.RGB)
    _, height, width = image.shape
    top, left, h, w = random_resized_crop_box(width, height, rng)
    image = F2.resized_crop(image, top, left, h, w, [size, size], antialias=True)
    if rng.random() < 0.5:
        image = F2.horizontal_flip(image)
    return image


def pil_train(paths: Sequence[Path], seeds: Sequence[int],
              image_size: int = IMAGE_SIZE) -> ImagesRun:
    """Today's path: the training dataset's own ``__getitem__`` on every file."""
    dataset = SeededImages([(os.fspath(p), 0) for p in paths], augment=True,
                           image_size=image_size, resize_size=RESIZE_SIZE)
    keys = list(enumerate(seeds))
    return lambda: [dataset[key][0] for key in keys]


def decode_jpeg_train(paths: Sequence[Path], seeds: Sequence[int],
                      image_size: int = IMAGE_SIZE) -> ImagesRun:
    names = [os.fspath(p) for p in paths]
    return lambda: [tensor_train_image(read_file(name), image_size, seed)
                    for name, seed in zip(names, seeds, strict=True)]


def _pil_open(path: str) -> Image.Image:
    # The decode step of SeededImages.__getitem__ (convert() forces the decode).
    with open(path, "rb") as handle:
        return Image.open(handle).convert("RGB")


def pil_decode(paths: Sequence[Path]) -> ImagesRun:
    names = [os.fspath(p) for p in paths]
    return lambda: [_pil_open(name) for name in names]


def decode_jpeg_decode(paths: Sequence[Path]) -> ImagesRun:
    names = [os.fspath(p) for p in paths]
    return lambda: [decode_jpeg(read_file(name), mode=ImageReadMode.RGB) for name in names]


def cuda_decode_batched(paths: Sequence[Path], batch: int = DEFAULT_BATCH) -> ImagesRun:
    """nvjpeg batched decode; the images stay on the GPU (the caller synchronises)."""
    names = [os.fspath(p) for p in paths]

    def run() -> list[Tensor]:
        datas = [read_file(name) for name in names]
        images: list[Tensor] = []
        for start in range(0, len(datas), batch):
            images.extend(decode_jpeg(datas[start:start + batch], mode=ImageReadMode.RGB,
                                      device="cuda"))
        return images

    return run


# ----------------------------------------------------------------------------- pixels


def _abs_diff(a: Tensor, b: Tensor) -> Tensor:
    return (a.to(torch.int16) - b.to(torch.int16)).abs()


def _diff_summary(diffs: list[Tensor]) -> dict[str, float]:
    flat = torch.cat([d.reshape(-1) for d in diffs])
    return {"max_abs": int(flat.max()), "mean_abs": float(flat.float().mean()),
            "share_differing": float((flat > 0).float().mean())}


def decoder_difference(paths: Sequence[Path]) -> dict[str, float]:
    """|PIL - decode_jpeg| over every pixel and channel of the decoded uint8 images."""
    diffs = []
    for path in paths:
        pil = F2.pil_to_tensor(_pil_open(os.fspath(path)))
        tv = decode_jpeg(read_file(os.fspath(path)), mode=ImageReadMode.RGB)
        if pil.shape != tv.shape:
            raise AssertionError(f"{path}: PIL {tuple(pil.shape)}, decode_jpeg "
                                 f"{tuple(tv.shape)}")
        diffs.append(_abs_diff(pil, tv))
    return _diff_summary(diffs)


def cuda_decoder_difference(paths: Sequence[Path]) -> dict[str, float]:
    """|PIL - nvjpeg| (nvjpeg's IDCT and chroma upsampling are not libjpeg-turbo's)."""
    gpu = cuda_decode_batched(paths)()
    pil = [F2.pil_to_tensor(_pil_open(os.fspath(p))) for p in paths]
    return _diff_summary([_abs_diff(a, b.cpu()) for a, b in zip(pil, gpu, strict=True)])


def train_difference(paths: Sequence[Path], seeds: Sequence[int],
                     image_size: int = IMAGE_SIZE) -> dict[str, float]:
    """|pil_train - decode_jpeg_train| (same crop boxes and flips; PIL's and torch's
    antialiased bilinear resizes round differently)."""
    a, b = pil_train(paths, seeds, image_size)(), decode_jpeg_train(paths, seeds, image_size)()
    return _diff_summary([_abs_diff(x, y) for x, y in zip(a, b, strict=True)])


# ----------------------------------------------------------------------------- timing


def build_arms(paths: Sequence[Path], seeds: Sequence[int], *, cuda: bool,
               batch: int = DEFAULT_BATCH) -> list[Arm]:
    runs: dict[str, ImagesRun] = {
        "pil_train": pil_train(paths, seeds),
        "decode_jpeg_train": decode_jpeg_train(paths, seeds),
        "pil_decode": pil_decode(paths),
        "decode_jpeg_decode": decode_jpeg_decode(paths),
    }
    if cuda:
        runs["cuda_decode_batched"] = cuda_decode_batched(paths, batch)
    return [Arm(name, run) for name, run in runs.items()]


def measure(paths: Sequence[Path], seeds: Sequence[int], *, repeats: int, cuda: bool,
            batch: int = DEFAULT_BATCH) -> dict[str, Any]:
    """Images/s of every arm (one pass over ``paths`` per timed unit), the decode_jpeg /
    PIL speed ratios per repeat, and each pipeline's decode share."""
    arms = build_arms(paths, seeds, cuda=cuda, batch=batch)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    seconds = rotate(arms, repeats=repeats, inner=1, warmup=1, sync=sync)
    count = len(paths)
    result: dict[str, Any] = {"arms": {}, "ratios": {}}
    for name, per_repeat in seconds.items():
        rates = [count / s for s in per_repeat]
        result["arms"][name] = {
            "what": ARMS[name], "images": count,
            "images_per_s": spread(rates).as_dict(),
            "images_per_s_per_repeat": rates, "seconds_per_repeat": per_repeat,
        }
    for label, (variant, baseline) in RATIOS.items():
        ratios = [b / v for v, b in zip(seconds[variant], seconds[baseline], strict=True)]
        result["ratios"][label] = {**spread(ratios).as_dict(), "per_repeat": ratios}
    result["decode_share"] = {
        decoder: spread([d / t for d, t in zip(seconds[dec], seconds[full],
                                               strict=True)]).median
        for decoder, dec, full in (("PIL", "pil_decode", "pil_train"),
                                   ("decode_jpeg", "decode_jpeg_decode",
                                    "decode_jpeg_train"))
    }
    return result


# ----------------------------------------------------------------------------- CLI


def parse_size(text: str) -> tuple[int, int]:
    """``"500x375"`` -> (500, 375)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 500x375, got {text!r}") from None
    if width < 8 or height < 8:
        raise argparse.ArgumentTypeError(f"size must be at least 8x8, got {text!r}")
    return width, height


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _quality(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"quality must be in 1..100, got {value}")
    return value


def _table(result: dict[str, Any]) -> str:
    lines = [f"{'arm':<22} {'images/s':>9} {'IQR':>15} {'min-max':>15} {'ms/img':>7}"]
    for name, arm in result["arms"].items():
        s = arm["images_per_s"]
        lines.append(f"{name:<22} {s['median']:9.1f} {s['q1']:7.1f}-{s['q3']:<7.1f} "
                     f"{s['min']:7.1f}-{s['max']:<7.1f} {1000.0 / s['median']:7.2f}")
    for label, r in result["ratios"].items():
        lines.append(f"speed {label}: {r['median']:.3f}x (IQR {r['q1']:.3f}-{r['q3']:.3f}, "
                     f"min-max {r['min']:.3f}-{r['max']:.3f})")
    shares = ", ".join(f"{k} {100 * v:.0f} %" for k, v in result["decode_share"].items())
    lines.append(f"decode share of the training pipeline: {shares}")
    for label, d in result["pixels"].items():
        lines.append(f"pixels, {label}: max |diff| {d['max_abs']}, mean |diff| "
                     f"{d['mean_abs']:.4f}, {100 * d['share_differing']:.2f} % of values differ")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from east.bench.planning import find_repo_root
    from east.bench.report import machine_info, now_utc

    parser = argparse.ArgumentParser(prog="python -m east.bench.jpeg",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=_positive, default=128, help="JPEGs per timed pass")
    parser.add_argument("--repeats", type=_positive, default=7, help="timed passes per arm")
    parser.add_argument("--size", type=parse_size, default=DEFAULT_SIZE, metavar="WxH")
    parser.add_argument("--quality", type=_quality, default=DEFAULT_QUALITY,
                        help="JPEG quality, 1-100")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="cuda adds the nvjpeg arm (default: cuda where available)")
    parser.add_argument("--batch", type=_positive, default=DEFAULT_BATCH,
                        help="images per batched CUDA decode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the result as JSON")
    args = parser.parse_args(argv)
    want_cuda = args.device == "cuda" or (args.device is None and torch.cuda.is_available())
    cuda = want_cuda and torch.cuda.is_available()
    machine = machine_info("cuda" if cuda else "cpu", find_repo_root())
    began = time.perf_counter()
    # One torch thread: what a DataLoader worker runs with.
    with torch_threads(1), tempfile.TemporaryDirectory(prefix="east-jpeg-") as folder:
        paths = write_jpegs(folder, args.images, args.size, args.quality, args.seed)
        seeds = augment_seeds(len(paths), args.seed)
        files = file_stats(paths)
        width, height = args.size
        print(f"{len(paths)} JPEGs {width}x{height}, quality {args.quality}: mean "
              f"{files['mean_bytes'] / 1000:.1f} KB ({files['min_bytes'] / 1000:.1f}-"
              f"{files['max_bytes'] / 1000:.1f} KB); 1 torch thread, {args.repeats} "
              f"repeat{'s' if args.repeats > 1 else ''}", flush=True)
        pixels = {"PIL vs decode_jpeg (decoded)": decoder_difference(paths),
                  "pil_train vs decode_jpeg_train (224 crops)":
                      train_difference(paths, seeds)}
        if cuda:
            pixels["PIL vs decode_jpeg on CUDA (decoded)"] = cuda_decoder_difference(paths)
        result = measure(paths, seeds, repeats=args.repeats, cuda=cuda,
                         batch=args.batch)
    if cuda:
        result["cuda"] = {"device": torch.cuda.get_device_name(), "batch": args.batch}
    else:
        why = ("torch.cuda.is_available() is False" if want_cuda or args.device is None
               else "not requested (--device cpu)")
        result["cuda"] = {"skipped": why}
    result.update({
        "command": "python -m east.bench.jpeg " + " ".join(sys.argv[1:] if argv is None
                                                            else argv),
        "date": now_utc(), "threads": 1, "image_size": IMAGE_SIZE,
        "files": {**files, "width": width, "height": height, "quality": args.quality},
        "pixels": pixels, "wall_s": time.perf_counter() - began,
        "machine": machine,
    })
    result["machine"]["load_average_end"] = list(os.getloadavg())
    print(_table(result))
    if "skipped" in result["cuda"]:
        print(f"cuda_decode_batched: skipped ({result['cuda']['skipped']})")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
