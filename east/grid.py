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
``<file>:<row>: <field>: <what is wrong>``. Torch-free: the Snakefile and ``east grid``
import this module. YAML is read with ``yaml.safe_load`` only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from east.archs import KNOWN_ARCHS, shared_blocks
from east.config import (
    CellConfig,
    DataConfig,
    ModelConfig,
    SparsityConfig,
    TrainConfig,
    build_section,
)
from east.data.registry import DATASETS
from east.errors import EastError
from east.sparsity.presets import METHODS, PRESETS, resolve_sparsity

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
_SETTABLE_KNOBS = frozenset(
    key for _defaults, allowed in PRESETS.values() for key in allowed
) - {"method", "sparsity"}

Check = tuple[Callable[[Any], bool], str]
# Value ranges that the dataclass types cannot express.
_VALUE_CHECKS: dict[str, dict[str, Check]] = {
    "train": {
        "epochs": (lambda v: v >= 1, "must be >= 1"),
        "batch_size": (lambda v: v >= 1, "must be >= 1"),
        "lr": (lambda v: v > 0, "must be > 0"),
        "momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
        "weight_decay": (lambda v: v >= 0, "must be >= 0"),
        "lr_schedule": (
            lambda v: v in TrainConfig.LR_SCHEDULES,
            f"must be one of {', '.join(TrainConfig.LR_SCHEDULES)}",
        ),
        "lr_gamma": (lambda v: v > 0, "must be > 0"),
        "label_smoothing": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
        "grad_clip": (lambda v: v is None or v > 0, "must be > 0 or null (no clipping)"),
        "grad_clip_scope": (
            lambda v: v in TrainConfig.GRAD_CLIP_SCOPES,
            f"must be one of {', '.join(TrainConfig.GRAD_CLIP_SCOPES)}",
        ),
        "threads": (lambda v: v is None or v >= 1, "must be >= 1 or null (torch's default)"),
        "precision": (
            lambda v: v in TrainConfig.PRECISIONS,
            f"must be one of {', '.join(TrainConfig.PRECISIONS)}",
        ),
        "log_every": (lambda v: v >= 1, "must be >= 1"),
        "checkpoint_minutes": (lambda v: v > 0, "must be > 0"),
        "workers": (lambda v: v >= 0, "must be >= 0"),
        "eval_batch_size": (lambda v: v >= 1, "must be >= 1"),
    },
    "data": {
        "val_fraction": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
        "crop_padding": (lambda v: v >= 0, "must be >= 0"),
        "root": (lambda v: bool(v.strip()), "must not be empty"),
    },
    "model": {
        "stem": (lambda v: v in ("cifar", "imagenet"), "must be one of cifar, imagenet"),
        "conv_init": (
            lambda v: v in ModelConfig.CONV_INITS,
            f"must be one of {', '.join(ModelConfig.CONV_INITS)}",
        ),
    },
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


def cell_file_config(config: CellConfig) -> CellConfig:
    """What the pipeline writes as ``cell.json``: the config without the row name.

    A cell may be shared by several rows, and renaming a row must not rewrite (and so
    retrain) it: the file holds only what the run depends on, plus the seed and the
    non-semantic execution knobs.
    """
    return dataclasses.replace(config, row="")


# ----------------------------------------------------------------------------- reading


class _Errors:
    """An ordered, de-duplicated list of error lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._seen: set[str] = set()

    def add(self, line: str) -> None:
        line = " ".join(line.split())
        if line not in self._seen:
            self._seen.add(line)
            self.lines.append(line)

    def __len__(self) -> int:
        return len(self.lines)


_MISSING = object()


def _read_yaml(path: Path, shown: str, errors: _Errors) -> Any:
    """The parsed document (None for an empty file), or ``_MISSING`` after an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        errors.add(f"{shown}: file not found")
        return _MISSING
    except (OSError, UnicodeDecodeError) as error:
        errors.add(f"{shown}: cannot read: {error}")
        return _MISSING
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        errors.add(f"{shown}: not valid YAML{where}: {problem}")
        return _MISSING


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_keys(raw: dict[str, Any], allowed: Sequence[str], where: str, errors: _Errors) -> bool:
    ok = True
    for key in raw:
        if key not in allowed:
            errors.add(f"{where}: {key}: unknown key (allowed: {', '.join(allowed)})")
            ok = False
    return ok


def _check_section(name: str, raw: Any, where: str, errors: _Errors) -> bool:
    """Check one override mapping field by field, so every bad field is reported."""
    if not isinstance(raw, dict):
        errors.add(f"{where}: {name}: expected a mapping, got {_type_name(raw)}")
        return False
    ok = True
    for key, value in raw.items():
        field_where = f"{where}: {name}.{key}"
        if not isinstance(key, str):
            errors.add(f"{where}: {name}: keys must be strings, got {key!r}")
            ok = False
            continue
        owner = _AXIS_FIELDS.get(name, {}).get(key)
        if owner is not None:
            errors.add(f"{field_where}: set by the row's '{owner}' key, not here")
            ok = False
            continue
        if name == "method_args":
            ok &= _check_method_arg(key, value, where, errors)
            continue
        try:
            build_section(_SECTION_CLASSES[name], {**_STUBS[name], key: value}, f"{where}: {name}")
        except EastError as error:
            errors.add(str(error))
            ok = False
            continue
        check = _VALUE_CHECKS.get(name, {}).get(key)
        if check is not None and not check[0](value):
            errors.add(f"{field_where}: {check[1]}, got {value!r}")
            ok = False
    return ok


def _check_method_arg(key: str, value: Any, where: str, errors: _Errors) -> bool:
    """Type and range of one method knob, checked with a method that accepts it."""
    settable = sorted(_SETTABLE_KNOBS)
    if key not in _SPARSITY_FIELDS:
        errors.add(f"{where}: method_args.{key}: unknown key (allowed: {', '.join(settable)})")
        return False
    if key not in settable:
        errors.add(f"{where}: method_args.{key}: fixed by the method preset, not settable")
        return False
    method = next(m for m, (_d, allowed) in PRESETS.items() if key in allowed)
    try:
        resolve_sparsity({"method": method, key: value}, f"{where}: method_args")
    except EastError as error:
        errors.add(str(error))
        return False
    return True


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _check_axis(key: str, value: Any, where: str, errors: _Errors) -> bool:
    """Check one of arch/dataset/sparsity/seeds: a non-empty list of unique valid items."""
    items = _as_list(value)
    if not items:
        errors.add(f"{where}: {key}: empty list")
        return False
    ok = True
    for item in items:
        problem = _axis_item_problem(key, item)
        if problem:
            errors.add(f"{where}: {key}: {problem}")
            ok = False
    if ok:
        seen: list[Any] = []
        for item in items:
            if item in seen:
                errors.add(f"{where}: {key}: duplicate value {item!r}")
                ok = False
            seen.append(item)
    return ok


def _axis_item_problem(key: str, item: Any) -> str:
    if key == "arch":
        if not isinstance(item, str) or item not in KNOWN_ARCHS:
            return f"unknown arch {item!r} (known: {', '.join(KNOWN_ARCHS)})"
    elif key == "dataset":
        if not isinstance(item, str) or item not in DATASETS:
            return f"unknown dataset {item!r} (known: {', '.join(DATASETS)})"
    elif key == "sparsity":
        if not _is_number(item) or not math.isfinite(item):
            return f"expected a number in [0, 1), got {item!r}"
        if not 0.0 <= item < 1.0:
            return f"{item!r} is out of range [0, 1)"
    elif key == "seeds" and (not _is_int(item) or item < 0):
        return f"expected a non-negative int, got {item!r}"
    return ""


def _check_entry(
    raw: dict[str, Any], allowed: Sequence[str], where: str, errors: _Errors
) -> bool:
    """Check a row, a file's defaults or a defaults.yaml section key by key."""
    ok = _check_keys(raw, allowed, where, errors)
    for key, value in raw.items():
        if key not in allowed or key == "name":
            continue
        if key in ("label", "protocol"):
            if not isinstance(value, str) or not value.strip():
                errors.add(f"{where}: {key}: expected a non-empty string, got {value!r}")
                ok = False
        elif key == "method":
            if not isinstance(value, str) or value not in PRESETS:
                known = ", ".join(METHODS)
                errors.add(f"{where}: method: unknown method {value!r} (known: {known})")
                ok = False
        elif key in LIST_KEYS:
            ok &= _check_axis(key, value, where, errors)
        elif key in SECTION_KEYS:
            ok &= _check_section(key, value, where, errors)
    return ok


# ----------------------------------------------------------------------------- defaults


@dataclass(frozen=True)
class Defaults:
    """The validated content of ``params/defaults.yaml``."""

    datasets: dict[str, dict[str, Any]]
    archs: dict[str, dict[str, Any]]


def load_defaults(path: str | Path = DEFAULTS_PATH) -> Defaults:
    """Read and validate the training defaults file; raise ``GridError`` on any error."""
    errors = _Errors()
    defaults = _load_defaults(Path(path), str(path), errors)
    if errors:
        raise GridError(errors.lines)
    assert defaults is not None
    return defaults


def _load_defaults(path: Path, shown: str, errors: _Errors) -> Defaults | None:
    raw = _read_yaml(path, shown, errors)
    if raw is _MISSING:
        return None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        errors.add(f"{shown}: expected a mapping with keys datasets, archs")
        return None
    before = len(errors)
    _check_keys(raw, DEFAULTS_FILE_KEYS, shown, errors)
    tables: dict[str, dict[str, dict[str, Any]]] = {}
    for key, known, allowed in (
        ("datasets", tuple(DATASETS), DATASET_SECTION_KEYS),
        ("archs", KNOWN_ARCHS, ARCH_SECTION_KEYS),
    ):
        table = raw.get(key) or {}
        if not isinstance(table, dict):
            errors.add(f"{shown}: {key}: expected a mapping, got {_type_name(table)}")
            continue
        tables[key] = {}
        for name, section in table.items():
            where = f"{shown}:{key}.{name}"
            if name not in known:
                errors.add(f"{where}: unknown {key[:-1]} {name!r} (known: {', '.join(known)})")
                continue
            section = section or {}
            if not isinstance(section, dict):
                errors.add(f"{where}: expected a mapping, got {_type_name(section)}")
                continue
            _check_entry(section, allowed, where, errors)
            tables[key][name] = section
    if len(errors) > before:
        return None
    return Defaults(datasets=tables.get("datasets", {}), archs=tables.get("archs", {}))


# ----------------------------------------------------------------------------- grids


@dataclass
class _Row:
    file: str
    name: str
    where: str
    raw: dict[str, Any]
    file_defaults: dict[str, Any]
    ok: bool  # False: errors were reported, do not resolve it


def _file_rows(path: Path, shown: str, errors: _Errors) -> list[_Row]:
    """Check a grid file's shape, its defaults and each row's own keys (named rows out)."""
    raw = _read_yaml(path, shown, errors)
    if raw is _MISSING:
        return []
    if raw is None:
        errors.add(f"{shown}: empty file (expected keys {', '.join(FILE_KEYS)})")
        return []
    if not isinstance(raw, dict):
        errors.add(f"{shown}: expected a mapping with keys {', '.join(FILE_KEYS)}")
        return []
    ok = _check_keys(raw, FILE_KEYS, shown, errors)
    if "description" in raw and not isinstance(raw["description"], str):
        errors.add(f"{shown}: description: expected a string, got {_type_name(raw['description'])}")
        ok = False
    file_defaults = raw.get("defaults") or {}
    if not isinstance(file_defaults, dict):
        errors.add(f"{shown}:defaults: expected a mapping, got {_type_name(file_defaults)}")
        file_defaults, ok = {}, False
    else:
        ok &= _check_entry(file_defaults, FILE_DEFAULT_KEYS, f"{shown}:defaults", errors)
    rows = raw.get("rows")
    if not isinstance(rows, list) or not rows:
        errors.add(f"{shown}: rows: expected a non-empty list of rows, got {rows!r}")
        return []
    out: list[_Row] = []
    for index, row in enumerate(rows):
        label = f"rows[{index}]"
        if not isinstance(row, dict):
            errors.add(f"{shown}:{label}: expected a mapping, got {_type_name(row)}")
            continue
        name = row.get("name")
        if not isinstance(name, str) or not ROW_NAME.match(name):
            problem = "missing" if name is None else f"{name!r} is not a valid row name"
            errors.add(
                f"{shown}:{label}: name: {problem} (use letters, digits and _ . + -, "
                "starting with a letter or digit)"
            )
        else:
            label = name
        where = f"{shown}:{label}"
        row_ok = _check_entry(row, ROW_KEYS, where, errors)
        merged = {**file_defaults, **row}
        for key in ("method", "arch", "dataset"):
            if key not in merged:
                errors.add(f"{where}: {key}: missing (set it in the row or the file's defaults)")
                row_ok = False
        if merged.get("method") not in (None, "dense") and "sparsity" not in merged:
            errors.add(f"{where}: sparsity: missing (a list of levels in [0, 1))")
            row_ok = False
        if label == name:
            out.append(_Row(shown, name, where, row, file_defaults, row_ok and ok))
    return out


def _merge(layers: Iterable[dict[str, Any]], section: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer.get(section) or {})
    return merged


def _resolve_row(row: _Row, defaults: Defaults, runs_root: str, errors: _Errors) -> list[GridCell]:
    merged = {**row.file_defaults, **row.raw}
    method: str = merged["method"]
    archs = _as_list(merged["arch"])
    datasets = _as_list(merged["dataset"])
    if method == "dense" and "sparsity" not in row.raw:
        levels = [0.0]  # a dense row trains once, whatever the file's sparsity levels
    else:
        levels = [float(s) for s in _as_list(merged.get("sparsity", [0.0]))]
    seeds = _as_list(merged.get("seeds", list(DEFAULT_SEEDS)))
    label = row.raw.get("label", row.name)
    _defaults, allowed = PRESETS[method]
    cells: list[GridCell] = []
    for dataset in datasets:
        info = DATASETS[dataset]
        dataset_layer = defaults.datasets.get(dataset, {})
        protocol = merged.get("protocol", dataset_layer.get("protocol", dataset))
        for arch in archs:
            layers = [
                {"data": {"crop_padding": info.crop_padding, "hflip": info.hflip},
                 "model": {"stem": info.stem}},
                dataset_layer,
                defaults.archs.get(arch, {}),
                row.file_defaults,
                row.raw,
            ]
            sections = _build_sections(layers, arch, dataset, row.where, errors)
            # Method knobs from defaults apply where the method has them; the row's own
            # knobs must all be valid for its method (checked by resolve_sparsity).
            knobs = {k: v for k, v in _merge(layers[:-1], "method_args").items() if k in allowed}
            knobs.update(row.raw.get("method_args") or {})
            for level in levels:
                if method == "dense" and level != 0.0:
                    errors.add(
                        f"{row.where}: sparsity: method 'dense' trains at sparsity 0, got {level}"
                    )
                    continue
                sparsity = _resolve_knobs(method, level, knobs, row.where, errors)
                if sections is None or sparsity is None:
                    continue
                for seed in seeds:
                    config = CellConfig(row=row.name, seed=seed, sparsity=sparsity, **sections)
                    cells.append(
                        GridCell(
                            file=row.file,
                            row=row.name,
                            label=label,
                            protocol=protocol,
                            config=config,
                            run_dir=config.run_dir(runs_root),
                        )
                    )
    return cells


def _build_sections(
    layers: list[dict[str, Any]], arch: str, dataset: str, where: str, errors: _Errors
) -> dict[str, Any] | None:
    axis = {"data": {"name": dataset}, "model": {"arch": arch}}
    sections: dict[str, Any] = {}
    for name, cls in _SECTION_CLASSES.items():
        raw = {**_merge(layers, name), **axis.get(name, {})}
        try:
            sections[name] = build_section(cls, raw, f"{where}: {name}")
        except EastError as error:
            errors.add(f"{error} (for {arch} on {dataset})")
            return None
    return sections


def _resolve_knobs(
    method: str, level: float, knobs: dict[str, Any], where: str, errors: _Errors
) -> SparsityConfig | None:
    base = {"method": method, "sparsity": level}
    bad = False
    # One call per knob first, so that every invalid knob is reported, not just the first.
    for key, value in knobs.items():
        try:
            resolve_sparsity({**base, key: value}, f"{where}: method_args")
        except EastError as error:
            errors.add(str(error))
            bad = True
    if bad:
        return None
    try:
        return resolve_sparsity({**base, **knobs}, f"{where}: method_args")
    except EastError as error:
        errors.add(str(error))
        return None


def _check_shared_cells(cells: list[GridCell], errors: _Errors) -> None:
    """Rows may share a cell (same run directory) only if they resolve it identically."""
    first: dict[str, GridCell] = {}
    for cell in cells:
        other = first.setdefault(cell.run_dir, cell)
        if other is cell:
            continue
        mine = cell_file_config(cell.config).to_dict()
        theirs = cell_file_config(other.config).to_dict()
        if mine == theirs:
            continue
        field, a, b = _first_difference(mine, theirs)
        where = f"{cell.file}:{cell.row}"
        errors.add(
            f"{where}: {field}: {a!r} here but {b!r} in row '{other.row}' ({other.file}) for "
            f"the same cell {cell.run_dir} (rows sharing a cell must agree on every field)"
        )


def _first_difference(
    a: dict[str, Any], b: dict[str, Any], prefix: str = ""
) -> tuple[str, Any, Any]:
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            if x != y:
                return _first_difference(x, y, f"{prefix}{key}.")
        elif x != y:
            return f"{prefix}{key}", x, y
    return prefix.rstrip(".") or "config", a, b


def check_grids(
    paths: Sequence[str | Path] | None = None,
    *,
    defaults_path: str | Path = DEFAULTS_PATH,
    runs_root: str = RUNS_ROOT,
) -> tuple[list[GridCell], list[str]]:
    """Expand grid files into cells; return (cells, every error line) without raising."""
    errors = _Errors()
    shown_paths = list(dict.fromkeys(str(p) for p in (paths or DEFAULT_GRIDS)))
    defaults = _load_defaults(Path(defaults_path), str(defaults_path), errors)
    names: dict[str, str] = {}
    cells: list[GridCell] = []
    rows: list[_Row] = []
    for shown in shown_paths:
        for row in _file_rows(Path(shown), shown, errors):
            if row.name in names:
                first = "this file" if names[row.name] == shown else names[row.name]
                errors.add(f"{row.where}: name: duplicate row name (first defined in {first})")
            names.setdefault(row.name, shown)
            if row.ok:
                rows.append(row)
    if defaults is None:
        return [], errors.lines
    for row in rows:
        cells.extend(_resolve_row(row, defaults, runs_root, errors))
    _check_shared_cells(cells, errors)
    return cells, errors.lines


def grid_notes(cells: Iterable[GridCell]) -> list[str]:
    """Valid but probably unintended settings, one line per (row, arch): a row that asks
    for in-stage sharing on a network where no stage has more than R blocks trains exactly
    as it would without sharing."""
    notes: dict[tuple[str, str, str], str] = {}
    for cell in cells:
        ratio = cell.config.sharing_ratio
        if ratio is None or shared_blocks(cell.arch, ratio):
            continue
        notes.setdefault((cell.file, cell.row, cell.arch), (
            f"{cell.file}:{cell.row}: sharing: no effect on {cell.arch} (no stage has more "
            f"than R = {ratio} blocks), so these cells train as without sharing"
        ))
    return list(notes.values())


def load_grids(
    paths: Sequence[str | Path] | None = None,
    *,
    defaults_path: str | Path = DEFAULTS_PATH,
    runs_root: str = RUNS_ROOT,
) -> list[GridCell]:
    """Every cell of the given grid files, in file/row/dataset/arch/sparsity/seed order.

    Raises ``GridError`` listing every error when any file is invalid.
    """
    cells, errors = check_grids(paths, defaults_path=defaults_path, runs_root=runs_root)
    if errors:
        raise GridError(errors)
    return cells


def unique_runs(cells: Iterable[GridCell]) -> dict[str, GridCell]:
    """Run directory -> the first cell that asks for it (rows may share runs)."""
    runs: dict[str, GridCell] = {}
    for cell in cells:
        runs.setdefault(cell.run_dir, cell)
    return runs


def run_status(run_dir: str | Path) -> str:
    """evaluated | trained | started | new, from the files in a run directory."""
    path = Path(run_dir)
    if (path / "metrics.json").is_file():
        return "evaluated"
    if (path / "summary.json").is_file():
        return "trained"
    if (path / "checkpoints").is_dir() or (path / "history.jsonl").is_file():
        return "started"
    return "new"


# ----------------------------------------------------------------------------- commands


def _print_errors(errors: Sequence[str], files: Sequence[str]) -> None:
    for line in errors:
        print(line, file=sys.stderr)
    count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
    print(f"east: error: {count} in {', '.join(files)}", file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    """``east grid check [FILES]``: print every error, one per line; exit 2 on any."""
    files = list(args.files or DEFAULT_GRIDS)
    cells, errors = check_grids(files)
    if errors:
        _print_errors(errors, files)
        return 2
    rows = {(c.file, c.row) for c in cells}
    runs = unique_runs(cells)
    print(
        f"{', '.join(files)}: OK: {len(rows)} rows, {len(cells)} cells, "
        f"{len(runs)} distinct runs", flush=True,
    )
    for note in grid_notes(cells):
        print(f"east: note: {note}", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``east grid list [FILES] [--json]``: every cell with its run directory and status."""
    files = list(args.files or DEFAULT_GRIDS)
    cells, errors = check_grids(files, runs_root=args.runs)
    if errors:
        _print_errors(errors, files)
        return 2
    records = []
    for cell in cells:
        record = cell.record()
        record["status"] = run_status(cell.run_dir)
        records.append(record)
    if args.json:
        for record, cell in zip(records, cells, strict=True):
            record["config"] = cell.config.to_dict()
        json.dump(records, sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    columns = ("row", "arch", "dataset", "method", "sparsity", "seed", "status", "run_dir")
    table = [[str(r[c]) for c in columns] for r in records]
    widths = [max(len(c), *(len(line[i]) for line in table)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for line in table:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    return 0
