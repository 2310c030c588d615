"""Initial masks: per layer inside the budget (dense, random) or chosen globally by
scores over the whole network (SNIP, GraSP, SynFlow), with at least one weight per layer."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from east.config import SparsityConfig
from east.errors import EastError
from east.sparsity import scores as S
from east.sparsity.budget import MIN_PER_LAYER

if TYPE_CHECKING:
    pass

Batches = Iterable[tuple[Tensor, Tensor]]
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class InitContext:
    """What a global initial-mask rule may use."""

    model: nn.Module
    names: list[str]
    batches: Batches
    loss_fn: LossFn | None
    total: int
    generator: torch.Generator
    cfg: SparsityConfig
    passes: list[S.ScoringPass]  # filled with the forward/backward passes scoring runs


def _from_scores(ctx: InitContext, scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Global top-``total`` of per-layer scores, at least one weight per layer."""
    flat = {n: s.reshape(-1) for n, s in scores.items()}
    chosen = S.global_select(flat, ctx.total, ctx.generator, MIN_PER_LAYER)
    out = {}
    for name in ctx.names:
        m = torch.zeros(flat[name].numel(), dtype=torch.bool, device=flat[name].device)
        m[chosen[name]] = True
        out[name] = m.view(scores[name].shape)
    return out


def _need_loss(ctx: InitContext) -> LossFn:
    if ctx.loss_fn is None:
        raise EastError(f"sparsity.init: {ctx.cfg.init} needs a loss function")
    return ctx.loss_fn


def _snip_masks(ctx: InitContext) -> dict[str, Tensor]:
    return _from_scores(ctx, S.snip_scores(ctx.model, ctx.names, ctx.batches, _need_loss(ctx),
                                           passes=ctx.passes))


def _grasp_masks(ctx: InitContext) -> dict[str, Tensor]:
    return _from_scores(ctx, S.grasp_scores(ctx.model, ctx.names, ctx.batches, _need_loss(ctx),
                                            passes=ctx.passes))


def _synflow_masks(ctx: InitContext) -> dict[str, Tensor]:
    first = next(iter(ctx.batches), None)
    if first is None:
        raise EastError("sparsity.init: synflow needs one batch (for the input shape)")
    return S.synflow_masks(ctx.model, ctx.names, tuple(first[0].shape[1:]), ctx.total,
                           ctx.cfg.synflow_rounds, ctx.generator, MIN_PER_LAYER,
                           passes=ctx.passes)


@dataclass(frozen=True)
class Initializer:
    """How the first mask is chosen: per layer by a score inside the layer budget, or
    globally (the allocation emerges from the scores; at least one weight per layer)."""

    per_layer: S.Scorer | None = None
    global_masks: Callable[[InitContext], dict[str, Tensor]] | None = None
    needs_data: bool = False

    @property
    def global_allocation(self) -> bool:
        return self.global_masks is not None


INITIALIZERS: dict[str, Initializer] = {
    "dense": Initializer(per_layer=S.constant),
    "random": Initializer(per_layer=S.random),
    "snip": Initializer(global_masks=_snip_masks, needs_data=True),
    "grasp": Initializer(global_masks=_grasp_masks, needs_data=True),
    "synflow": Initializer(global_masks=_synflow_masks, needs_data=True),  # input shape only
}


def initializer_for(cfg: SparsityConfig) -> Initializer:
    if cfg.init not in INITIALIZERS:
        raise EastError(f"sparsity.init: unknown initial mask {cfg.init!r} "
                        f"(known: {', '.join(INITIALIZERS)})")
    return INITIALIZERS[cfg.init]
