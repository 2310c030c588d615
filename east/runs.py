"""``east runs migrate``: rename run directories named by an older run-id scheme.

A run directory is ``<runs>/<cell_id>/seed<k>/`` where ``cell_id`` ends in a hash of the
cell (``east.config``). Older east versions hashed every semantic field; today's hash
covers only the fields that differ from their defaults, so that a new knob renames
nothing. Until migrated, the pipeline finds results under either name
(``east.grid.resolve_run_dir``). Migrating checks each directory's ``cell.json`` (parsed,
seed as in the path, the directory named by one of the cell's ids) before renaming it,
together with its job logs and benchmarks; a dry run (the default) only prints the plan.
Torch-free.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from east.config import CellConfig
from east.errors import EastError
from east.rundir import CELL_FILE

# Per-cell job logs and benchmarks the pipeline keeps beside the runs, named by cell id.
SIDE_TREES = ("logs/train", "logs/evaluate", "benchmarks/train", "benchmarks/evaluate")


@dataclass(frozen=True)
class Move:
    """One run directory's fate: renamed from ``source`` to ``target``, or left (why)."""

    source: Path
    target: Path | None
    reason: str = ""


def plan(runs: Path) -> list[Move]:
    """What migrating ``runs`` would do, one entry per ``<cell>/seed<k>`` directory."""
    moves: list[Move] = []
    for seed_dir in sorted(runs.glob("*/seed*")):
        if not seed_dir.is_dir():
            continue
        cell_file = seed_dir / CELL_FILE
        try:
            raw = json.loads(cell_file.read_text(encoding="utf-8"))
            cell = CellConfig.from_dict(raw, where=str(cell_file))
        except FileNotFoundError:
            moves.append(Move(seed_dir, None, "no cell.json"))
            continue
        except (OSError, ValueError, EastError) as error:
            moves.append(Move(seed_dir, None, f"cell.json unreadable ({error})"))
            continue
        name = seed_dir.parent.name
        if seed_dir.name != f"seed{cell.seed}":
            moves.append(Move(seed_dir, None, f"cell.json says seed {cell.seed}"))
        elif name == cell.cell_id():
            moves.append(Move(seed_dir, None, "up to date"))
        elif name not in cell.legacy_cell_ids():
            moves.append(Move(seed_dir, None, "named by no id of its cell.json"))
        else:
            target = runs / cell.cell_id() / seed_dir.name
            if target.exists():
                moves.append(Move(seed_dir, None, f"{target} exists already"))
            else:
                moves.append(Move(seed_dir, target))
    return moves


def apply(moves: list[Move], runs: Path, results: Path) -> None:
    """Rename every planned directory (and its logs and benchmarks under ``results``)."""
    for move in moves:
        if move.target is None:
            continue
        move.target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(move.source, move.target)
        old_cell, new_cell = move.source.parent.name, move.target.parent.name
        for tree in SIDE_TREES:
            for suffix in (".log", ".tsv"):
                old = results / tree / old_cell / f"{move.source.name}{suffix}"
                if old.exists():
                    new = results / tree / new_cell / old.name
                    new.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(old, new)
                    _remove_if_empty(old.parent)
        _remove_if_empty(move.source.parent)


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty (other seeds, other files): kept
        folder.rmdir()


def cmd_migrate(args: argparse.Namespace) -> int:
    runs = Path(args.runs)
    if not runs.is_dir():
        raise EastError(f"{runs}: no such runs folder")
    moves = plan(runs)
    renamed = [m for m in moves if m.target is not None]
    for move in moves:
        if move.target is not None:
            print(f"{move.source} -> {move.target}")
        elif move.reason != "up to date":
            print(f"{move.source}: left as is: {move.reason}")
    current = sum(1 for m in moves if m.reason == "up to date")
    if args.apply:
        apply(moves, runs, runs.parent)
        print(f"east: renamed {len(renamed)} run directories ({current} already current)")
    else:
        print(f"east: would rename {len(renamed)} run directories ({current} already "
              "current); run again with --apply to do it")
    return 0
