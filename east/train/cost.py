"""Training FLOPs, counted step by step as training spends them (RigL's accounting).

Evci et al. 2020 ("Rigging the Lottery", appendix H): with f_s the forward FLOPs of the
sparse network at a step and f_D those of the dense one, per example
- an ordinary step costs 3·f_s (forward, and a backward of twice its cost);
- a step whose gradient is taken w.r.t. all weights (RigL's growth, EAST's cyclic growth,
  GraNet's regeneration) costs 2·f_s + f_D (the weight gradients are dense).
f_s is that step's own: the per-layer active counts the step trained with (cycles and
gradual pruning move them), times each layer's FLOPs per weight (``east.flops``). Added:
the initial-mask scoring passes (SNIP and GraSP on their batches, SynFlow's rounds) and,
while β > 0, DyReLU's coefficient branch (3x its forward FLOPs per example). Validation
passes are not training work and are not counted (as in RigL).

Every quantity is an integer, so the total is exact and the same after any resume.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from east.errors import EastError
from east.sparsity.scores import ScoringPass

COST_FORMAT = 1


@dataclass
class TrainingCost:
    """The running account of one training run.

    ``per_weight``: forward FLOPs per example of one active weight of each masked tensor;
    ``numel``: each tensor's size; ``dyrelu_forward``: forward FLOPs per example of every
    DyReLU coefficient branch (0 without DyReLU).
    """

    per_weight: dict[str, int]
    numel: dict[str, int]
    dyrelu_forward: int = 0
    sparse_steps: int = 0  # FLOPs of the ordinary steps
    dense_gradient_steps: int = 0  # FLOPs of the steps with a gradient w.r.t. all weights
    scoring: int = 0
    dyrelu: int = 0
    n_sparse_steps: int = 0
    n_dense_gradient_steps: int = 0
    examples: int = 0
    _cache: tuple[tuple[int, ...], int] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if set(self.per_weight) != set(self.numel):
            raise ValueError("per_weight and numel must name the same tensors")

    @property
    def dense_forward(self) -> int:
        """f_D: forward FLOPs per example of the dense network."""
        return sum(c * self.numel[n] for n, c in self.per_weight.items())

    def forward(self, nnz: Mapping[str, int] | None) -> int:
        """Forward FLOPs per example with ``nnz`` active weights per tensor (None: dense)."""
        if nnz is None:
            return self.dense_forward
        key = tuple(nnz[n] for n in self.per_weight)
        if self._cache is None or self._cache[0] != key:  # counts change only at updates
            self._cache = (key, sum(c * k for c, k in zip(self.per_weight.values(), key,
                                                            strict=True)))
        return self._cache[1]

    def add_step(self, examples: int, nnz: Mapping[str, int], *, dense_gradient: bool,
                 dyrelu_active: bool) -> None:
        """Book one optimizer step over ``examples`` (the global batch)."""
        f_s = self.forward(nnz)
        if dense_gradient:
            self.dense_gradient_steps += examples * (2 * f_s + self.dense_forward)
            self.n_dense_gradient_steps += 1
        else:
            self.sparse_steps += examples * 3 * f_s
            self.n_sparse_steps += 1
        if dyrelu_active:
            self.dyrelu += examples * 3 * self.dyrelu_forward
        self.examples += examples

    def add_scoring(self, passes: Iterable[ScoringPass]) -> None:
        for p in passes:
            self.scoring += p.examples * p.factor * self.forward(p.nnz)

    @property
    def total(self) -> int:
        return self.sparse_steps + self.dense_gradient_steps + self.scoring + self.dyrelu

    def record(self) -> dict[str, Any]:
        """The account as summary.json holds it; ``vs_dense`` is the total over dense
        training of the same network on the same examples (3·f_D per example)."""
        dense = 3 * self.dense_forward * self.examples
        return {
            "total": self.total,
            "sparse_steps": self.sparse_steps,
            "dense_gradient_steps": self.dense_gradient_steps,
            "scoring": self.scoring,
            "dyrelu": self.dyrelu,
            "n_sparse_steps": self.n_sparse_steps,
            "n_dense_gradient_steps": self.n_dense_gradient_steps,
            "examples": self.examples,
            "dense_forward": self.dense_forward,
            "vs_dense": self.total / dense if dense else None,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"format": COST_FORMAT, "sparse_steps": self.sparse_steps,
                "dense_gradient_steps": self.dense_gradient_steps, "scoring": self.scoring,
                "dyrelu": self.dyrelu, "n_sparse_steps": self.n_sparse_steps,
                "n_dense_gradient_steps": self.n_dense_gradient_steps,
                "examples": self.examples}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != COST_FORMAT:
            raise EastError(f"checkpoint: training-cost format {state.get('format')!r} is "
                            "not supported")
        for key in ("sparse_steps", "dense_gradient_steps", "scoring", "dyrelu",
                    "n_sparse_steps", "n_dense_gradient_steps", "examples"):
            setattr(self, key, int(state[key]))
