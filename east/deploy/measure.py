"""Measured inference speed of a sparse model against its dense twin, on the CPU.

The two arms (the dense network, the sparse one) are timed alternately in ABBA order in
one process (``east.bench.timing.interleave``), each unit a forward pass on one fixed
random batch; each repeat gives one ratio, and the result is the median ratio with its
quartiles and range (docs/benchmarks.md, "How it measures"). ``speedup`` is images/s of
the sparse model / images/s of the dense one = dense seconds / sparse seconds.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from east.bench.timing import Arm, interleave, spread
from east.deploy.sparse import SparseResNet
from east.train.devices import torch_threads

BATCH_SIZES = (1, 64)
REPEATS = 5
THREADS = 1


def dense_twin(model: nn.Module) -> tuple[nn.Module, str]:
    """The dense baseline for a (possibly shared) EastResNet at beta = 0, and its name: the
    torchvision ResNet with the materialised weights where the arch has one, else the plain
    unshared EastResNet (the same convolutions, BN and ReLU)."""
    from east.models.export import (
        TORCHVISION_ARCHS,
        plain_model,
        torchvision_state_dict,
        torchvision_twin,
    )

    if getattr(model, "arch", None) in TORCHVISION_ARCHS:
        twin = torchvision_twin(model.arch, model.num_classes, model.in_channels, model.stem)
        twin.load_state_dict({k: v.cpu() for k, v in torchvision_state_dict(model).items()})
        return twin.eval(), f"torchvision {model.arch}"
    return plain_model(model), f"dense east {getattr(model, 'arch', '?')} (no torchvision twin)"


def measure_speedup(sparse: SparseResNet, dense: nn.Module, *,
                    batch_sizes: Sequence[int] = BATCH_SIZES, repeats: int = REPEATS,
                    inner: dict[int, int] | None = None, warmup: int = 1,
                    threads: int | None = THREADS, seed: int = 0) -> dict[str, Any]:
    """Interleaved timing of ``dense`` and ``sparse`` forward passes per batch size.

    ``inner``: forward passes per timed unit, per batch size (default: 10 batch-1 passes, so
    that a unit lasts milliseconds). ``threads``: torch's CPU threads while timing (None:
    as set); one by default: a per-core comparison (the sparse model runs batch slices on
    torch's threads, the dense one parallelises each convolution). Returns a
    JSON-able dict: per batch size the seconds of each arm and the per-repeat speed-ups with
    their spread; the thread count.
    """
    with torch_threads(threads):
        return _measure(sparse, dense.eval(), batch_sizes, repeats, inner or {}, warmup, seed)


def _measure(sparse: SparseResNet, dense: nn.Module, batch_sizes: Sequence[int],
             repeats: int, inner: dict[int, int], warmup: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "repeats": repeats,
                           "kernel": sparse.kernel, "machine": _machine(), "batches": {}}
    generator = torch.Generator().manual_seed(seed)
    for batch in batch_sizes:
        x = torch.randn((batch, *sparse.input_shape), generator=generator)
        units = inner.get(batch, 10 if batch == 1 else 1)

        def run_dense(x: torch.Tensor = x) -> None:
            with torch.no_grad():
                dense(x)

        def run_sparse(x: torch.Tensor = x) -> None:
            sparse(x)

        paired = interleave(Arm("dense", run_dense), Arm("sparse", run_sparse),
                            repeats=repeats, inner=units, warmup=warmup)
        speedups = [d / s for d, s in zip(paired.baseline, paired.variant, strict=True)]
        out["batches"][str(batch)] = {
            "batch_size": batch,
            "speedup": spread(speedups).as_dict(),
            "speedup_per_repeat": speedups,
            "dense_s": spread(paired.baseline).as_dict(),
            "sparse_s": spread(paired.variant).as_dict(),
            "dense_images_per_s": batch / spread(paired.baseline).median,
            "sparse_images_per_s": batch / spread(paired.variant).median,
        }
    return out


def _machine() -> dict[str, Any]:
    from east.bench.report import cpu_model

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "load_average": list(os.getloadavg())}
