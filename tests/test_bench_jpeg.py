"""`python -m east.bench.jpeg`: the synthetic JPEGs, the per-arm pipelines (each decodes
every file exactly once per pass), the pixel comparison and a tiny CLI run. No timing
assertions: rates are only checked to be positive."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import east.bench.jpeg as jpeg

# torchvision 0.29 deprecates its image decoders (for TorchCodec); docs/pipeline.md notes
# it once, the tests need not repeat it for every decode.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")

SIZE = (160, 120)  # small, and not the default, so the size argument is exercised
CPU_ARMS = {"pil_train", "decode_jpeg_train", "pil_decode", "decode_jpeg_decode"}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return jpeg.write_jpegs(tmp_path_factory.mktemp("jpegs"), 3, SIZE, quality=90, seed=1)


def test_generated_jpegs_are_valid_sized_and_textured(files: list[Path]) -> None:
    assert [p.name for p in files] == ["img00000.JPEG", "img00001.JPEG", "img00002.JPEG"]
    for path in files:
        data = path.read_bytes()
        assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"  # SOI ... EOI
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == SIZE
            image.verify()
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        # Not flat colour: texture and noise everywhere (measured std 20-40 grey levels).
        assert pixels.std() > 10.0
        # Photograph-like compression: measured about 0.5-0.6 bytes per pixel at this
        # size (flat colour would be well under 0.05).
        assert len(data) / (SIZE[0] * SIZE[1]) > 0.2
    assert jpeg.file_stats(files)["count"] == 3


def test_write_jpegs_is_deterministic(tmp_path: Path) -> None:
    a = jpeg.write_jpegs(tmp_path / "a", 2, SIZE, seed=7)
    b = jpeg.write_jpegs(tmp_path / "b", 2, SIZE, seed=7)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    with pytest.raises(ValueError):
        jpeg.write_jpegs(tmp_path / "c", 0, SIZE)


def test_both_decoders_give_nearly_the_same_pixels(files: list[Path]) -> None:
    decoded = jpeg.decoder_difference(files)
    # Measured here: identical (max 0; Pillow's libjpeg-turbo 3.2.0, torchvision's 3.1.3).
    # Other libjpeg builds may round the IDCT or chroma upsampling differently by a few
    # grey levels, hence a bound rather than equality.
    assert decoded["mean_abs"] < 1.0
    assert decoded["max_abs"] <= 16
    # The 224 crops: same box and flip, two antialiased bilinear resizes (measured mean
    # 0.03, max 1).
    trained = jpeg.train_difference(files, jpeg.augment_seeds(len(files)))
    assert trained["mean_abs"] < 1.0
    assert trained["max_abs"] <= 16


def _count_calls(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[int]:
    calls = [0]
    original = getattr(owner, name)

    def counting(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls


def test_each_arm_decodes_every_file_once_per_pass(
    files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    n = len(files)
    seeds = jpeg.augment_seeds(n)
    pil_opens = _count_calls(monkeypatch, Image, "open")
    tv_decodes = _count_calls(monkeypatch, jpeg, "decode_jpeg")
    width, height = SIZE
    expected = {
        "pil_train": ((3, 224, 224), pil_opens), "decode_jpeg_train": ((3, 224, 224), tv_decodes),
        "pil_decode": (None, pil_opens), "decode_jpeg_decode": ((3, height, width), tv_decodes),
    }
    arms = jpeg.build_arms(files, seeds, cuda=False)
    assert {arm.name for arm in arms} == CPU_ARMS
    for arm in arms:
        shape, calls = expected[arm.name]
        for _ in range(2):  # a pass does the same work every time
            before = calls[0]
            images = arm.run()
            assert len(images) == n, arm.name
            assert calls[0] - before == n, arm.name  # one decode per file, no more
        for image in images:
            if shape is None:
                assert isinstance(image, Image.Image) and image.size == SIZE
                assert image.mode == "RGB"
            else:
                assert image.shape == shape and image.dtype == torch.uint8, arm.name


def test_tensor_train_image_follows_the_seed(files: list[Path]) -> None:
    data = jpeg.read_file(str(files[0]))
    a = jpeg.tensor_train_image(data, 32, seed=5)
    assert a.shape == (3, 32, 32)
    assert torch.equal(a, jpeg.tensor_train_image(data, 32, seed=5))
    differs = [not torch.equal(a, jpeg.tensor_train_image(data, 32, seed=s)) for s in range(6, 9)]
    assert any(differs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvjpeg)")
def test_cuda_arm_decodes_every_file(files: list[Path]) -> None:
    images = jpeg.cuda_decode_batched(files, batch=2)()
    torch.cuda.synchronize()
    assert len(images) == len(files)
    assert all(im.is_cuda and im.shape == (3, SIZE[1], SIZE[0]) for im in images)
    assert jpeg.cuda_decoder_difference(files)["max_abs"] <= 255  # reported, not bounded


def test_parse_size() -> None:
    assert jpeg.parse_size("500x375") == (500, 375)
    assert jpeg.parse_size("64X48") == (64, 48)
    for bad in ("500", "ax3", "4x4", "1x2x3"):
        with pytest.raises(argparse.ArgumentTypeError):
            jpeg.parse_size(bad)


def test_cli_tiny_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "jpeg.json"
    threads = torch.get_num_threads()
    assert jpeg.main(["--images", "4", "--repeats", "1", "--device", "cpu",
                      "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads  # put back after the one-thread run
    result = json.loads(out.read_text())
    assert set(result["arms"]) == CPU_ARMS
    for name, arm in result["arms"].items():
        assert arm["images"] == 4, name
        assert len(arm["images_per_s_per_repeat"]) == 1, name
        assert arm["images_per_s"]["median"] > 0, name
    assert set(result["ratios"]) == set(jpeg.RATIOS)
    assert all(r["median"] > 0 for r in result["ratios"].values())
    assert all(share > 0 for share in result["decode_share"].values())
    assert result["files"]["count"] == 4 and result["files"]["mean_bytes"] > 0
    assert (result["files"]["width"], result["files"]["height"]) == jpeg.DEFAULT_SIZE
    assert result["cuda"] == {"skipped": "not requested (--device cpu)"}
    assert result["threads"] == 1
    printed = capsys.readouterr().out
    assert "pil_train" in printed and "cuda_decode_batched: skipped" in printed
