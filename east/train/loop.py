"""The training loop of one cell: setup, resume, steps, epochs, checkpoints, signals.

One optimizer step, in order (docs/design.md, "Sparsity"):

    model.set_beta(sparsifier.beta(step))          # only when it changes
    forward under autocast (bf16 on CUDA by default), loss = CE(shard)·|shard|/|batch|
    loss.backward(); all-reduce gradients (DDP)
    clip_grad_norm_(grad_clip)                     # grad_clip_scope dense: all positions
    sparsifier.after_backward(step)                # dense-grad scores, then masked grads
    [clip_grad_norm_(grad_clip)]                   # grad_clip_scope masked: instead, here
    lr(step); optimizer.step()
    sparsifier.after_step(step, optimizer)         # mask update if due; zero weights + state

Checkpoints (complete state, see ``east.train.checkpoint``) are written
- mid-epoch, when ``train.checkpoint_minutes`` have passed since the last one;
- at an epoch end, when the time since the last one is at least 20x what the last save
  took (so saving costs under ~5 %: small runs checkpoint every epoch, big ones rarely);
- on SIGTERM/SIGUSR1 (after the current step; exit code 75), at ``--max-steps``, at the end.
Saving changes no training state, so when it happens does not change the result.

A run resumed from any checkpoint ends bit-identical (CPU) to an uninterrupted one: the
data stream is a function of (seed, epoch, batch), the lr of the step, and every other
piece of state (model with masks, optimizer, sparsifier, RNGs, epoch accumulators) is in
the checkpoint; the history is cut back to the checkpoint's epoch count.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from east.config import CellConfig
from east.errors import EastError
from east.rundir import BEST_FILE, CELL_FILE, HISTORY_FILE, MODEL_FILE, SUMMARY_FILE
from east.rundir import save_model_file as _save_model_file
from east.train import checkpoint as ckpt
from east.train import distributed as D
from east.train import environment
from east.train.cost import TrainingCost
from east.train.history import append_history, truncate_history, write_summary
from east.train.optim import LRSchedule, build_optimizer, build_schedule

EXIT_DONE = 0
EXIT_PREEMPTED = 75
CHECKPOINT_FORMAT = 2
# An epoch-end checkpoint is taken when the time since the last save is at least this many
# times the duration of that save (bounds the overhead at about 1/20).
SAVE_COST_RATIO = 20.0


class NonFiniteLoss(EastError):
    """The training loss or the weights became NaN/inf. The trainer turns it into a result
    (summary.json ``status: diverged``); no checkpoint of the diverged state is written."""

    def __init__(self, message: str, *, epoch: int, step: int) -> None:
        super().__init__(message)
        self.epoch, self.step = epoch, step


# ----------------------------------------------------------------------------- devices


def resolve_device(requested: str | None, configured: str, env: D.DistEnv) -> torch.device:
    """``--device`` beats ``train.device``; ``auto`` is CUDA when there is one. Under a
    multi-process launch on CUDA every rank takes ``cuda:<LOCAL_RANK>``."""
    name = requested or configured
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EastError(f"train.device: not a device: {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EastError(f"train.device: {name!r} requested but CUDA is not available")
        if env.enabled and device.index is None:
            device = torch.device("cuda", env.local_rank)
        elif device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type != "cpu":
        raise EastError(f"train.device: unsupported device {name!r} (use cpu or cuda[:N])")
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: ``auto`` is bf16 on CUDA and fp32 (no autocast) on the CPU."""
    if precision not in ("auto", "fp32", "bf16"):
        raise EastError(f"train.precision: expected auto, fp32 or bf16, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def resolve_channels_last(setting: str, device: torch.device) -> bool:
    if setting not in ("auto", "on", "off", "true", "false"):
        raise EastError(f"train.channels_last: expected auto, on or off, got {setting!r}")
    if setting == "auto":
        return device.type == "cuda"
    return setting in ("on", "true")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------- one step


@dataclass
class StepContext:
    """What one optimizer step needs, besides the batch."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    sparsifier: Any
    schedule: LRSchedule
    device: torch.device
    amp_dtype: torch.dtype | None
    label_smoothing: float
    grad_clip: float | None
    grad_clip_scope: str = "dense"
    env: D.DistEnv = field(default_factory=D.DistEnv)
    params: list[nn.Parameter] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.params:
            self.params = [p for p in self.model.parameters() if p.requires_grad]


def clip_gradients(params: Sequence[nn.Parameter], max_norm: float) -> None:
    """Scale every gradient by min(1, max_norm / ‖g‖) (torch's ``clip_grad_norm_``), ‖g‖
    over all of them. Called on the gradient backward produced (scope ``dense``: pruned
    positions count, as in the authors' trainer, which clips before masking) or on the
    masked one (scope ``masked``)."""
    torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)


def train_step(ctx: StepContext, x: Tensor, y: Tensor, step: int) -> tuple[Tensor, Tensor, int]:
    """One optimizer step on a global batch; returns this rank's (loss sum (float64), number
    correct, examples) — detached, on the device, not yet synchronised."""
    model = ctx.model
    model.train()
    global_batch = int(y.shape[0])
    xs, ys = D.shard(x, ctx.env), D.shard(y, ctx.env)
    D.broadcast_module(model, ctx.env, buffers_only=True)
    for p in ctx.params:
        p.grad = None
    count = int(ys.shape[0])
    if count:
        with autocast(ctx.device, ctx.amp_dtype):
            logits = model(xs)
        # The loss in fp32 whatever the autocast dtype; summed, so shards add up exactly.
        loss_sum = F.cross_entropy(logits.float(), ys, reduction="sum",
                                   label_smoothing=ctx.label_smoothing)
        (loss_sum / global_batch).backward()
        correct = (logits.detach().argmax(dim=1) == ys).sum()
        loss_sum = loss_sum.detach().double()
    else:  # an empty DDP shard (last batch smaller than the world)
        loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        correct = torch.zeros((), dtype=torch.int64, device=ctx.device)
    D.all_reduce_gradients(ctx.params, ctx.env)
    if ctx.grad_clip is not None and ctx.grad_clip_scope == "dense":
        clip_gradients(ctx.params, ctx.grad_clip)
    ctx.sparsifier.after_backward(step)
    if ctx.grad_clip is not None and ctx.grad_clip_scope == "masked":
        clip_gradients(ctx.params, ctx.grad_clip)
    ctx.schedule.apply(ctx.optimizer, step)
    ctx.optimizer.step()
    ctx.sparsifier.after_step(step, ctx.optimizer)
    return loss_sum, correct, count


@torch.no_grad()
def evaluate_loader(
    model: nn.Module,
    loader: Any,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    env: D.DistEnv | None = None,
) -> tuple[float, float, int]:
    """(mean cross-entropy, accuracy, examples) of ``model`` over a whole eval loader.

    Under DDP each rank evaluates its shard of every batch and the sums are combined. The
    loss is plain cross-entropy (no label smoothing).
    """
    env = env or D.DistEnv()
    was_training = model.training
    model.eval()
    D.broadcast_module(model, env, buffers_only=True)
    loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    loader.set_position(0, 0)
    for x, y in loader:
        xs, ys = D.shard(x, env), D.shard(y, env)
        if not ys.shape[0]:
            continue
        with autocast(device, amp_dtype):
            logits = model(xs)
        loss += F.cross_entropy(logits.float(), ys, reduction="sum").double()
        correct += (logits.argmax(dim=1) == ys).sum()
        count += int(ys.shape[0])
    model.train(was_training)
    total_loss, total_correct, total = D.sum_across_ranks(
        [float(loss), float(correct), float(count)], env, device
    )
    if total == 0:
        return math.nan, math.nan, 0
    return total_loss / total, total_correct / total, int(total)


# ----------------------------------------------------------------------------- signals


class StopSignals:
    """SIGTERM/SIGUSR1 (SLURM pre-emption) set a flag; the loop finishes the step, saves a
    checkpoint and exits 75. Installed only in the main thread; restored on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""


# ----------------------------------------------------------------------------- progress


class Progress:
    """A tqdm bar on a terminal; otherwise one line every ``log_every`` steps (SLURM logs).
    Silent on ranks other than 0."""

    def __init__(self, *, label: str, total: int, start: int, log_every: int, enabled: bool,
                 tty: bool | None = None, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.label = label
        self.total = total
        self.log_every = max(1, log_every)
        tty = self.stream.isatty() if tty is None else tty
        self.bar = None
        if enabled and tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=label, file=self.stream,
                            dynamic_ncols=True, leave=False)
        self._window_start = time.perf_counter()
        self._window_loss: Tensor | float = 0.0
        self._window_count = 0

    def step(self, step: int, epoch: int, epochs: int, loss: Tensor, count: int,
             lr: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if step % self.log_every == 0:
                self.bar.set_postfix(epoch=f"{epoch + 1}/{epochs}",
                                     loss=f"{float(loss) / max(count, 1):.4f}", lr=f"{lr:.4g}")
            return
        # Summed on the device; read (one sync) only when a line is due.
        self._window_loss = self._window_loss + loss
        self._window_count += count
        if step % self.log_every == 0 or step == self.total:
            elapsed = max(time.perf_counter() - self._window_start, 1e-9)
            self.write(
                f"{self.label} epoch {epoch + 1}/{epochs} step {step}/{self.total} "
                f"loss {float(self._window_loss) / max(self._window_count, 1):.4f} "
                f"lr {lr:.4g} {self._window_count / elapsed:.0f} img/s"
            )
            self._window_start = time.perf_counter()
            self._window_loss, self._window_count = 0.0, 0

    def write(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- callbacks


class Callback(Protocol):
    """Hooks for tests and tools; every method is optional."""

    def on_step_end(self, trainer: Trainer, step: int) -> None: ...
    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None: ...


def _call(callbacks: Sequence[Any], name: str, *args: Any) -> None:
    for callback in callbacks:
        method = getattr(callback, name, None)
        if method is not None:
            method(*args)


# ----------------------------------------------------------------------------- best model


@dataclass
class BestTracker:
    """Which epoch's model is "the best-validation model": the highest validation accuracy
    (the earliest on ties) among epochs that ended with the final architecture (history
    records' ``final_architecture``). A denser mid-cycle network or one with β > 0 is never
    chosen: it is not the network the run reports."""

    val_acc: float | None = None
    epoch: int | None = None

    def consider(self, record: dict[str, Any]) -> bool:
        """Take one epoch's history record; True when it becomes the best."""
        val = record.get("val_acc")
        if not record.get("final_architecture") or val is None:
            return False
        if self.val_acc is not None and val <= self.val_acc:
            return False
        self.val_acc, self.epoch = float(val), int(record["epoch"])
        return True


# ----------------------------------------------------------------------------- trainer


@dataclass
class TrainOutcome:
    exit_code: int
    message: str
    summary: dict[str, Any] | None = None


def cpu_state_dict(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def loop_settings(device: torch.device, threads: int | None = None) -> Iterator[None]:
    """The global torch settings of a training run, restored on exit: ``threads`` CPU
    threads (None: leave torch's count); deterministic algorithms (warn only) on the CPU,
    where they are cheap and make resumed runs bit-identical; cuDNN autotuning on CUDA."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    benchmark = torch.backends.cudnn.benchmark
    previous_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        else:
            torch.cuda.set_device(device)
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.benchmark = benchmark
        torch.set_num_threads(previous_threads)


class Trainer:
    """Trains one cell into ``out_dir`` (resuming from its checkpoints). ``run()`` returns a
    ``TrainOutcome``; user errors raise ``EastError``; a NaN/inf loss or weight ends the run
    as a result (summary.json ``status: diverged``, exit 0).

    ``max_steps`` stops, with a checkpoint, once the run has taken that many optimizer
    steps in total (counted across resumes), unless the run is complete by then.
    ``md5s`` is passed to the data layer (tests with generated CIFAR archives).
    """

    def __init__(
        self,
        cell: CellConfig,
        out_dir: str | Path,
        *,
        device: str | None = None,
        max_steps: int | None = None,
        callbacks: Sequence[Any] = (),
        progress: bool = True,
        md5s: dict[str, str] | None = None,
    ) -> None:
        self.cell = cell
        self.out = Path(out_dir)
        self.requested_device = device
        self.max_steps = max_steps
        self.callbacks = list(callbacks)
        self.show_progress = progress
        self.md5s = md5s
        self.env = D.env_from_environ()
        if max_steps is not None and max_steps < 0:
            raise EastError(f"--max-steps: must be >= 0, got {max_steps}")
        if cell.train.epochs < 1:
            raise EastError(f"train.epochs: must be >= 1, got {cell.train.epochs}")
        if cell.train.checkpoint_minutes < 0:
            raise EastError("train.checkpoint_minutes: must be >= 0")

    # ------------------------------------------------------------------ entry point
    def run(self) -> TrainOutcome:
        summary_path = self.out / SUMMARY_FILE
        label = f"{self.cell.cell_id()} seed {self.cell.seed}"
        if summary_path.exists():
            return TrainOutcome(EXIT_DONE, f"east: {label}: already trained ({summary_path})")
        self.device = resolve_device(self.requested_device, self.cell.train.device, self.env)
        created = D.init_distributed(self.env, self.device)
        try:
            with loop_settings(self.device, self.cell.train.threads), \
                    StopSignals() as signals:
                self.signals = signals
                self._setup()
                try:
                    return self._train(label)
                except NonFiniteLoss as error:
                    return self._diverged(label, error)
        finally:
            if getattr(self, "progress", None) is not None:
                self.progress.close()
            D.shutdown(created)

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        from east.data import build_loaders
        from east.flops import dyrelu_flops, flops_per_weight
        from east.models import model_for_cell
        from east.sparsity.methods import build_sparsifier

        cell, cfg, env = self.cell, self.cell.train, self.env
        self._check_cell_file()
        self.amp_dtype = resolve_precision(cfg.precision, self.device)
        self.channels_last = resolve_channels_last(cfg.channels_last, self.device)
        self.loaders = build_loaders(
            cell.data, batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
            seed=cell.seed, device=self.device, workers=cfg.workers,
            channels_last=self.channels_last, md5s=self.md5s,
        )
        info = self.loaders.info
        self.steps_per_epoch = len(self.loaders.train)
        if self.steps_per_epoch < 1:
            raise EastError(f"data.name: {info.name}: the training split is empty")
        self.total_steps = cfg.epochs * self.steps_per_epoch

        _seed_everything(cell.seed)
        self.model = model_for_cell(cell).to(self.device)
        with torch.device("meta"):  # the FLOPs account reads only shapes (draws no RNG)
            shapes = model_for_cell(cell)
        self.cost = TrainingCost(
            per_weight=flops_per_weight(shapes, (info.in_channels, info.image_size,
                                                 info.image_size)),
            numel={n: p.numel() for n, p in shapes.masked_parameters().items()},
            dyrelu_forward=dyrelu_flops(shapes) if cell.sparsity.dyrelu else 0,
        )
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.sparsifier = build_sparsifier(
            self.model, cell.sparsity, steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps, seed=cell.seed,
        )
        self.optimizer = build_optimizer(self.model, cfg)
        self.schedule = build_schedule(cfg, self.steps_per_epoch, self.total_steps)
        self.ctx = StepContext(
            model=self.model, optimizer=self.optimizer, sparsifier=self.sparsifier,
            schedule=self.schedule, device=self.device, amp_dtype=self.amp_dtype,
            label_smoothing=cfg.label_smoothing, grad_clip=cfg.grad_clip,
            grad_clip_scope=cfg.grad_clip_scope, env=env,
        )
        self._reset_epoch_stats()
        self.best = BestTracker()
        self.best_meta: dict[str, Any] | None = None
        self.last_finite_loss: tuple[int, Tensor] | None = None  # (step, loss per example)
        self.wall_time_s = 0.0
        self.history_len = 0
        self.beta: float | None = None

        loaded = ckpt.load_latest(self.out)
        if loaded is None:
            self._fresh_start()
            self.resumed_from: Path | None = None
        else:
            self._restore(loaded.state)
            D.barrier(env)
            if env.is_main:
                ckpt.quarantine(loaded.rejected, loaded.path)
            self.resumed_from = loaded.path
        if env.is_main:
            # Epochs the checkpoint had not finished are redone: drop their lines.
            truncate_history(self.out / HISTORY_FILE, self.history_len)
            self._write_cell_file()
        self.last_save_cost: float | None = None

    def _check_cell_file(self) -> None:
        path = self.out / CELL_FILE
        if not path.exists():
            return
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            other = CellConfig.from_dict(raw, where=str(path))
        except json.JSONDecodeError as error:
            raise EastError(f"{path}: not valid JSON ({error.msg})") from None
        if other.content_hash() != self.cell.content_hash() or other.seed != self.cell.seed:
            raise EastError(
                f"{path}: {self.out} holds another cell ({other.cell_id()} seed {other.seed}); "
                f"use a fresh --out for {self.cell.cell_id()} seed {self.cell.seed}"
            )

    def _write_cell_file(self) -> None:
        path = self.out / CELL_FILE
        if not path.exists():
            from east.io import atomic_write_text

            atomic_write_text(path, self.cell.canonical_json() + "\n")

    def _fresh_start(self) -> None:
        loader = self.loaders.train
        if self.sparsifier.wants_data:
            loader.set_position(0, 0)
            self.sparsifier.initialize(self.model, iter(loader), _init_loss)
        else:
            self.sparsifier.initialize(self.model)
        self.cost.add_scoring(self.sparsifier.scoring_passes)
        loader.set_position(0, 0)
        # Identical start on every rank (masks included), whatever the init drew.
        D.broadcast_module(self.model, self.env)
        if self.env.enabled:
            self.sparsifier.load_state_dict(self.sparsifier.state_dict())  # refresh caches

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise EastError(f"checkpoint format {state.get('format')!r} is not supported")
        same = (state.get("cell_hash"), state.get("seed")) == (self.cell.content_hash(),
                                                                self.cell.seed)
        if not same:
            raise EastError(
                f"{self.out}: its checkpoints belong to another cell; use a fresh --out"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["lr_schedule"])
        self.sparsifier.load_state_dict(state["sparsifier"])
        self.loaders.train.load_state_dict(state["loader"])
        stats = state["epoch_stats"]
        self.epoch_loss = stats["loss_sum"].to(self.device) if self.env.is_main else \
            torch.zeros((), dtype=torch.float64, device=self.device)
        self.epoch_correct = stats["correct"].to(self.device) if self.env.is_main else \
            torch.zeros((), dtype=torch.int64, device=self.device)
        self.epoch_count = int(stats["count"]) if self.env.is_main else 0
        self.epoch_time = float(stats["time_s"])
        self.best = BestTracker(state["best_val_acc"], state["best_epoch"])
        self.best_meta = state["best_meta"]
        self.cost.load_state_dict(state["cost"])
        self.history_len = int(state["history_len"])
        self.wall_time_s = float(state["wall_time_s"])
        ckpt.restore_rng(state["rng"])

    def _reset_epoch_stats(self) -> None:
        self.epoch_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self.epoch_correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.epoch_count = 0
        self.epoch_time = 0.0

    # ------------------------------------------------------------------ state
    @property
    def step(self) -> int:
        loader = self.loaders.train
        return loader.epoch * self.steps_per_epoch + loader.batch

    def _global_epoch_stats(self) -> tuple[Tensor, Tensor, int]:
        """Epoch accumulators summed over ranks (rank 0 holds them after a resume)."""
        if not self.env.enabled:
            return self.epoch_loss, self.epoch_correct, self.epoch_count
        loss, correct, count = D.sum_across_ranks(
            [float(self.epoch_loss), float(self.epoch_correct), float(self.epoch_count)],
            self.env, self.device,
        )
        return (torch.tensor(loss, dtype=torch.float64),
                torch.tensor(int(correct), dtype=torch.int64), int(count))

    def _checkpoint_state(self) -> dict[str, Any]:
        loss, correct, count = self._global_epoch_stats()
        return {
            "format": CHECKPOINT_FORMAT,
            "cell_hash": self.cell.content_hash(),
            "cell_id": self.cell.cell_id(),
            "seed": self.cell.seed,
            "step": self.step,
            "epoch": self.loaders.train.epoch,
            "model": cpu_state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.schedule.state_dict(),
            "sparsifier": self.sparsifier.state_dict(),
            "loader": self.loaders.train.state_dict(),
            "rng": ckpt.capture_rng(),
            "epoch_stats": {
                "loss_sum": loss.detach().cpu(),
                "correct": correct.detach().cpu(),
                "count": count,
                "time_s": self.epoch_time,
            },
            "best_val_acc": self.best.val_acc,
            "best_epoch": self.best.epoch,
            "best_meta": self.best_meta,
            "cost": self.cost.state_dict(),
            "history_len": self.history_len,
            "wall_time_s": self.wall_time_s,
            "world_size": self.env.world_size,
        }

    def _save(self) -> None:
        """Checkpoint now (collective under DDP: every rank must call it). Book the clock
        first (``_book``) so the times in the checkpoint are current."""
        self._require_finite()
        state = self._checkpoint_state()
        if self.env.is_main:
            began = time.perf_counter()
            ckpt.save_checkpoint(self.out, self.step, state)
            self.last_save_cost = time.perf_counter() - began
        self.last_save_at = time.perf_counter()

    def _require_finite(self) -> None:
        """Raise NonFiniteLoss if this epoch's loss or any parameter is NaN/inf (so that no
        checkpoint of a diverged model is ever written)."""
        norms = torch._foreach_norm([p.detach() for p in self.ctx.params])
        finite = torch.isfinite(self.epoch_loss) & torch.isfinite(torch.stack(norms)).all()
        if D.any_across_ranks([not bool(finite)], self.env, self.device)[0]:
            kept = [p.name for _, p in ckpt.list_checkpoints(self.out)]
            last = kept[-1] if kept else "none"
            raise NonFiniteLoss(
                f"{self.cell.cell_id()} seed {self.cell.seed}: non-finite training loss or "
                f"weights in "
                f"epoch {self.loaders.train.epoch + 1} by step {self.step}; stopped (last "
                f"good checkpoint: {last}; lower train.lr or set train.grad_clip)",
                epoch=self.loaders.train.epoch + 1, step=self.step,
            )

    # ------------------------------------------------------------------ loop
    def _train(self, label: str) -> TrainOutcome:
        cfg, env = self.cell.train, self.env
        loader = self.loaders.train
        self.progress = Progress(
            label=f"[{label}]", total=self.total_steps, start=self.step,
            log_every=cfg.log_every, enabled=env.is_main and self.show_progress,
        )
        # On CUDA, reading flags forces a sync: poll every few steps instead of every step.
        poll_every = 1 if self.device.type == "cpu" else 10
        if self.resumed_from is not None:
            self.progress.write(f"east: resuming {label} from {self.resumed_from.name} "
                                f"(step {self.step}/{self.total_steps})")
        session_start = time.perf_counter()
        self.last_save_at = session_start
        mid_epoch_every = cfg.checkpoint_minutes * 60.0
        # The session clock splits into what is already booked (wall_time_s, epoch_time)
        # and what has run since `booked_at`.
        self.booked_at = session_start

        def elapsed() -> float:
            return time.perf_counter() - self.booked_at

        if self._max_steps_reached():
            return self._stop_for_max_steps(elapsed)
        while loader.epoch < cfg.epochs:
            epoch = loader.epoch
            for x, y in loader:
                step = self.step - 1  # the position already points past this batch
                self._set_beta(step)
                nnz = dict(self.sparsifier.budgets)  # what this step trains with
                loss, correct, count = train_step(self.ctx, x, y, step)
                self.cost.add_step(int(y.shape[0]), nnz,
                                   dense_gradient=self.sparsifier.took_dense_gradient,
                                   dyrelu_active=bool(self.beta))
                self.epoch_loss += loss
                self.epoch_correct += correct
                self.epoch_count += count
                self.progress.step(step + 1, epoch, cfg.epochs, loss, count,
                                   self.schedule.lr(step))
                _call(self.callbacks, "on_step_end", self, step)
                if self._max_steps_reached():
                    return self._stop_for_max_steps(elapsed)
                if (step + 1) % poll_every and loader.batch < len(loader):
                    continue
                stop, due, bad = D.any_across_ranks(
                    [self.signals.received is not None,
                     time.perf_counter() - self.last_save_at >= mid_epoch_every,
                     not bool(torch.isfinite(loss))],
                    env, self.device,
                )
                if bad:
                    self._require_finite()
                self.last_finite_loss = (step, loss / max(count, 1))
                if stop:
                    self._book(elapsed())
                    self._save()
                    message = (f"east: {label}: pre-empted ({self.signals.name or 'signal'}) "
                               f"at step {self.step}/{self.total_steps}; checkpoint saved, "
                               "run again to resume")
                    return TrainOutcome(EXIT_PREEMPTED, message)
                if due:
                    self._book(elapsed())
                    self._save()
            self._end_epoch(epoch, elapsed)
        return self._finish(label, elapsed)

    def _book(self, seconds: float) -> None:
        """Move the clock since `booked_at` into the epoch and run totals."""
        self.epoch_time += seconds
        self.wall_time_s += seconds
        self.booked_at = time.perf_counter()

    def _max_steps_reached(self) -> bool:
        return self.max_steps is not None and self.max_steps <= self.step < self.total_steps

    def _stop_for_max_steps(self, elapsed: Callable[[], float]) -> TrainOutcome:
        self._book(elapsed())
        # A rerun already at the limit has its checkpoint: leave it untouched.
        if not ckpt.checkpoint_path(self.out, self.step).exists():
            self._save()
        return TrainOutcome(
            EXIT_DONE,
            f"east: stopped at step {self.step}/{self.total_steps} (--max-steps "
            f"{self.max_steps}); checkpoint saved, run again to continue",
        )

    def _set_beta(self, step: int) -> None:
        beta = float(self.sparsifier.beta(step))
        if beta != self.beta:
            self.model.set_beta(beta)
            self.beta = beta

    def _end_epoch(self, epoch: int, elapsed: Callable[[], float]) -> None:
        self._require_finite()
        loss, correct, count = self._global_epoch_stats()
        val_loss = val_acc = None
        if self.loaders.val is not None:
            v_loss, v_acc, _ = evaluate_loader(self.model, self.loaders.val, device=self.device,
                                               amp_dtype=self.amp_dtype, env=self.env)
            val_loss, val_acc = v_loss, v_acc
        self._book(elapsed())
        log = self.sparsifier.density_log()
        last_step = self.step - 1
        record = {
            "epoch": epoch + 1,
            "step": self.step,
            "lr": self.schedule.lr(last_step),
            "train_loss": float(loss) / max(count, 1),
            "train_acc": float(correct) / max(count, 1),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "density": log["density"],
            "density_full": log["density_full"],
            "beta": float(self.sparsifier.beta(last_step)),
            "nnz": log["nnz"],
            "final_architecture": self.sparsifier.final_architecture_at(self.step),
            "flops_train": self.cost.total,
            "examples": count,
            "time_s": self.epoch_time,
        }
        improved = self.best.consider(record)
        if improved:
            self.best_meta = self._model_meta(epoch + 1, "best validation accuracy", val_acc)
        if self.env.is_main:
            append_history(self.out / HISTORY_FILE, record)
            if improved:
                _save_model_file(self.out / BEST_FILE, cpu_state_dict(self.model),
                                 self.best_meta)
        self.history_len = epoch + 1
        self.last_record = record
        D.check_masks_identical(self.model, self.env)
        self._reset_epoch_stats()
        self.progress.write(
            f"epoch {epoch + 1}/{self.cell.train.epochs}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_acc']:.4f}"
            + (f", val loss {val_loss:.4f} acc {val_acc:.4f}" if val_acc is not None else "")
            + f", density {log['density_full']:.4g}"
        )
        _call(self.callbacks, "on_epoch_end", self, record)
        since = time.perf_counter() - self.last_save_at
        cheap = self.last_save_cost is None or since >= SAVE_COST_RATIO * self.last_save_cost
        last = self.loaders.train.epoch >= self.cell.train.epochs
        if D.any_across_ranks([cheap and not last], self.env, self.device)[0]:
            self._save()

    def _finish(self, label: str, elapsed: Callable[[], float]) -> TrainOutcome:
        self._book(elapsed())
        self._save()
        D.check_masks_identical(self.model, self.env)
        record = getattr(self, "last_record", None)
        if record is None:  # resumed from the final checkpoint: the history has it
            from east.train.history import read_history

            records = read_history(self.out / HISTORY_FILE)
            record = records[-1] if records else {}
        log = self.sparsifier.density_log()
        final_meta = self._model_meta(self.cell.train.epochs, "final", record.get("val_acc"))
        best_meta = self.best_meta
        if best_meta is None:  # said, never silent: the final model stands in as "best"
            reason = ("no validation split" if self.loaders.val is None
                      else "no epoch ended with the final architecture")
            best_meta = {**final_meta, "selection": f"final model ({reason})"}
        summary = {
            **self._summary_head(),
            "status": "done",
            "steps": self.step,
            "final_val_acc": record.get("val_acc"),
            "best_val_acc": self.best.val_acc,
            "best_epoch": self.best.epoch,
            "best": best_meta,
            "density": log["density"],
            "density_full": log["density_full"],
            "nnz": log["nnz"],
            "flops_train": self.cost.record(),
            "wall_time_s": self.wall_time_s,
        }
        if self.env.is_main:
            state = cpu_state_dict(self.model)
            _save_model_file(self.out / MODEL_FILE, state, final_meta)
            if self.best_meta is None:
                _save_model_file(self.out / BEST_FILE, state, best_meta)
            write_summary(self.out / SUMMARY_FILE, summary)
        D.barrier(self.env)
        return TrainOutcome(
            EXIT_DONE,
            f"east: {label}: done in {self.wall_time_s:.1f} s, final val acc "
            f"{_fmt(summary['final_val_acc'])}, best {_fmt(self.best.val_acc)}",
            summary,
        )


    def _model_meta(self, epoch: int, selection: str, val_acc: float | None) -> dict[str, Any]:
        """What a model file says of the model it holds (read back by evaluate/export)."""
        return {
            "epoch": epoch,
            "step": self.step,
            "beta": float(self.sparsifier.beta(max(self.step - 1, 0))),
            "nnz": self.sparsifier.density_log()["nnz"],
            "val_acc": val_acc,
            "selection": selection,
        }

    def _summary_head(self) -> dict[str, Any]:
        return {
            "cell_id": self.cell.cell_id(),
            "row": self.cell.row,
            "seed": self.cell.seed,
            "epochs": self.cell.train.epochs,
            "environment": environment.describe(self.device, self.env.world_size),
        }

    def _diverged(self, label: str, error: NonFiniteLoss) -> TrainOutcome:
        """A non-finite loss or weight is a result (as papers report "diverged"): the
        summary says where, and the cell is done. Its good checkpoints are kept."""
        last = self.last_finite_loss
        summary = {
            **self._summary_head(),
            "status": "diverged",
            "diverged": {
                "epoch": error.epoch,
                "step": error.step,
                "last_finite_step": None if last is None else last[0] + 1,
                "last_finite_loss": None if last is None else float(last[1]),
            },
            "steps": error.step,
            "flops_train": self.cost.record(),
            "wall_time_s": self.wall_time_s,
        }
        if self.env.is_main:
            write_summary(self.out / SUMMARY_FILE, summary)
        D.barrier(self.env)
        return TrainOutcome(
            EXIT_DONE,
            f"east: {label}: diverged in epoch {error.epoch} by step {error.step} (non-finite "
            "training loss or weights); recorded as status 'diverged' in summary.json, a "
            "result the pipeline does not retrain",
            summary,
        )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _init_loss(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y)


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

