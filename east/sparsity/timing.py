"""Every schedule point of a sparsity config, resolved to iterations, and what cannot run.

Torch-free: the trainer resolves its schedules with ``resolve_timing`` and ``east grid
check`` reports the same problems (``timing_problems``) before anything is submitted.
"""

from __future__ import annotations

from dataclasses import dataclass

from east.config import SparsityConfig, resolve_duration
from east.errors import EastError
from east.sparsity.presets import method_spec


@dataclass(frozen=True)
class Timing:
    update_interval: int
    update_end: int
    prune_start: int
    prune_end: int
    prune_interval: int
    dyrelu_start: int
    dyrelu_end: int
    cycle_length: int
    cycle_interval: int


def _resolve(cfg: SparsityConfig, steps_per_epoch: int, total_steps: int) -> Timing:
    def it(name: str) -> int:
        return resolve_duration(getattr(cfg, name), steps_per_epoch, total_steps)

    return Timing(**{name: it(name) for name in Timing.__dataclass_fields__})


def timing_problems(cfg: SparsityConfig, steps_per_epoch: int, total_steps: int, *,
                    prefix: str = "sparsity", run: str = "") -> list[str]:
    """Why a run of ``total_steps`` could not follow ``cfg``'s schedules (empty: it can).
    ``prefix`` names the fields (``sparsity`` in a cell, ``method_args`` in a grid row);
    ``run`` describes the run's length for the messages."""
    t = _resolve(cfg, steps_per_epoch, total_steps)
    context = f" ({run})" if run else ""
    problems = []
    periods = ["update_interval", "prune_interval", "cycle_interval"]
    for name in (*periods, *(("cycle_length",) if cfg.cyclic else ())):
        value = getattr(t, name)
        if value < 1:
            problems.append(f"{prefix}.{name}: {getattr(cfg, name)!r} resolves to {value} "
                            f"iterations{context}; it must be at least 1")
    if method_spec(cfg.method).gradual:
        if t.prune_end < t.prune_start:
            problems.append(f"{prefix}.prune_end: {cfg.prune_end!r} ends before prune_start "
                            f"{cfg.prune_start!r}{context}")
        elif t.prune_end > total_steps:
            problems.append(f"{prefix}.prune_end: {cfg.prune_end!r} is iteration "
                            f"{t.prune_end}, past the end of training{context}: the target "
                            "sparsity would never be reached")
    if cfg.cyclic and cfg.cycles * t.cycle_length > total_steps:
        problems.append(f"{prefix}.cycle_length: {cfg.cycles} cycles of {cfg.cycle_length!r} "
                        f"({t.cycle_length} iterations each) do not fit{context}")
    return problems


def resolve_timing(cfg: SparsityConfig, steps_per_epoch: int, total_steps: int) -> Timing:
    """The schedules in iterations; an ``EastError`` when the run cannot follow them."""
    problems = timing_problems(cfg, steps_per_epoch, total_steps,
                               run=f"the run has {total_steps} iterations")
    if problems:
        raise EastError(problems[0])
    return _resolve(cfg, steps_per_epoch, total_steps)
