"""``east train CELL.json --out DIR``: train one cell, resuming from DIR's checkpoints.

Exit codes (docs/design.md): 0 done, already done, or stopped at ``--max-steps``;
2 user error (one line on stderr); 75 pre-empted by SIGTERM/SIGUSR1 (checkpoint saved, run
the same command again to resume); 65 non-finite loss (last good checkpoint kept).

Multi-GPU: launch the same command under ``torchrun --nproc-per-node N -m east train ...``;
every rank trains on its shard of each batch and only rank 0 writes files.
"""

from __future__ import annotations

import argparse
import json
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


def train_cell(cell: CellConfig, out_dir: str | Path, **options: Any) -> TrainOutcome:
    """Train (or resume, or recognise as done) one cell in ``out_dir``; ``options`` are
    ``Trainer``'s keyword arguments (device, max_steps, callbacks, progress, md5s)."""
    return Trainer(cell, out_dir, **options).run()


def cmd_train(args: argparse.Namespace) -> int:
    cell = read_cell(args.cell)
    outcome = train_cell(cell, args.out, device=args.device, max_steps=args.max_steps)
    from east.train.distributed import env_from_environ

    if env_from_environ().is_main:
        stream = sys.stdout if outcome.exit_code == EXIT_DONE else sys.stderr
        print(outcome.message, file=stream, flush=True)
    return outcome.exit_code
