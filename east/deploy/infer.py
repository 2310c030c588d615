"""``east infer MODEL.east IMAGES... [--logits FILE] [--batch-size N]``: classify images
with a sparse export.

IMAGES, each one of:
- an image file (PNG, JPEG, BMP, GIF, TIFF, WebP, PPM/PGM), or a folder of them (searched
  recursively, sorted by path; other files are ignored). Decoded with Pillow to the model's
  channels (L or RGB). CIFAR/digits-stem models take images of exactly their size (32x32,
  8x8); ImageNet-stem models get the eval transform (shorter side to 256, centre 224 crop);
- a ``.npy`` or ``.pt`` array: **uint8** is pixels, (N, H, W, C) or (N, C, H, W) (one image
  may leave out N; one-channel images may leave out C), normalised like the training data;
  **floating point** is the network's input as is, (N, C, H, W), already normalised
  ((pixels / 255 - mean) / std, the model's ``meta["mean"]``/``meta["std"]``).

Prints one line per image, ``NAME<TAB>CLASS<TAB>PROBABILITY`` (softmax of the predicted
class); ``--logits FILE.npy|FILE.pt`` also writes the (N, classes) float32 logits in the
same order.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from east.deploy.sparse import SparseResNet, load_sparse
from east.errors import EastError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm", ".pbm")
ARRAY_SUFFIXES = (".npy", ".pt")


def read_images(paths: Sequence[str | Path], model: SparseResNet) -> tuple[list[str], Tensor]:
    """(names, normalised float32 (N, C, S, S)) from IMAGES arguments (module docstring)."""
    names: list[str] = []
    parts: list[Tensor] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise EastError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)})")
            batch = torch.stack([_image_file(f, model) for f in files])
            names += [str(f.relative_to(path)) for f in files]
            parts.append(_normalise(batch, model))
        elif not path.exists():
            raise EastError(f"{path}: no such file or folder")
        elif path.suffix.lower() in ARRAY_SUFFIXES:
            tensor = _array_file(path, model)
            names += [f"{path.name}[{i}]" for i in range(tensor.shape[0])]
            parts.append(tensor)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            names.append(path.name)
            parts.append(_normalise(_image_file(path, model).unsqueeze(0), model))
        else:
            raise EastError(f"{path}: not an image ({', '.join(IMAGE_SUFFIXES)}), an array "
                            "(.npy, .pt) or a folder")
    return names, torch.cat(parts) if parts else torch.zeros((0, *model.input_shape))


def _normalise(pixels: Tensor, model: SparseResNet) -> Tensor:
    from east.data.transforms import Normalizer

    return Normalizer(model.meta["mean"], model.meta["std"], torch.device("cpu"))(pixels)


def _image_file(path: Path, model: SparseResNet) -> Tensor:
    """uint8 (C, S, S) of one image file."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor

    channels, size, _ = model.input_shape
    try:
        with Image.open(path) as image:
            image.load()
            if model.meta.get("resize"):
                from east.data.transforms import eval_image

                return eval_image(image, size, int(model.meta["resize"]))
            converted = image.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise EastError(f"{path}: not a readable image ({error})") from None
    if converted.size != (size, size):
        raise EastError(f"{path}: {converted.size[0]}x{converted.size[1]} pixels; this model "
                        f"takes {size}x{size} images")
    if channels not in (1, 3):
        raise EastError(f"{path}: image files need a 1- or 3-channel model")
    return pil_to_tensor(converted)


def _array_file(path: Path, model: SparseResNet) -> Tensor:
    """Normalised float32 (N, C, S, S) from a .npy/.pt array (module docstring)."""
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise EastError(f"{path}: not a readable .npy array ({error})") from None
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    else:
        from east.io import torch_load

        tensor = torch_load(path, what="image tensor")
        if not isinstance(tensor, Tensor):
            raise EastError(f"{path}: holds {type(tensor).__name__}, expected one tensor")
    channels, size, _ = model.input_shape
    if tensor.dtype == torch.uint8:
        pixels = _nchw(tensor, channels, size, path)
        return _normalise(pixels, model)
    if not tensor.is_floating_point():
        raise EastError(f"{path}: dtype {tensor.dtype}; expected uint8 pixels or floating "
                        "point network input")
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(0)
    if tuple(tensor.shape[1:]) != (channels, size, size):
        raise EastError(f"{path}: float input of shape {tuple(tensor.shape)}; expected "
                        f"(N, {channels}, {size}, {size}), normalised")
    return tensor.to(torch.float32)


def _nchw(t: Tensor, channels: int, size: int, path: Path) -> Tensor:
    """uint8 pixels in any of the accepted layouts -> (N, C, S, S)."""
    if t.dim() == 2 and channels == 1:
        t = t.unsqueeze(0)  # one (H, W) image
    if t.dim() == 3:
        if channels == 1 and tuple(t.shape[1:]) == (size, size):
            t = t.unsqueeze(1)  # (N, H, W) one-channel images
        else:
            t = t.unsqueeze(0)  # one image, channels first or last
    if t.dim() == 4:
        if tuple(t.shape[1:]) == (channels, size, size):
            return t
        if tuple(t.shape[1:]) == (size, size, channels):
            return t.permute(0, 3, 1, 2).contiguous()
    raise EastError(f"{path}: uint8 pixels of shape {tuple(t.shape)}; expected (N, {size}, "
                    f"{size}, {channels}) or (N, {channels}, {size}, {size})")


def predict(model: SparseResNet, images: Tensor, batch_size: int = 64) -> Tensor:
    """Logits (N, classes), ``batch_size`` images at a time."""
    if images.shape[0] == 0:
        return torch.zeros((0, model.num_classes))
    return torch.cat([model(part) for part in images.split(batch_size)])


def _write_logits(path: Path, logits: Tensor) -> None:
    from east.io import atomic_write

    if path.suffix.lower() == ".npy":
        atomic_write(path, lambda handle: np.save(handle, logits.numpy()))
    elif path.suffix.lower() == ".pt":
        atomic_write(path, lambda handle: torch.save(logits, handle))
    else:
        raise EastError(f"--logits {path}: expected a .npy or .pt file name")


def lines(names: Sequence[str], logits: Tensor) -> Iterator[str]:
    probs = torch.softmax(logits, dim=1)
    best = probs.argmax(dim=1)
    for name, cls, prob in zip(names, best.tolist(), probs.max(dim=1).values.tolist(),
                               strict=True):
        yield f"{name}\t{cls}\t{prob:.4f}"


def cmd_infer(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise EastError(f"--batch-size: must be >= 1, got {args.batch_size}")
    if args.logits is not None and Path(args.logits).suffix.lower() not in ARRAY_SUFFIXES:
        raise EastError(f"--logits {args.logits}: expected a .npy or .pt file name")
    model = load_sparse(args.model)
    names, images = read_images(args.images, model)
    logits = predict(model, images, args.batch_size)
    if args.logits is not None:
        _write_logits(Path(args.logits), logits)
    for line in lines(names, logits):
        print(line)
    if args.logits is not None:
        print(f"east: wrote {args.logits} ({len(names)} x {model.num_classes} logits)",
              file=sys.stderr)
    return 0
