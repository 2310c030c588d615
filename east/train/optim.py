"""The optimizer (SGD, Nesterov) and the learning-rate schedule.

The schedule is a pure function of the optimizer step, applied by writing each param
group's ``lr`` before the step: nothing to drift, and resuming at step k gives exactly the
lr an uninterrupted run has at step k. Schedules (``train.lr_schedule``):

- ``multistep``: lr · gamma^(number of milestones <= step); milestones are durations
  (``east.config.resolve_duration``), e.g. ``["50%", "75%"]``.
- ``cosine``: lr · ½(1 + cos(π·t/T)) with t the steps after warm-up and T the steps left
  after warm-up (reaches 0 one step past the end).
- ``onecycle``: ``torch.optim.lr_scheduler.OneCycleLR`` with its defaults (equal values,
  tested): a cosine rise from lr/25 to lr over the warm-up (``train.warmup`` steps, or 30 %
  of training when it is 0), then a cosine fall to lr/(25·10⁴) at the last step. Momentum
  is not cycled.
- ``constant``: lr.

A linear warm-up of W = ``train.warmup`` steps (multistep, cosine, constant) scales the lr
by (step + 1)/W for step < W, so the first step already moves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from east.config import TrainConfig, resolve_duration
from east.errors import EastError

ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4
ONECYCLE_DEFAULT_RISE = 0.3


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """One group with weight decay; without ``bn_weight_decay`` a second, decay-free group
    holds every parameter of at most one dimension (BatchNorm scales and shifts, biases,
    weight-sharing scalars, DyReLU hyper-function biases). Order follows named_parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.bn_weight_decay:
        return [{"params": params, "weight_decay": cfg.weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    if cfg.lr <= 0:
        raise EastError(f"train.lr: must be positive, got {cfg.lr}")
    if cfg.nesterov and cfg.momentum <= 0:
        raise EastError("train.nesterov: Nesterov momentum needs train.momentum > 0")
    return torch.optim.SGD(
        parameter_groups(model, cfg),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )


@dataclass(frozen=True)
class LRSchedule:
    """lr(step) for step in [0, total_steps); every point resolved to iterations."""

    kind: str
    base_lr: float
    total_steps: int
    warmup: int
    milestones: tuple[int, ...]
    gamma: float

    def factor(self, step: int) -> float:
        if self.kind == "onecycle":
            return self._onecycle(step)
        warm = (step + 1) / self.warmup if step < self.warmup else 1.0
        if self.kind == "constant":
            return warm
        if self.kind == "multistep":
            passed = sum(1 for m in self.milestones if step >= m)
            return warm * self.gamma**passed
        # cosine
        span = max(1, self.total_steps - self.warmup)
        t = min(max(step - self.warmup, 0), span)
        return warm * 0.5 * (1.0 + math.cos(math.pi * t / span))

    def _onecycle(self, step: int) -> float:
        # Phase boundaries as in torch's OneCycleLR: the peak is at step rise_end.
        rise = self.warmup or ONECYCLE_DEFAULT_RISE * self.total_steps
        rise_end = max(float(rise) - 1.0, 1e-9)
        start, peak = 1.0 / ONECYCLE_DIV, 1.0
        end = start / ONECYCLE_FINAL_DIV
        if step <= rise_end:
            return _cos_interp(start, peak, step / rise_end)
        fall = max(self.total_steps - 1 - rise_end, 1e-9)
        return _cos_interp(peak, end, min(1.0, (step - rise_end) / fall))

    def lr(self, step: int) -> float:
        return self.base_lr * self.factor(step)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        """The resolved schedule (it has no other state): checked on resume."""
        return {
            "kind": self.kind,
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "warmup": self.warmup,
            "milestones": list(self.milestones),
            "gamma": self.gamma,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state != self.state_dict():
            raise EastError(
                f"checkpoint: its lr schedule {state} differs from this config's "
                f"{self.state_dict()}"
            )


def _cos_interp(a: float, b: float, t: float) -> float:
    """Cosine interpolation from a (t = 0) to b (t = 1)."""
    return b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_schedule(cfg: TrainConfig, steps_per_epoch: int, total_steps: int) -> LRSchedule:
    if cfg.lr_schedule not in TrainConfig.LR_SCHEDULES:
        raise EastError(
            f"train.lr_schedule: expected one of {', '.join(TrainConfig.LR_SCHEDULES)}, "
            f"got {cfg.lr_schedule!r}"
        )

    def resolve(value: Any, field: str) -> int:
        try:
            return resolve_duration(value, steps_per_epoch, total_steps)
        except ValueError as error:
            raise EastError(f"train.{field}: {error}") from None

    warmup = resolve(cfg.warmup, "warmup")
    if warmup >= total_steps > 0 and cfg.lr_schedule != "constant":
        raise EastError(
            f"train.warmup: {cfg.warmup!r} is {warmup} steps, not shorter than the run "
            f"({total_steps} steps)"
        )
    milestones = tuple(sorted(resolve(m, "lr_milestones") for m in cfg.lr_milestones))
    return LRSchedule(
        kind=cfg.lr_schedule,
        base_lr=cfg.lr,
        total_steps=total_steps,
        warmup=warmup,
        milestones=milestones if cfg.lr_schedule == "multistep" else (),
        gamma=cfg.lr_gamma,
    )
