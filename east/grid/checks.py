"""Checks of a row, a file's defaults or a defaults.yaml section, key by key."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Sequence
from typing import Any

from east.archs import KNOWN_ARCHS
from east.config import (
    build_section,
)
from east.data.registry import DATASETS
from east.errors import EastError
from east.grid.cells import (
    _AXIS_FIELDS,
    _SECTION_CLASSES,
    _SECTION_FIELDS,
    _SETTABLE_KNOBS,
    _SPARSITY_FIELDS,
    _STUBS,
    LIST_KEYS,
    SECTION_KEYS,
)
from east.grid.reading import _Errors
from east.sparsity.presets import METHODS, PRESETS, resolve_sparsity


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
