"""Params grids: read, validate and expand YAML rows into resolved cells.

A grid file holds optional file-level ``defaults`` and a list of ``rows``; each row names a
method configuration and expands to cells = arch x dataset x sparsity x seeds. Every value
is resolved in this order (later wins):

1. the dataclass defaults of ``east.config``;
2. the dataset registry (``model.stem``, ``data.crop_padding``, ``data.hflip``);
3. ``params/defaults.yaml``: the dataset's section, then the arch's section;
4. the grid file's ``defaults``;
5. the row's own overrides;

then the method preset fills every sparsity knob the row left unset
(``east.sparsity.presets.resolve_sparsity``). The format is documented in
``params/README.md``.

Validation collects every error of every file before giving up; each reads
``<file>:<row>: <field>: <what is wrong>``. Beyond the format it finds what the submitting
host can know before any job starts: repeated YAML keys (with their lines), schedules the
run's length makes impossible, and (``check_data``) missing or malformed ImageNet folders;
``grid_notes`` lists valid settings that do nothing. Torch-free: the Snakefile and ``east
grid`` import this module. YAML is read with ``GridLoader``, a ``yaml.SafeLoader``.

The package: ``cells`` (the format's keys, ``GridCell``, run directories and their
status), ``reading`` (YAML with line numbers; repeated keys), ``checks`` (a row's keys and
values), ``expand`` (rows into cells: the defaults' layers, presets, shared cells),
``schedules`` (run-length errors and notes, the ImageNet folder), ``commands`` (``east
grid check`` / ``east grid list``).
"""

from __future__ import annotations

from east.grid.cells import (
    DEFAULT_GRIDS,
    DEFAULTS_PATH,
    FILE_DEFAULT_KEYS,
    ROW_KEYS,
    RUNS_ROOT,
    GridCell,
    GridError,
    cell_file_config,
    resolve_run_dir,
    run_status,
    unique_runs,
)
from east.grid.commands import cmd_check, cmd_list
from east.grid.expand import Defaults, check_grids, is_defaults_file, load_defaults, load_grids
from east.grid.reading import GridLoader
from east.grid.schedules import grid_notes, run_length

__all__ = [
    "DEFAULTS_PATH",
    "DEFAULT_GRIDS",
    "FILE_DEFAULT_KEYS",
    "ROW_KEYS",
    "RUNS_ROOT",
    "Defaults",
    "GridCell",
    "GridError",
    "GridLoader",
    "cell_file_config",
    "check_grids",
    "cmd_check",
    "cmd_list",
    "grid_notes",
    "is_defaults_file",
    "load_defaults",
    "load_grids",
    "resolve_run_dir",
    "run_length",
    "run_status",
    "unique_runs",
]
