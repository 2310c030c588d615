"""The training loop of one cell: build the state, resume or start, run the epochs.

Everything besides training is a callback (``east.train.callbacks``): divergence, history
and progress, the best model, checkpoints and pre-emption, the result files. The state a
checkpoint holds is ``east.train.state.TrainState``, built by ``east.train.setup``; one
optimizer step is ``east.train.step.train_step``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from east.config import CellConfig
from east.errors import EastError
from east.pipeline import EXIT_PREEMPTED
from east.rundir import SUMMARY_FILE
from east.train import checkpoint as ckpt
from east.train import distributed as D
from east.train import setup
from east.train.callbacks import (
    BestModel,
    Callback,
    Checkpointer,
    FiniteGuard,
    HistoryLog,
    NonFiniteLoss,
    Results,
)
from east.train.devices import loop_settings, rank_share, resolve_device
from east.train.signals import StopSignals
from east.train.step import evaluate_loader, train_step

EXIT_DONE = 0


@dataclass
class TrainOutcome:
    exit_code: int
    message: str
    summary: dict[str, Any] | None = None


class Trainer:
    """Trains one cell into ``out_dir`` (resuming from its checkpoints). ``run()`` returns a
    ``TrainOutcome``; user errors raise ``EastError``; a NaN/inf loss or weight ends the run
    as a result (summary.json ``status: diverged``, exit 0). ``max_steps`` stops, with a
    checkpoint, once the run has taken that many optimizer steps in total (across resumes).
    ``callbacks`` run after the standard ones; ``md5s`` goes to the data layer (tests)."""

    def __init__(self, cell: CellConfig, out_dir: str | Path, *, device: str | None = None,
                 max_steps: int | None = None, callbacks: Sequence[Callback] = (),
                 progress: bool = True, md5s: dict[str, str] | None = None) -> None:
        self.cell, self.out = cell, Path(out_dir)
        self.requested_device, self.max_steps, self.md5s = device, max_steps, md5s
        self.env = D.env_from_environ()
        if max_steps is not None and max_steps < 0:
            raise EastError(f"--max-steps: must be >= 0, got {max_steps}")
        self.guard = FiniteGuard()
        self.history = HistoryLog(enabled=progress)
        self.checkpointer = Checkpointer(cell.train.checkpoint_minutes)
        self.results = Results()
        self.callbacks: list[Callback] = [self.guard, BestModel(), self.history, *callbacks,
                                          self.checkpointer, self.results]
        self.label = f"{cell.cell_id()} seed {cell.seed}"
        self.resumed_from: Path | None = None
        self.beta: float | None = None
        self.step_loss: Tensor = torch.zeros(())
        self.step_count = 0
        self.last_record: dict[str, Any] | None = None
        self.summary: dict[str, Any] | None = None

    # ------------------------------------------------------------------ entry point
    def run(self) -> TrainOutcome:
        if (self.out / SUMMARY_FILE).exists():
            return TrainOutcome(EXIT_DONE, f"east: {self.label}: already trained "
                                           f"({self.out / SUMMARY_FILE})")
        self.device = resolve_device(self.requested_device, self.cell.train.device, self.env)
        created = D.init_distributed(self.env, self.device)
        try:
            with loop_settings(self.device, rank_share(self.cell.train.threads)), \
                    StopSignals() as self.signals:
                built = setup.build(self.cell, self.out, self.device, self.env, self.md5s)
                self.state, self.ctx, self.loaders = built.state, built.ctx, built.loaders
                self.amp_dtype = built.amp_dtype
                setup.resume_or_start(built, self.out)
                self.resumed_from = built.resumed_from
                try:
                    return self._train()
                except NonFiniteLoss as error:
                    self.results.diverged(self, error)
                    return TrainOutcome(
                        EXIT_DONE, f"east: {self.label}: diverged in epoch {error.epoch} by "
                        f"step {error.step} (non-finite training loss or weights); recorded "
                        "as status 'diverged' in summary.json, a result the pipeline does "
                        "not retrain", self.summary)
        finally:
            self.history.close()
            D.shutdown(created)

    # ------------------------------------------------------------------ the loop
    def _train(self) -> TrainOutcome:
        state, cfg = self.state, self.cell.train
        # On CUDA, reading flags forces a sync: poll every few steps instead of every step.
        poll_every = 1 if self.device.type == "cpu" else 10
        self.booked_at = time.perf_counter()  # the session clock, booked into the state
        self.notify("on_start")
        if self._max_steps_reached():
            return self._stop_for_max_steps()
        while state.loader.epoch < cfg.epochs:
            for x, y in state.loader:
                step = state.step - 1  # the position already points past this batch
                self._set_beta(step)
                nnz = dict(state.sparsifier.budgets)  # what this step trains with
                examples = state.loader.batch_size_at(state.loader.batch - 1)  # all ranks'
                loss, correct, count = train_step(self.ctx, x, y, step, examples)
                state.cost.add_step(examples, nnz,
                                    dense_gradient=state.sparsifier.took_dense_gradient,
                                    dyrelu_active=bool(self.beta))
                state.add_to_epoch(loss, correct, count)
                self.step_loss, self.step_count = loss, count
                self.notify("on_step_end", step)
                if self._max_steps_reached():
                    return self._stop_for_max_steps()
                if (step + 1) % poll_every and state.loader.batch < len(state.loader):
                    continue
                outcome = self._poll()
                if outcome is not None:
                    return outcome
            self._end_epoch()
        self.book()
        self.checkpointer.save(self)
        D.check_masks_identical(state.model, self.env)
        self.notify("on_end")
        return TrainOutcome(EXIT_DONE, f"east: {self.label}: done in {state.wall_time_s:.1f} s, "
                                       f"final val acc {_fmt(self.summary['final_val_acc'])}, "
                                       f"best {_fmt(state.best.val_acc)}", self.summary)

    def _end_epoch(self) -> None:
        state = self.state
        self.guard.require_finite(self)
        loss, correct, count = state.epoch_stats()
        val_loss = val_acc = None
        if self.loaders.val is not None:
            val_loss, val_acc, _ = evaluate_loader(state.model, self.loaders.val,
                                                   device=self.device,
                                                   amp_dtype=self.amp_dtype, env=self.env)
        self.book()
        log = state.sparsifier.density_log()
        last_step = state.step - 1
        record = {
            "epoch": state.loader.epoch, "step": state.step, "lr": state.schedule.lr(last_step),
            "train_loss": float(loss) / max(count, 1),
            "train_acc": float(correct) / max(count, 1),
            "val_loss": val_loss, "val_acc": val_acc,
            "density": log["density"], "density_full": log["density_full"],
            "beta": float(state.sparsifier.beta(last_step)), "nnz": log["nnz"],
            "final_architecture": state.sparsifier.final_architecture_at(state.step),
            "flops_train": state.cost.total, "examples": count, "time_s": state.epoch_time,
        }
        state.history_len = record["epoch"]
        self.last_record = record
        D.check_masks_identical(state.model, self.env)
        state.reset_epoch()
        self.notify("on_epoch_end", record)

    def _poll(self) -> TrainOutcome | None:
        """The callbacks' flags, agreed across ranks in one all-reduce, then their say."""
        requests: dict[str, bool] = {}
        for callback in self.callbacks:
            requests.update(self._hook(callback, "poll_requests") or {})
        agreed = dict(zip(requests, D.any_across_ranks(list(requests.values()), self.env,
                                                       self.device), strict=True))
        for callback in self.callbacks:
            outcome = self._hook(callback, "on_poll", agreed)
            if outcome is not None:
                return outcome
        return None

    # ------------------------------------------------------------------ helpers
    def notify(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            self._hook(callback, hook, *args)

    def _hook(self, callback: Any, hook: str, *args: Any) -> Any:
        # Callbacks of tests and tools may implement only some hooks.
        method = getattr(callback, hook, None)
        return None if method is None else method(self, *args)

    def book(self) -> None:
        """Move the session clock since the last booking into the epoch and run totals."""
        now = time.perf_counter()
        self.state.epoch_time += now - self.booked_at
        self.state.wall_time_s += now - self.booked_at
        self.booked_at = now

    def preempted(self) -> TrainOutcome:
        return TrainOutcome(EXIT_PREEMPTED, f"east: {self.label}: pre-empted "
                            f"({self.signals.name or 'signal'}) at step {self.state.step}/"
                            f"{self.state.total_steps}; checkpoint saved, run again to resume")

    def model_meta(self, epoch: int, selection: str, val_acc: float | None) -> dict[str, Any]:
        """What a model file says of the model it holds (read back by evaluate/export)."""
        state = self.state
        return {"epoch": epoch, "step": state.step,
                "beta": float(state.sparsifier.beta(max(state.step - 1, 0))),
                "nnz": state.sparsifier.density_log()["nnz"], "val_acc": val_acc,
                "selection": selection}

    def _max_steps_reached(self) -> bool:
        return self.max_steps is not None and \
            self.max_steps <= self.state.step < self.state.total_steps

    def _stop_for_max_steps(self) -> TrainOutcome:
        self.book()
        # A rerun already at the limit has its checkpoint: leave it untouched.
        if not ckpt.checkpoint_path(self.out, self.state.step).exists():
            self.checkpointer.save(self)
        return TrainOutcome(EXIT_DONE, f"east: stopped at step {self.state.step}/"
                            f"{self.state.total_steps} (--max-steps {self.max_steps}); "
                            "checkpoint saved, run again to continue")

    def _set_beta(self, step: int) -> None:
        beta = float(self.state.sparsifier.beta(step))
        if beta != self.beta:
            self.state.model.set_beta(beta)
            self.beta = beta


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
