"""From a cell to a ready training state: data, model, sparsifier, optimizer, schedules,
the FLOPs account; then resume from the run directory's checkpoints or start fresh.

Nothing in the run directory is written until data, model and checkpoint have loaded, so a
failing start changes nothing there (``cell.json`` is written last, if missing).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from east.config import CellConfig
from east.errors import EastError
from east.io import atomic_write_text
from east.rundir import CELL_FILE, HISTORY_FILE
from east.train import checkpoint as ckpt
from east.train import distributed as D
from east.train.cost import TrainingCost
from east.train.devices import rank_share, resolve_channels_last, resolve_precision
from east.train.global_bn import use_global_batch_norm
from east.train.history import truncate_history
from east.train.optim import build_optimizer, build_schedule
from east.train.state import TrainState
from east.train.step import StepContext


@dataclass
class Setup:
    """A built run: its state, the step context, the loaders (``val`` for validation)."""

    state: TrainState
    ctx: StepContext
    loaders: Any  # east.data.Loaders
    amp_dtype: torch.dtype | None
    resumed_from: Path | None = None


def build(cell: CellConfig, out: Path, device: torch.device, env: D.DistEnv,
          md5s: dict[str, str] | None) -> Setup:
    """Everything a run of ``cell`` trains with, before any mask is chosen."""
    from east.data import build_loaders
    from east.flops import dyrelu_flops, flops_per_weight
    from east.models import model_for_cell
    from east.sparsity.methods import build_sparsifier

    cfg = cell.train
    check_cell_file(cell, out)
    channels_last = resolve_channels_last(cfg.channels_last, device)
    amp_dtype = resolve_precision(cfg.precision, device)
    loaders = build_loaders(
        cell.data, batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
        seed=cell.seed, device=device, workers=rank_share(cfg.workers), channels_last=channels_last,
        md5s=md5s,
    )
    for loader in (loaders.train, loaders.val, loaders.test):
        if loader is not None:
            loader.set_shard(env.rank, env.world_size)
    info = loaders.info
    steps_per_epoch = len(loaders.train)
    if steps_per_epoch < 1:
        raise EastError(f"data.name: {info.name}: the training split is empty")
    total_steps = cfg.epochs * steps_per_epoch
    seed_everything(cell.seed)
    model = model_for_cell(cell).to(device)
    if env.enabled:  # BatchNorm over the global batch: results independent of the world size
        model = use_global_batch_norm(model, device)
    with torch.device("meta"):  # the FLOPs account reads only shapes (draws no RNG)
        shapes = model_for_cell(cell)
    cost = TrainingCost(
        per_weight=flops_per_weight(shapes, (info.in_channels, info.image_size,
                                             info.image_size)),
        numel={n: p.numel() for n, p in shapes.masked_parameters().items()},
        dyrelu_forward=dyrelu_flops(shapes) if cell.sparsity.dyrelu else 0,
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    sparsifier = build_sparsifier(model, cell.sparsity, steps_per_epoch=steps_per_epoch,
                                  total_steps=total_steps, seed=cell.seed)
    optimizer = build_optimizer(model, cfg)
    schedule = build_schedule(cfg, steps_per_epoch, total_steps)
    ctx = StepContext(
        model=model, optimizer=optimizer, sparsifier=sparsifier, schedule=schedule,
        device=device, amp_dtype=amp_dtype, label_smoothing=cfg.label_smoothing,
        grad_clip=cfg.grad_clip, grad_clip_scope=cfg.grad_clip_scope, env=env,
    )
    state = TrainState(cell=cell, model=model, optimizer=optimizer, schedule=schedule,
                       sparsifier=sparsifier, loader=loaders.train, cost=cost, device=device,
                       env=env)
    return Setup(state=state, ctx=ctx, loaders=loaders, amp_dtype=amp_dtype)


def resume_or_start(setup: Setup, out: Path) -> None:
    """Load the newest readable checkpoint, or choose the initial masks (fresh runs)."""
    state, env = setup.state, setup.state.env
    loaded = ckpt.load_latest(out)
    if loaded is None:
        _fresh_start(state)
    else:
        state.restore(loaded.state, str(out))
        D.barrier(env)
        if env.is_main:
            ckpt.quarantine(loaded.rejected, loaded.path)
        setup.resumed_from = loaded.path
    if env.is_main:
        # Epochs the checkpoint had not finished are redone: drop their lines.
        truncate_history(out / HISTORY_FILE, state.history_len)
        if not (out / CELL_FILE).exists():
            atomic_write_text(out / CELL_FILE, state.cell.canonical_json() + "\n")


def _fresh_start(state: TrainState) -> None:
    loader, sparsifier = state.loader, state.sparsifier
    if sparsifier.wants_data:
        # The scores see whole batches on every rank (as in one process): the masks, then
        # rank 0's broadcast, do not depend on the world size.
        shard = loader.rank, loader.world
        loader.set_shard(0, 1)
        loader.set_position(0, 0)
        sparsifier.initialize(state.model, iter(loader), _init_loss)
        loader.set_shard(*shard)
    else:
        sparsifier.initialize(state.model)
    state.cost.add_scoring(sparsifier.scoring_passes)
    loader.set_position(0, 0)
    # Identical start on every rank (masks included), whatever the init drew.
    D.broadcast_module(state.model, state.env)
    if state.env.enabled:
        sparsifier.load_state_dict(sparsifier.state_dict())  # refresh caches


def check_cell_file(cell: CellConfig, out: Path) -> None:
    """A run directory holds one cell: refuse one whose ``cell.json`` is another's."""
    path = out / CELL_FILE
    if not path.exists():
        return
    try:
        other = CellConfig.from_dict(json.loads(path.read_text(encoding="utf-8")),
                                     where=str(path))
    except json.JSONDecodeError as error:
        raise EastError(f"{path}: not valid JSON ({error.msg})") from None
    if other.content_hash() != cell.content_hash() or other.seed != cell.seed:
        raise EastError(
            f"{path}: {out} holds another cell ({other.cell_id()} seed {other.seed}); "
            f"use a fresh --out for {cell.cell_id()} seed {cell.seed}"
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _init_loss(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y)
