"""The parts a sparse-training method is made of, each with the knobs it reads.

Torch-free: a method is a preset of parts (``east.sparsity.presets``), and the knobs a
params row may set for a method are the union of its parts' knobs. The implementations
live in the torch modules: allocation in ``budget.py``, scorers in ``scores.py``,
schedules in ``schedules.py``, and their composition in ``methods.py``.

| kind | parts | knobs |
|---|---|---|
| distribution | erk, uniform (per-layer budgets) | distribution |
| init | dense, random (per layer), snip, grasp, synflow (global scores) | synflow_rounds |
| schedule | constant, cubic (gradual pruning, GMP) | initial_density, prune_* |
| drop | magnitude, mest | mest_lambda |
| grow | gradient, random | — |
| timing | periodic drop-and-grow | update_*, drop_fraction, drop_schedule, regrow_dropped |
| trick | dyrelu, sharing, cyclic (EAST's three) | dyrelu*, sharing*, cycle* |
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    kind: str
    name: str
    summary: str
    knobs: tuple[str, ...] = ()


def _table(*parts: Part) -> dict[str, Part]:
    return {p.name: p for p in parts}


DISTRIBUTION = Part("distribution", "distribution",
                    "per-layer budgets by ERK or uniform (exact integer allocation)",
                    ("distribution",))

INITS = _table(
    Part("init", "dense", "every weight active (density 1, or the layer budget of a dense "
         "start at random positions)"),
    Part("init", "random", "seeded random positions inside each layer's budget"),
    Part("init", "snip", "global top-k of |g ⊙ w| on one batch (Lee et al. 2019)"),
    Part("init", "grasp", "global top-k of θ ⊙ Hg, T = 200, 10 samples per class "
         "(Wang et al. 2020)"),
    Part("init", "synflow", "iterative data-free synaptic flow, exponential schedule "
         "(Tanaka et al. 2020)", ("synflow_rounds",)),
)
# Initial masks ranked over the whole network: the allocation comes from their scores.
GLOBAL_INITS = frozenset({"snip", "grasp", "synflow"})

SCHEDULES = _table(
    Part("schedule", "constant", "the target density from the start"),
    Part("schedule", "cubic", "gradual magnitude pruning from initial_density on the cubic "
         "schedule (Zhu & Gupta 2017)",
         ("initial_density", "prune_start", "prune_end", "prune_interval")),
)

DROPS = _table(
    Part("drop", "magnitude", "drop the smallest |w|"),
    Part("drop", "mest", "drop the smallest |w| + λ|g| (Yuan et al. 2021)", ("mest_lambda",)),
)

GROWS = _table(
    Part("grow", "gradient", "grow the largest |g| of the gradient w.r.t. all weights"),
    Part("grow", "random", "grow at random (seeded)"),
)

TIMING = Part("timing", "periodic",
              "drop and grow k = ceil(f·nnz) per layer every update_interval; f decays by a "
              "cosine to 0 at update_end",
              ("update_interval", "update_end", "drop_fraction", "drop_schedule",
               "regrow_dropped"))

TRICKS = _table(
    Part("trick", "dyrelu", "DyReLU-B phasing: β 1 → 0 over [dyrelu_start, dyrelu_end]",
         ("dyrelu", "dyrelu_start", "dyrelu_end")),
    Part("trick", "sharing", "in-stage weight sharing from block R", ("sharing",
                                                                     "sharing_ratio")),
    Part("trick", "cyclic", "cosine density cycles between d' and 3d', the row's own drop "
         "and grow scorers", ("cyclic", "cycles", "cycle_length", "cycle_max_factor",
                              "cycle_interval")),
)
