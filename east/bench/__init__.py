"""``east bench``: what sparse training costs, measured side by side in one process.

Each case times a variant against its baseline alternately (``east.bench.timing``) on the
project's real code paths — the training loop's ``train_step``, the sparsifier's
``after_backward``/``after_step``, the ``InMemoryLoader``, ``snakemake -n`` — and is judged
against a target (``east.bench.cases``). The results go to ``<out>/benchmarks.md`` and
``<out>/benchmarks.json``; the table is printed. Definitions: docs/benchmarks.md.

Importing this package is cheap (no torch); the measurements import it when they run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["cmd_bench", "run_bench"]


def _progress(message: str) -> None:
    print(f"east bench: {message}", file=sys.stderr, flush=True)


def run_bench(*, quick: bool = False, device: str = "cpu", out: str | Path = "reports",
              command: str | None = None,
              log: Callable[[str], None] = _progress) -> dict[str, Any]:
    """Run every case, write the reports, return the JSON document."""
    from east.bench import cases as C
    from east.bench.planning import find_repo_root
    from east.bench.workload import resolve_bench_device
    from east.train.devices import torch_threads

    dev = resolve_bench_device(device)  # EastError first, before any work
    plan = C.Plan.make(quick=quick, device=device)
    root = find_repo_root()
    with torch_threads(plan.threads):
        return _run(plan, dev, device, root, out, command, log)


def _run(plan: Any, dev: Any, device: str, root: Path | None, out: str | Path,
         command: str | None, log: Callable[[str], None]) -> dict[str, Any]:
    import os

    import torch

    from east.bench import cases as C
    from east.bench.dyrelu import dyrelu_memory_case, dyrelu_step_cases
    from east.bench.inference import InferencePlan, sparse_inference_cases
    from east.bench.memory import memory_case
    from east.bench.planning import planning_case
    from east.bench.report import machine_info, now_utc, text_table, write_reports
    from east.bench.results import CaseResult
    from east.train.devices import loop_settings

    quick = plan.quick
    began = time.perf_counter()
    report: dict[str, Any] = {
        "command": command or ("east bench" + (" --quick" if quick else "")
                               + f" --device {device}"),
        "mode": "quick" if quick else "full",
        "date": now_utc(),
        "machine": machine_info(dev.label, root),
        "plan": {"batch_size": plan.batch_size, "image_size": plan.image_size,
                 "sparsity": C.SPARSITY, "grid": plan.grid},
    }
    results: list[CaseResult] = []

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        log(f"{name} ...")
        start = time.perf_counter()
        value = fn()
        log(f"{name} done in {time.perf_counter() - start:.1f} s")
        return value

    # Cheap, failure-prone cases first: a broken grid should not cost minutes of timing.
    results.append(timed(f"planning ({plan.grid})", lambda: planning_case(plan.grid,
                                                                          root=root)))
    with loop_settings(dev.device):
        dense_step: dict[str, float] = {}
        for arch in plan.masked_archs:
            case, dense_s = timed(f"masked step ({arch})",
                                  lambda a=arch: C.masked_step_case(a, plan, dev))
            results.append(case)
            dense_step[arch] = dense_s
        results += timed(f"DyReLU step ({plan.dyrelu_arch})",
                         lambda: dyrelu_step_cases(plan, dev))
        results.append(timed(f"EAST step ({plan.east_arch})",
                             lambda: C.east_step_case(plan, dev)))
        results += timed(f"mask updates ({plan.update_arch})",
                         lambda: C.update_cases(plan, dev))
        step_arch = plan.masked_archs[-1]
        results += timed("input pipeline", lambda: C.pipeline_cases(
            plan, dev, dense_step[step_arch], step_arch))
    inference = InferencePlan.make(quick)
    results += timed(f"sparse inference ({inference.arch}, CPU)",
                     lambda: sparse_inference_cases(inference, log))
    results.append(timed(f"peak memory ({plan.memory_arch})", lambda: memory_case(
        arch=plan.memory_arch, sparse=C.RIGL, dense=C.DENSE, device=device,
        batch_size=plan.batch_size, image_size=plan.image_size,
        repeats=plan.memory_repeats, threads=torch.get_num_threads())))
    results.append(timed(f"DyReLU peak memory ({plan.dyrelu_arch})",
                         lambda: dyrelu_memory_case(plan, device, torch.get_num_threads())))

    report["wall_s"] = time.perf_counter() - began
    report["machine"]["load_average_end"] = list(os.getloadavg())
    md_path, json_path = write_reports(Path(out), report, results)
    print(text_table(results))
    log(f"wrote {md_path} and {json_path} ({report['wall_s']:.0f} s)")
    return {**report, "cases": [c.as_dict() for c in results]}


def cmd_bench(args: argparse.Namespace) -> int:
    """``east bench [--quick] [--device cpu|cuda] [--out DIR]``."""
    command = "east bench" + (" --quick" if args.quick else "") + f" --device {args.device}"
    if args.out != "reports":
        command += f" --out {args.out}"
    run_bench(quick=args.quick, device=args.device, out=args.out, command=command)
    return 0
