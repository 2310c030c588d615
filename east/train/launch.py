"""``east train --ranks N``: one data-parallel rank per GPU on this node, started by torch's
elastic launcher (what ``torchrun --standalone --nproc-per-node N`` runs), with east's exit
codes.

torchrun itself exits 1, with a traceback, both when SLURM's SIGTERM reaches it (after it
has forwarded the signal and the ranks have checkpointed) and when a rank exits 75; the
workflow's retry policy (``east.pipeline.retryable``) must see 75 or the signal's 128 + N to
resume the run rather than mark it failed. So the launch is torch's, and only the outcome is
translated here. Each rank gets its share of the job's CPU threads (``OMP_NUM_THREADS``)
and, in ``east.train.devices.rank_share``, of ``train.threads`` and ``train.workers``.
Single node only: a multi-node rendezvous (srun + torchrun) is not tested.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any

from east.pipeline import EXIT_PREEMPTED
from east.train.devices import rank_share

# Forwarded to the ranks: torchrun's defaults plus SLURM's pre-emption warning signal.
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def job_threads() -> int:
    """The job's CPU threads: Snakemake and SLURM export them as ``OMP_NUM_THREADS``."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return os.cpu_count() or 1


def launch_exit_code(exit_codes: Mapping[int, int]) -> int:
    """One exit code for the job from its failed ranks' codes (rank -> code; a negative
    code is death by that signal): 75 when every failed rank was pre-empted; else the
    lowest failed rank's code, a signal as 128 + N (retryable, as from a shell)."""
    if all(code == EXIT_PREEMPTED for code in exit_codes.values()):
        return EXIT_PREEMPTED
    for _, code in sorted(exit_codes.items()):
        if code != EXIT_PREEMPTED:
            return 128 - code if code < 0 else code
    raise AssertionError("unreachable")


def launch_ranks(ranks: int, east_args: list[str]) -> int:
    """Run ``python -m east <east_args>`` as ``ranks`` local ranks; the job's exit code."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, get_args_parser

    os.environ["OMP_NUM_THREADS"] = str(rank_share(job_threads(), ranks))
    # What torchrun's --standalone sets up (in torch.distributed.run.run, which would exit
    # with torchrun's codes): a private c10d rendezvous on a free local port.
    args = get_args_parser().parse_args([
        "--nnodes=1", f"--nproc-per-node={ranks}", "--rdzv-backend=c10d",
        "--rdzv-endpoint=localhost:0", f"--rdzv-id={uuid.uuid4()}",
        f"--signals-to-handle={FORWARDED_SIGNALS}", "--module", "east", *east_args,
    ])
    config, entry, entry_args = config_from_args(args)
    try:
        elastic_launch(config, entry)(*entry_args)
    except SignalException as stop:
        # The ranks got the signal too and saved a checkpoint (or were killed): retryable.
        return 128 + int(stop.sigval)
    except ChildFailedError as failed:
        failures: dict[int, Any] = failed.failures
        return launch_exit_code({rank: f.exitcode for rank, f in failures.items()})
    return 0
