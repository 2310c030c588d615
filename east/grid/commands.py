"""``east grid check`` and ``east grid list``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from east.grid.cells import DEFAULT_GRIDS, run_status, unique_runs
from east.grid.expand import check_grids, is_defaults_file
from east.grid.schedules import grid_notes

# ----------------------------------------------------------------------------- commands


def _print_errors(errors: Sequence[str], files: Sequence[str]) -> None:
    for line in errors:
        print(line, file=sys.stderr)
    count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
    print(f"east: error: {count} in {', '.join(files)}", file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    """``east grid check [FILES]``: print every error, one per line; exit 2 on any."""
    files = list(args.files or DEFAULT_GRIDS)
    cells, errors = check_grids(files, check_data=not getattr(args, "no_data", False))
    if errors:
        _print_errors(errors, files)
        if any(": data.root: " in line for line in errors):
            print("east: `east grid check --no-data` checks the grids without their data",
                  file=sys.stderr)
        return 2
    grids = [f for f in files if not is_defaults_file(f)]
    if grids:
        rows = {(c.file, c.row) for c in cells}
        print(
            f"{', '.join(grids)}: OK: {len(rows)} rows, {len(cells)} cells, "
            f"{len(unique_runs(cells))} distinct runs", flush=True,
        )
    for shown in files:
        if is_defaults_file(shown):
            print(f"{shown}: OK: the training defaults (read with every grid; not a grid)",
                  flush=True)
    for note in grid_notes(cells):
        print(f"east: note: {note}", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``east grid list [FILES] [--json]``: every cell with its run directory and status."""
    files = list(args.files or DEFAULT_GRIDS)
    cells, errors = check_grids(files, runs_root=args.runs)
    if errors:
        _print_errors(errors, files)
        return 2
    records = []
    for cell in cells:
        record = cell.record()
        record["status"] = run_status(cell.run_dir)
        records.append(record)
    if args.json:
        for record, cell in zip(records, cells, strict=True):
            record["config"] = cell.config.to_dict()
        json.dump(records, sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    columns = ("row", "arch", "dataset", "method", "sparsity", "seed", "status", "run_dir")
    table = [[str(r[c]) for c in columns] for r in records]
    widths = [max(len(c), *(len(line[i]) for line in table)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for line in table:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    return 0
