"""The state of a training run: what a checkpoint saves and restores, and nothing beside it.

Model (masks included), optimizer, lr schedule, sparsifier (budgets, schedules, its seeded
generator), the training loader's position (the data order is a function of seed, epoch
and batch), the epoch's accumulators, the training-FLOPs account, the best-model record,
the history length, the wall time, and the global RNG streams. The step is the loader's
position. A run resumed from any checkpoint ends bit-identical (CPU) to an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from east.config import CellConfig
from east.errors import EastError
from east.train import checkpoint as ckpt
from east.train import distributed as D
from east.train.cost import TrainingCost
from east.train.optim import LRSchedule

# Version 2: the fidelity fixes (training-FLOPs account, best-model record).
CHECKPOINT_FORMAT = 2


@dataclass
class BestTracker:
    """Which epoch's model is "the best-validation model": the highest validation accuracy
    (the earliest on ties) among epochs that ended with the final architecture (history
    records' ``final_architecture``). A denser mid-cycle network or one with β > 0 is never
    chosen: it is not the network the run reports. ``meta`` is the chosen model's record
    (what its model file says of it)."""

    val_acc: float | None = None
    epoch: int | None = None
    meta: dict[str, Any] | None = None

    def consider(self, record: dict[str, Any]) -> bool:
        """Take one epoch's history record; True when it becomes the best."""
        val = record.get("val_acc")
        if not record.get("final_architecture") or val is None:
            return False
        if self.val_acc is not None and val <= self.val_acc:
            return False
        self.val_acc, self.epoch = float(val), int(record["epoch"])
        return True


def cpu_state_dict(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@dataclass
class TrainState:
    cell: CellConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    sparsifier: Any  # east.sparsity.methods.Sparsifier
    loader: Any  # the training loader (its position is the step)
    cost: TrainingCost
    device: torch.device
    env: D.DistEnv
    best: BestTracker = field(default_factory=BestTracker)
    history_len: int = 0
    wall_time_s: float = 0.0
    epoch_time: float = 0.0
    epoch_count: int = 0
    epoch_loss: Tensor = field(init=False)
    epoch_correct: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.reset_epoch()

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    @property
    def total_steps(self) -> int:
        return self.cell.train.epochs * self.steps_per_epoch

    @property
    def step(self) -> int:
        """Optimizer steps taken (the position already points past a yielded batch)."""
        return self.loader.epoch * self.steps_per_epoch + self.loader.batch

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def reset_epoch(self) -> None:
        self.epoch_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self.epoch_correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.epoch_count = 0
        self.epoch_time = 0.0

    def add_to_epoch(self, loss: Tensor, correct: Tensor, count: int) -> None:
        self.epoch_loss += loss
        self.epoch_correct += correct
        self.epoch_count += count

    def epoch_stats(self) -> tuple[Tensor, Tensor, int]:
        """Epoch accumulators summed over ranks (rank 0 holds them after a resume)."""
        if not self.env.enabled:
            return self.epoch_loss, self.epoch_correct, self.epoch_count
        loss, correct, count = D.sum_across_ranks(
            [float(self.epoch_loss), float(self.epoch_correct), float(self.epoch_count)],
            self.env, self.device,
        )
        return (torch.tensor(loss, dtype=torch.float64),
                torch.tensor(int(correct), dtype=torch.int64), int(count))

    def checkpoint(self) -> dict[str, Any]:
        """The checkpoint of this state (collective under DDP: every rank calls it)."""
        loss, correct, count = self.epoch_stats()
        return {
            "format": CHECKPOINT_FORMAT,
            "cell_hash": self.cell.content_hash(),
            "cell_id": self.cell.cell_id(),
            "seed": self.cell.seed,
            "step": self.step,
            "epoch": self.loader.epoch,
            "model": cpu_state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.schedule.state_dict(),
            "sparsifier": self.sparsifier.state_dict(),
            "loader": self.loader.state_dict(),
            "rng": ckpt.capture_rng(),
            "epoch_stats": {
                "loss_sum": loss.detach().cpu(),
                "correct": correct.detach().cpu(),
                "count": count,
                "time_s": self.epoch_time,
            },
            "best_val_acc": self.best.val_acc,
            "best_epoch": self.best.epoch,
            "best_meta": self.best.meta,
            "cost": self.cost.state_dict(),
            "history_len": self.history_len,
            "wall_time_s": self.wall_time_s,
            "world_size": self.env.world_size,
        }

    def restore(self, state: dict[str, Any], where: str) -> None:
        """Load a checkpoint of this cell (``where`` names the run directory in errors)."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise EastError(f"checkpoint format {state.get('format')!r} is not supported")
        # A checkpoint of an older east names the cell by that version's hash.
        hashes = {self.cell.content_hash(), *self.cell.legacy_content_hashes()}
        if state.get("cell_hash") not in hashes or state.get("seed") != self.cell.seed:
            raise EastError(f"{where}: its checkpoints belong to another cell; use a fresh --out")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["lr_schedule"])
        self.sparsifier.load_state_dict(state["sparsifier"])
        self.loader.load_state_dict(state["loader"])
        # β is not in the model's state_dict: the schedule, as of the last step taken.
        self.model.set_beta(self.sparsifier.beta(max(self.step - 1, 0)))
        stats = state["epoch_stats"]
        if self.env.is_main:  # the other ranks start the epoch's sums at 0
            self.epoch_loss = stats["loss_sum"].to(self.device)
            self.epoch_correct = stats["correct"].to(self.device)
            self.epoch_count = int(stats["count"])
        self.epoch_time = float(stats["time_s"])
        self.best = BestTracker(state["best_val_acc"], state["best_epoch"], state["best_meta"])
        self.cost.load_state_dict(state["cost"])
        self.history_len = int(state["history_len"])
        self.wall_time_s = float(state["wall_time_s"])
        ckpt.restore_rng(state["rng"])
