"""What a cell's run length implies: impossible schedules (errors), idle settings (notes),
and (``check_data``) the ImageNet folder."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from east.archs import shared_blocks
from east.config import (
    CellConfig,
    resolve_duration,
)
from east.data.registry import DATASETS
from east.errors import EastError
from east.grid.cells import GridCell
from east.grid.reading import _Errors
from east.sparsity.timing import timing_problems

# ----------------------------------------------------------------------------- schedules


def run_length(config: CellConfig) -> tuple[int, int]:
    """(iterations per epoch, iterations in all) as the trainer counts them: the training
    split (the pool less the held-out validation images) in batches of
    ``train.batch_size``, the last one partial."""
    info = DATASETS[config.data.name]
    images = info.split_sizes(config.data.val_fraction)["train"]
    per_epoch = math.ceil(images / config.train.batch_size)
    return per_epoch, per_epoch * config.train.epochs


def _schedule_problems(cell: GridCell) -> tuple[list[str], list[tuple[str, str]]]:
    """(errors, notes) that the run's length implies for one cell.

    Errors are what the trainer would refuse at start (a duration resolving to no
    iteration, a schedule that cannot fit): the same checks, made before submission.
    Notes, as (field, line), are valid settings that do nothing: a schedule point beyond
    the last iteration.
    """
    config, where = cell.config, f"{cell.file}:{cell.row}"
    per_epoch, total = run_length(config)
    run = (f"the run has {total} iterations: {config.train.epochs} epochs of {per_epoch} "
           f"on {cell.dataset}")
    s, t = config.sparsity, config.train

    def it(value: Any) -> int:
        return resolve_duration(value, per_epoch, total)

    def point(value: Any) -> str:  # 'iteration 4000', "'120%' = iteration 65"
        return f"iteration {value}" if isinstance(value, int) else (
            f"{value!r} = iteration {it(value)}")

    errors = [f"{where}: {line}" for line in timing_problems(s, per_epoch, total,
                                                              prefix="method_args", run=run)]
    notes: list[tuple[str, str]] = []
    if t.lr_schedule != "constant" and it(t.warmup) >= total > 0:
        errors.append(f"{where}: train.warmup: {t.warmup!r} is {it(t.warmup)} iterations, "
                      f"not shorter than the run ({run})")
    if errors:
        return errors, notes
    if s.drop != "none":  # drop-and-grow: due every interval in (start, update_end)
        interval, end = it(s.update_interval), min(it(s.update_end), total)
        start = s.cycles * it(s.cycle_length) if s.cyclic else 0
        first = (start // interval + 1) * interval
        if first >= end and interval >= total:
            every = (f"{interval} iterations" if isinstance(s.update_interval, int)
                     else f"{s.update_interval!r} = {interval} iterations")
            notes.append(("update_interval", (
                f"{where}: method_args.update_interval: every {every} is beyond the run "
                f"({run}): no mask update ever happens")))
        elif first >= end:
            after = " after the cycles" if s.cyclic else ""
            notes.append(("update_interval", (
                f"{where}: method_args.update_interval: {s.update_interval!r} puts the first "
                f"update{after} at iteration {first}, not before update_end "
                f"{s.update_end!r} (iteration {end}; {run}): no mask update ever happens")))
    if t.lr_schedule == "multistep":
        for milestone in t.lr_milestones:
            if it(milestone) >= total:
                notes.append((f"lr_milestones {milestone!r}", (
                    f"{where}: train.lr_milestones: {point(milestone)} is beyond the run "
                    f"({run}): the lr never decays there")))
    if s.dyrelu and it(s.dyrelu_end) >= total:
        notes.append(("dyrelu_end", (
            f"{where}: method_args.dyrelu_end: {point(s.dyrelu_end)} is beyond the run "
            f"({run}): DyReLU is never fully phased out (β > 0 at the last step)")))
    return errors, notes


def _check_data(cells: Iterable[GridCell], errors: _Errors) -> None:
    """One line per row whose ImageNet folder is missing or malformed (cells already
    evaluated need no data and are skipped); each folder is scanned once."""
    from east.data.layout import validate_imagenet

    verdicts: dict[str, str] = {}
    for cell in cells:
        if cell.dataset != "imagenet" or (Path(cell.run_dir) / "metrics.json").is_file():
            continue
        root = cell.config.data.root
        if root not in verdicts:
            try:
                validate_imagenet(root, expected_classes=DATASETS["imagenet"].num_classes)
                verdicts[root] = ""
            except EastError as error:
                verdicts[root] = str(error)
        if verdicts[root]:
            errors.add(f"{cell.file}:{cell.row}: data.root: {verdicts[root]}")


def grid_notes(cells: Iterable[GridCell]) -> list[str]:
    """Valid but probably unintended settings, one line per (row, arch or run length):

    - a row that asks for in-stage sharing on a network where no stage has more than R
      blocks trains exactly as it would without sharing;
    - a schedule point beyond the run's last iteration (an ``update_interval`` longer than
      the run: no mask update ever happens; an lr milestone never reached; DyReLU never
      phased out).
    """
    notes: dict[tuple[str, ...], str] = {}
    for cell in cells:
        ratio = cell.config.sharing_ratio
        if ratio is not None and not shared_blocks(cell.arch, ratio):
            notes.setdefault((cell.file, cell.row, "sharing", cell.arch), (
                f"{cell.file}:{cell.row}: sharing: no effect on {cell.arch} (no stage has "
                f"more than R = {ratio} blocks), so these cells train as without sharing"
            ))
        for _field, line in _schedule_problems(cell)[1]:
            notes.setdefault((line,), line)
    return list(notes.values())
