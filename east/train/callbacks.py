"""What the training loop does besides training: each a callback with one job.

- ``FiniteGuard``: a NaN/inf loss or weight ends the run as a result (``NonFiniteLoss``);
  no checkpoint of a diverged state is ever written.
- ``HistoryLog``: ``history.jsonl`` (one line per epoch) and the progress output.
- ``BestModel``: ``best.pt``, the best-validation model among final-architecture epochs.
- ``Checkpointer``: checkpoints mid-epoch (every ``checkpoint_minutes``), at epoch ends
  when cheap, on SIGTERM/SIGUSR1 (pre-emption: exit 75) and at the end.
- ``Results``: ``model.pt``, the ``best.pt`` fallback and ``summary.json`` (also for a
  diverged run).

Hooks (all optional; the loop calls them in the order the callbacks are listed):
``on_start(trainer)``, ``on_step_end(trainer, step)``, ``poll_requests(trainer)`` → flags
the ranks must agree on (one all-reduce for all of them) and ``on_poll(trainer, agreed)``
(may return a ``TrainOutcome`` to stop), ``on_epoch_end(trainer, record)``,
``on_checkpoint(trainer)`` (after a checkpoint is written), ``on_end(trainer)``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from east.errors import EastError
from east.rundir import (
    BEST_CANDIDATE,
    BEST_FILE,
    HISTORY_FILE,
    MODEL_FILE,
    SUMMARY_FILE,
    load_model_file,
)
from east.rundir import save_model_file as _save_model_file
from east.train import checkpoint as ckpt
from east.train import distributed as D
from east.train import environment
from east.train.history import append_history, read_history, write_summary
from east.train.progress import Progress
from east.train.state import cpu_state_dict

if TYPE_CHECKING:
    from east.train.loop import Trainer, TrainOutcome

# An epoch-end checkpoint is taken when the time since the last save is at least this many
# times the duration of that save (bounds the overhead at about 1/20).
SAVE_COST_RATIO = 20.0


class Callback:
    """Base class: every hook does nothing."""

    def on_start(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer, step: int) -> None: ...
    def poll_requests(self, trainer: Trainer) -> dict[str, bool]:
        return {}
    def on_poll(self, trainer: Trainer, agreed: dict[str, bool]) -> TrainOutcome | None:
        return None
    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None: ...
    def on_checkpoint(self, trainer: Trainer) -> None: ...
    def on_end(self, trainer: Trainer) -> None: ...


# ----------------------------------------------------------------------------- divergence


class NonFiniteLoss(EastError):
    """The training loss or the weights became NaN/inf. The trainer turns it into a result
    (summary.json ``status: diverged``); no checkpoint of the diverged state is written."""

    def __init__(self, message: str, *, epoch: int, step: int) -> None:
        super().__init__(message)
        self.epoch, self.step = epoch, step


class FiniteGuard(Callback):
    """Checks the loss at every poll and the weights before every checkpoint and epoch end;
    remembers the last loss seen finite (per example, for the diverged summary)."""

    def __init__(self) -> None:
        self.last_finite: tuple[int, Tensor] | None = None  # (step index, loss per example)

    def poll_requests(self, trainer: Trainer) -> dict[str, bool]:
        return {"non_finite_loss": not bool(torch.isfinite(trainer.step_loss))}

    def on_poll(self, trainer: Trainer, agreed: dict[str, bool]) -> TrainOutcome | None:
        if agreed["non_finite_loss"]:
            self.require_finite(trainer)
        self.last_finite = (trainer.state.step - 1,
                            trainer.step_loss / max(trainer.step_count, 1))
        return None

    def require_finite(self, trainer: Trainer) -> None:
        """Raise NonFiniteLoss if this epoch's loss or any parameter is NaN/inf (collective)."""
        state = trainer.state
        norms = torch._foreach_norm([p.detach() for p in state.params])
        finite = torch.isfinite(state.epoch_loss) & torch.isfinite(torch.stack(norms)).all()
        if D.any_across_ranks([not bool(finite)], state.env, state.device)[0]:
            kept = [p.name for _, p in ckpt.list_checkpoints(trainer.out)]
            last = kept[-1] if kept else "none"
            cell = state.cell
            raise NonFiniteLoss(
                f"{cell.cell_id()} seed {cell.seed}: non-finite training loss or weights in "
                f"epoch {state.loader.epoch + 1} by step {state.step}; stopped (last good "
                f"checkpoint: {last}; lower train.lr or set train.grad_clip)",
                epoch=state.loader.epoch + 1, step=state.step,
            )


# ----------------------------------------------------------------------------- history


class HistoryLog(Callback):
    """``history.jsonl`` and the progress bar or lines (rank 0 only)."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.progress: Progress | None = None

    def on_start(self, trainer: Trainer) -> None:
        state, cfg = trainer.state, trainer.cell.train
        self.progress = Progress(
            label=f"[{trainer.label}]", total=state.total_steps, start=state.step,
            log_every=cfg.log_every, enabled=state.env.is_main and self.enabled,
        )
        if trainer.resumed_from is not None:
            self.progress.write(f"east: resuming {trainer.label} from "
                                f"{trainer.resumed_from.name} (step {state.step}/"
                                f"{state.total_steps})")

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        state = trainer.state
        self.progress.step(step + 1, state.loader.epoch, trainer.cell.train.epochs,
                           trainer.step_loss, trainer.step_count, state.schedule.lr(step))

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if trainer.state.env.is_main:
            append_history(trainer.out / HISTORY_FILE, record)
        val = record["val_acc"]
        self.progress.write(
            f"epoch {record['epoch']}/{trainer.cell.train.epochs}: train loss "
            f"{record['train_loss']:.4f} acc {record['train_acc']:.4f}"
            + (f", val loss {record['val_loss']:.4f} acc {val:.4f}" if val is not None else "")
            + f", density {record['density_full']:.4g}"
        )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()


# ----------------------------------------------------------------------------- best model


class BestModel(Callback):
    """``best.pt``: the best-validation model among final-architecture epochs
    (``BestTracker``). A new best is first written as ``checkpoints/best-candidate.pt`` and
    becomes ``best.pt`` once a checkpoint counts its epoch, so that after a kill ``best.pt``
    always belongs to the checkpoint the run resumes from."""

    def on_start(self, trainer: Trainer) -> None:
        if trainer.state.env.is_main:
            self._settle(trainer)

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        state = trainer.state
        if state.best.consider(record):
            state.best.meta = trainer.model_meta(record["epoch"], "best validation accuracy",
                                                 record["val_acc"])
            if state.env.is_main:
                _save_model_file(trainer.out / BEST_CANDIDATE, cpu_state_dict(state.model),
                                 state.best.meta)

    def on_checkpoint(self, trainer: Trainer) -> None:
        if trainer.state.env.is_main:
            self._settle(trainer)

    def _settle(self, trainer: Trainer) -> None:
        """Promote a candidate the state's best record names; drop one it does not (an
        epoch after the checkpoint, redone after a resume)."""
        candidate = trainer.out / BEST_CANDIDATE
        if not candidate.exists():
            return
        wanted = trainer.state.best.meta
        if wanted is not None and load_model_file(candidate).meta == wanted:
            candidate.replace(trainer.out / BEST_FILE)
        else:
            candidate.unlink()


# ----------------------------------------------------------------------------- checkpoints


class Checkpointer(Callback):
    """When checkpoints are written (saving changes no training state, so when it happens
    does not change the result): mid-epoch every ``checkpoint_minutes`` (0: every step), at
    an epoch end when the time since the last save is at least 20x that save's duration,
    on SIGTERM/SIGUSR1 (then the run stops: exit 75), at ``--max-steps`` and at the end."""

    def __init__(self, minutes: float) -> None:
        self.every_s = minutes * 60.0
        self.last_save_at = time.perf_counter()
        self.last_save_cost: float | None = None

    def on_start(self, trainer: Trainer) -> None:
        self.last_save_at = time.perf_counter()

    def poll_requests(self, trainer: Trainer) -> dict[str, bool]:
        return {"stop": trainer.signals.received is not None,
                "checkpoint_due": time.perf_counter() - self.last_save_at >= self.every_s}

    def on_poll(self, trainer: Trainer, agreed: dict[str, bool]) -> TrainOutcome | None:
        if agreed["stop"]:
            trainer.book()
            self.save(trainer)
            return trainer.preempted()
        if agreed["checkpoint_due"]:
            trainer.book()
            self.save(trainer)
        return None

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        state = trainer.state
        since = time.perf_counter() - self.last_save_at
        cheap = self.last_save_cost is None or since >= SAVE_COST_RATIO * self.last_save_cost
        last = state.loader.epoch >= trainer.cell.train.epochs
        if D.any_across_ranks([cheap and not last], state.env, state.device)[0]:
            self.save(trainer)

    def save(self, trainer: Trainer) -> Path:
        """Checkpoint now (collective under DDP: every rank must call it). The caller books
        the clock first so that the times in the checkpoint are current."""
        trainer.guard.require_finite(trainer)
        state = trainer.state
        saved = state.checkpoint()
        path = ckpt.checkpoint_path(trainer.out, state.step)
        if state.env.is_main:
            began = time.perf_counter()
            ckpt.save_checkpoint(trainer.out, state.step, saved)
            self.last_save_cost = time.perf_counter() - began
        self.last_save_at = time.perf_counter()
        trainer.notify("on_checkpoint")
        return path


# ----------------------------------------------------------------------------- results


class Results(Callback):
    """The run's results: ``model.pt``, ``best.pt`` when no epoch was eligible, and the
    done-marker ``summary.json`` (``status: done``), or for a diverged run its summary
    (``status: diverged``, where and the last finite loss) and no model files."""

    def on_end(self, trainer: Trainer) -> None:
        state = trainer.state
        record = trainer.last_record
        if record is None:  # resumed from the final checkpoint: the history has it
            records = read_history(trainer.out / HISTORY_FILE)
            record = records[-1] if records else {}
        log = state.sparsifier.density_log()
        final_meta = trainer.model_meta(trainer.cell.train.epochs, "final",
                                        record.get("val_acc"))
        best_meta = state.best.meta
        if best_meta is None:  # said, never silent: the final model stands in as "best"
            reason = ("no validation split" if trainer.loaders.val is None
                      else "no epoch ended with the final architecture")
            best_meta = {**final_meta, "selection": f"final model ({reason})"}
        trainer.summary = {
            **_summary_head(trainer), "status": "done", "steps": state.step,
            "final_val_acc": record.get("val_acc"), "best_val_acc": state.best.val_acc,
            "best_epoch": state.best.epoch, "best": best_meta,
            "density": log["density"], "density_full": log["density_full"], "nnz": log["nnz"],
            "flops_train": state.cost.record(), "wall_time_s": state.wall_time_s,
        }
        if state.env.is_main:
            weights = cpu_state_dict(state.model)
            _save_model_file(trainer.out / MODEL_FILE, weights, final_meta)
            if state.best.meta is None:
                _save_model_file(trainer.out / BEST_FILE, weights, best_meta)
            write_summary(trainer.out / SUMMARY_FILE, trainer.summary)
        D.barrier(state.env)

    def diverged(self, trainer: Trainer, error: NonFiniteLoss) -> None:
        state, last = trainer.state, trainer.guard.last_finite
        trainer.summary = {
            **_summary_head(trainer), "status": "diverged",
            "diverged": {"epoch": error.epoch, "step": error.step,
                         "last_finite_step": None if last is None else last[0] + 1,
                         "last_finite_loss": None if last is None else float(last[1])},
            "steps": error.step, "flops_train": state.cost.record(),
            "wall_time_s": state.wall_time_s,
        }
        if state.env.is_main:
            write_summary(trainer.out / SUMMARY_FILE, trainer.summary)
        D.barrier(state.env)


def _summary_head(trainer: Trainer) -> dict[str, Any]:
    cell = trainer.cell
    return {"cell_id": cell.cell_id(), "row": cell.row, "seed": cell.seed,
            "epochs": cell.train.epochs,
            "environment": environment.describe(trainer.device, trainer.env.world_size)}
