"""Training accuracy around EAST's DyReLU phase-out, for docs/cpu-paper.md.

Reads the run directories of grid files through the report's own collector and prints a
Markdown table: per row and sparsity, the mean ± sample std over seeds of the training
accuracy at the start of the phase-out (epoch E/4: beta is still 1), its lowest value
while beta falls (epochs E/4 .. E/2), the value once beta is 0 (epoch E/2), and at the end
(epoch E). Rows without DyReLU sit beside them at the same epochs.

Run from the repository root, after the grid has been trained and evaluated:
    python docs/cpu-paper/phase_out.py params/cpu-paper.yaml [params/cpu-paper-long.yaml]
"""

from __future__ import annotations

import sys

import pandas as pd

from east.grid import load_grids
from east.report.aggregate import collect
from east.report.cli import expected_from_grid


def _mean_std(values: pd.Series) -> str:
    values = 100 * values.dropna()
    if len(values) < 2:
        return f"{values.mean():.1f}" if len(values) else "–"
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}"


def phase_out_table(files: list[str]) -> str:
    expected = expected_from_grid(load_grids(files))
    collected = collect(expected)
    labels = dict(zip(expected["row"], expected["row_label"], strict=False))
    results = collected.results
    lines = ["| row | sparsity | E | seeds | train acc at E/4 | lowest in E/4..E/2 | at E/2 "
             "| at E | test acc |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (row, sparsity), runs in collected.history.groupby(["row", "sparsity"], sort=False):
        by_epoch = runs.pivot_table(index="seed", columns="epoch", values="train_acc")
        epochs = int(by_epoch.columns.max())
        start, end = epochs // 4, epochs // 2
        lowest = by_epoch.loc[:, start:end].min(axis=1)
        test = results.loc[(results["row"] == row) & (results["sparsity"] == sparsity),
                           "test_acc"]
        lines.append(
            f"| {labels.get(row, row)} | {100 * sparsity:g} % | {epochs} | {len(by_epoch)} "
            f"| {_mean_std(by_epoch[start])} | {_mean_std(lowest)} "
            f"| {_mean_std(by_epoch[end])} | {_mean_std(by_epoch[epochs])} "
            f"| {_mean_std(test)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(phase_out_table(sys.argv[1:] or ["params/cpu-paper.yaml"]))
