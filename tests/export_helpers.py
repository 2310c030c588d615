"""Shared by the export and sparse-inference tests: one trained digits EAST cell per test
session (ResNet-34 with in-stage sharing, DyReLU phased out, cyclic sparsity; ~10 s)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn
from train_helpers import make_cell, write_cell

SPARSITY = 0.999


@functools.cache
def trained_east_run() -> Path:
    """A finished run directory (model.pt at beta = 0); do not write into it."""
    from east.train.run import train_cell

    root = Path(tempfile.mkdtemp(prefix="east-export-tests-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    cell = make_cell(method="east", sparsity=SPARSITY, arch="resnet34", epochs=1)
    run = root / "run"
    write_cell(run, cell)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outcome = train_cell(cell, run, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert outcome.exit_code == 0, outcome.message
    return run


def copy_run(tmp_path: Path) -> Path:
    """A private copy of the trained run (for tests that write into it)."""
    target = tmp_path / "run"
    shutil.copytree(trained_east_run(), target, ignore=shutil.ignore_patterns(".lock"))
    return target


def randomise(model: nn.Module, keep: float, seed: int) -> None:
    """Zero all but a ``keep`` share of every masked weight, and give BN non-trivial
    statistics and affine parameters and the sharing scalars distinct values (some < 0)."""
    from east.models import SharedConv2d

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.masked_parameters().values():
            p.mul_(torch.rand(p.shape, generator=generator) < keep)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=generator) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=generator) - 0.5)
            elif isinstance(m, SharedConv2d):
                m.scale.copy_(torch.rand((), generator=generator) * 2 - 0.5)
