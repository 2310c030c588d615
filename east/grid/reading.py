"""Reading grid YAML: UTF-8 with line numbers, repeated keys as errors, a safe loader."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from east.grid.cells import DEFAULTS_FILE_KEYS, ROW_NAME

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
