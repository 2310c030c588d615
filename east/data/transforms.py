"""Image transforms: batched device-side crop/flip/normalise, and seeded PIL transforms.

The in-memory path augments whole batches on the training device with index arithmetic
(no per-sample Python). The ImageNet path transforms one PIL image per worker call, with
its randomness drawn from a per-sample seed so the stream is independent of worker count.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import functional as TF


class CropWindows:
    """A uint8 image set stored so that any random pad-crop + horizontal flip of any image is
    one row of a strided view: a batch of augmented samples is a single index operation.

    The images are zero-padded by ``padding`` and stored twice, as is and mirrored
    ((2N, C, H + 2p, W + 2p), 2 x 1.56 x the raw size for CIFAR). ``windows`` views that
    storage as overlapping (C, H, W) crops, one per flat start offset. Mirroring the crop
    taken at column ``ox`` equals the crop of the mirrored image at column ``2p - ox``.
    """

    def __init__(self, images: torch.Tensor, padding: int) -> None:
        count, channels, height, width = images.shape
        self.count, self.padding = count, padding
        padded = F.pad(images, (padding,) * 4) if padding else images
        self.padded_height, self.padded_width = height + 2 * padding, width + 2 * padding
        self.image_numel = channels * self.padded_height * self.padded_width
        storage = torch.cat([padded, padded.flip(-1)]).contiguous()
        self.storage = storage.reshape(-1)
        # The last valid start: the last image's crop at offsets (2p, 2p).
        last_start = self.storage.numel() - self.image_numel + 2 * padding * (self.padded_width + 1)
        self.windows = self.storage.as_strided(
            (max(last_start + 1, 0), channels, height, width),
            (1, self.padded_height * self.padded_width, self.padded_width, 1),
        )

    def starts(
        self,
        index: torch.Tensor,
        offset_y: torch.Tensor,
        offset_x: torch.Tensor,
        flip: torch.Tensor,
    ) -> torch.Tensor:
        """Row of ``windows`` holding image ``index`` cropped at (offset_y, offset_x)
        (each 0..2*padding) and mirrored where ``flip``: output pixel (c, i, j) is
        padded[c, oy + i, ox + j'] with j' = W - 1 - j if flipped, else j."""
        flip = flip.to(torch.int64)
        column = torch.where(flip.bool(), 2 * self.padding - offset_x, offset_x)
        image = index + self.count * flip
        return image * self.image_numel + offset_y * self.padded_width + column

    def __getitem__(self, starts: torch.Tensor) -> torch.Tensor:
        return self.windows[starts]


class Normalizer:
    """uint8 (B, C, H, W) → float32 ``(x / 255 - mean) / std``, per channel, on a device."""

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], device: torch.device
    ) -> None:
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"bad normalisation: mean={mean!r}, std={std!r}")
        mean64 = torch.tensor(mean, dtype=torch.float64) * 255.0
        std64 = torch.tensor(std, dtype=torch.float64) * 255.0
        # x * (1 / (255 std)) - mean / std, as two in-place passes (torch.addcmul with a
        # broadcast first operand is several times slower on the CPU).
        self.scale = (1.0 / std64).to(torch.float32).view(1, -1, 1, 1).to(device)
        self.shift = (mean64 / std64).to(torch.float32).view(1, -1, 1, 1).to(device)
        self.channels = len(mean)

    def __call__(self, images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        if images.shape[1] != self.channels:
            raise ValueError(
                f"images have {images.shape[1]} channels, normalisation has {self.channels}"
            )
        out = images.to(torch.float32).mul_(self.scale).sub_(self.shift)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out


# ---- ImageNet (PIL, per sample, in DataLoader workers) ----

def random_resized_crop_box(
    width: int,
    height: int,
    rng: random.Random,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering a random area share in ``scale`` with a random
    log-uniform aspect ratio in ``ratio``; after ``attempts`` misses, the largest centred
    crop whose aspect ratio is within ``ratio``."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_image(image: Image.Image, size: int, seed: int) -> torch.Tensor:
    """RandomResizedCrop(size) + random horizontal flip, drawn from ``seed``: uint8 (3, S, S)."""
    rng = random.Random(seed)
    image = image.convert("RGB")
    top, left, h, w = random_resized_crop_box(image.width, image.height, rng)
    image = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
    if rng.random() < 0.5:
        image = TF.hflip(image)
    return TF.pil_to_tensor(image)


def eval_image(image: Image.Image, size: int, resize: int) -> torch.Tensor:
    """Resize the shorter side to ``resize``, centre-crop ``size``: uint8 (3, S, S)."""
    image = TF.resize(image.convert("RGB"), resize, antialias=True)
    return TF.pil_to_tensor(TF.center_crop(image, [size, size]))
