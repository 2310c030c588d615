"""Data-parallel training across processes started by ``torchrun`` (or any launcher that
sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``).

Every rank builds the same loader (same seed) and it yields only that rank's contiguous
shard of every global batch (``PositionedLoader.set_shard``): each rank decodes its own
examples only. Each rank's loss is its shard's *sum* divided by the global batch size, and
gradients are summed across ranks: the gradient equals the single-process one (up to float
summation order), uneven or empty shards included. Gradients are summed before
``sparsifier.after_backward``, so every rank sees identical gradients and makes identical
mask decisions: by ``east.train.grad_reducer.GradReducer`` (buckets all-reduced from
gradient hooks while backward runs), or, on a step where some rank's shard is empty, by
``all_reduce_gradients`` here (flattened, one collective per dtype, after backward). DDP's
wrapper is not used because DyReLU modules at beta = 0 leave parameters without gradients
(which both keep at ``grad = None``). BatchNorm is global (``east.train.global_bn``), so
every rank updates the same running statistics; rank 0's are broadcast before each
evaluation. Only rank 0 writes files. Backend: nccl on CUDA,
gloo on CPU.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from east.errors import EastError


def free_port() -> int:
    """A free TCP port on localhost: MASTER_PORT for ranks started by hand (mp.spawn in
    the DDP benchmark and tests); ``east train --ranks`` needs none (c10d picks one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from_environ() -> DistEnv:
    """The launcher's rank layout; a single process when ``WORLD_SIZE`` is unset or 1."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise EastError("RANK/WORLD_SIZE/LOCAL_RANK: expected integers") from None
    if world < 1 or not 0 <= rank < world:
        raise EastError(f"RANK={rank}, WORLD_SIZE={world}: not a valid rank layout")
    return DistEnv(rank=rank, world_size=world, local_rank=local)


def init_distributed(env: DistEnv, device: torch.device) -> bool:
    """Join the process group (once); returns True when this call created it."""
    if not env.enabled or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend,
        rank=env.rank,
        world_size=env.world_size,
        timeout=timedelta(minutes=30),
        device_id=device if device.type == "cuda" else None,
    )
    return True


def shutdown(created: bool) -> None:
    if created and dist.is_initialized():
        dist.destroy_process_group()


def _collective_view(tensor: Tensor) -> Tensor:
    # gloo has no bool collectives; a same-size integer view shares the storage.
    return tensor.view(torch.uint8) if tensor.dtype == torch.bool else tensor


def broadcast_module(module: nn.Module, env: DistEnv, *, buffers_only: bool = False) -> None:
    """Copy rank 0's parameters and buffers (masks included) to every rank, in place.

    With ``buffers_only`` just the non-mask buffers (BatchNorm statistics) go (before an
    evaluation).
    """
    if not env.enabled:
        return
    with torch.no_grad():
        tensors: list[Tensor] = []
        if not buffers_only:
            tensors += [p.data for p in module.parameters()]
        tensors += [b for b in module.buffers() if not (buffers_only and b.dtype == torch.bool)]
        # One collective per dtype (a per-tensor broadcast costs a round trip each).
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for tensor in tensors:
            view = _collective_view(tensor)
            by_dtype.setdefault(view.dtype, []).append(view)
        for group in by_dtype.values():
            flat = _flatten_dense_tensors(group)
            dist.broadcast(flat, src=0)
            for tensor, value in zip(group, _unflatten_dense_tensors(flat, group), strict=True):
                tensor.copy_(value)


def all_reduce_gradients(params: list[nn.Parameter], env: DistEnv) -> None:
    """Sum gradients over ranks (each rank's loss is already scaled by 1/global batch).

    A parameter with a gradient on any rank gets one everywhere (zeros where missing), so
    ranks with an empty shard stay in step; parameters without a gradient on every rank
    (e.g. DyReLU at beta = 0) keep ``grad = None``. ``train_step`` uses it on steps where
    some rank's shard is empty; otherwise ``east.train.grad_reducer`` computes the same.
    """
    if not env.enabled:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8)
    device = params[0].device if params else torch.device("cpu")
    has = has.to(device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    flags = has.tolist()
    active = [p for p, flag in zip(params, flags, strict=True) if flag]
    for p in active:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not active:
        return
    grads = [p.grad for p in active]
    # One collective per dtype; dense layouts only (conv/linear/BN grads are dense).
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    for group in by_dtype.values():
        flat = _flatten_dense_tensors(group)
        dist.all_reduce(flat)
        for g, reduced in zip(group, _unflatten_dense_tensors(flat, group), strict=True):
            g.copy_(reduced)


def any_across_ranks(flags: list[bool], env: DistEnv, device: torch.device) -> list[bool]:
    """Element-wise OR of small flag vectors over ranks (stop requests, checkpoint timers)."""
    if not env.enabled:
        return flags
    tensor = torch.tensor(flags, dtype=torch.uint8, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


def sum_across_ranks(values: list[float], env: DistEnv, device: torch.device) -> list[float]:
    if not env.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def mask_fingerprint(model: nn.Module) -> Tensor:
    """An int64 digest of every bool buffer (mask): equal masks give equal digests.

    Per mask: its nnz and the sum of (flat index + 1) * (a fixed odd multiplier) over set
    positions, wrapping in int64 — changes whenever a position moves.
    """
    parts = []
    for buffer in model.buffers():
        if buffer.dtype != torch.bool:
            continue
        flat = buffer.detach().reshape(-1)
        index = torch.nonzero(flat).reshape(-1).to(torch.int64)
        mixed = (index + 1) * 0x9E3779B1 ^ (index >> 3)
        parts.append(torch.stack([index.numel() * torch.ones((), dtype=torch.int64,
                                                             device=index.device),
                                  mixed.sum()]))
    if not parts:
        return torch.zeros(2, dtype=torch.int64)
    return torch.cat(parts).cpu()


def check_masks_identical(model: nn.Module, env: DistEnv) -> None:
    """Raise RuntimeError when any rank's masks differ from rank 0's (a bug, not user input)."""
    if not env.enabled:
        return
    mine = mask_fingerprint(model)
    gathered = [torch.zeros_like(mine) for _ in range(env.world_size)]
    dist.all_gather_object(gathered, mine)
    for rank, other in enumerate(gathered):
        if not torch.equal(other, gathered[0]):
            raise RuntimeError(f"masks diverged between rank 0 and rank {rank}")


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()
