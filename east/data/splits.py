"""Fixed, stratified hold-out splits that do not depend on the run seed or on RNG versions.

A split is cut with ``SPLIT_SEED`` (never the run seed), so every seed of an experiment
trains and validates on the same images and seeds vary only the training randomness.
Numpy-only (no torch): pure integer arithmetic, identical on every platform and version.
"""

from __future__ import annotations

import numpy as np

SPLIT_SEED = 0x5EED_EA57

_MASK64 = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic): a fixed bijection."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return (z ^ (z >> np.uint64(31))) & _MASK64


def sample_keys(n: int, seed: int = SPLIT_SEED) -> np.ndarray:
    """One pseudo-random uint64 key per index 0..n-1, a function of (seed, index) only."""
    base = splitmix64(np.array([seed & 0xFFFF_FFFF_FFFF_FFFF], dtype=np.uint64))[0]
    with np.errstate(over="ignore"):
        return splitmix64(np.arange(n, dtype=np.uint64) ^ base)


def allocate(class_counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over classes in proportion to their counts, summing exactly to it.

    Largest-remainder allocation in exact integer arithmetic; equal remainders go to the
    lower class id. Each share is at most the class's count.
    """
    counts = np.asarray(class_counts, dtype=np.int64)
    n = int(counts.sum())
    if not 0 <= total <= n:
        raise ValueError(f"cannot hold out {total} of {n} samples")
    if n == 0:
        return np.zeros_like(counts)
    product = counts * total
    shares = product // n
    remainders = product % n
    missing = total - int(shares.sum())
    # Stable sort on -remainder: ties keep ascending class order.
    order = np.argsort(-remainders, kind="stable")
    shares[order[:missing]] += 1
    return shares


def stratified_holdout(
    labels: np.ndarray, size: int, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out), both sorted, with ``size`` held out stratified by label.

    Within a class, the samples with the smallest ``sample_keys`` are held out.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.shape[0]
    if n and labels.min() < 0:
        raise ValueError("labels must be non-negative")
    counts = np.bincount(labels) if n else np.zeros(0, dtype=np.int64)
    shares = allocate(counts, size)
    keys = sample_keys(n, seed)
    # Sort by (label, key): each class's candidates are contiguous, lowest keys first.
    order = np.lexsort((keys, labels))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1])) if n else np.zeros(0, np.int64)
    rank_in_class = np.empty(n, dtype=np.int64)
    rank_in_class[order] = np.arange(n) - np.repeat(starts, counts)
    held = rank_in_class < shares[labels]
    return np.flatnonzero(~held), np.flatnonzero(held)
