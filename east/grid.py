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
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import re
import sys
from collections.abc import Iterable, Sequence
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
    resolve_duration,
)
from east.data.registry import DATASETS
from east.errors import EastError
from east.sparsity.presets import METHODS, PRESETS, SETTABLE_KNOBS, resolve_sparsity
from east.sparsity.timing import timing_problems

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


class GridLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` reading ``1e6`` and ``1e-4`` as numbers, as YAML 1.2 (and DVC's
    params reader) do: YAML 1.1 wants ``1.0e+6`` and would hand ``lr: 1e6`` over as text."""


GridLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _read_yaml(path: Path, shown: str, errors: _Errors) -> Any:
    """The parsed document (None for an empty file), or ``_MISSING`` after an error.

    A mapping that repeats a key is an error (YAML itself would keep the last value
    silently); the rest of the file is still read and checked.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        errors.add(f"{shown}: file not found")
        return _MISSING
    except OSError as error:
        errors.add(f"{shown}: cannot read: {error.strerror or error}")
        return _MISSING
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line_start = data.rfind(b"\n", 0, error.start) + 1
        line = data.count(b"\n", 0, error.start) + 1
        column = len(data[line_start:error.start].decode("utf-8")) + 1
        errors.add(f"{shown}: not UTF-8 at line {line}, column {column} (byte "
                   f"0x{data[error.start]:02x}); save the file as UTF-8")
        return _MISSING
    loader = GridLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _repeated_keys(node, shown, errors)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        errors.add(f"{shown}: not valid YAML{where}: {problem}")
        return _MISSING
    finally:
        loader.dispose()


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _repeated_keys(top: yaml.Node, shown: str, errors: _Errors) -> None:
    """Report every key a mapping of the document repeats, with both line numbers.

    Messages are placed like the other errors: ``<file>:<row>: <field>: ...`` inside a
    row (named by its ``name``), ``<file>:defaults: ...``, ``<file>:datasets.<name>: ...``
    in a defaults file, ``<file>: ...`` at the top.
    """
    seen: set[int] = set()  # an anchor's node is visited once, however often it is aliased

    def walk(node: yaml.Node, where: str, prefix: str, depth: int) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item, where, prefix, depth)
            return
        if not isinstance(node, yaml.MappingNode):
            return
        first: dict[str, yaml.Mark] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
                continue
            if key.value in first:
                errors.add(f"{where}: {prefix}{key.value}: "
                           f"{_repeated(key.start_mark, first[key.value])}")
            else:
                first[key.value] = key.start_mark
            if depth == 0 and key.value == "rows" and isinstance(value, yaml.SequenceNode):
                for index, row in enumerate(value.value):
                    walk(row, f"{shown}:{_row_name(row, index)}", "", 1)
            elif depth == 0 and key.value == "defaults":
                walk(value, f"{shown}:defaults", "", 1)
            elif depth == 0 and key.value in DEFAULTS_FILE_KEYS and isinstance(
                    value, yaml.MappingNode):
                seen.add(id(value))
                names: dict[str, yaml.Mark] = {}
                for name, section in value.value:
                    label = getattr(name, "value", "?")
                    if label in names:
                        errors.add(f"{shown}: {key.value}.{label}: "
                                   f"{_repeated(name.start_mark, names[label])}")
                    names.setdefault(label, name.start_mark)
                    walk(section, f"{shown}:{key.value}.{label}", "", 1)
            else:
                walk(value, where, f"{prefix}{key.value}.", depth + 1)

    walk(top, shown, "", 0)


def _repeated(mark: yaml.Mark, first: yaml.Mark) -> str:
    """'repeated key at line 9 (first at line 7); ...', columns when on one line."""
    here, there = f"line {mark.line + 1}", f"line {first.line + 1}"
    if mark.line == first.line:
        here, there = f"{here}, column {mark.column + 1}", f"column {first.column + 1}"
    return f"repeated key at {here} (first at {there}); YAML would silently keep the last one"


def _row_name(row: yaml.Node, index: int) -> str:
    """A row's name as error lines show it: its ``name`` if valid, else ``rows[i]``."""
    if isinstance(row, yaml.MappingNode):
        for key, value in row.value:
            if (getattr(key, "value", None) == "name" and isinstance(value, yaml.ScalarNode)
                    and ROW_NAME.match(value.value)):
                return value.value
    return f"rows[{index}]"


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _did_you_mean(value: Any, choices: Iterable[str]) -> str:
    """', did you mean 'x'?' for a near miss of one of ``choices`` (else '')."""
    if not isinstance(value, str):
        return ""
    match = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.8)
    return f", did you mean '{match[0]}'?" if match else ""


def _section_field(key: str) -> str:
    """'train.epochs' for a row key that belongs in an override mapping (else '')."""
    for name, fields in _SECTION_FIELDS.items():
        if key in fields and key not in _AXIS_FIELDS.get(name, {}):
            return f"{name}.{key}"
    return ""


def _check_keys(raw: dict[str, Any], allowed: Sequence[str], where: str, errors: _Errors) -> bool:
    ok = True
    for key in raw:
        if key not in allowed:
            hint = _did_you_mean(key, allowed)
            if not hint and any(k in allowed for k in SECTION_KEYS):
                field = _section_field(str(key))
                hint = f", did you mean '{field}'?" if field else ""
            errors.add(f"{where}: {key}: unknown key{hint} (allowed: {', '.join(allowed)})")
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
        fields = _SECTION_FIELDS[name]
        if key not in fields:
            errors.add(f"{field_where}: unknown key{_did_you_mean(key, fields)} "
                       f"(allowed: {', '.join(fields)})")
            ok = False
            continue
        try:
            build_section(_SECTION_CLASSES[name], {**_STUBS[name], key: value}, f"{where}: {name}")
        except EastError as error:  # the type, or the field's rule (config's RULES)
            errors.add(str(error))
            ok = False
    return ok


def _check_method_arg(key: str, value: Any, where: str, errors: _Errors) -> bool:
    """Type and range of one method knob, checked with a method that accepts it."""
    settable = sorted(_SETTABLE_KNOBS)
    if key not in _SPARSITY_FIELDS:
        errors.add(f"{where}: method_args.{key}: unknown key{_did_you_mean(key, settable)} "
                   f"(allowed: {', '.join(settable)})")
        return False
    if key not in settable:
        errors.add(f"{where}: method_args.{key}: fixed by the method preset, not settable")
        return False
    method = next(name for name, spec in PRESETS.items() if key in spec.knobs)
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
            hint = _did_you_mean(item, KNOWN_ARCHS)
            return f"unknown arch {item!r}{hint} (known: {', '.join(KNOWN_ARCHS)})"
    elif key == "dataset":
        if not isinstance(item, str) or item not in DATASETS:
            hint = _did_you_mean(item, DATASETS)
            return f"unknown dataset {item!r}{hint} (known: {', '.join(DATASETS)})"
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
                hint = _did_you_mean(value, METHODS)
                errors.add(f"{where}: method: unknown method {value!r}{hint} (known: {known})")
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
    allowed = PRESETS[method].knobs
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
                            run_dir=resolve_run_dir(config, runs_root),
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


def is_defaults_file(path: str | Path, defaults_path: str | Path = DEFAULTS_PATH) -> bool:
    """Whether ``path`` is the training-defaults file (read with every grid, not a grid):
    ``east grid check params/*.yaml`` checks it as what it is."""
    try:
        return Path(path).resolve() == Path(defaults_path).resolve()
    except OSError:
        return False


def check_grids(
    paths: Sequence[str | Path] | None = None,
    *,
    defaults_path: str | Path = DEFAULTS_PATH,
    runs_root: str = RUNS_ROOT,
    check_data: bool = False,
) -> tuple[list[GridCell], list[str]]:
    """Expand grid files into cells; return (cells, every error line) without raising.

    The defaults file may be among ``paths``: it is checked as the defaults file. With
    ``check_data``, the ImageNet folder of every ImageNet cell not yet evaluated is checked
    too (what the submitting host can know before any job starts).
    """
    errors = _Errors()
    shown_paths = list(dict.fromkeys(str(p) for p in (paths or DEFAULT_GRIDS)))
    shown_paths = [p for p in shown_paths if not is_defaults_file(p, defaults_path)]
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
    for cell in cells:
        for line in _schedule_problems(cell)[0]:
            errors.add(line)
    if check_data:
        _check_data(cells, errors)
    return cells, errors.lines


# ----------------------------------------------------------------------------- schedules


def run_length(config: CellConfig) -> tuple[int, int]:
    """(iterations per epoch, iterations in all) as the trainer counts them: the training
    split (the pool less the held-out validation images) in batches of
    ``train.batch_size``, the last one partial."""
    info = DATASETS[config.data.name]
    images = info.split_sizes(config.data.val_fraction)["train"]
    per_epoch = math.ceil(images / config.train.batch_size)
    return per_epoch, per_epoch * config.train.epochs


def _schedule_problems(cell: GridCell) -> tuple[list[str], list[tuple[str, str]]]:
    """(errors, notes) that the run's length implies for one cell.

    Errors are what the trainer would refuse at start (a duration resolving to no
    iteration, a schedule that cannot fit): the same checks, made before submission.
    Notes, as (field, line), are valid settings that do nothing: a schedule point beyond
    the last iteration.
    """
    config, where = cell.config, f"{cell.file}:{cell.row}"
    per_epoch, total = run_length(config)
    run = (f"the run has {total} iterations: {config.train.epochs} epochs of {per_epoch} "
           f"on {cell.dataset}")
    s, t = config.sparsity, config.train

    def it(value: Any) -> int:
        return resolve_duration(value, per_epoch, total)

    def point(value: Any) -> str:  # 'iteration 4000', "'120%' = iteration 65"
        return f"iteration {value}" if isinstance(value, int) else (
            f"{value!r} = iteration {it(value)}")

    errors = [f"{where}: {line}" for line in timing_problems(s, per_epoch, total,
                                                              prefix="method_args", run=run)]
    notes: list[tuple[str, str]] = []
    if t.lr_schedule != "constant" and it(t.warmup) >= total > 0:
        errors.append(f"{where}: train.warmup: {t.warmup!r} is {it(t.warmup)} iterations, "
                      f"not shorter than the run ({run})")
    if errors:
        return errors, notes
    if s.drop != "none":  # drop-and-grow: due every interval in (start, update_end)
        interval, end = it(s.update_interval), min(it(s.update_end), total)
        start = s.cycles * it(s.cycle_length) if s.cyclic else 0
        first = (start // interval + 1) * interval
        if first >= end and interval >= total:
            every = (f"{interval} iterations" if isinstance(s.update_interval, int)
                     else f"{s.update_interval!r} = {interval} iterations")
            notes.append(("update_interval", (
                f"{where}: method_args.update_interval: every {every} is beyond the run "
                f"({run}): no mask update ever happens")))
        elif first >= end:
            after = " after the cycles" if s.cyclic else ""
            notes.append(("update_interval", (
                f"{where}: method_args.update_interval: {s.update_interval!r} puts the first "
                f"update{after} at iteration {first}, not before update_end "
                f"{s.update_end!r} (iteration {end}; {run}): no mask update ever happens")))
    if t.lr_schedule == "multistep":
        for milestone in t.lr_milestones:
            if it(milestone) >= total:
                notes.append((f"lr_milestones {milestone!r}", (
                    f"{where}: train.lr_milestones: {point(milestone)} is beyond the run "
                    f"({run}): the lr never decays there")))
    if s.dyrelu and it(s.dyrelu_end) >= total:
        notes.append(("dyrelu_end", (
            f"{where}: method_args.dyrelu_end: {point(s.dyrelu_end)} is beyond the run "
            f"({run}): DyReLU is never fully phased out (β > 0 at the last step)")))
    return errors, notes


def _check_data(cells: Iterable[GridCell], errors: _Errors) -> None:
    """One line per row whose ImageNet folder is missing or malformed (cells already
    evaluated need no data and are skipped); each folder is scanned once."""
    from east.data.layout import validate_imagenet

    verdicts: dict[str, str] = {}
    for cell in cells:
        if cell.dataset != "imagenet" or (Path(cell.run_dir) / "metrics.json").is_file():
            continue
        root = cell.config.data.root
        if root not in verdicts:
            try:
                validate_imagenet(root, expected_classes=DATASETS["imagenet"].num_classes)
                verdicts[root] = ""
            except EastError as error:
                verdicts[root] = str(error)
        if verdicts[root]:
            errors.add(f"{cell.file}:{cell.row}: data.root: {verdicts[root]}")


def grid_notes(cells: Iterable[GridCell]) -> list[str]:
    """Valid but probably unintended settings, one line per (row, arch or run length):

    - a row that asks for in-stage sharing on a network where no stage has more than R
      blocks trains exactly as it would without sharing;
    - a schedule point beyond the run's last iteration (an ``update_interval`` longer than
      the run: no mask update ever happens; an lr milestone never reached; DyReLU never
      phased out).
    """
    notes: dict[tuple[str, ...], str] = {}
    for cell in cells:
        ratio = cell.config.sharing_ratio
        if ratio is not None and not shared_blocks(cell.arch, ratio):
            notes.setdefault((cell.file, cell.row, "sharing", cell.arch), (
                f"{cell.file}:{cell.row}: sharing: no effect on {cell.arch} (no stage has "
                f"more than R = {ratio} blocks), so these cells train as without sharing"
            ))
        for _field, line in _schedule_problems(cell)[1]:
            notes.setdefault((line,), line)
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


# ----------------------------------------------------------------------------- commands


def _print_errors(errors: Sequence[str], files: Sequence[str]) -> None:
    for line in errors:
        print(line, file=sys.stderr)
    count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
    print(f"east: error: {count} in {', '.join(files)}", file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    """``east grid check [FILES]``: print every error, one per line; exit 2 on any."""
    files = list(args.files or DEFAULT_GRIDS)
    cells, errors = check_grids(files, check_data=not getattr(args, "no_data", False))
    if errors:
        _print_errors(errors, files)
        if any(": data.root: " in line for line in errors):
            print("east: `east grid check --no-data` checks the grids without their data",
                  file=sys.stderr)
        return 2
    grids = [f for f in files if not is_defaults_file(f)]
    if grids:
        rows = {(c.file, c.row) for c in cells}
        print(
            f"{', '.join(grids)}: OK: {len(rows)} rows, {len(cells)} cells, "
            f"{len(unique_runs(cells))} distinct runs", flush=True,
        )
    for shown in files:
        if is_defaults_file(shown):
            print(f"{shown}: OK: the training defaults (read with every grid; not a grid)",
                  flush=True)
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
