"""``east report [FILES] --runs results/runs --out reports``.

The only place that knows about grids: it expands the grid files into the frame of
expected cells that ``east.report.build_report`` takes, then reports what it wrote.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import TYPE_CHECKING

import pandas as pd

from east.config import SparsityConfig
from east.sparsity.presets import PRESETS

if TYPE_CHECKING:
    from east.grid import GridCell

# The tricks that make a row a variant of its method rather than the method itself.
_TRICKS = ("dyrelu", "sharing", "cyclic")


def compare_as(method: str, sparsity_config: SparsityConfig) -> str:
    """The method whose published numbers a cell may sit beside: its own, unless the row
    switches an EAST trick away from the method's preset (an ablation variant): then none."""
    preset = PRESETS.get(method, ({}, frozenset()))[0]
    for trick in _TRICKS:
        if bool(getattr(sparsity_config, trick)) != bool(preset.get(trick, False)):
            return ""
    return method


def expected_from_grid(cells: Iterable[GridCell]) -> pd.DataFrame:
    """``east.grid.GridCell`` objects (grid order) → the expected-cells frame."""
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
            }
        )
    columns = ["row", "row_label", "protocol", "grid", "arch", "dataset", "method",
               "sparsity", "seed", "run_dir", "compare_as"]
    return pd.DataFrame(records, columns=columns)


def cmd_report(args: argparse.Namespace) -> int:
    from east.grid import DEFAULT_GRIDS, load_grids
    from east.report.build import build_report, counts_line

    files = list(args.files or DEFAULT_GRIDS)
    expected = expected_from_grid(load_grids(files, runs_root=args.runs))
    report = build_report(expected, args.out)
    print(f"east report: {counts_line(report.counts)}; {len(report.tables)} tables, "
          f"{len(report.plots)} figures; {report.index}")
    return 0
