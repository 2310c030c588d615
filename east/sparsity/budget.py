"""Exact integer per-layer budgets (ERK, uniform) and the ``east budget`` table.

A *budget* is the number of active (non-zero) weights each masked tensor may hold. The
allocation is exact: the per-layer counts are integers that sum to the requested total,
every layer keeps at least one weight, and no layer exceeds its size.

Choices (see docs/design.md, "Sparsity"):
- ERK scores each tensor by its own shape: the count is proportional to the sum of its
  dimensions (density ∝ sum(shape)/prod(shape), Evci et al. 2020). A tensor shared by
  several blocks is one tensor and is scored once, by its own shape.
- The total is ``round_half_up((1 - s) · N_full)`` where ``N_full`` counts the masked
  weights of the *unshared* network; it is distributed over the unique tensors. This is the
  spec's d' = d·(N_u + N_s)/N_u: the unique non-zero count equals that of the unshared
  network at sparsity s. When that total exceeds N_u (low sparsity with sharing), every
  unique weight is active.
- Exact ERK: the real-valued counts are ``clamp(eps · a_l, 1, n_l)`` with ``eps`` solved
  exactly (layers that would exceed density 1 are dense, layers that would fall below one
  weight keep one, the rest share what is left); integers by largest remainder, ties by
  layer order.

Torch is only imported by the CLI handler and by the model helpers, never at module level.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from east.config import SparsityConfig
from east.errors import EastError

if TYPE_CHECKING:  # the models import torch; this module stays torch-free
    from east.models.sharing import WeightCounts



def numel(shape: Sequence[int]) -> int:
    return math.prod(int(d) for d in shape)


def target_total(sparsity: float, n_full: int, n_unique: int) -> int:
    """Active unique masked weights at ``sparsity``: round_half_up((1 - s)·N_full), capped.

    The sparsity is read as the decimal the user wrote (``repr``), so 0.9995 · N is not
    perturbed by binary rounding at a .5 boundary.
    """
    if not 0.0 <= sparsity < 1.0:
        raise EastError(f"sparsity: must be in [0, 1), got {sparsity}")
    exact = (Decimal(1) - Decimal(repr(float(sparsity)))) * n_full
    return min(n_unique, math.floor(exact + Decimal("0.5")))


def density_total(density: float, n_unique: int) -> int:
    """Active unique masked weights at a density over unique weights (cyclic, gradual)."""
    return min(n_unique, max(0, math.floor(density * n_unique + 0.5)))


def _weights(shapes: Mapping[str, Sequence[int]], distribution: str) -> dict[str, float]:
    """a_l: the unscaled real count of each layer (count_l = eps · a_l before clamping)."""
    if distribution == "erk":
        return {name: float(sum(int(d) for d in shape)) for name, shape in shapes.items()}
    if distribution == "uniform":
        return {name: float(numel(shape)) for name, shape in shapes.items()}
    known = ", ".join(SparsityConfig.DISTRIBUTIONS)
    raise EastError(f"distribution: expected one of {known}, got {distribution!r}")


def solve_real_counts(
    sizes: Mapping[str, int], weights: Mapping[str, float], total: int, min_per_layer: int = 1
) -> dict[str, float]:
    """Real counts clamp(eps·a_l, m_l, n_l) summing to ``total``, eps solved exactly.

    f(eps) = Σ clamp(eps·a_l, m_l, n_l) is continuous, piecewise linear and non-decreasing;
    between consecutive breakpoints (m_l/a_l and n_l/a_l) it is C + eps·A, solved directly.
    """
    lows = {n: min(min_per_layer, sizes[n]) for n in sizes}
    if total < sum(lows.values()):
        raise EastError(
            f"sparsity: budget of {total} weights cannot keep {min_per_layer} weight(s) in each "
            f"of the {len(sizes)} masked layers; lower the sparsity"
        )
    if total > sum(sizes.values()):
        raise EastError(
            f"budget of {total} weights exceeds the {sum(sizes.values())} masked weights"
        )

    def clamp(name: str, eps: float) -> float:
        return min(float(sizes[name]), max(float(lows[name]), eps * weights[name]))

    def f(eps: float) -> float:
        return sum(clamp(n, eps) for n in sizes)

    points = sorted({lows[n] / weights[n] for n in sizes} | {sizes[n] / weights[n] for n in sizes})
    if f(points[-1]) <= total:  # everything dense (total == N)
        return {n: float(sizes[n]) for n in sizes}
    lo = 0.0
    for point in points:
        if f(point) >= total:
            hi = point
            break
        lo = point
    # On (lo, hi) the set of free (unclamped) layers is fixed: f(eps) = fixed + eps·slope.
    mid = (lo + hi) / 2.0
    free = [n for n in sizes if lows[n] < mid * weights[n] < sizes[n]]
    fixed = sum(clamp(n, mid) for n in sizes if n not in free)
    slope = sum(weights[n] for n in free)
    eps = hi if slope == 0.0 else (total - fixed) / slope
    return {n: clamp(n, eps) for n in sizes}


def largest_remainder(
    real: Mapping[str, float], sizes: Mapping[str, int], total: int, min_per_layer: int = 1
) -> dict[str, int]:
    """Integer counts summing exactly to ``total``: floors, then +1 by largest fraction."""
    order = list(real)
    counts = {n: math.floor(real[n]) for n in order}
    lows = {n: min(min_per_layer, sizes[n]) for n in order}
    for n in order:
        counts[n] = min(sizes[n], max(lows[n], counts[n]))
    rank = {n: i for i, n in enumerate(order)}
    remainder = total - sum(counts.values())
    # Largest fractional part first; ties by layer order (deterministic).
    by_fraction = sorted(order, key=lambda n: (-(real[n] - math.floor(real[n])), rank[n]))
    while remainder > 0:
        progressed = False
        for n in by_fraction:
            if remainder == 0:
                break
            if counts[n] < sizes[n]:
                counts[n] += 1
                remainder -= 1
                progressed = True
        if not progressed:
            raise AssertionError("largest remainder: no layer can take another weight")
    # Float error can only overshoot by a weight or two: take back from the smallest fractions.
    while remainder < 0:
        progressed = False
        for n in reversed(by_fraction):
            if remainder == 0:
                break
            if counts[n] > lows[n]:
                counts[n] -= 1
                remainder += 1
                progressed = True
        if not progressed:
            raise AssertionError("largest remainder: no layer can give a weight back")
    return counts


def allocate(
    shapes: Mapping[str, Sequence[int]],
    total: int,
    distribution: str = "erk",
    min_per_layer: int = 1,
) -> dict[str, int]:
    """Per-layer integer budgets over ``shapes`` (unique tensors) summing exactly to ``total``."""
    sizes = {name: numel(shape) for name, shape in shapes.items()}
    if not sizes:
        return {}
    real = solve_real_counts(sizes, _weights(shapes, distribution), total, min_per_layer)
    return largest_remainder(real, sizes, total, min_per_layer)


# At least this many active weights per layer: no layer is emptied by allocation.
MIN_PER_LAYER = 1


@dataclass(frozen=True)
class BudgetPlan:
    total: int  # active unique masked weights at the target
    budgets: dict[str, int] | None  # per layer; None when chosen globally at initialisation
    allocation: str


def plan_budgets(masked: Mapping[str, Any], counts: WeightCounts, cfg: Any) -> BudgetPlan:
    """The target budget of ``cfg`` (a SparsityConfig) over the masked tensors (only their
    shapes are read): per layer by the distribution, or left to the global initial-mask
    scores (SNIP, GraSP, SynFlow), or every weight when the total covers them all."""
    from east.sparsity.parts import GLOBAL_INITS

    total = target_total(cfg.sparsity, counts.n_full, counts.n_unique)
    shapes = {n: tuple(p.shape) for n, p in masked.items()}
    if total == counts.n_unique:
        return BudgetPlan(total, {n: numel(s) for n, s in shapes.items()}, "dense")
    if cfg.init in GLOBAL_INITS:
        return BudgetPlan(total, None, f"global ({cfg.init} scores at initialisation)")
    return BudgetPlan(total, allocate(shapes, total, cfg.distribution, MIN_PER_LAYER),
                      cfg.distribution)


# --------------------------------------------------------------------------- model helpers


def model_counts(model: Any, masked: Mapping[str, Any]) -> WeightCounts:
    """Counts from ``model.weight_counts()`` when the model has it, else no sharing."""
    from east.models.sharing import WeightCounts

    n_unique = sum(p.numel() for p in masked.values())
    getter = getattr(model, "weight_counts", None)
    if getter is None:
        return WeightCounts(n_unique, n_unique, 0)
    wc = getter()
    if int(wc.n_unique) != n_unique:
        raise AssertionError(
            f"weight_counts().n_unique={wc.n_unique} but masked_parameters() hold {n_unique}"
        )
    return wc


def masked_parameters(model: Any) -> dict[str, Any]:
    """The model's masked tensors (contract: ``model.masked_parameters()``)."""
    getter = getattr(model, "masked_parameters", None)
    if getter is None:
        raise EastError(f"{type(model).__name__} has no masked_parameters(): not an east model")
    return dict(getter())


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class BudgetRow:
    name: str
    shape: tuple[int, ...]
    kind: str  # "masked" or "dense"
    shared_with: tuple[str, ...]
    numel: int
    nnz: int | None  # None: chosen at initialisation from data (global pruning methods)
    density: float | None


@dataclass(frozen=True)
class BudgetTable:
    arch: str
    dataset: str
    method: str
    sparsity: float
    distribution: str
    allocation: str  # "erk", "uniform", "global (chosen by <init> at initialisation)", "dense"
    rows: tuple[BudgetRow, ...]
    n_full: int
    n_unique: int
    n_shared: int
    nnz_masked: int
    n_dense: int

    @property
    def density_masked(self) -> float:
        """Over unique masked weights: the per-mask density d'."""
        return self.nnz_masked / self.n_unique

    @property
    def density_masked_full(self) -> float:
        """Non-zero unique weights over the unshared network's masked weights: 1 - s."""
        return self.nnz_masked / self.n_full

    @property
    def n_params(self) -> int:
        return self.n_unique + self.n_dense

    @property
    def nnz_params(self) -> int:
        return self.nnz_masked + self.n_dense

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "rows"}
        out["rows"] = [
            {**asdict(r), "shape": list(r.shape), "shared_with": list(r.shared_with)}
            for r in self.rows
        ]
        out.update(
            density_masked=self.density_masked,
            density_masked_full=self.density_masked_full,
            density_factor=(self.n_unique + self.n_shared) / self.n_unique,
            n_params=self.n_params,
            nnz_params=self.nnz_params,
            density_all=self.nnz_params / self.n_params,
        )
        return out


def budget_table(model: Any, cfg: Any, *, arch: str = "", dataset: str = "") -> BudgetTable:
    """The per-layer budget of ``cfg`` on ``model`` (meta device is fine: only shapes used)."""
    masked = masked_parameters(model)
    counts = model_counts(model, masked)
    plan = plan_budgets(masked, counts, cfg)
    users_of = model.shared_users() if hasattr(model, "shared_users") else {}
    masked_ids = {id(p) for p in masked.values()}
    rows: list[BudgetRow] = []
    for name, p in masked.items():
        users = tuple(users_of.get(name, ()))
        owner = name.rsplit(".", 1)[0]
        nnz = None if plan.budgets is None else plan.budgets[name]
        rows.append(
            BudgetRow(
                name=name,
                shape=tuple(p.shape),
                kind="masked",
                shared_with=tuple(u for u in users if u != owner),
                numel=p.numel(),
                nnz=nnz,
                density=None if nnz is None else nnz / p.numel(),
            )
        )
    n_dense = 0
    for name, p in model.named_parameters():
        if id(p) in masked_ids:
            continue
        n_dense += p.numel()
        rows.append(BudgetRow(name, tuple(p.shape), "dense", (), p.numel(), p.numel(), 1.0))
    return BudgetTable(
        arch=arch,
        dataset=dataset,
        method=cfg.method,
        sparsity=cfg.sparsity,
        distribution=cfg.distribution,
        allocation=plan.allocation,
        rows=tuple(rows),
        n_full=counts.n_full,
        n_unique=counts.n_unique,
        n_shared=counts.n_shared,
        nnz_masked=plan.total,
        n_dense=n_dense,
    )


def format_table(table: BudgetTable) -> str:
    """Plain-text rendering of a budget table (masked layers, dense parameters, totals)."""
    header = ("name", "shape", "kind", "shared with", "numel", "nnz", "density")
    lines: list[tuple[str, ...]] = [header]
    for r in table.rows:
        lines.append(
            (
                r.name,
                "x".join(str(d) for d in r.shape) or "()",
                r.kind,
                ",".join(r.shared_with) or "-",
                f"{r.numel:,}",
                "init" if r.nnz is None else f"{r.nnz:,}",
                "-" if r.density is None else f"{r.density:.6f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {4, 5, 6}
    out = []
    for line in lines:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    t = table
    factor = (t.n_unique + t.n_shared) / t.n_unique
    out += [
        "",
        f"{t.arch} / {t.dataset}, method {t.method}, sparsity {t.sparsity:g}, "
        f"allocation {t.allocation}",
        f"masked weights: N_full {t.n_full:,} (unshared network), unique N_u {t.n_unique:,}, "
        f"shared-away N_s {t.n_shared:,}, d'/d = {factor:.4f}",
        f"masked non-zero: {t.nnz_masked:,} = {t.density_masked_full:.6%} of N_full, "
        f"{t.density_masked:.6%} of N_u (d')",
        f"dense parameters (BN, biases, DyReLU, sharing scalars): {t.n_dense:,}",
        f"all parameters: {t.nnz_params:,} non-zero of {t.n_params:,} "
        f"({t.nnz_params / t.n_params:.6%})",
    ]
    return "\n".join(out)


def cmd_budget(args: argparse.Namespace) -> int:
    """``east budget``: the per-layer budget table of one configuration, without training."""
    import torch

    from east.data.registry import DATASETS
    from east.models import build_model
    from east.sparsity.presets import resolve_sparsity

    raw: dict[str, Any] = {"method": args.method, "sparsity": args.sparsity}
    if args.distribution is not None:
        raw["distribution"] = args.distribution
    cfg = resolve_sparsity(raw, "east budget")
    if args.dataset not in DATASETS:
        known = ", ".join(DATASETS)
        raise EastError(f"--dataset: unknown dataset {args.dataset!r} (known: {known})")
    info = DATASETS[args.dataset]
    with torch.device("meta"):
        model = build_model(
            args.arch,
            num_classes=info.num_classes,
            in_channels=info.in_channels,
            stem=info.stem,
            activation="dyrelu" if cfg.dyrelu else "relu",
            sharing_ratio=cfg.sharing_ratio if cfg.sharing else None,
        )
    table = budget_table(model, cfg, arch=args.arch, dataset=args.dataset)
    if args.json:
        print(json.dumps(table.to_json(), indent=2))
    else:
        print(format_table(table))
    return 0
