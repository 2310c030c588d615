"""One optimizer step, and the evaluation of a model over a loader.

One step, in order (docs/design.md, "Training and evaluation"):

    forward under autocast, loss = CE(shard)·|shard|/|batch|; backward (the loader
    yields only this rank's shard: east.data.positioned.shard_range)
    all-reduce gradients (DDP; overlapped with backward: east.train.grad_reducer)
    clip_grad_norm_(grad_clip)                     # grad_clip_scope dense: all positions
    sparsifier.after_backward(step)                # dense-grad scores, then masked grads
    [clip_grad_norm_(grad_clip)]                   # grad_clip_scope masked: instead, here
    lr(step); optimizer.step()
    sparsifier.after_step(step, optimizer)         # mask update if due; zero weights + state

The caller sets DyReLU's β for the step first (``model.set_beta``).

With several processes the gradients are summed by ``StepContext.reducer`` (a
``GradReducer``): buckets are all-reduced from gradient hooks while backward runs, finished
after it. A step where some rank's shard is empty (a last batch smaller than the world)
falls back to the synchronous ``distributed.all_reduce_gradients`` — same sums, same
``grad = None`` parameters. One process: no reducer, no collective, nothing changes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from east.train import distributed as D
from east.train.devices import autocast
from east.train.grad_reducer import DEFAULT_BUCKET_BYTES, GradReducer, every_shard_nonempty
from east.train.optim import LRSchedule


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
    overlap_grads: bool = True  # False: the hand all-reduce after backward (benchmarks)
    bucket_bytes: int = DEFAULT_BUCKET_BYTES
    reducer: GradReducer | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.params:
            self.params = [p for p in self.model.parameters() if p.requires_grad]
        # Hooks only under DDP: a single process keeps its plain backward.
        if self.env.enabled and self.overlap_grads:
            self.reducer = GradReducer(self.params, bucket_bytes=self.bucket_bytes)


def clip_gradients(params: Sequence[nn.Parameter], max_norm: float) -> None:
    """Scale every gradient by min(1, max_norm / ‖g‖) (torch's ``clip_grad_norm_``), ‖g‖
    over all of them. Called on the gradient backward produced (scope ``dense``: pruned
    positions count, as in the authors' trainer, which clips before masking) or on the
    masked one (scope ``masked``)."""
    torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)


def train_step(ctx: StepContext, xs: Tensor, ys: Tensor, step: int,
               global_batch: int | None = None) -> tuple[Tensor, Tensor, int]:
    """One optimizer step; ``xs``/``ys`` are this rank's part of a batch of
    ``global_batch`` examples (default: all of it, one process). Returns this rank's (loss
    sum (float64), number correct, examples) — detached, on the device, not yet
    synchronised."""
    model = ctx.model
    model.train()
    if global_batch is None:
        global_batch = int(ys.shape[0])
    # A step where some rank's shard is empty (at most one per epoch) takes the synchronous
    # hand all-reduce, written and tested for empty shards, rather than the bucket hooks.
    # All ranks must take the same path (their collectives pair up in order); each knows
    # from the global batch size alone whether some shard is empty.
    reducer = ctx.reducer
    if reducer is not None and not every_shard_nonempty(global_batch, ctx.env.world_size):
        reducer = None
    # No per-step broadcast of BatchNorm buffers (DDP's): global BatchNorm (global_bn)
    # updates the running statistics from the same gathered numbers on every rank.
    for p in ctx.params:
        p.grad = None
    count = int(ys.shape[0])
    if reducer is not None and not count:
        raise RuntimeError(f"rank {ctx.env.rank}: empty shard of a {global_batch}-example "
                           f"batch over {ctx.env.world_size} ranks (global_batch is wrong)")
    # An empty DDP shard (a last batch smaller than the world) runs the pass too, on zero
    # examples (zero loss, zero gradients): every rank takes part in the collectives of
    # BatchNorm over the global batch (east.train.global_bn).
    with autocast(ctx.device, ctx.amp_dtype):
        logits = model(xs)
    # The loss in fp32 whatever the autocast dtype; summed, so shards add up exactly.
    loss_sum = F.cross_entropy(logits.float(), ys, reduction="sum",
                               label_smoothing=ctx.label_smoothing)
    if reducer is None:
        (loss_sum / global_batch).backward()
        D.all_reduce_gradients(ctx.params, ctx.env)  # nothing to do in one process
    else:
        reducer.backward(loss_sum / global_batch)
        reducer.finish()
    correct = (logits.detach().argmax(dim=1) == ys).sum()
    loss_sum = loss_sum.detach().double()
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

    Under DDP the loader yields this rank's part of every batch (``set_shard``) and the
    sums are combined. The loss is plain cross-entropy (no label smoothing).
    """
    env = env or D.DistEnv()
    was_training = model.training
    model.eval()
    # Rank 0's running statistics for every rank's shard (they are equal by construction;
    # once per evaluation this makes it a guarantee).
    D.broadcast_module(model, env, buffers_only=True)
    loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    loader.set_position(0, 0)
    for xs, ys in loader:
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

