"""What one benchmark case produces, and how it is judged against its target (torch-free)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from east.bench.timing import Spread

MET, NOT_MET, NO_TARGET = "met", "not met", "report only"


@dataclass(frozen=True)
class Target:
    """``value op bound`` must hold for the median; ``op`` is ``<=`` or ``>=``."""

    op: str
    bound: float

    def holds(self, value: float) -> bool:
        if self.op == "<=":
            return value <= self.bound
        if self.op == ">=":
            return value >= self.bound
        raise ValueError(f"unknown target operator {self.op!r}")

    def text(self, unit: str) -> str:
        symbol = "≤" if self.op == "<=" else "≥"
        return f"{symbol} {format_value(self.bound, unit)}"


@dataclass
class CaseResult:
    """One row of the report.

    ``value`` is the headline number (the median over repeats) in ``unit``: ``x`` a ratio,
    ``%`` a share of training time, ``fraction`` a share of a ceiling, ``jobs/s``;
    ``spread`` the distribution it is the median of (None for a single measurement).
    """

    id: str
    kind: str
    title: str
    measure: str
    unit: str
    value: float
    spread: Spread | None
    target: Target | None
    details: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    @property
    def status(self) -> str:
        if self.target is None:
            return NO_TARGET
        return MET if self.target.holds(self.value) else NOT_MET

    @property
    def straddles(self) -> bool:
        """Whether the interquartile range reaches across the target (the verdict is then
        within this machine's noise)."""
        if self.target is None or self.spread is None:
            return False
        return self.target.holds(self.spread.q1) != self.target.holds(self.spread.q3)

    @property
    def margin(self) -> float | None:
        """How far the median is from the target, relative to the bound (positive: met
        with room to spare; negative: missed by that share)."""
        if self.target is None or self.target.bound == 0:
            return None
        gap = self.target.bound - self.value if self.target.op == "<=" else (
            self.value - self.target.bound)
        return gap / abs(self.target.bound)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "title": self.title,
            "measure": self.measure,
            "unit": self.unit,
            "value": self.value,
            "spread": None if self.spread is None else self.spread.as_dict(),
            "target": None if self.target is None else {"op": self.target.op,
                                                         "bound": self.target.bound},
            "status": self.status,
            "iqr_straddles_target": self.straddles,
            "margin": self.margin,
            "details": self.details,
            "notes": self.notes,
        }


def format_value(value: float, unit: str) -> str:
    """A number in its unit, to a precision that the noise of a repeat justifies."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if unit == "x":
        return f"{value:.3f}x"
    if unit == "%":
        return f"{value:.3g} %"
    if unit == "fraction":
        return f"{value:.3f}"
    if unit == "jobs/s":
        return f"{value:.1f} jobs/s"
    return f"{value:.4g} {unit}".rstrip()
