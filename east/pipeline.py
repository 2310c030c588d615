"""What the workflow's job rules wrap around the ``east`` CLI: one attempt of a step, the
retry policy, and the failure marker that stops wasted retries and that reports read.

Snakemake retries a failed job whatever its exit code (``retries:`` has no filter, and a
job's exit code is not passed on), so the policy lives here, in the job itself:

- exit 75 (pre-empted or out of time: ``east train`` saved a checkpoint) and death by a
  signal (a time limit's SIGTERM/SIGKILL) are *retryable*: the next attempt resumes;
- any other non-zero exit (2: a user error such as an unreadable checkpoint or a missing
  dataset; 1: a bug) is *permanent*: a retry would fail the same way.

Each failed attempt writes ``<run dir>/FAILED.json`` (rule, exit code, attempt, whether
retryable, log) and ``FAILED.log``, a copy of the job's log. An attempt after the first that
finds a permanent failure there stops at once, without running anything (on SLURM the retry
job is still submitted by Snakemake, and exits within seconds of starting, torch never
imported). Attempt 1 of a new Snakemake run always runs: it clears the marker, so fixing
the cause and rerunning retries the cell. A successful step removes the marker.

Snakemake deletes a job's log before every attempt; each attempt therefore starts by
putting the earlier attempts' output back (from ``FAILED.log``), so the log holds every
attempt, each under an ``east: <rule> attempt N of M`` line, and says why a failure is
not retried exactly once. Torch-free (the Snakefile imports it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from east.io import atomic_write_bytes, atomic_write_json

FAILURE_FILE = "FAILED.json"
FAILURE_LOG = "FAILED.log"
EXIT_PREEMPTED = 75  # east train: checkpoint saved, run again to resume
# Signals that end an attempt from outside: SLURM's time limit and pre-emption (TERM, then
# KILL after KillWait), a node going down (HUP, KILL).
_RETRY_SIGNALS = frozenset({signal.SIGTERM, signal.SIGKILL, signal.SIGUSR1, signal.SIGHUP})


class StepFailed(Exception):
    """A step's attempt failed; the message is one line for Snakemake's error report."""


def retryable(exit_code: int) -> bool:
    """Whether another attempt can succeed: pre-empted (75) or killed by a signal (a
    negative code from Python, or 128 + N from the shell)."""
    if exit_code == EXIT_PREEMPTED:
        return True
    number = -exit_code if exit_code < 0 else exit_code - 128 if exit_code > 128 else 0
    return number in _RETRY_SIGNALS


def read_failure(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The failure marker of a run directory (None when there is none or it is unreadable)."""
    try:
        data = json.loads((Path(run_dir) / FAILURE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def failure_text(failure: dict[str, Any]) -> str:
    """'train exited 2 in attempt 1 of 4': what a marker says, for logs and reports."""
    attempts = failure.get("attempts")
    of = f" in attempt {failure.get('attempt', '?')} of {attempts}" if isinstance(
        attempts, int) and attempts > 1 else ""
    return f"{failure.get('rule', '?')} exited {failure.get('exit_code', '?')}{of}"


def _append(log: Path, line: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")


@contextmanager
def attempt(rule: str, run_dir: str | os.PathLike[str], log: str | os.PathLike[str],
            number: int = 1, *, attempts: int = 1) -> Iterator[None]:
    """Run the body (the rule's ``shell(...)`` call) as attempt ``number`` of ``attempts``.

    Raises ``StepFailed`` before the body when an earlier attempt of this Snakemake run
    failed permanently, and after it when it fails (``subprocess.CalledProcessError``,
    which Snakemake's ``shell`` raises), having written the marker and one line saying
    why in ``log``.
    """
    run_dir, log = Path(run_dir), Path(log)
    marker, saved = run_dir / FAILURE_FILE, run_dir / FAILURE_LOG
    previous = read_failure(run_dir)
    if (previous is not None and previous.get("rule") == rule and saved.is_file()
            and not (log.is_file() and log.stat().st_size)):
        _restore(saved, log)  # the earlier attempts' output, which Snakemake just deleted
    if number > 1 and previous is not None and previous.get("rule") == rule and not (
            previous.get("retryable", True)):
        # The log already says why (written once, by the attempt that failed).
        raise StepFailed(f"{run_dir}: not retried: {failure_text(previous)}, which a retry "
                         f"would repeat; see {log}")
    if number == 1 or (previous is not None and previous.get("rule") != rule):
        marker.unlink(missing_ok=True)
        saved.unlink(missing_ok=True)
    _append(log, f"east: {rule} attempt {number} of {attempts} on {socket.gethostname()} "
                 f"at {time.strftime('%Y-%m-%d %H:%M:%S')}")
    try:
        yield
    except subprocess.CalledProcessError as error:
        code = error.returncode
        again = retryable(code)
        failure = {"rule": rule, "exit_code": code, "attempt": number, "attempts": attempts,
                   "retryable": again, "log": str(log),
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(marker, failure)
        if attempts == 1:
            why = f"east: {rule} exited {code}; fix the cause (above) and run snakemake again"
        elif not again:
            why = (f"east: {rule} exited {code}: an error that a retry would repeat, so it "
                   "is not retried; fix the cause (above) and run snakemake again")
        elif number < attempts:
            why = (f"east: {rule} exited {code} (pre-empted or out of time; the checkpoint "
                   f"is kept): attempt {number + 1} resumes it")
        else:
            why = (f"east: {rule} exited {code} (pre-empted or out of time) on the last "
                   f"attempt ({number} of {attempts}); the next snakemake run resumes it")
        _append(log, why)
        _save(log, saved)
        raise StepFailed(f"{run_dir}: {failure_text(failure)}; see {log}") from None
    marker.unlink(missing_ok=True)
    saved.unlink(missing_ok=True)


# A failed attempt's log is kept whole up to this size (then its last part).
_SAVED_LOG_BYTES = 4 << 20


def _save(log: Path, saved: Path) -> None:
    with log.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - _SAVED_LOG_BYTES))
        data = handle.read()
    if size > _SAVED_LOG_BYTES:
        data = b"east: (earlier output cut)\n" + data[data.find(b"\n") + 1:]
    atomic_write_bytes(saved, data)


def _restore(saved: Path, log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    data = saved.read_bytes()
    with log.open("ab") as handle:  # empty: Snakemake removed it before this attempt
        handle.write(data)


def report_after_failure(command: str, log: str | os.PathLike[str], *,
                         incomplete: str | os.PathLike[str] | None = None) -> None:
    """Render the report of what finished after a failed Snakemake run (its ``onerror``).

    ``command`` is the report rule's command line; its output is appended to ``log``. Runs
    where Snakemake runs, after every job that could run has (``--keep-going``) or the
    running ones ended. ``incomplete``: the report rule's completion file, removed first,
    so that Snakemake sees this report as unfinished and renders it again next time.
    """
    if incomplete is not None:
        Path(incomplete).unlink(missing_ok=True)
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as handle:
        handle.write("east: some jobs failed; rendering what finished\n")
        handle.flush()
        code = subprocess.run(command, shell=True, stdout=handle, stderr=subprocess.STDOUT,
                              check=False).returncode
    if code == 0:
        print("east: some jobs failed; the report shows what finished and lists the failed "
              f"and missing cells with their logs: reports/index.html ({log})", file=sys.stderr)
    else:
        print(f"east: some jobs failed, and so did the report (exit {code}); see {log}",
              file=sys.stderr)
