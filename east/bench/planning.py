"""Snakemake planning time of a grid: ``snakemake -n`` in a subprocess, jobs per second.

The dry run does everything a real invocation does before the first job starts: it loads
the Snakefile, validates and expands the grid (``east.grid``), builds the DAG and checks
which outputs exist. Its wall time, from process start to exit (interpreter start-up and
imports included: that is what a user waits for), and the job count from its "Job stats"
table give jobs per second. ``--nolock`` keeps it from contending with a running pipeline.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from east.bench.results import CaseResult
from east.errors import EastError

_TOTAL = re.compile(r"^total\s+(\d+)\s*$", re.MULTILINE)
SNAKEFILE = Path("Snakefile")


def find_repo_root() -> Path | None:
    """The checkout holding the Snakefile: the current directory, or the directory
    above the east package (an editable install)."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (candidate / SNAKEFILE).is_file():
            return candidate
    return None


def parse_job_count(output: str) -> int:
    """The ``total`` row of Snakemake's "Job stats" table (0 when nothing is to be done)."""
    match = _TOTAL.findall(output)
    if match:
        return int(match[-1])
    if "Nothing to be done" in output:
        return 0
    raise ValueError("no 'Job stats' total in snakemake's output")


def planning_case(grid: str, *, root: Path | None = None, timeout: float = 900) -> CaseResult:
    root = root or find_repo_root()
    if root is None:
        raise EastError(f"bench planning: no {SNAKEFILE} in {Path.cwd()} or beside the east "
                        "package; run east bench from the repository root")
    if not (root / grid).is_file():
        raise EastError(f"bench planning: grid file {root / grid} not found")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    jobs, seconds, command = _dry_run(grid, root, env, timeout, force=False)
    notes = ""
    if jobs == 0:
        # Every output exists (the pipeline ran): plan the whole DAG again instead.
        jobs, seconds, command = _dry_run(grid, root, env, timeout, force=True)
        notes = "every output existed, so the whole DAG was planned (--forceall)"
    if jobs == 0:
        raise EastError(f"bench planning: snakemake planned no jobs for {grid}")
    return CaseResult(
        f"planning/{Path(grid).stem}", "planning", f"Snakemake planning, {grid}",
        "jobs in the DAG of `snakemake -n` / its wall time (start-up included)", "jobs/s",
        jobs / seconds, None, None,
        {"grid": grid, "jobs": jobs, "seconds": seconds, "command": " ".join(command[1:])},
        notes,
    )


def _dry_run(grid: str, root: Path, env: dict[str, str], timeout: float,
             force: bool) -> tuple[int, float, list[str]]:
    command = [sys.executable, "-m", "snakemake", "-n", "--nolock", "--config",
               f"grids=[{grid}]"]
    if force:
        command.append("--forceall")
    began = time.perf_counter()
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=timeout,
                          env=env)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise EastError(f"bench planning: `snakemake -n` on {grid} failed "
                        f"(exit {done.returncode}): {last}")
    try:
        jobs = parse_job_count(done.stdout + "\n" + done.stderr)
    except ValueError as error:
        raise EastError(f"bench planning: {error} (grid {grid})") from None
    return jobs, seconds, command
