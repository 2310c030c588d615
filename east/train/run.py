"""``east train CELL.json --out DIR``: train one cell, resuming from DIR's checkpoints.

Exit codes (docs/design.md): 0 done (or diverged: a result, ``status: diverged`` in
summary.json), already done, or stopped at ``--max-steps``; 2 user error (one line on
stderr); 75 pre-empted by SIGTERM/SIGUSR1 (checkpoint saved, run the same command again to
resume); 73 the run directory is locked by another process (``--if-locked fail``; nothing
was read or written, the other process's run is untouched).

One writer per run directory (``east.runlock``): the exclusive lock on ``DIR/.lock`` is
taken before anything in DIR is read and held until the command ends.

Multi-GPU: ``--ranks N`` starts N ranks on this node (``east.train.launch``: torchrun's
launcher with east's exit codes); the same command under any launcher that sets
``RANK``/``WORLD_SIZE`` works too. Every rank trains on its shard of each batch and only
rank 0 writes files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from east.config import CellConfig
from east.errors import EastError
from east.train.loop import EXIT_DONE, Trainer, TrainOutcome


def read_cell(path: str | Path) -> CellConfig:
    """A resolved cell from its JSON file; every problem is a one-line EastError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EastError(f"{path}: no such cell file") from None
    except OSError as error:
        raise EastError(f"{path}: cannot read ({error.strerror})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise EastError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    return CellConfig.from_dict(raw, where=str(path))


def train_cell(cell: CellConfig, out_dir: str | Path, *, if_locked: str = "fail",
               **options: Any) -> TrainOutcome:
    """Train (or resume, or recognise as done) one cell in ``out_dir`` under its exclusive
    run lock; ``if_locked`` is ``fail`` (raise ``RunLocked``, exit 73) or ``wait``;
    ``options`` are ``Trainer``'s keyword arguments (device, max_steps, callbacks,
    progress, md5s)."""
    from east.runlock import RunLock

    trainer = Trainer(cell, out_dir, **options)  # validates options; reads nothing in DIR
    if not trainer.env.is_main:
        # Under torchrun only rank 0 writes, so only rank 0 locks (a rank's lock would
        # refuse its own rank 0). Rank 0 refused: torchrun stops the other ranks.
        return trainer.run()
    with RunLock(out_dir, "train", if_locked=if_locked):
        _remove_partial_checkpoints(Path(out_dir))
        return trainer.run()


def _remove_partial_checkpoints(out_dir: Path) -> None:
    """Delete the temp files of checkpoint writes a kill interrupted (``atomic_write``'s
    ``.ckpt-*.tmp``; a checkpoint's size each). Only safe under the run lock: no other
    process writes checkpoints then."""
    from east.train.checkpoint import checkpoint_dir

    folder = checkpoint_dir(out_dir)
    if folder.is_dir():
        for path in folder.glob(".ckpt-*.tmp"):
            path.unlink(missing_ok=True)


def cmd_train(args: argparse.Namespace) -> int:
    cell = read_cell(args.cell)  # a bad cell file fails here, before any rank starts
    if args.ranks < 1:
        raise EastError(f"--ranks: must be >= 1, got {args.ranks}")
    if args.ranks > 1 and "WORLD_SIZE" not in os.environ:
        from east.train.launch import launch_ranks

        options = ["--if-locked", args.if_locked]
        if args.device is not None:
            options += ["--device", args.device]
        if args.max_steps is not None:
            options += ["--max-steps", str(args.max_steps)]
        return launch_ranks(args.ranks, ["train", str(args.cell), "--out", str(args.out),
                                         *options])
    outcome = train_cell(cell, args.out, device=args.device, max_steps=args.max_steps,
                         if_locked=args.if_locked)
    from east.train.distributed import env_from_environ

    if env_from_environ().is_main:
        stream = sys.stdout if outcome.exit_code == EXIT_DONE else sys.stderr
        print(outcome.message, file=stream, flush=True)
    return outcome.exit_code
