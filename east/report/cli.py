"""``east report [FILES] --runs results/runs --out reports``.

The only place that knows about grids: it expands the grid files into the frame of
expected cells that ``east.report.build_report`` takes, then reports what it wrote.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import PurePath
from typing import TYPE_CHECKING

import pandas as pd

from east.config import SparsityConfig
from east.report.aggregate import TRICKS
from east.sparsity.presets import preset_tricks

if TYPE_CHECKING:
    from east.grid import GridCell

def compare_as(method: str, sparsity_config: SparsityConfig) -> str:
    """The method whose published numbers a cell may sit beside: its own, unless the row
    switches an EAST trick away from the method's preset (an ablation variant): then none."""
    own = tuple(bool(getattr(sparsity_config, trick)) for trick in TRICKS)
    return method if own == preset_tricks(method) else ""


def job_logs(run_dir: str, runs: str | None, logs: str | None) -> str:
    """The pipeline's logs of a cell, ``;``-separated: ``<logs>/<rule>/<cell>/seed<k>.log``
    for the train and evaluate jobs (the layout of workflow/rules), or '' when unknown."""
    if not runs or not logs:
        return ""
    try:
        tail = PurePath(run_dir).relative_to(runs)
    except ValueError:
        return ""
    return ";".join(str(PurePath(logs) / rule / f"{tail}.log") for rule in ("train", "evaluate"))


def expected_from_grid(cells: Iterable[GridCell], *, runs: str | None = None,
                       logs: str | None = None) -> pd.DataFrame:
    """``east.grid.GridCell`` objects (grid order) → the expected-cells frame (with the
    cells' job logs when ``runs`` and ``logs``, the roots of both, are given)."""
    records = []
    for cell in cells:
        record = cell.record()
        records.append(
            {
                "row": record["row"],
                "row_label": record["label"],
                "protocol": record["protocol"],
                "grid": record["grid"],
                "arch": record["arch"],
                "dataset": record["dataset"],
                "method": record["method"],
                "sparsity": record["sparsity"],
                "seed": record["seed"],
                "run_dir": record["run_dir"],
                "compare_as": compare_as(record["method"], cell.config.sparsity),
                **{t: bool(getattr(cell.config.sparsity, t)) for t in TRICKS},
                "logs": job_logs(record["run_dir"], runs, logs),
            }
        )
    columns = ["row", "row_label", "protocol", "grid", "arch", "dataset", "method",
               "sparsity", "seed", "run_dir", "compare_as", *TRICKS, "logs"]
    return pd.DataFrame(records, columns=columns)


def cmd_report(args: argparse.Namespace) -> int:
    from east.grid import DEFAULT_GRIDS, load_grids
    from east.report.build import build_report, counts_line

    files = list(args.files or DEFAULT_GRIDS)
    expected = expected_from_grid(load_grids(files, runs_root=args.runs), runs=args.runs,
                                  logs=getattr(args, "logs", None))
    report = build_report(expected, args.out)
    print(f"east report: {counts_line(report.counts)}; {len(report.tables)} tables, "
          f"{len(report.plots)} figures; {report.index}")
    return 0
