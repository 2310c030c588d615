"""The mask-update rules a sparsifier is composed of: density rules (gradual pruning,
cyclic sparsity) and periodic drop-and-grow (the RigL family)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from east.sparsity import scores as S
from east.sparsity.schedules import CubicDensity, CyclicDensity, DropFraction, Periodic, Schedule

if TYPE_CHECKING:
    from east.sparsity.methods import Sparsifier

Batches = Iterable[tuple[Tensor, Tensor]]
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Grads:
    """Dense gradients captured at an update step, by layer index."""

    step: int
    by_layer: list[Tensor | None]
    finite: bool


class Rule:
    """One kind of mask update: when it is due and what it does. ``needs_grad``: it reads
    gradients (captured at the step); ``grows_by_gradient``: its growth ranks inactive
    weights by gradient, i.e. needs the gradient w.r.t. all weights (training FLOPs)."""

    name: str
    needs_grad: bool
    grows_by_gradient: bool
    schedules: dict[str, Schedule]

    def due(self, it: int) -> bool:
        raise NotImplementedError

    def apply(self, sp: Sparsifier, it: int, grads: Grads | None) -> dict[str, int]:
        raise NotImplementedError


class DensityRule(Rule):
    """Move every layer to its budget at a scheduled density: prune the lowest drop-scores
    where the budget shrank, grow the highest grow-scores where it rose. ``grow=None``
    makes it prune-only (GMP): a layer never rises, and never drops below its final budget,
    so the schedule ends exactly on the target budget whatever the rounding on the way."""

    def __init__(self, name: str, schedule: CubicDensity | CyclicDensity,
                 drop: tuple[S.Scorer, bool], grow: tuple[S.Scorer, bool] | None) -> None:
        self.name = name
        self.schedule = schedule
        self.drop = drop[0]
        self.grow = grow[0] if grow else None
        self.grows_by_gradient = bool(grow and grow[1])
        self.needs_grad = drop[1] or self.grows_by_gradient
        self.schedules = {name: schedule}

    def due(self, it: int) -> bool:
        return self.schedule.due(it)

    def apply(self, sp: Sparsifier, it: int, grads: Grads | None) -> dict[str, int]:
        targets = sp.budgets_at(self.schedule.density(it))
        pruned = grown = 0
        for i, name in enumerate(sp.names):
            current, target = sp.budgets[name], targets[name]
            if self.grow is None:
                target = max(sp.base_budgets[name], min(current, target))
            if target < current:
                sp.drop_weights(i, current - target, self.drop, grads)
                pruned += current - target
            elif target > current and self.grow is not None:
                added = min(target - current, sp.growable(i))
                sp.grow_weights(i, added, self.grow, grads)
                grown += added
                target = current + added
            sp.budgets[name] = target
        return {"pruned": pruned, "grown": grown}


class DropGrowRule(Rule):
    """RigL-style update: per layer, k = ceil(f·nnz); drop the k lowest drop-scores among
    active weights, grow the k highest grow-scores among the inactive ones. Counts per layer
    are unchanged.

    ``regrow_dropped`` (RigL's and the authors' code): the grow candidates include the k
    weights just dropped; one that is regrown keeps its value and optimizer state (it never
    left). Without it (the spec's "disjoint" reading), candidates are only the weights
    inactive before the update, and k is capped so that there are enough of them."""

    def __init__(self, drop: tuple[S.Scorer, bool], grow: tuple[S.Scorer, bool],
                 period: Periodic, fraction: DropFraction, regrow_dropped: bool) -> None:
        self.name = "drop_grow"
        self.drop, self.grow = drop[0], grow[0]
        self.needs_grad = drop[1] or grow[1]
        self.grows_by_gradient = grow[1]
        self.regrow_dropped = regrow_dropped
        self.period, self.fraction = period, fraction
        self.schedules = {"drop_grow.period": period, "drop_grow.fraction": fraction}

    def due(self, it: int) -> bool:
        return self.period.due(it) and self.fraction(it) > 0.0

    def apply(self, sp: Sparsifier, it: int, grads: Grads | None) -> dict[str, int]:
        f = self.fraction(it)
        moved = regrown = 0
        for i, name in enumerate(sp.names):
            active = sp.budgets[name]
            if self.regrow_dropped:  # the k dropped are candidates again: never short
                k = min(math.ceil(f * active), active)
            else:
                k = min(math.ceil(f * active), active, sp.growable(i))
            if k <= 0:
                continue
            dropped = sp.drop_weights(i, k, self.drop, grads, final=not self.regrow_dropped)
            grown = sp.grow_weights(i, k, self.grow, grads,
                                    keep=dropped if self.regrow_dropped else None)
            moved += k
            if self.regrow_dropped:
                regrown += int((dropped & grown).sum())
        stats = {"dropped": moved, "grown": moved}
        if self.regrow_dropped:
            stats["regrown"] = regrown
        return stats
