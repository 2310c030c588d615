"""What a grid expands to: cells, their run directories and status, the format's keys."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from east.config import (
    CellConfig,
    DataConfig,
    ModelConfig,
    SparsityConfig,
    TrainConfig,
)
from east.errors import EastError
from east.sparsity.presets import SETTABLE_KNOBS

DEFAULT_GRIDS: tuple[str, ...] = ("params/demo.yaml",)
DEFAULTS_PATH = "params/defaults.yaml"
RUNS_ROOT = "results/runs"

# Override mappings a row, a file's defaults or a defaults.yaml section may hold.
SECTION_KEYS: tuple[str, ...] = ("train", "data", "model", "method_args")
# Axes a row expands over (a scalar is shorthand for a one-element list).
LIST_KEYS: tuple[str, ...] = ("arch", "dataset", "sparsity", "seeds")
ROW_KEYS: tuple[str, ...] = ("name", "label", "protocol", "method", *LIST_KEYS, *SECTION_KEYS)
FILE_DEFAULT_KEYS: tuple[str, ...] = ("protocol", "method", *LIST_KEYS, *SECTION_KEYS)
FILE_KEYS: tuple[str, ...] = ("description", "defaults", "rows")
DEFAULTS_FILE_KEYS: tuple[str, ...] = ("datasets", "archs")
DATASET_SECTION_KEYS: tuple[str, ...] = ("protocol", *SECTION_KEYS)
ARCH_SECTION_KEYS: tuple[str, ...] = SECTION_KEYS

DEFAULT_SEEDS: tuple[int, ...] = (0,)
# Row names appear in error messages as "file:name:", in reports and on the command line.
ROW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")

_SECTION_CLASSES: dict[str, type] = {"train": TrainConfig, "data": DataConfig, "model": ModelConfig}
# The one required field of each section, with a valid stand-in for checking other fields.
_STUBS: dict[str, dict[str, Any]] = {
    "train": {"epochs": 1},
    "data": {"name": "digits"},
    "model": {"arch": "resnet20"},
}
# Fields the row's axes own: set through arch/dataset/method/sparsity, never overridden.
_AXIS_FIELDS: dict[str, dict[str, str]] = {
    "data": {"name": "dataset"},
    "model": {"arch": "arch"},
    "method_args": {"method": "method", "sparsity": "sparsity"},
}
_SPARSITY_FIELDS = frozenset(f.name for f in dataclasses.fields(SparsityConfig))
# Knobs some method lets a row set (the others, e.g. init, are fixed by the presets).
_SETTABLE_KNOBS = SETTABLE_KNOBS
# The keys of each override mapping, in dataclass order (for "did you mean" hints).
_SECTION_FIELDS: dict[str, tuple[str, ...]] = {
    **{name: tuple(f.name for f in dataclasses.fields(cls))
       for name, cls in _SECTION_CLASSES.items()},
    "method_args": tuple(sorted(_SETTABLE_KNOBS)),
}


class GridError(EastError):
    """Every error found in a set of grid files; ``errors`` holds one line per error."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        count = f"{len(self.errors)} error{'s' if len(self.errors) != 1 else ''}"
        super().__init__(f"{count} in params grids: " + "; ".join(self.errors))


@dataclass(frozen=True)
class GridCell:
    """One cell of one row: the resolved config plus the row's display attributes."""

    file: str
    row: str
    label: str
    protocol: str
    config: CellConfig
    run_dir: str

    @property
    def grid(self) -> str:
        return Path(self.file).stem

    @property
    def arch(self) -> str:
        return self.config.model.arch

    @property
    def dataset(self) -> str:
        return self.config.data.name

    @property
    def method(self) -> str:
        return self.config.sparsity.method

    @property
    def sparsity(self) -> float:
        return self.config.sparsity.sparsity

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def cell_id(self) -> str:
        return self.config.cell_id()

    def record(self) -> dict[str, Any]:
        """The cell as flat JSON-able fields (``east grid list --json``, reports)."""
        return {
            "file": self.file,
            "grid": self.grid,
            "row": self.row,
            "label": self.label,
            "protocol": self.protocol,
            "arch": self.arch,
            "dataset": self.dataset,
            "method": self.method,
            "sparsity": self.sparsity,
            "seed": self.seed,
            "cell_id": self.cell_id,
            "run_dir": self.run_dir,
        }


def resolve_run_dir(config: CellConfig, runs_root: str) -> str:
    """The cell's run directory: today's id, or an older id's directory where one exists
    and today's does not (results from before a run-id change count until
    ``east runs migrate`` renames them)."""
    current = config.run_dir(runs_root)
    if not Path(current).exists():
        for legacy in config.legacy_cell_ids():
            path = f"{runs_root}/{legacy}/seed{config.seed}"
            if Path(path).is_dir():
                return path
    return current


def cell_file_config(config: CellConfig) -> CellConfig:
    """What the pipeline writes as ``cell.json``: the config without the row name.

    A cell may be shared by several rows, and renaming a row must not rewrite (and so
    retrain) it: the file holds only what the run depends on, plus the seed and the
    non-semantic execution knobs.
    """
    return dataclasses.replace(config, row="")


def unique_runs(cells: Iterable[GridCell]) -> dict[str, GridCell]:
    """Run directory -> the first cell that asks for it (rows may share runs)."""
    runs: dict[str, GridCell] = {}
    for cell in cells:
        runs.setdefault(cell.run_dir, cell)
    return runs


def _json_status(path: Path) -> str:
    """The ``status`` a summary.json or metrics.json records ('' when none or unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return ""
    return str(data.get("status", "")) if isinstance(data, dict) else ""


def run_status(run_dir: str | Path) -> str:
    """evaluated | diverged | trained | failed | started | new, from a run directory's files.

    ``diverged``: training stopped on a non-finite loss (a result, not retrained);
    ``failed``: the last train or evaluate job failed (``FAILED.json``, see
    ``east.pipeline``).
    """
    from east.pipeline import FAILURE_FILE

    path = Path(run_dir)
    for name, done in (("metrics.json", "evaluated"), ("summary.json", "trained")):
        if (path / name).is_file():
            return "diverged" if _json_status(path / name) == "diverged" else done
    if (path / FAILURE_FILE).is_file():
        return "failed"
    if (path / "checkpoints").is_dir() or (path / "history.jsonl").is_file():
        return "started"
    return "new"
