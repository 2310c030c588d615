"""The ``east`` command. Subcommands import their (torch-heavy) modules only when run."""

from __future__ import annotations

import argparse
import importlib
import os
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
    check.add_argument("files", nargs="*", help="grid YAML files (default: params/demo.yaml); "
                       "params/defaults.yaml is checked as the defaults file")
    check.add_argument("--no-data", action="store_true",
                       help="skip the dataset folder check (ImageNet), e.g. on a laptop")
    check.set_defaults(func=_lazy("east.grid:cmd_check"))
    listing = grid_sub.add_parser("list", help="list the cells a grid expands to")
    listing.add_argument("files", nargs="*", help="grid YAML files (default: params/demo.yaml)")
    listing.add_argument("--json", action="store_true", help="one JSON document with every cell")
    listing.add_argument("--runs", default="results/runs", help="root of the run directories")
    listing.set_defaults(func=_lazy("east.grid:cmd_list"))

    runs = sub.add_parser("runs", help="manage run directories")
    runs_sub = runs.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    migrate = runs_sub.add_parser(
        "migrate", help="rename run directories named by an older run-id scheme",
        description="Check each run directory's cell.json and rename directories named by an "
        "older east's run id to today's (with their logs and benchmarks). Dry run unless "
        "--apply.")
    migrate.add_argument("--runs", default="results/runs", help="root of the run directories")
    migrate.add_argument("--apply", action="store_true", help="rename (default: print the plan)")
    migrate.set_defaults(func=_lazy("east.runs:cmd_migrate"))

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
    train.add_argument("--ranks", type=int, default=1,
                       help="data-parallel ranks on this node, one per GPU (started as "
                       "torchrun --standalone does; gloo ranks on a CPU-only machine)")
    train.set_defaults(func=_lazy("east.train.run:cmd_train"))

    evaluate = sub.add_parser("evaluate", help="evaluate a trained cell into metrics.json")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--device", default=None)
    evaluate.set_defaults(func=_lazy("east.evaluate:cmd_evaluate"))

    export = sub.add_parser(
        "export", help="export a trained model: torchvision state_dict or sparse (.east)",
        epilog="weight-shared models are materialised (each user gets its own copy of the "
        "weights); only the final network (DyReLU beta = 0) exports")
    export.add_argument("run_dir")
    export.add_argument("--format", choices=("torchvision", "sparse"), default="torchvision",
                        help="torchvision: a torchvision.models.resnet* state_dict; sparse: "
                        "the deployable sparse model for `east infer` (default: torchvision)")
    export.add_argument("--out", default=None, help="the file to write (required for "
                        "torchvision; sparse: default RUN_DIR/model.east)")
    export.add_argument("--no-measure", action="store_true",
                        help="sparse: skip timing it against the dense model (the speed-up "
                        "that RUN_DIR/inference.json and the report show)")
    export.set_defaults(func=_lazy("east.train.export:cmd_export"))

    infer = sub.add_parser("infer", help="classify images with a sparse export (.east)")
    infer.add_argument("model", help="a sparse model written by `east export --format sparse`")
    infer.add_argument("images", nargs="+", help="image files or folders of them, or .npy/.pt "
                       "arrays (uint8 pixels, or float network input already normalised)")
    infer.add_argument("--logits", default=None, help="also write the logits (.npy or .pt)")
    infer.add_argument("--batch-size", type=int, default=64)
    infer.set_defaults(func=_lazy("east.deploy.infer:cmd_infer"))

    report = sub.add_parser("report", help="aggregate metrics and render tables and plots")
    report.add_argument("files", nargs="*", help="grid YAML files (default: params/demo.yaml)")
    report.add_argument("--runs", default="results/runs")
    report.add_argument("--logs", default="results/logs",
                        help="the pipeline's job logs, listed for cells that are not done")
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
    except BrokenPipeError:
        # The reader went away (`east grid list --json | head`): stop quietly, as cat
        # does; point stdout at /dev/null so that the exit-time flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
