"""Expanding rows into cells: the defaults' layers, the method preset, shared cells."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from east.archs import KNOWN_ARCHS
from east.config import (
    CellConfig,
    SparsityConfig,
    build_section,
)
from east.data.registry import DATASETS
from east.errors import EastError
from east.grid.cells import (
    _SECTION_CLASSES,
    ARCH_SECTION_KEYS,
    DATASET_SECTION_KEYS,
    DEFAULT_GRIDS,
    DEFAULT_SEEDS,
    DEFAULTS_FILE_KEYS,
    DEFAULTS_PATH,
    FILE_DEFAULT_KEYS,
    FILE_KEYS,
    ROW_KEYS,
    ROW_NAME,
    RUNS_ROOT,
    GridCell,
    GridError,
    cell_file_config,
    resolve_run_dir,
)
from east.grid.checks import _as_list, _check_entry, _check_keys, _type_name
from east.grid.reading import _MISSING, _Errors, _read_yaml
from east.grid.schedules import _check_data, _schedule_problems
from east.sparsity.presets import PRESETS, resolve_sparsity

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
