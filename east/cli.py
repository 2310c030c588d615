"""The ``east`` command. Subcommands import their (torch-heavy) modules only when run."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from east.errors import EastError

Handler = Callable[[argparse.Namespace], int]


def _lazy(target: str) -> Handler:
    """A handler named as 'module:function', imported when the subcommand runs."""

    def run(args: argparse.Namespace) -> int:
        module_name, function_name = target.split(":")
        function: Handler = getattr(importlib.import_module(module_name), function_name)
        return function(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="east",
        description="Extreme Adaptive Sparse Training: train, evaluate and report sparse "
        "ResNets over a params grid.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    grid = sub.add_parser("grid", help="validate and expand params grids into cells")
    grid_sub = grid.add_subparsers(dest="grid_command", metavar="ACTION", required=True)
    check = grid_sub.add_parser("check", help="validate grid files; print every error")
    check.add_argument("files", nargs="*", help="grid YAML files (default: params/demo.yaml)")
    check.set_defaults(func=_lazy("east.grid:cmd_check"))
    listing = grid_sub.add_parser("list", help="list the cells a grid expands to")
    listing.add_argument("files", nargs="*", help="grid YAML files (default: params/demo.yaml)")
    listing.add_argument("--json", action="store_true", help="one JSON document with every cell")
    listing.add_argument("--runs", default="results/runs", help="root of the run directories")
    listing.set_defaults(func=_lazy("east.grid:cmd_list"))

    budget = sub.add_parser("budget", help="per-layer sparsity budget of a configuration")
    budget.add_argument("--arch", required=True)
    budget.add_argument("--dataset", required=True)
    budget.add_argument("--sparsity", type=float, required=True)
    budget.add_argument("--method", default="rigl")
    budget.add_argument("--distribution", choices=("erk", "uniform"), default=None)
    budget.add_argument("--json", action="store_true", help="machine-readable output")
    budget.set_defaults(func=_lazy("east.sparsity.budget:cmd_budget"))

    fetch = sub.add_parser("fetch", help="download and verify a dataset (the only downloader)")
    fetch.add_argument("dataset")
    fetch.add_argument("--root", default="data")
    fetch.set_defaults(func=_lazy("east.data.fetch:cmd_fetch"))

    train = sub.add_parser(
        "train", help="train one cell (resumes from DIR's checkpoints)",
        epilog="exit codes: 0 done, already done or stopped at --max-steps; 2 user error; "
        "73 DIR is locked by another process (--if-locked fail); "
        "75 pre-empted (SIGTERM/SIGUSR1; run again to resume)",
    )
    train.add_argument("cell", help="the cell's resolved config (cell.json)")
    train.add_argument("--out", required=True, help="the cell's run directory")
    train.add_argument("--device", default=None, help="override the config: cpu, cuda, cuda:1")
    train.add_argument("--max-steps", type=int, default=None,
                       help="stop (with a checkpoint) after this many steps: for tests/profiling")
    train.add_argument("--if-locked", choices=("fail", "wait"), default="fail",
                       help="when another process trains DIR: fail at once naming it (exit "
                       "73; default) or wait until it ends, then resume or find DIR done")
    train.set_defaults(func=_lazy("east.train.run:cmd_train"))

    evaluate = sub.add_parser("evaluate", help="evaluate a trained cell into metrics.json")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--device", default=None)
    evaluate.set_defaults(func=_lazy("east.evaluate:cmd_evaluate"))

    export = sub.add_parser("export", help="export a trained model for torchvision")
    export.add_argument("run_dir")
    export.add_argument("--out", required=True, help="path of the state_dict file to write")
    export.set_defaults(func=_lazy("east.train.export:cmd_export"))

    report = sub.add_parser("report", help="aggregate metrics and render tables and plots")
    report.add_argument("files", nargs="*", help="grid YAML files (default: params/demo.yaml)")
    report.add_argument("--runs", default="results/runs")
    report.add_argument("--out", default="reports")
    report.set_defaults(func=_lazy("east.report.cli:cmd_report"))

    bench = sub.add_parser("bench", help="measure sparse-training overheads side by side")
    bench.add_argument("--quick", action="store_true", help="a smoke run in under a minute")
    bench.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    bench.add_argument("--out", default="reports", help="where benchmarks.md/.json go")
    bench.set_defaults(func=_lazy("east.bench:cmd_bench"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EastError as error:
        print(f"east: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("east: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
