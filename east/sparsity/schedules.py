"""Schedules: small objects, pure functions of the iteration, with ``state_dict``.

Every schedule point is resolved once, at build time, from a duration with
``east.config.resolve_duration``; the objects then hold plain iteration counts. Their
``state_dict`` is those resolved numbers, so a resumed run can check that it continues the
same schedule (``load_state_dict`` restores them; a changed run length shows up there).

Iterations: the sparsifier calls a schedule with ``it`` = the number of optimizer steps
completed (``step + 1`` in ``after_step``), and ``beta`` with ``step`` = the step about to be
taken (its forward pass uses that β).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar


class Schedule:
    """Dataclass schedules share state_dict/load_state_dict over their fields."""

    kind: ClassVar[str] = "schedule"

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}  # type: ignore[call-overload]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"cannot load a {state.get('kind')!r} schedule into {self.kind!r}")
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            object.__setattr__(self, f.name, state[f.name])


@dataclass
class Periodic(Schedule):
    """Due every ``interval`` iterations in the open window (start, end)."""

    kind: ClassVar[str] = "periodic"
    interval: int
    start: int = 0
    end: int = 0

    def due(self, it: int) -> bool:
        return self.start < it < self.end and it % self.interval == 0


@dataclass
class DropFraction(Schedule):
    """RigL's drop fraction: ``initial`` decayed by a cosine to 0 over [0, end]
    (f = initial·½(1 + cos(π·it/end))), or held constant; 0 from ``end`` on."""

    kind: ClassVar[str] = "drop_fraction"
    initial: float
    end: int
    shape: str = "cosine"

    def __call__(self, it: int) -> float:
        if it >= self.end:
            return 0.0
        if self.shape == "constant":
            return self.initial
        return self.initial * 0.5 * (1.0 + math.cos(math.pi * it / self.end))


@dataclass
class CubicDensity(Schedule):
    """Gradual pruning (Zhu & Gupta, "To prune, or not to prune", 2017):
    s_t = s_f + (s_i − s_f)(1 − (t − t0)/(t1 − t0))³, applied every ``interval`` iterations
    from t0 to t1. Expressed in density: d_t = d_f + (d_i − d_f)(1 − progress)³. The last
    pruning step is t1 itself (even when t1 − t0 is not a multiple of the interval), where
    the density is exactly d_f."""

    kind: ClassVar[str] = "cubic_density"
    initial: float
    final: float
    start: int
    end: int
    interval: int

    def density(self, it: int) -> float:
        if it >= self.end:
            return self.final
        if it <= self.start:
            return self.initial
        progress = (it - self.start) / (self.end - self.start)
        return self.final + (self.initial - self.final) * (1.0 - progress) ** 3

    def due(self, it: int) -> bool:
        if it == self.end:
            return self.end > 0
        return self.start <= it < self.end and (it - self.start) % self.interval == 0 and it > 0


@dataclass
class CyclicDensity(Schedule):
    """EAST Trick 3: ``cycles`` cosine cycles of ``length`` iterations from iteration 0.
    At position p ∈ [0, 1) of a cycle, d(p) = d' + (d_max − d')·½(1 − cos 2πp), with
    d_max = min(1, max_factor·d'). Due every ``interval`` iterations within the cycles and
    at their end (so the run always returns exactly to d' when the cycles finish)."""

    kind: ClassVar[str] = "cyclic_density"
    target: float
    max_factor: float
    cycles: int
    length: int
    interval: int

    @property
    def end(self) -> int:
        return self.cycles * self.length

    @property
    def peak(self) -> float:
        return min(1.0, self.max_factor * self.target)

    def density(self, it: int) -> float:
        if it >= self.end or it <= 0 or self.length <= 0:
            return self.target
        p = (it % self.length) / self.length
        return self.target + (self.peak - self.target) * 0.5 * (1.0 - math.cos(2.0 * math.pi * p))

    def due(self, it: int) -> bool:
        return 0 < it <= self.end and (it % self.interval == 0 or it == self.end)


@dataclass
class Beta(Schedule):
    """DyReLU phasing factor (EAST Trick 1): 1 up to ``start``, linear to 0 at ``end``, then
    0. Disabled (no DyReLU) means β = 0, i.e. plain ReLU."""

    kind: ClassVar[str] = "beta"
    enabled: bool
    start: int
    end: int

    def __call__(self, step: int) -> float:
        if not self.enabled or step >= self.end:
            return 0.0
        if step <= self.start:
            return 1.0
        return (self.end - step) / (self.end - self.start)
