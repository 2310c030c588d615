"""Peak memory of sparse vs dense training, one fresh subprocess per measured run.

Why a subprocess: torch's CPU allocator keeps freed memory, and tracemalloc does not see
torch's allocations at all, so the only honest CPU number is the growth of the process's
resident-set high-water mark from just after the imports to after training — in a process
that did nothing else (see ``PeakRSS``: the kernel's VmHWM, reset after the imports; the
same counter ``getrusage`` reports as ``ru_maxrss``, which cannot be reset). On CUDA the
child also reports ``torch.cuda.max_memory_allocated()`` over the same span (minus what was
allocated before), which counts tensors only (not the caching allocator's slack).

Each child builds one cell as ``east train`` does (``east.bench.workload``), runs ordinary
training steps and, for a sparse method with drop-and-grow, one step where a mask update is
due (the update clones the dense gradients, the largest transient a sparse run adds), and
prints one JSON line. The parent runs dense and sparse children alternately (ABBA).

Run as ``python -m east.bench.memory '<spec json>'``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from east.bench.results import CaseResult, Target
from east.bench.timing import spread
from east.errors import EastError

MIB = 1024 * 1024
ORDINARY_STEPS = 2
WARM_UP_ARCH = "resnet20"


def _trim_heap() -> None:
    """glibc's ``malloc_trim(0)``: return free heap pages to the kernel (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def _status_bytes(field: str) -> int | None:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status in bytes (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0: ``clear_refs`` 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="utf-8")
    except OSError:
        return False
    return True


class PeakRSS:
    """Peak resident memory from now on, relative to now.

    Start-up (``import torch`` alone maps hundreds of MiB, briefly more) must not count,
    and a small run may never exceed the start-up peak that ``ru_maxrss`` remembers; so
    the high-water mark is reset first and the growth is VmHWM at the end minus VmRSS
    now. Where the reset is not available: growth of ``ru_maxrss`` (may read 0 for runs
    smaller than the start-up peak)."""

    def __init__(self) -> None:
        self.exact = _reset_peak() and _status_bytes("VmRSS") is not None
        if self.exact:
            self.base = _status_bytes("VmRSS") or 0
        else:
            self.base = _maxrss_bytes()

    def growth(self) -> int:
        if self.exact:
            return (_status_bytes("VmHWM") or 0) - self.base
        return _maxrss_bytes() - self.base


def _maxrss_bytes() -> int:
    # Linux reports kibibytes (macOS bytes; east targets Linux clusters).
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _steps(setup: Any) -> list[int]:
    """Ordinary steps, then one where a drop-and-grow update is due (if the method has
    one; otherwise one more ordinary step)."""
    from east.bench.workload import update_step

    steps = [setup.step] * ORDINARY_STEPS
    if any(rule.name == "drop_grow" for rule in setup.sparsifier.rules):
        return [*steps, update_step(setup.sparsifier, "drop_grow")]
    return [*steps, setup.step]


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """In the child: train ``spec`` and return the memory growth."""
    import torch

    from east.bench.workload import build_step_setup, resolve_bench_device
    from east.train.devices import loop_settings

    torch.set_num_threads(int(spec["threads"]))
    dev = resolve_bench_device(spec["device"])
    cuda = dev.device.type == "cuda"
    with loop_settings(dev.device):
        # Page in the code (kernels, libraries: ~250 MiB of RSS on first use) with a
        # throwaway 2-image run of the method on the small resnet20, so that it does not
        # count as the run's; then hand the freed heap back to the kernel, so that the run
        # cannot reuse memory the baseline already counts.
        warm = build_step_setup("warm-up", WARM_UP_ARCH, spec["sparse"], dev, batch_size=2,
                                image_size=int(spec["image_size"]))
        for step in _steps(warm):
            warm.run(step)
        del warm
        gc.collect()
        _trim_heap()
        peak = PeakRSS()  # from here on, only the run's own memory counts
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev.device)
            base_cuda = torch.cuda.memory_allocated(dev.device)
        setup = build_step_setup(spec["label"], spec["arch"], spec["sparse"], dev,
                                 batch_size=int(spec["batch_size"]),
                                 image_size=int(spec["image_size"]))
        steps = _steps(setup)
        updates_before = setup.sparsifier.updates
        for step in steps:
            setup.run(step)
        dev.sync()
    out: dict[str, Any] = {
        "rss_growth_bytes": peak.growth(),
        "rss_peak_reset": peak.exact,
        "steps": steps,
        "mask_updates": setup.sparsifier.updates - updates_before,
        "masked_weights": setup.masked_weights,
    }
    if cuda:
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(dev.device) - base_cuda
    return out


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH"))
                                        if p)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env.pop("EAST_DEBUG", None)
    return env


def run_child(spec: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run one measuring subprocess; EastError if it fails."""
    command = [sys.executable, "-m", "east.bench.memory", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=_child_env(int(spec["threads"])))
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise EastError(f"bench peak_memory: the {spec['label']} subprocess failed "
                        f"(exit {done.returncode}): {last}")
    return json.loads(lines[-1])


def _abba_children(specs: dict[str, dict[str, Any]], repeats: int
                   ) -> dict[str, list[dict[str, Any]]]:
    """One child per spec and repeat, in ABBA order over the two specs (first: baseline)."""
    names = list(specs)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            runs[name].append(run_child(specs[name]))
    return runs


def memory_case(*, arch: str, sparse: dict[str, Any], dense: dict[str, Any], device: str,
                batch_size: int, image_size: int, repeats: int, threads: int) -> CaseResult:
    """Peak-memory growth of a sparse run / a dense run (ABBA over ``repeats`` pairs)."""
    base = {"arch": arch, "device": device, "batch_size": batch_size,
            "image_size": image_size, "threads": threads}
    specs = {"dense": {**base, "label": "dense", "sparse": dense},
             "sparse": {**base, "label": f"{sparse['method']} sparse", "sparse": sparse}}
    runs = _abba_children(specs, repeats)
    cuda = device == "cuda"
    key = "cuda_peak_bytes" if cuda else "rss_growth_bytes"
    ratios = [s[key] / d[key] for d, s in zip(runs["dense"], runs["sparse"], strict=True)]
    dense_mib = [d[key] / MIB for d in runs["dense"]]
    sparse_mib = [s[key] / MIB for s in runs["sparse"]]
    masked = int(runs["sparse"][0]["masked_weights"])
    how = ("torch.cuda.max_memory_allocated growth" if cuda
           else "growth of the process's peak RSS (VmHWM, reset after the imports)")
    details = {
        "arch": arch, "batch_size": batch_size, "image_size": image_size,
        "measured_as": how, "dense_mib": spread(dense_mib).as_dict(),
        "sparse_mib": spread(sparse_mib).as_dict(),
        "extra_mib": spread([s - d for d, s in zip(dense_mib, sparse_mib, strict=True)])
        .as_dict(),
        # Masks cost 1 byte (bool buffer) + 4 (float copy the enforcer multiplies with) per
        # masked weight; an update step clones the dense gradients (4 more, transient).
        "mask_storage_mib": 5 * masked / MIB, "gradient_clone_mib": 4 * masked / MIB,
        "masked_weights": masked, "sparse_steps": runs["sparse"][0]["steps"],
        "sparse_mask_updates": runs["sparse"][0]["mask_updates"], "runs": runs,
    }
    if cuda:
        details["rss_growth_mib"] = {
            name: [r["rss_growth_bytes"] / MIB for r in rs] for name, rs in runs.items()}
    return CaseResult(
        f"peak_memory/{arch}", "peak_memory", f"Peak memory, sparse / dense training, {arch}",
        f"{how}: {specs['sparse']['label']} run ({ORDINARY_STEPS} steps + 1 mask update) / "
        f"dense run ({ORDINARY_STEPS + 1} steps), batch {batch_size}", "x",
        spread(ratios).median, spread(ratios), None, details,
        notes="one fresh process per run",
    )


def dyrelu_memory_case(*, arch: str, relu: dict[str, Any], dyrelu: dict[str, Any],
                       device: str, batch_size: int, image_size: int, repeats: int,
                       threads: int, target: Target | None,
                       floor: dict[str, int]) -> CaseResult:
    """Peak-memory growth of a run with DyReLU-B (beta = 1) / the same run with ReLU (ABBA
    over ``repeats`` pairs, ordinary steps only). ``floor``: what the DyReLU network holds
    beyond the ReLU one (``saved_input_bytes``: the input x of each module, which keeping
    it for backward would cost, and which east.models.resnet recomputes instead;
    ``fc_state_bytes``: FC weights, gradients, momentum)."""
    base = {"arch": arch, "device": device, "batch_size": batch_size,
            "image_size": image_size, "threads": threads}
    runs = _abba_children({"relu": {**base, "label": "ReLU", "sparse": relu},
                           "dyrelu": {**base, "label": "DyReLU-B", "sparse": dyrelu}},
                          repeats)
    cuda = device == "cuda"
    key = "cuda_peak_bytes" if cuda else "rss_growth_bytes"
    relu_mib = [r[key] / MIB for r in runs["relu"]]
    dyrelu_mib = [r[key] / MIB for r in runs["dyrelu"]]
    ratios = [d / r for r, d in zip(relu_mib, dyrelu_mib, strict=True)]
    how = ("torch.cuda.max_memory_allocated growth" if cuda
           else "growth of the process's peak RSS (VmHWM, reset after the imports)")
    details = {
        "arch": arch, "batch_size": batch_size, "image_size": image_size,
        "measured_as": how, "relu_mib": spread(relu_mib).as_dict(),
        "dyrelu_mib": spread(dyrelu_mib).as_dict(),
        "extra_mib": spread([d - r for r, d in zip(relu_mib, dyrelu_mib, strict=True)])
        .as_dict(),
        "dyrelu_saved_input_mib": floor["saved_input_bytes"] / MIB,
        "dyrelu_fc_state_mib": floor["fc_state_bytes"] / MIB, "runs": runs,
    }
    return CaseResult(
        f"dyrelu_memory/{arch}", "dyrelu_memory", f"Peak memory, DyReLU-B / ReLU, {arch}",
        f"{how}: dense run with every ReLU a DyReLU-B (beta = 1) / the same with ReLU, "
        f"{ORDINARY_STEPS + 1} steps each, batch {batch_size}", "x",
        spread(ratios).median, spread(ratios), target, details,
        notes="one fresh process per run; DyReLU-B's backward needs its input x (ReLU's "
              "only its output, which the next conv keeps anyway): the network recomputes "
              "BatchNorm -> DyReLU-B in backward instead of keeping x (dyrelu saved input "
              "mib: what keeping it would cost); dyrelu fc state mib: the hyper-function's "
              "weights, gradients and momentum",
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m east.bench.memory '<spec json>'", file=sys.stderr)
        return 2
    print(json.dumps(measure(json.loads(args[0]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
