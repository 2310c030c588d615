"""Where and how a run computes: the device, autocast precision, memory layout, and the
global torch settings of a training run (threads, deterministic algorithms, cuDNN).

``precision: auto`` is bf16 autocast on CUDA and fp32 (no autocast) on the CPU;
``channels_last: auto`` is on for CUDA.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from east.errors import EastError
from east.train import distributed as D


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
            if env.local_rank >= torch.cuda.device_count():
                raise EastError(f"rank {env.rank}: no GPU cuda:{env.local_rank} on this node "
                                f"({torch.cuda.device_count()} visible): start at most one "
                                "rank per GPU")
            device = torch.device("cuda", env.local_rank)
        elif device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type != "cpu":
        raise EastError(f"train.device: unsupported device {name!r} (use cpu or cuda[:N])")
    return device


def rank_share(job_total: int | None, ranks_on_node: int | None = None) -> int | None:
    """This rank's share of a job's CPU threads or loader workers: the job's count divided
    among the ranks ``torchrun`` started on this node (``LOCAL_WORLD_SIZE``), at least 1
    where the job had any. ``None`` (torch's default thread count) stays ``None``."""
    if job_total is None:
        return None
    if ranks_on_node is None:
        try:
            ranks_on_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        except ValueError:
            raise EastError("LOCAL_WORLD_SIZE: expected an integer") from None
    return max(1, job_total // ranks_on_node) if job_total > 0 else 0


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



@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op CPU threads set to ``threads`` (None: left as they are) for the
    block, and put back after it."""
    before = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def loop_settings(device: torch.device, threads: int | None = None) -> Iterator[None]:
    """The global torch settings of a training run, restored on exit: ``threads`` CPU
    threads (None: leave torch's count); deterministic algorithms (warn only) on the CPU,
    where they are cheap and make resumed runs bit-identical; cuDNN autotuning on CUDA."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    benchmark = torch.backends.cudnn.benchmark
    try:
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        else:
            torch.cuda.set_device(device)
            torch.backends.cudnn.benchmark = True
        with torch_threads(threads):
            yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.benchmark = benchmark

