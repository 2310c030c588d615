"""Helpers of the pipeline tests: temporary copies of the repository, commands, job counts."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# What a copy of the repository needs to run the workflow and the DVC stage.
_COPIED = ("Snakefile", "east", "workflow", "profiles", "params", "dvc.yaml", ".dvcignore",
           ".gitignore", "results/README.md", "reports/README.md")

# The tiny DAG: digits, resnet20, one epoch. `static-again` resolves to the same cell as
# `static` (another label): it is trained once and reported under both rows.
TINY_GRID = """\
description: tiny test grid
defaults:
  arch: resnet20
  dataset: digits
  sparsity: [0.9]
  train: {epochs: 1}
rows:
  - name: dense
    method: dense
  - name: static
    method: static
  - name: static-again
    label: Static, again
    method: static
"""


def env() -> dict[str, str]:
    """The environment of every command: this venv first, no DVC telemetry, a git identity."""
    out = dict(os.environ)
    out["PATH"] = f"{BIN}{os.pathsep}{out.get('PATH', '')}"
    out["DVC_NO_ANALYTICS"] = "1"
    out.setdefault("GIT_AUTHOR_NAME", "east tests")
    out.setdefault("GIT_AUTHOR_EMAIL", "tests@east.invalid")
    out.setdefault("GIT_COMMITTER_NAME", "east tests")
    out.setdefault("GIT_COMMITTER_EMAIL", "tests@east.invalid")
    out.pop("SNAKEMAKE_PROFILE", None)
    return out


def run(args: list[str], cwd: Path, timeout: float = 900, check: bool = True
        ) -> subprocess.CompletedProcess[str]:
    """Run a command; stdout and stderr together in ``.stdout``."""
    result = subprocess.run(args, cwd=cwd, env=env(), text=True, timeout=timeout,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}")
    return result


def make_repo(dest: Path, grid: str | None = TINY_GRID, *, git: bool = False) -> Path:
    """A copy of the repository's workflow, params and package at ``dest``.

    ``grid`` replaces params/demo.yaml (the default grid); ``git`` makes it a git + DVC
    repository with one commit.
    """
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in _COPIED:
        source = REPO / name
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=ignore)
        else:
            shutil.copy2(source, target)
    if grid is not None:
        (dest / "params/demo.yaml").write_text(grid)
    if git:
        run(["git", "init", "-q"], dest)
        run(["git", "add", "-A"], dest)
        run(["git", "commit", "-qm", "test repository"], dest)
        run([str(BIN / "dvc"), "init", "-q"], dest)
        run(["git", "commit", "-qm", "dvc init"], dest)
    return dest


def copy_repo(source: Path, dest: Path) -> Path:
    """A copy of a test repository with its results, metadata and timestamps."""
    shutil.copytree(source, dest, symlinks=True)
    return dest


def snakemake(cwd: Path, *args: str, check: bool = True, timeout: float = 900
              ) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "snakemake"), *args], cwd, timeout=timeout, check=check)


def job_counts(output: str) -> dict[str, int]:
    """The first "Job stats" table Snakemake printed: rule -> jobs (total excluded)."""
    lines = output.splitlines()
    if not any(line.startswith("Job stats:") for line in lines):
        if "Nothing to be done" in output:
            return {}
        raise AssertionError(f"no job stats in:\n{output}")
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats:"))
    counts: dict[str, int] = {}
    for line in lines[start + 3:]:
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not match or match.group(1) == "total":
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def expected_cells(path: Path) -> list[tuple[str, str, str, float, int]]:
    """(row, arch, dataset, sparsity, seed) of a grid file, from the YAML alone."""
    raw = yaml.safe_load(path.read_text())
    top = raw.get("defaults", {})

    def as_list(value: Any) -> list[Any]:
        return value if isinstance(value, list) else [value]

    out = []
    for row in raw["rows"]:
        merged = {**top, **row}
        if merged["method"] == "dense" and "sparsity" not in row:
            levels = [0.0]
        else:
            levels = [float(s) for s in as_list(merged["sparsity"])]
        for dataset, arch, level, seed in itertools.product(
            as_list(merged["dataset"]), as_list(merged["arch"]), levels,
            as_list(merged.get("seeds", [0])),
        ):
            out.append((row["name"], arch, dataset, level, seed))
    return out
