"""Config, grid validation and lookups shared by the rules.

Everything the workflow knows about cells comes from east.grid: the grid files are
checked against workflow/schemas/grid.schema.yaml and then by east.grid itself, and every
error stops the workflow, one line each, before any job is planned or submitted.

The rules run the `east` command of the environment running Snakemake (the project's own
environment, not a per-rule conda env or container), through shell() in short run blocks,
each wrapped in east.pipeline.attempt (the retry policy and the failure marker).
"""

import json
import shlex
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from east.grid import (
    DEFAULTS_PATH,
    GridLoader,
    cell_file_config,
    check_grids,
    grid_notes,
    unique_runs,
)
from east.io import atomic_write_json
from east.pipeline import attempt as job_attempt
from east.pipeline import report_after_failure


def stop(errors, files):
    """Print one line per error and end the run before anything is planned."""
    count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
    print(*errors, sep="\n", file=sys.stderr)
    print(f"east: error: {count} in {files}: nothing was run", file=sys.stderr)
    sys.exit(1)


if set(config) - {"grids"}:
    unknown = sorted(set(config) - {"grids"})
    stop([f"{key}: unknown key (allowed: grids)" for key in unknown], "--config")
validate(config, "../schemas/config.schema.yaml")

# `--config grids=params/a.yaml` gives a string, `grids=[a,b]` a list.
GRID_FILES = (
    [config["grids"]] if isinstance(config["grids"], str) else list(config["grids"])
)
DEFAULTS_FILE = DEFAULTS_PATH  # east report reads the same file
RUNS_ROOT = "results/runs"
LOGS_ROOT = "results/logs"
# One cell's run directory, with the parts of its content-addressed name that the
# resources in profiles/default need: <arch>-<dataset>-<method>-s<level>-<hash>.
RUN = "results/runs/{arch}-{dataset}-{tail}/seed{seed}"
CELL_LOG = "{arch}-{dataset}-{tail}/seed{seed}"

# Jobs run the `east` of the interpreter running Snakemake (also on SLURM nodes, where
# each job re-runs this file), whether or not its environment is activated.
EAST = f'"{sys.executable}" -m east'


wildcard_constraints:
    arch="[a-z0-9]+",
    dataset="[a-z0-9]+",
    tail="[^/]+",
    seed=r"\d+",


def _schema_problems(path):
    """The first schema violation of one grid file ('' when it matches or is unreadable)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.load(handle, Loader=GridLoader)  # as east.grid reads it
        validate(data, "../schemas/grid.schema.yaml", set_default=False)
    except (OSError, ValueError, yaml.YAMLError):
        return ""  # east.grid reports unreadable files with their position
    except WorkflowError as error:
        return " ".join(str(error).split())[:300]
    return ""


def _load_cells():
    # The data check (ImageNet folders) runs where Snakemake plans the DAG, before any job
    # is submitted; a job on a cluster node re-reads this file and skips it.
    cells, errors = check_grids(
        GRID_FILES,
        defaults_path=DEFAULTS_FILE,
        runs_root=RUNS_ROOT,
        check_data=not workflow.remote_exec,
    )
    if not errors:
        # The schema and east.grid describe the same format; east.grid's messages are the
        # precise ones, so the schema speaks only when it alone finds a problem.
        errors = [
            f"{path}: does not match workflow/schemas/grid.schema.yaml: {problem}"
            for path in GRID_FILES
            if (problem := _schema_problems(path))
        ]
    if errors:
        stop(errors, ", ".join(GRID_FILES))
    return cells


CELLS = _load_cells()
RUNS = unique_runs(CELLS)


onstart:
    # Once, where Snakemake runs (not in every cluster job that re-reads this file).
    for note in grid_notes(CELLS):
        print(f"east: note: {note}", file=sys.stderr)


def cell_of(wildcards):
    """The grid cell a job's wildcards name; an unknown run directory is a user error."""
    run_dir = RUN.format(**wildcards)
    try:
        return RUNS[run_dir]
    except KeyError:
        raise WorkflowError(
            f"{run_dir} is not a cell of the selected grids ({', '.join(GRID_FILES)})"
        ) from None


def data_marker(wildcards):
    """The file fetch_data writes once a cell's dataset is in place and verified."""
    data = cell_of(wildcards).config.data
    return f"{data.root}/{data.name}/FETCHED.json"


def train_gpus(wildcards):
    """GPUs a cell's train job asks for: its train.gpus (an execution knob)."""
    return cell_of(wildcards).config.train.gpus


def run_dir(wildcards):
    return RUN.format(**wildcards)


def write_cell_json(wildcards):
    """Write the cell's resolved config as <run dir>/cell.json (untouched if unchanged)."""
    path = Path(run_dir(wildcards)) / "cell.json"
    config = cell_file_config(cell_of(wildcards).config).to_dict()
    try:
        if json.loads(path.read_text(encoding="utf-8")) == config:
            return
    except (OSError, ValueError):
        pass
    atomic_write_json(path, config)
