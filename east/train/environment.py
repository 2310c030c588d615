"""What a run's numbers depend on besides its config: the software and hardware it ran on.

On the CPU a result depends on the thread count (the order of float reductions), torch's
version and the CPU's instruction set (torch picks kernels by it); on CUDA on the GPU, CUDA
and cuDNN versions and cuDNN's autotuning. ``summary.json`` records these as
``environment``; ``east report`` marks a cell whose seeds ran in different environments
(the keys of ``COMPARED``). Torch is imported only by ``describe`` (the report is torch-free).
"""

from __future__ import annotations

import platform
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Keys whose difference between two runs of one cell can change the numbers.
COMPARED: tuple[str, ...] = ("threads", "torch", "cuda", "cudnn", "device", "cpu_capability",
                             "world_size", "deterministic")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: torch.device, world_size: int) -> dict[str, Any]:
    """The environment of a training process on ``device`` (JSON-able)."""
    import torch

    cuda = device.type == "cuda"
    return {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "world_size": world_size,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if cuda else None,
        "python": platform.python_version(),
        "host": socket.gethostname(),
    }


def differences(environments: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Compared keys whose values differ between the given environments -> the values."""
    out: dict[str, list[Any]] = {}
    for key in COMPARED:
        values = list(dict.fromkeys(json_key(e.get(key)) for e in environments))
        if len(values) > 1:
            out[key] = values
    return out


def json_key(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
