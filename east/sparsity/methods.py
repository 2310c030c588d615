"""The sparsifier the training loop drives: a method's parts composed into mask rules.

A method (``east.sparsity.presets``) names its parts: an initial mask (``cfg.init``), a
density schedule (constant, or GMP's cubic), the drop and grow scorers of periodic
drop-and-grow (``cfg.drop``/``cfg.grow``), and the EAST tricks as independent switches
(``cfg.cyclic`` adds the cyclic density schedule to any drop-and-grow method, pruning and
growing with the row's own scorers; ``cfg.dyrelu`` gives the β schedule; ``cfg.sharing``
changes the model and the budget's N_full). This module turns them into rules.

Loop protocol (``step`` counts optimizer steps from 0)::

    sparsifier = build_sparsifier(model, cfg, steps_per_epoch=..., total_steps=..., seed=...)
    sparsifier.initialize(model, batches, loss_fn)     # fresh run only, not on resume
    for step ...:
        model.set_beta(sparsifier.beta(step)); loss.backward()
        sparsifier.after_backward(step)                # dense grads kept if an update is due
        clip; optimizer.step()
        sparsifier.after_step(step, optimizer)         # update if due; enforce zeros
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from east.config import SparsityConfig
from east.errors import EastError
from east.models.sharing import WeightCounts
from east.sparsity import scores as S
from east.sparsity.budget import (
    MIN_PER_LAYER,
    allocate,
    density_total,
    masked_parameters,
    model_counts,
    plan_budgets,
)
from east.sparsity.initial import Batches, InitContext, LossFn, initializer_for
from east.sparsity.masks import MaskEnforcer, register_masks
from east.sparsity.presets import Method, method_spec
from east.sparsity.rules import DensityRule, DropGrowRule, Grads, Rule
from east.sparsity.schedules import (
    Beta,
    CubicDensity,
    CyclicDensity,
    DropFraction,
    Periodic,
    Schedule,
)
from east.sparsity.timing import resolve_timing

STATE_FORMAT = 1


# =========================================================================== the sparsifier


class Sparsifier:
    """Masks, budgets, schedules and enforcement for one model (see the module docstring)."""

    def __init__(self, model: nn.Module, params: Mapping[str, nn.Parameter], counts: WeightCounts,
                 cfg: SparsityConfig, *, steps_per_epoch: int, total_steps: int, seed: int,
                 debug: bool = False) -> None:
        if not params:
            raise EastError("the model has no masked parameters")
        self.cfg = cfg
        self.spec: Method = method_spec(cfg.method)
        self.init = initializer_for(cfg)
        self.counts = counts
        self.names = list(params)
        self.params = [params[n] for n in self.names]
        self.shapes = {n: tuple(p.shape) for n, p in params.items()}
        self.sizes = {n: p.numel() for n, p in params.items()}
        self.debug = debug
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.timing = resolve_timing(cfg, steps_per_epoch, total_steps)
        self.total_steps = total_steps

        plan = plan_budgets(params, counts, cfg)
        self.base_total = plan.total
        self.target_density = plan.total / counts.n_unique
        # Per-layer targets; for global initial masks they are known only after initialize().
        self.base_budgets: dict[str, int] = dict(plan.budgets or {})
        self.budgets: dict[str, int] = dict(self.sizes)  # masks start all True

        register_masks(model, params)
        self.enforcer = MaskEnforcer(model, params)
        self._model = model
        self.beta_schedule = Beta(cfg.dyrelu, self.timing.dyrelu_start, self.timing.dyrelu_end)
        self.rules = self._compose()
        self.initialized = False
        self._grads: Grads | None = None
        self._dropped_now: dict[int, Tensor] = {}
        self.updates = 0
        self.skipped_updates = 0
        self.last_update: dict[str, Any] = {}
        # Whether the last after_step's update used the gradient w.r.t. all weights.
        self.took_dense_gradient = False
        # Forward/backward passes the initial-mask scoring ran (training FLOPs).
        self.scoring_passes: list[S.ScoringPass] = []
        self._noop = False
        # Inspection hook: called as on_change(layer, "drop" | "grow", changed positions).
        self.on_change: Callable[[str, str, Tensor], None] | None = None

    # ------------------------------------------------------------------ composition
    def _compose(self) -> list[Rule]:
        cfg, t = self.cfg, self.timing
        rules: list[Rule] = []
        if self.spec.gradual:
            cubic = CubicDensity(initial=max(cfg.initial_density, self.target_density),
                                 final=self.target_density, start=t.prune_start,
                                 end=t.prune_end, interval=t.prune_interval)
            rules.append(DensityRule("gradual", cubic, (S.magnitude, False), grow=None))
        dyn_start = 0
        if cfg.cyclic:
            cyclic = CyclicDensity(target=self.target_density, max_factor=cfg.cycle_max_factor,
                                   cycles=cfg.cycles, length=t.cycle_length,
                                   interval=t.cycle_interval)
            # The row's own scorers: SET's cycles grow at random, MEST's drop by its score.
            rules.append(DensityRule("cyclic", cyclic, S.drop_scorer(cfg.drop, cfg),
                                      grow=S.grow_scorer(cfg.grow)))
            dyn_start = cyclic.end  # plain drop-and-grow only after the cycles
        if self.spec.dynamic:
            rules.append(DropGrowRule(
                S.drop_scorer(cfg.drop, cfg), S.grow_scorer(cfg.grow),
                Periodic(t.update_interval, start=dyn_start, end=t.update_end),
                DropFraction(cfg.drop_fraction, t.update_end, cfg.drop_schedule),
                regrow_dropped=cfg.regrow_dropped))
        return rules

    def final_architecture_at(self, it: int) -> bool:
        """Whether the network after ``it`` optimizer steps is the one training ends with:
        every layer at its final budget, no density schedule still to move it, and DyReLU
        phased out (β = 0 for the last step taken and every later one)."""
        if not self.initialized or self.budgets != self.base_budgets:
            return False
        for rule in self.rules:
            if isinstance(rule, DensityRule) and it < rule.schedule.end:  # type: ignore[union-attr]
                return False
        return it >= 1 and self.beta_schedule(it - 1) == 0.0

    # ------------------------------------------------------------------ budgets
    def budgets_at(self, density: float) -> dict[str, int]:
        """Per-layer budgets at a density over unique masked weights (the target exactly
        when ``density`` is the target density)."""
        if density == self.target_density:
            return dict(self.base_budgets)
        if density >= 1.0:
            return dict(self.sizes)
        total = max(self.base_total, density_total(density, self.counts.n_unique))
        return allocate(self.shapes, total, self.cfg.distribution, MIN_PER_LAYER)

    @property
    def masks(self) -> dict[str, Tensor]:
        """Name → the bool mask buffer (live: the model's own tensor)."""
        return dict(zip(self.names, self.enforcer.masks(), strict=True))

    @property
    def wants_data(self) -> bool:
        """Whether ``initialize`` reads batches (SNIP, GraSP; SynFlow for the input shape)."""
        return self.init.needs_data

    # ------------------------------------------------------------------ initialisation
    def initialize(self, model: nn.Module | None = None, batches: Batches = (),
                   loss_fn: LossFn | None = None) -> None:
        """Choose the initial masks (fresh runs only; a resume loads them with the model).

        ``batches`` may be a lazy iterator: it is consumed only as far as needed (SNIP one
        batch, GraSP until 10 samples per class, SynFlow one batch for the input shape).
        """
        model = self._model if model is None else model
        if self.init.global_masks is not None:
            self.scoring_passes = []
            masks = self.init.global_masks(InitContext(model, self.names, batches, loss_fn,
                                                       self.base_total, self.generator,
                                                       self.cfg, self.scoring_passes))
        else:
            start = (self.budgets_at(max(self.cfg.initial_density, self.target_density))
                     if self.spec.gradual else dict(self.base_budgets))
            masks = {}
            for name, p in zip(self.names, self.params, strict=True):
                score = self.init.per_layer(p, None, self.generator)  # type: ignore[misc]
                masks[name] = S.select_mask(score, start[name], self.generator)
        with torch.no_grad():
            for (name, buf), p in zip(self.masks.items(), self.params, strict=True):
                buf.copy_(masks[name])
                p.masked_fill_(~buf, 0.0)
                self.budgets[name] = int(masks[name].sum())
        if self.init.global_allocation:
            self.base_budgets = dict(self.budgets)
        self.initialized = True
        self._after_mask_change()

    def _after_mask_change(self) -> None:
        self.enforcer.refresh()
        self.enforcer.forget_optimizer()  # the next after_step re-zeroes the optimizer state
        all_dense = all(self.budgets[n] == self.sizes[n] for n in self.names)
        self._noop = all_dense and not self.rules

    # ------------------------------------------------------------------ per step
    def _due(self, it: int) -> list[Rule]:
        return [r for r in self.rules if r.due(it)]

    def after_backward(self, step: int) -> None:
        """Keep the dense gradient if a gradient-using update is due after this step, then
        mask the gradients. With a GradScaler, call ``scaler.unscale_(optimizer)`` first."""
        if self._noop:
            return
        if any(r.needs_grad for r in self._due(step + 1)):
            grads = [None if p.grad is None else p.grad.detach().clone() for p in self.params]
            finite = all(bool(torch.isfinite(g).all()) for g in grads if g is not None)
            self._grads = Grads(step, grads, finite)
        self.enforcer.mask_grads()

    def after_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Apply the updates due after optimizer step ``step``; keep masked weights and
        optimizer state at zero."""
        if self._noop:
            if self.debug:
                self._check(step, optimizer)
            return
        due = self._due(step + 1)
        changed = False
        self.took_dense_gradient = False
        if due:
            changed = self._update(step, due)
        self.enforcer.zero_weights()
        self.enforcer.sync_optimizer(optimizer, force=changed)
        if self.debug:
            self._check(step, optimizer)

    def _update(self, step: int, due: list[Rule]) -> bool:
        grads = self._grads if self._grads is not None and self._grads.step == step else None
        self._grads = None
        if any(r.needs_grad for r in due):
            if grads is None:
                raise AssertionError(f"step {step}: update due but after_backward({step}) "
                                     "was not called")
            if not grads.finite:  # e.g. an AMP overflow step: skip, the next update catches up
                self.skipped_updates += 1
                self.last_update = {"step": step, "skipped": "non-finite gradients"}
                # The dense gradient was computed all the same.
                self.took_dense_gradient = any(r.grows_by_gradient for r in due)
                return False
        stats: dict[str, Any] = {"step": step}
        # Positions removed by a rule of this update that others may not regrow in it
        # (density rules' pruning; drop-and-grow's drops without regrow_dropped).
        self._dropped_now = {}
        for rule in due:
            result = rule.apply(self, step + 1, grads)
            if rule.grows_by_gradient and result.get("grown", 0) > 0:
                self.took_dense_gradient = True
            for key, value in result.items():
                stats[f"{rule.name}.{key}"] = value
        self._dropped_now = {}
        self.updates += 1
        stats["nnz"] = sum(self.budgets.values())
        self.last_update = stats
        self._after_mask_change()
        return True

    # ------------------------------------------------------------------ mask surgery
    def _flat(self, i: int) -> tuple[Tensor, Tensor]:
        """(mask buffer, its flat logical-order copy) of layer i."""
        mask = self.enforcer.masks()[i]
        return mask, mask.reshape(-1).clone()

    def _score(self, i: int, scorer: S.Scorer, grads: Grads | None) -> Tensor:
        g = None if grads is None else grads.by_layer[i]
        p = self.params[i]
        if g is None and grads is not None:
            g = torch.zeros_like(p)
        return scorer(p.detach(), g, self.generator).reshape(-1).float()

    def growable(self, i: int) -> int:
        """Inactive positions of layer i not dropped earlier in this update."""
        earlier = self._dropped_now.get(i)
        taken = 0 if earlier is None else int(earlier.sum())
        return self.sizes[self.names[i]] - self.budgets[self.names[i]] - taken

    def drop_weights(self, i: int, k: int, scorer: S.Scorer, grads: Grads | None, *,
                     final: bool = True) -> Tensor:
        """Deactivate the k active weights of layer i with the lowest scores; returns the
        dropped positions (flat). ``final``: they are zeroed now and no later growth of
        this update may bring them back; otherwise growth may regrow them, with their value
        (the weights of those not regrown are zeroed after the update)."""
        mask, flat = self._flat(i)
        active = torch.nonzero(flat).flatten()  # rank only the active weights (few, when sparse)
        idx = active[S.topk_indices(-self._score(i, scorer, grads)[active], k, self.generator)]
        dropped = torch.zeros_like(flat)
        dropped[idx] = True
        flat[idx] = False
        if final:
            earlier = self._dropped_now.get(i)
            self._dropped_now[i] = dropped if earlier is None else earlier | dropped
        self._commit(i, mask, flat, dropped, "drop", zero_at=dropped if final else None)
        return dropped

    def grow_weights(self, i: int, k: int, scorer: S.Scorer, grads: Grads | None, *,
                     keep: Tensor | None = None) -> Tensor:
        """Activate the k inactive weights of layer i with the highest scores, never one
        dropped for good earlier in the same update; returns the grown positions (flat).
        Grown weights start at exactly 0, except those in ``keep`` (just dropped, not
        final: regrown, they keep their value)."""
        mask, flat = self._flat(i)
        earlier = self._dropped_now.get(i)
        blocked = flat if earlier is None else flat | earlier
        score = self._score(i, scorer, grads).masked_fill_(blocked, -math.inf)
        idx = S.topk_indices(score, k, self.generator)
        grown = torch.zeros_like(flat)
        grown[idx] = True
        flat[idx] = True
        fresh = grown if keep is None else grown & ~keep
        self._commit(i, mask, flat, grown, "grow", zero_at=fresh)
        return grown

    def _commit(self, i: int, mask: Tensor, flat: Tensor, changed: Tensor, kind: str, *,
                zero_at: Tensor | None) -> None:
        """Write the new mask and zero the weights at ``zero_at`` now (the enforcer zeroes
        every inactive weight once the step's updates are done). Optimizer state is zeroed
        by the enforcer then too: dropped positions by the new mask; newly grown ones were
        inactive, so their state is already exactly zero."""
        with torch.no_grad():
            mask.copy_(flat.view(mask.shape))
            if zero_at is not None:
                self.params[i].masked_fill_(zero_at.view(mask.shape), 0.0)
        if self.on_change is not None:
            self.on_change(self.names[i], kind, changed.view(mask.shape))

    # ------------------------------------------------------------------ reporting
    def beta(self, step: int) -> float:
        """DyReLU phasing factor for the forward pass of ``step`` (0 without DyReLU)."""
        return self.beta_schedule(step)

    def expected_total(self, step: int) -> int | None:
        """The global active count the run must hold after ``step`` (None while a density
        schedule is moving it)."""
        it = step + 1
        for rule in self.rules:
            if isinstance(rule, DensityRule) and it < rule.schedule.end:  # type: ignore[union-attr]
                return None
        return self.base_total

    def density_log(self) -> dict[str, Any]:
        """JSON-able summary: density over unique masked weights (d'), over the unshared
        network's masked weights (1 − s at the target), counts, and the last update."""
        nnz = sum(self.budgets.values())
        return {
            "density": nnz / self.counts.n_unique,
            "density_full": nnz / self.counts.n_full,
            "nnz": nnz,
            "target_nnz": self.base_total,
            "n_unique": self.counts.n_unique,
            "n_full": self.counts.n_full,
            "updates": self.updates,
            "skipped_updates": self.skipped_updates,
            "last_update": dict(self.last_update),
        }

    def _check(self, step: int, optimizer: torch.optim.Optimizer | None) -> None:
        problems = self.enforcer.violations(optimizer, self.budgets)
        expected = self.expected_total(step)
        if expected is not None and self.initialized and sum(self.budgets.values()) != expected:
            problems.append(f"global active count {sum(self.budgets.values())} != {expected}")
        if problems:
            raise AssertionError(f"sparsity invariants broken after step {step}: "
                                 + "; ".join(problems))

    # ------------------------------------------------------------------ checkpoints
    def _schedules(self) -> dict[str, Schedule]:
        out: dict[str, Schedule] = {"beta": self.beta_schedule}
        for rule in self.rules:
            out.update(rule.schedules)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything but the masks (which are model buffers): RNG, budgets, schedules."""
        return {
            "format": STATE_FORMAT,
            "method": self.cfg.method,
            "sparsity": self.cfg.sparsity,
            "initialized": self.initialized,
            "generator": self.generator.get_state(),
            "budgets": dict(self.budgets),
            "base_budgets": dict(self.base_budgets),
            "schedules": {k: s.state_dict() for k, s in self._schedules().items()},
            "updates": self.updates,
            "skipped_updates": self.skipped_updates,
            "last_update": dict(self.last_update),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a sparsifier; load the model's state (with its mask buffers) as well."""
        if state.get("format") != STATE_FORMAT:
            raise EastError(f"sparsifier state format {state.get('format')!r} is not supported")
        for key in ("method", "sparsity"):
            if state[key] != getattr(self.cfg, key):
                raise EastError(f"checkpoint: sparsity.{key} is {state[key]!r}, "
                                f"the run's config says {getattr(self.cfg, key)!r}")
        if sorted(state["budgets"]) != sorted(self.names):
            raise EastError("checkpoint: masked layers differ from the model's")
        self.initialized = bool(state["initialized"])
        self.generator.set_state(state["generator"])
        self.budgets = {n: int(state["budgets"][n]) for n in self.names}
        self.base_budgets = {n: int(v) for n, v in state["base_budgets"].items()}
        schedules = self._schedules()
        for key, s in state["schedules"].items():
            schedules[key].load_state_dict(s)
        self.updates = int(state["updates"])
        self.skipped_updates = int(state["skipped_updates"])
        self.last_update = dict(state["last_update"])
        self._grads = None
        self._after_mask_change()


def debug_from_env() -> bool:
    return os.environ.get("EAST_DEBUG", "") not in ("", "0")


def build_sparsifier(model: nn.Module, cfg: SparsityConfig, *, steps_per_epoch: int,
                     total_steps: int, seed: int, debug: bool | None = None) -> Sparsifier:
    """The sparsifier of ``cfg`` for an east model (``masked_parameters()``,
    ``weight_counts()``). Registers the mask buffers at once, so call it before loading a
    checkpoint into the model. ``debug`` (default: ``EAST_DEBUG=1``) asserts every invariant
    after every step."""
    params = masked_parameters(model)
    counts = model_counts(model, params)
    return Sparsifier(model, params, counts, cfg, steps_per_epoch=steps_per_epoch,
                      total_steps=total_steps, seed=seed,
                      debug=debug_from_env() if debug is None else debug)
