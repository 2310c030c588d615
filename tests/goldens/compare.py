"""Compare two results trees cell by cell: the same cells must hold the same results.

    python tests/goldens/compare.py RUNS_A RUNS_B [--ignore-keys REGEX]

Cells are matched by their ``cell.json`` (the resolved config and seed), not by directory
name, so a change of run-id scheme is no difference. For every cell present in both:
``summary.json``, ``metrics.json`` and ``history.jsonl`` must be equal apart from run ids
and wall-clock fields; ``model.pt`` and ``best.pt`` must hold the same meta and the same
tensors bit for bit (same names, dtypes, shapes and bytes; ``--ignore-keys`` drops state
keys, e.g. buffers a refactoring removed on purpose). Exit 0 when every common cell
agrees and at least one was compared; the report names every difference.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch

from east.config import CellConfig

# Fields that name the run or time it: they may differ between two runs of one cell.
IGNORED = {"cell_id", "wall_time_s", "time_s", "eval_time_s"}


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in IGNORED}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _cells(root: Path) -> dict[str, Path]:
    out = {}
    for cell_file in sorted(root.glob("*/seed*/cell.json")):
        cell = CellConfig.from_dict(json.loads(cell_file.read_text(encoding="utf-8")))
        out[json.dumps({**cell.to_dict(), "row": ""}, sort_keys=True)] = cell_file.parent
    return out


def _model_differences(a: Path, b: Path, ignore: re.Pattern[str] | None) -> list[str]:
    fa = torch.load(a, map_location="cpu", weights_only=True)
    fb = torch.load(b, map_location="cpu", weights_only=True)
    problems = []
    if _strip(fa.get("meta")) != _strip(fb.get("meta")):
        problems.append(f"{a.name}: meta {fa.get('meta')} != {fb.get('meta')}")
    sa = {k: v for k, v in fa["state_dict"].items() if not (ignore and ignore.search(k))}
    sb = {k: v for k, v in fb["state_dict"].items() if not (ignore and ignore.search(k))}
    if sa.keys() != sb.keys():
        problems.append(f"{a.name}: keys differ: {sorted(set(sa) ^ set(sb))[:5]}")
    for key in sorted(set(sa) & set(sb)):
        x, y = sa[key], sb[key]
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
            problems.append(f"{a.name}: {key} differs")
    return problems


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _history(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def compare(root_a: Path, root_b: Path, ignore: re.Pattern[str] | None) -> tuple[int, list[str]]:
    cells_a, cells_b = _cells(root_a), _cells(root_b)
    common = sorted(set(cells_a) & set(cells_b))
    problems: list[str] = []
    for key in common:
        a, b = cells_a[key], cells_b[key]
        where = f"{a.relative_to(root_a)} ~ {b.relative_to(root_b)}"
        for name in ("summary.json", "metrics.json"):
            if (a / name).exists() != (b / name).exists():
                problems.append(f"{where}: {name} only on one side")
            elif (a / name).exists() and _strip(_json(a / name)) != _strip(_json(b / name)):
                problems.append(f"{where}: {name} differs")
        if _strip(_history(a / "history.jsonl")) != _strip(_history(b / "history.jsonl")):
            problems.append(f"{where}: history.jsonl differs")
        for name in ("model.pt", "best.pt"):
            if (a / name).exists() and (b / name).exists():
                problems += [f"{where}: {p}" for p in _model_differences(a / name, b / name,
                                                                         ignore)]
            elif (a / name).exists() != (b / name).exists():
                problems.append(f"{where}: {name} only on one side")
    return len(common), problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_a", type=Path)
    parser.add_argument("runs_b", type=Path)
    parser.add_argument("--ignore-keys", default=None, help="regex of state keys to skip")
    args = parser.parse_args(argv)
    ignore = re.compile(args.ignore_keys) if args.ignore_keys else None
    count, problems = compare(args.runs_a, args.runs_b, ignore)
    for line in problems:
        print(line)
    print(f"{count} common cells compared, {len(problems)} differences")
    return 0 if count and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
