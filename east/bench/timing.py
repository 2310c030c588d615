"""Interleaved A/B timing and the statistics of its repeats (torch-free).

Two arms (a baseline and a variant) are timed in one process, alternating in an ABBA
pattern: repeat 0 runs baseline then variant, repeat 1 variant then baseline, and so on.
Slow drifts of a shared machine (another job starting, thermal or frequency changes) then
hit both arms alike, and each repeat yields one ratio variant/baseline measured seconds
apart. The reported number is the median of those per-repeat ratios, with their
interquartile range and min–max as the spread.

Every unit of work is timed on its own, between two ``sync()`` calls (a CUDA
synchronisation on the GPU), with the arm's untimed ``prepare()`` before it (e.g. restoring
dense gradients or a mask snapshot), and with Python's garbage collector paused.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Sync = Callable[[], None]


def _no_sync() -> None:
    return None


@dataclass
class Arm:
    """One side of a comparison: ``run()`` is one timed unit of work (one training step,
    one mask update, one batch); ``prepare()`` runs untimed before every unit."""

    name: str
    run: Callable[[], object]
    prepare: Callable[[], None] | None = None


@dataclass(frozen=True)
class Spread:
    """Median, quartiles and range of a sample (quartiles by linear interpolation between
    order statistics, numpy's default; a single value gives a zero-width spread)."""

    median: float
    q1: float
    q3: float
    lo: float
    hi: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"median": self.median, "q1": self.q1, "q3": self.q3, "min": self.lo,
                "max": self.hi, "n": self.n}


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of sorted values, interpolating linearly."""
    if not sorted_values:
        raise ValueError("quantile of an empty sample")
    pos = q * (len(sorted_values) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    frac = pos - low
    return sorted_values[low] * (1.0 - frac) + sorted_values[high] * frac


def spread(values: Sequence[float]) -> Spread:
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise ValueError("spread of an empty sample")
    return Spread(
        median=quantile(ordered, 0.5),
        q1=quantile(ordered, 0.25),
        q3=quantile(ordered, 0.75),
        lo=ordered[0],
        hi=ordered[-1],
        n=len(ordered),
    )


@dataclass
class Paired:
    """Seconds per unit of each arm, one entry per repeat (same index = same repeat)."""

    baseline: list[float] = field(default_factory=list)
    variant: list[float] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # arm names in the order they ran

    @property
    def ratios(self) -> list[float]:
        """variant / baseline, per repeat."""
        return [v / b for b, v in zip(self.baseline, self.variant, strict=True)]

    def ratio_spread(self) -> Spread:
        return spread(self.ratios)

    def as_dict(self) -> dict[str, object]:
        return {
            "baseline_s": spread(self.baseline).as_dict(),
            "variant_s": spread(self.variant).as_dict(),
            "ratio": self.ratio_spread().as_dict(),
            "baseline_s_per_repeat": list(self.baseline),
            "variant_s_per_repeat": list(self.variant),
        }


def time_units(arm: Arm, units: int, sync: Sync = _no_sync,
               clock: Callable[[], float] = time.perf_counter) -> float:
    """Mean seconds per unit of ``arm`` over ``units`` units (each timed on its own)."""
    if units < 1:
        raise ValueError(f"units must be >= 1, got {units}")
    total = 0.0
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(units):
            if arm.prepare is not None:
                arm.prepare()
            sync()
            began = clock()
            arm.run()
            sync()
            total += clock() - began
    finally:
        if was_enabled:
            gc.enable()
    return total / units


def interleave(baseline: Arm, variant: Arm, *, repeats: int, inner: int = 1, warmup: int = 1,
               sync: Sync = _no_sync, clock: Callable[[], float] = time.perf_counter) -> Paired:
    """Time both arms ``repeats`` times in ABBA order, ``inner`` units per arm per repeat,
    after ``warmup`` untimed units of each (allocator, autotuning and cache warm-up)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if baseline.name == variant.name:
        raise ValueError(f"the two arms need distinct names, both are {baseline.name!r}")
    for arm in (baseline, variant):
        for _ in range(warmup):
            if arm.prepare is not None:
                arm.prepare()
            arm.run()
    sync()
    result = Paired()
    for r in range(repeats):
        arms = (baseline, variant) if r % 2 == 0 else (variant, baseline)
        seconds = {}
        for arm in arms:
            seconds[arm.name] = time_units(arm, inner, sync, clock)
            result.order.append(arm.name)
        result.baseline.append(seconds[baseline.name])
        result.variant.append(seconds[variant.name])
    return result


def rotate(arms: list[Arm], *, repeats: int, inner: int, warmup: int,
           sync: Sync = _no_sync) -> dict[str, list[float]]:
    """Seconds per unit of each arm per repeat, the arms in rotating order (repeat r starts
    with arm r mod k; odd repeats run the order backwards), after warm-up units of each."""
    for arm in arms:
        for _ in range(warmup):
            arm.run()
    sync()
    seconds: dict[str, list[float]] = {arm.name: [] for arm in arms}
    for r in range(repeats):
        order = arms[r % len(arms):] + arms[:r % len(arms)]
        for arm in order if r % 2 == 0 else order[::-1]:
            seconds[arm.name].append(time_units(arm, inner, sync))
    return seconds
