"""What the DyReLU-B phase costs (issue 17): a training step with every ReLU a DyReLU-B at
β = 1 / the same step with ReLU, at 1, 2 and all CPU threads, and its peak memory.

Part of ``east bench``; ``python -m east.bench.dyrelu`` runs these cases alone:

    python -m east.bench.dyrelu [--quick] [--repeats N] [--against FILE] [--no-memory]
                                [--profile] [--out reports/dyrelu]

``--against FILE`` also times, in the same rotation (ReLU, current, FILE's, ...), the
DyReLU-B step with the ``_DyReLUBFunction`` of another implementation file (arguments x,
FC1 weight/bias, FC2 weight/bias, beta): e.g. ``tests/dyrelu_before.py``, the one issue 17
replaced. Both DyReLU arms are then judged against the same ReLU timings.

``--profile`` prints, per thread count, where a step's time goes (torch.profiler's self CPU
time per op, summed over a few steps) for the ReLU step, the DyReLU-B step and, with
``--against``, FILE's DyReLU-B step: the table docs/benchmarks.md quotes.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from east.bench.cases import DENSE, DENSE_DYRELU, Plan, _collect, _ratio_case, usable_cores
from east.bench.results import CaseResult, Target
from east.bench.timing import Arm, Paired, rotate
from east.bench.workload import DATASET, DeviceSetup, StepSetup, build_step_setup
from east.data.registry import dataset_info
from east.models import DyReLUB, build_model
from east.train.devices import torch_threads

DYRELU_STEP_TARGET = Target("<=", 1.3)  # issue 17: the DyReLU phase close to ReLU's cost
DYRELU_MEMORY_TARGET = Target("<=", 1.2)


def _said(threads: int) -> str:
    text = f"{threads} thread{'s' if threads > 1 else ''}"
    return text + (" (all cores)" if threads == usable_cores() and threads > 1 else "")


def _setups(plan: Plan, dev: DeviceSetup) -> tuple[StepSetup, StepSetup]:
    arch = plan.dyrelu_arch
    relu = build_step_setup("ReLU step", arch, DENSE, dev, batch_size=plan.batch_size,
                            image_size=plan.image_size)
    dyrelu = build_step_setup("DyReLU-B step (beta = 1)", arch, DENSE_DYRELU, dev,
                              batch_size=plan.batch_size, image_size=plan.image_size)
    if dyrelu.sparsifier.beta(dyrelu.step) != 1.0:
        raise AssertionError("the DyReLU step must run at beta = 1")
    return relu, dyrelu


def dyrelu_step_cases(plan: Plan, dev: DeviceSetup) -> list[CaseResult]:
    """DyReLU-B step / ReLU step, once per thread count of ``plan.dyrelu_threads`` (both
    arms built once; torch's thread count is put back afterwards)."""
    arch = plan.dyrelu_arch
    relu, dyrelu = _setups(plan, dev)
    results = []
    for threads in plan.dyrelu_threads or (torch.get_num_threads(),):
        with torch_threads(threads):
            suffix = f"/{threads}t" if plan.dyrelu_threads else ""
            result = _ratio_case(
                f"dyrelu_step/{arch}{suffix}", "dyrelu_step",
                f"DyReLU-B step / ReLU step, {arch}, {_said(threads)}",
                "dense training step with every ReLU a DyReLU-B (K = 2, reduction 4, beta = "
                f"1) / the same with ReLU, {_said(threads)}", relu, dyrelu, plan.reps(arch),
                dev, DYRELU_STEP_TARGET,
            )
            result.details["threads"] = threads
            results.append(result)
    del relu, dyrelu
    _collect()
    return results


def dyrelu_memory_floor(arch: str, batch_size: int, image_size: int) -> dict[str, int]:
    """What a DyReLU-B network holds beyond its ReLU twin in one fp32 training step:
    ``saved_input_bytes``, the input x of every DyReLU-B, which keeping it for backward
    would cost (from a one-image forward pass, scaled to the batch; the network recomputes
    it instead), and ``fc_state_bytes``, the hyper-function FC weights with their gradients
    and SGD momentum."""
    info = dataset_info(DATASET)
    model = build_model(arch, num_classes=info.num_classes, in_channels=info.in_channels,
                        activation="dyrelu")
    total = [0]

    def count(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
        total[0] += args[0].numel() * 4

    acts = [m for m in model.modules() if isinstance(m, DyReLUB)]
    for m in acts:
        m.register_forward_pre_hook(count)
    with torch.no_grad():
        model.eval()(torch.zeros(1, info.in_channels, image_size, image_size))
    fc = sum(p.numel() for m in acts for p in m.parameters())
    return {"saved_input_bytes": total[0] * batch_size, "fc_state_bytes": 3 * 4 * fc}


def dyrelu_memory_case(plan: Plan, device: str, threads: int) -> CaseResult:
    from east.bench.memory import dyrelu_memory_case as measure

    return measure(arch=plan.dyrelu_arch, relu=DENSE, dyrelu=DENSE_DYRELU, device=device,
                   batch_size=plan.batch_size, image_size=plan.image_size,
                   repeats=plan.memory_repeats, threads=threads,
                   target=DYRELU_MEMORY_TARGET,
                   floor=dyrelu_memory_floor(plan.dyrelu_arch, plan.batch_size,
                                             plan.image_size))


# ----------------------------------------------------------------------------- --against


def _load_function(path: Path) -> type[torch.autograd.Function]:
    spec = importlib.util.spec_from_file_location(f"dyrelu_against_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--against: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._DyReLUBFunction


def _use_function(model: nn.Module, function: type[torch.autograd.Function]) -> None:
    """Every DyReLU-B of ``model`` runs ``function`` at beta > 0 (its own ReLU path at 0)."""

    def forward(self: DyReLUB, x: Tensor) -> Tensor:
        if self._beta == 0.0:
            return torch.relu_(x) if self.inplace else torch.relu(x)
        return function.apply(x, self.fc1.weight, self.fc1.bias, self.fc2.weight,
                              self.fc2.bias, self._beta)

    for m in model.modules():
        if isinstance(m, DyReLUB):
            m.forward = types.MethodType(forward, m)  # type: ignore[method-assign]


def against_cases(plan: Plan, dev: DeviceSetup, path: Path) -> list[CaseResult]:
    """Per thread count: current DyReLU-B step / ReLU step and FILE's DyReLU-B step / the
    same ReLU step, all three arms in one rotation."""
    arch = plan.dyrelu_arch
    relu, now = _setups(plan, dev)
    _, other = _setups(plan, dev)
    other.label = f"DyReLU-B step, {path.name}"
    _use_function(other.model, _load_function(path))
    reps = plan.reps(arch)
    results = []
    for threads in plan.dyrelu_threads or (torch.get_num_threads(),):
        with torch_threads(threads):
            seconds = rotate([Arm(s.label, s.run) for s in (relu, now, other)],
                             repeats=reps.repeats, inner=reps.inner, warmup=reps.warmup,
                             sync=dev.sync)
            for kind, variant in (("dyrelu_step", now), ("dyrelu_step_against", other)):
                paired = Paired(seconds[relu.label], seconds[variant.label])
                name = "" if variant is now else f" ({path.name})"
                results.append(CaseResult(
                    f"{kind}/{arch}/{threads}t", kind,
                    f"DyReLU-B step{name} / ReLU step, {arch}, {_said(threads)}",
                    f"dense training step with every ReLU a DyReLU-B{name} / the same with "
                    f"ReLU, {_said(threads)}; three arms in one rotation", "x",
                    paired.ratio_spread().median, paired.ratio_spread(), DYRELU_STEP_TARGET,
                    {**paired.as_dict(), "arch": arch, "batch_size": plan.batch_size,
                     "threads": threads, "baseline": relu.label, "variant": variant.label,
                     "repeats": reps.repeats}))
    return results


# ----------------------------------------------------------------------------- --profile


def op_profile(run: Any, steps: int) -> list[tuple[str, float, int]]:
    """(op name, self CPU ms per step, calls per step) of ``run()``, largest first."""
    from torch.profiler import ProfilerActivity, profile

    run()  # warm-up outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run()
    rows = [(e.key, e.self_cpu_time_total / 1000.0 / steps, e.count // steps)
            for e in prof.key_averages()]
    return sorted(rows, key=lambda r: -r[1])


def print_profiles(plan: Plan, dev: DeviceSetup, path: Path | None, steps: int = 3,
                   top: int = 12) -> None:
    relu, now = _setups(plan, dev)
    arms = [relu, now]
    if path is not None:
        _, other = _setups(plan, dev)
        other.label = f"DyReLU-B step, {path.name}"
        _use_function(other.model, _load_function(path))
        arms.append(other)
    before = torch.get_num_threads()
    try:
        for threads in plan.dyrelu_threads or (before,):
            torch.set_num_threads(threads)
            for arm in arms:
                rows = op_profile(arm.run, steps)
                total = sum(r[1] for r in rows)
                print(f"\n{arm.label}, {plan.dyrelu_arch}, batch {plan.batch_size}, "
                      f"{_said(threads)}: {total:.1f} ms self CPU per step")
                for name, ms, calls in rows[:top]:
                    print(f"  {ms:8.1f} ms {100 * ms / total:5.1f} %  {calls:5d} calls  {name}")
    finally:
        torch.set_num_threads(before)


def main(argv: list[str] | None = None) -> int:
    from east.bench.planning import find_repo_root
    from east.bench.report import machine_info, now_utc, text_table, write_reports
    from east.bench.workload import resolve_bench_device
    from east.train.devices import loop_settings

    parser = argparse.ArgumentParser(prog="python -m east.bench.dyrelu",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: resnet20, batch 8")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, help="interleaved repeats per thread count")
    parser.add_argument("--against", type=Path, help="another implementation to time too")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory case")
    parser.add_argument("--profile", action="store_true",
                        help="print where each step's time goes instead of timing ratios")
    parser.add_argument("--out", default="reports/dyrelu")
    args = parser.parse_args(argv)
    dev = resolve_bench_device(args.device)
    plan = Plan.make(quick=args.quick, device=args.device)
    if args.repeats:
        reps = plan.reps(plan.dyrelu_arch)
        plan.step_reps[plan.dyrelu_arch] = type(reps)(args.repeats, reps.inner, reps.warmup)
    if args.profile:
        with loop_settings(dev.device):
            print_profiles(plan, dev, args.against)
        return 0
    began = time.perf_counter()
    report: dict[str, Any] = {
        "command": "python -m east.bench.dyrelu " + " ".join(sys.argv[1:] if argv is None
                                                              else argv),
        "mode": "quick" if args.quick else "full", "date": now_utc(),
        "machine": machine_info(dev.label, find_repo_root()),
    }
    with loop_settings(dev.device):
        results = (against_cases(plan, dev, args.against) if args.against
                   else dyrelu_step_cases(plan, dev))
    if not args.no_memory:
        results.append(dyrelu_memory_case(plan, args.device, torch.get_num_threads()))
    report["wall_s"] = time.perf_counter() - began
    report["machine"]["load_average_end"] = list(os.getloadavg())
    write_reports(Path(args.out), report, results)
    print(text_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
