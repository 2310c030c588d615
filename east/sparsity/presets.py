"""The method table: each method's defaults and what a params row may override.

Torch-free, so that ``east grid check`` and the Snakefile validate rows before anything is
submitted. A method is a preset of the parts in this package (budget, initial-mask scorer,
drop and grow scorers, schedules); the parts themselves live in the other modules
(``methods.RECIPES`` says which parts each method uses, with its paper).

Which fields a method accepts is the validation: ``cyclic`` exists only for drop-and-grow
methods, ``prune_*`` only for gradual ones, and ``distribution`` not for the global
pruning-at-initialisation methods (SNIP, GraSP, SynFlow), whose layer allocation comes from
their scores. Defaults follow each paper (see docs/design.md, "Sparsity").
"""

from __future__ import annotations

import dataclasses
from typing import Any

from east.config import SparsityConfig, build_section
from east.errors import EastError

# Fields any method accepts.
_COMMON = frozenset({"method", "sparsity", "distribution", "dyrelu", "dyrelu_start", "dyrelu_end",
                     "sharing", "sharing_ratio"})
# Fields of dynamic (drop-and-grow) methods.
_DYNAMIC = frozenset({"update_interval", "update_end", "drop_fraction", "drop_schedule",
                      "regrow_dropped", "cyclic", "cycles", "cycle_length", "cycle_max_factor",
                      "cycle_interval"})
_GRADUAL = frozenset({"prune_start", "prune_end", "prune_interval", "initial_density"})
# Pruning at initialisation with a global ranking: no per-layer distribution.
_GLOBAL = _COMMON - {"distribution"}

# method -> (defaults, fields a row may set)
PRESETS: dict[str, tuple[dict[str, Any], frozenset[str]]] = {
    "dense": ({"init": "dense"}, frozenset({"method", "sparsity", "dyrelu", "dyrelu_start",
                                            "dyrelu_end", "sharing", "sharing_ratio"})),
    "static": ({"init": "random"}, _COMMON),
    "snip": ({"init": "snip"}, _GLOBAL),
    "grasp": ({"init": "grasp"}, _GLOBAL),
    "synflow": ({"init": "synflow", "synflow_rounds": 100}, _GLOBAL | {"synflow_rounds"}),
    "gmp": ({"init": "dense", "initial_density": 1.0, "prune_start": "0%", "prune_end": "75%",
             "prune_interval": 100}, _COMMON | _GRADUAL),
    "set": ({"init": "random", "drop": "magnitude", "grow": "random", "update_interval": 1500},
            _COMMON | _DYNAMIC),
    "rigl": ({"init": "random", "drop": "magnitude", "grow": "gradient", "update_interval": 4000},
             _COMMON | _DYNAMIC),
    # GraNet's dense-to-sparse variant ("GraNet (s_i = 0)" of its README; the code's default
    # is s_i = 0.5, i.e. initial_density 0.5): gradual magnitude pruning from dense over
    # epochs 0-110 of 160 (0 %-68.75 %), each pruning step followed by regrowth of a
    # cosine-decayed fraction by gradient, both every 1000 iterations.
    "granet": ({"init": "dense", "initial_density": 1.0, "drop": "magnitude", "grow": "gradient",
                "update_interval": 1000, "prune_start": "0%", "prune_end": "68.75%",
                "prune_interval": 1000}, _COMMON | _DYNAMIC | _GRADUAL),
    "mest": ({"init": "random", "drop": "mest", "grow": "random", "update_interval": 1500,
              "mest_lambda": 1.0}, _COMMON | _DYNAMIC | {"mest_lambda"}),
    "east": ({"init": "random", "drop": "magnitude", "grow": "gradient", "update_interval": 4000,
              "dyrelu": True, "sharing": True, "cyclic": True}, _COMMON | _DYNAMIC),
}

METHODS: tuple[str, ...] = tuple(PRESETS)
DYNAMIC_METHODS: tuple[str, ...] = tuple(m for m, (_, allowed) in PRESETS.items()
                                         if "update_interval" in allowed)


def resolve_sparsity(raw: dict[str, Any], where: str) -> SparsityConfig:
    """Fill a method's defaults into a row's sparsity fields, validating every field."""
    if not isinstance(raw, dict):
        raise EastError(f"{where}: expected a mapping")
    method = raw.get("method")
    if method not in PRESETS:
        raise EastError(f"{where}.method: unknown method {method!r} (known: {', '.join(METHODS)})")
    defaults, allowed = PRESETS[method]
    known = {f.name for f in dataclasses.fields(SparsityConfig)}
    for key in sorted(raw):
        if key in known and key not in allowed:
            raise EastError(f"{where}.{key}: not valid for method {method!r}")
    config: SparsityConfig = build_section(SparsityConfig, {**defaults, **raw}, where)
    _check_values(config, where)
    return config


def _check_values(c: SparsityConfig, where: str) -> None:
    if not 0.0 <= c.sparsity < 1.0:
        raise EastError(f"{where}.sparsity: must be in [0, 1), got {c.sparsity}")
    if c.method == "dense" and c.sparsity != 0.0:
        raise EastError(f"{where}.sparsity: method 'dense' trains at sparsity 0, got {c.sparsity}")
    if c.distribution not in SparsityConfig.DISTRIBUTIONS:
        raise EastError(
            f"{where}.distribution: expected one of erk, uniform, got {c.distribution!r}"
        )
    if not 0.0 <= c.drop_fraction <= 1.0:
        raise EastError(f"{where}.drop_fraction: must be in [0, 1], got {c.drop_fraction}")
    if c.drop_schedule not in ("cosine", "constant"):
        raise EastError(
            f"{where}.drop_schedule: expected cosine or constant, got {c.drop_schedule!r}"
        )
    if not 0.0 < c.initial_density <= 1.0:
        raise EastError(f"{where}.initial_density: must be in (0, 1], got {c.initial_density}")
    if c.sharing_ratio < 1:
        raise EastError(f"{where}.sharing_ratio: must be >= 1, got {c.sharing_ratio}")
    if c.cycles < 1:
        raise EastError(f"{where}.cycles: must be >= 1, got {c.cycles}")
    if c.cycle_max_factor < 1.0:
        raise EastError(f"{where}.cycle_max_factor: must be >= 1, got {c.cycle_max_factor}")
    if c.synflow_rounds < 1:
        raise EastError(f"{where}.synflow_rounds: must be >= 1, got {c.synflow_rounds}")
