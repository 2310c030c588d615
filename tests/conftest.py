"""Shared test setup: deterministic, thread-bounded torch (this machine has 2 cores)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Bound BLAS/OpenMP threads before torch is imported by any test module.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: a second thread only adds contention. Tests
    that change the thread count get it restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
