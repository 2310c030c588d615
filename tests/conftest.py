"""Shared test setup: deterministic, thread-bounded torch (this machine has 2 cores)."""

from __future__ import annotations

import os

# Bound BLAS/OpenMP threads before torch is imported by any test module.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
