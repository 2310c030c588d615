"""Collect the per-cell files of every expected cell into tidy pandas tables.

The input is an *expected cells* frame (one line per cell the grids ask for), so that a
cell that never ran still appears, as ``missing``, instead of silently vanishing from the
report. Required columns: ``row, arch, dataset, method, sparsity, seed, run_dir``; optional:
``row_label`` (display name, default the row), ``protocol`` (e.g. ``paper``, ``cpu-scale``),
``grid`` (the grid file's stem), ``compare_as`` (the method whose published numbers this
row may be compared with; default ``method``, empty for none: e.g. a RigL row with one EAST
trick switched on is not RigL), ``logs`` (``;``-separated job logs of the cell: those that
exist are listed for a cell that is not done). Row labels shared by two rows of one table
get the row name appended.

A cell's status:
- ``done``: ``metrics.json`` exists, parses, and agrees with the grid (arch, dataset,
  method, sparsity, seed); its test accuracy is a finite fraction.
- ``diverged``: training stopped on a non-finite loss (``"status": "diverged"`` in
  ``metrics.json``, or in ``summary.json`` before evaluation): a result without accuracy,
  shown as "diverged" in its table cell, as papers do.
- ``failed``: ``metrics.json`` exists but is unreadable, incomplete, or disagrees with the
  grid; or the last train/evaluate job failed (the pipeline's ``FAILED.json``).
- ``incomplete``: the run directory exists without ``metrics.json`` (training unfinished, or
  trained but not evaluated; the note says which).
- ``missing``: no run directory.

Seed statistics use only ``done`` cells: mean, and the *sample* standard deviation
(``ddof=1``; undefined, NaN, for a single seed). Accuracies stay fractions here; the tables
and figures show percent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from east.errors import EastError
from east.pipeline import failure_text, read_failure
from east.rundir import INFERENCE_FILE
from east.sparsity.presets import TRICK_SWITCHES, preset_tricks

REQUIRED_COLUMNS = ("row", "arch", "dataset", "method", "sparsity", "seed", "run_dir")
OPTIONAL_COLUMNS = ("row_label", "protocol", "grid")
# EAST's tricks, one boolean column each (the cell's config; absent: the method's preset).
TRICKS = TRICK_SWITCHES
STATUSES = ("done", "diverged", "incomplete", "failed", "missing")
CELL_KEY = ["arch", "dataset", "row", "sparsity", "seed"]
GROUP_KEY = ["arch", "dataset", "row", "sparsity"]

# Numeric fields copied from metrics.json (missing ones become NaN).
METRIC_FIELDS = (
    "test_acc",
    "test_acc_best_val",
    "best_val_acc",
    "n_masked",
    "n_masked_unique",
    "nnz_masked",
    "density_masked",
    "n_params",
    "nnz_params",
    "density_all",
    "flops_inference",
    "flops_inference_dense",
    "flops_train",
    "flops_train_vs_dense",
    "effective_nnz",
    "effective_sparsity",
    "final_beta",
    "wall_time_s",
)
HISTORY_FIELDS = (
    "epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "density",
    "density_full", "beta", "time_s",
)


@dataclass(frozen=True)
class Collected:
    """Everything read from the run directories.

    ``results``: one line per expected cell (status, note, metrics).
    ``history``: one line per (done cell, epoch) from ``history.jsonl``.
    ``layers``: one line per (done cell, masked layer) from ``metrics.json`` ``layers``.
    """

    results: pd.DataFrame
    history: pd.DataFrame
    layers: pd.DataFrame


def normalize_expected(expected: pd.DataFrame) -> pd.DataFrame:
    """Check the expected-cells frame and fill the optional columns; keeps the given order."""
    missing = [c for c in REQUIRED_COLUMNS if c not in expected.columns]
    if missing:
        raise EastError(f"expected cells: missing column(s) {', '.join(missing)}")
    out = expected.reset_index(drop=True).copy()
    for column in ("row", "arch", "dataset", "method", "run_dir"):
        out[column] = out[column].astype(str)
    try:
        out["sparsity"] = out["sparsity"].astype(float)
        out["seed"] = out["seed"].astype(int)
    except (TypeError, ValueError) as error:
        raise EastError(f"expected cells: sparsity/seed must be numbers ({error})") from None
    bad = out[(out["sparsity"] < 0) | (out["sparsity"] >= 1)]
    if len(bad):
        first = bad.iloc[0]
        raise EastError(
            f"expected cells: row {first['row']}: sparsity {first['sparsity']} is not in [0, 1)"
        )
    if "row_label" not in out.columns:
        out["row_label"] = out["row"]
    out["row_label"] = [
        str(label) if isinstance(label, str) and label else row
        for label, row in zip(out["row_label"], out["row"], strict=True)
    ]
    for column in ("protocol", "grid"):
        if column not in out.columns:
            out[column] = ""
        out[column] = out[column].fillna("").astype(str)
    if "compare_as" not in out.columns:
        out["compare_as"] = out["method"]
    out["compare_as"] = out["compare_as"].fillna("").astype(str)
    for index, trick in enumerate(TRICKS):
        given = out[trick] if trick in out.columns else [None] * len(out)
        out[trick] = [preset_tricks(method)[index] if pd.isna(value) else bool(value)
                      for value, method in zip(given, out["method"], strict=True)]
    if "logs" not in out.columns:
        out["logs"] = ""
    out["logs"] = out["logs"].fillna("").astype(str)
    out["row_label"] = _unique_labels(out)
    duplicated = out.duplicated(subset=CELL_KEY, keep="first")
    if duplicated.any():
        first = out[duplicated].iloc[0]
        raise EastError(
            f"expected cells: row {first['row']} lists {first['arch']}/{first['dataset']} "
            f"sparsity {first['sparsity']} seed {first['seed']} twice"
        )
    return out


def _unique_labels(cells: pd.DataFrame) -> list[str]:
    """Labels shared by several rows of one table get the row name appended.

    Two grids may both have a row labelled "RigL" on the same arch and dataset (the paper
    grid and the ablation grid); the table and the legends must tell them apart.
    """
    rows_per_label: dict[tuple[str, str, str], set[str]] = {}
    for arch, dataset, label, row in zip(
        cells["arch"], cells["dataset"], cells["row_label"], cells["row"], strict=True
    ):
        rows_per_label.setdefault((arch, dataset, label), set()).add(row)
    return [
        label if len(rows_per_label[(arch, dataset, label)]) == 1 or label == row
        else f"{label} ({row})"
        for arch, dataset, label, row in zip(
            cells["arch"], cells["dataset"], cells["row_label"], cells["row"], strict=True
        )
    ]


def _read_json(path: Path) -> tuple[Any, str]:
    """(document, "") or (None, reason) for an unreadable file."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), ""
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return None, f"{path.name} unreadable: {type(error).__name__}: {error}"


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def diverged_text(record: Any) -> str:
    """'epoch 2, step 17; last finite loss 2.31': where a run diverged (its note)."""
    if not isinstance(record, dict):
        return "non-finite training loss"
    where = ", ".join(f"{key} {record[key]}" for key in ("epoch", "step")
                      if record.get(key) is not None)
    loss = _number(record.get("last_finite_loss"))
    last = f"last finite loss {loss:.4g}" if math.isfinite(loss) else ""
    return "; ".join(part for part in (where, last) if part) or "non-finite training loss"


def _existing_logs(logs: str) -> str:
    return "; ".join(p for p in logs.split(";") if p and Path(p).is_file())


def _check_metrics(metrics: Any, cell: pd.Series) -> str:
    """Why a metrics.json cannot be used for this cell, or "" when it can."""
    if not isinstance(metrics, dict):
        return "metrics.json is not a JSON object"
    for field in ("arch", "dataset", "method"):
        if field in metrics and str(metrics[field]) != cell[field]:
            return f"metrics.json says {field} {metrics[field]!r}, the grid says {cell[field]!r}"
    if "sparsity" in metrics and not math.isclose(
        _number(metrics["sparsity"]), cell["sparsity"], rel_tol=0, abs_tol=1e-9
    ):
        return (
            f"metrics.json says sparsity {metrics['sparsity']!r}, "
            f"the grid says {cell['sparsity']}"
        )
    if "seed" in metrics and metrics["seed"] != cell["seed"]:
        return f"metrics.json says seed {metrics['seed']!r}, the grid says {cell['seed']}"
    if metrics.get("status") == "diverged":
        return ""  # a result without accuracy
    acc = _number(metrics.get("test_acc"))
    if not (math.isfinite(acc) and 0.0 <= acc <= 1.0):
        return f"metrics.json test_acc {metrics.get('test_acc')!r} is not a fraction in [0, 1]"
    return ""


def _read_history(path: Path) -> list[dict[str, float]]:
    """Epoch lines of history.jsonl; a torn last line (run killed mid-write) is skipped."""
    records: list[dict[str, float]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return records
    for line in lines:
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(item, dict) and "epoch" in item:
            records.append({k: _number(item.get(k)) for k in HISTORY_FIELDS})
    return records


def _layer_records(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    layers = metrics.get("layers")
    if not isinstance(layers, list):
        return []
    out = []
    for index, layer in enumerate(layers):
        if not isinstance(layer, dict):
            continue
        users = layer.get("shared_users")
        out.append(
            {
                "layer_index": index,
                "layer": str(layer.get("name", f"layer{index}")),
                "numel": _number(layer.get("numel")),
                "nnz": _number(layer.get("nnz")),
                "density": _number(layer.get("density")),
                "effective_nnz": _number(layer.get("effective_nnz")),
                "shared_users": len(users) if isinstance(users, list) else 1,
            }
        )
    return out


def inference_speedups(run_dir: Path) -> dict[str, float]:
    """Measured sparse-inference speed-ups from ``inference.json`` (written by ``east export
    --format sparse``; docs/design.md): the median at batch 64 (or the largest batch
    measured) as ``inference_speedup``, at batch 1 as ``inference_speedup_b1``; NaN when the
    file, or its measurement, is absent or unreadable."""
    out = {"inference_speedup": math.nan, "inference_speedup_b1": math.nan}
    path = run_dir / INFERENCE_FILE
    if not path.is_file():
        return out
    record, _ = _read_json(path)
    measured = record.get("measured") if isinstance(record, dict) else None
    batches = measured.get("batches") if isinstance(measured, dict) else None
    if not isinstance(batches, dict) or not batches:
        return out

    def median(key: str) -> float:
        item = batches.get(key)
        speedup = item.get("speedup") if isinstance(item, dict) else None
        return _number(speedup.get("median")) if isinstance(speedup, dict) else math.nan

    sizes = sorted((int(k) for k in batches if str(k).isdigit()), reverse=True)
    main = "64" if "64" in batches else (str(sizes[0]) if sizes else "")
    out["inference_speedup"] = median(main)
    out["inference_speedup_b1"] = median("1")
    return out


def collect(expected: pd.DataFrame) -> Collected:
    """Read every expected cell's run directory (see the module docstring for statuses)."""
    cells = normalize_expected(expected)
    results: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    layers: list[dict[str, Any]] = []
    for _, cell in cells.iterrows():
        run_dir = Path(cell["run_dir"])
        record: dict[str, Any] = {c: cell[c] for c in cells.columns}
        record.update({field: math.nan for field in METRIC_FIELDS})
        record.update({"cell_id": "", "n_collapsed_layers": math.nan, "collapsed_layers": ""})
        record.update(inference_speedup=math.nan, inference_speedup_b1=math.nan,
                      best_epoch=math.nan, best_nnz=math.nan, best_selection="",
                      environment="")
        metrics_path = run_dir / "metrics.json"
        summary, _ = _read_json(run_dir / "summary.json") if run_dir.is_dir() else (None, "")
        summary = summary if isinstance(summary, dict) else {}
        failure = read_failure(run_dir)
        if metrics_path.is_file():
            metrics, reason = _read_json(metrics_path)
            reason = reason or _check_metrics(metrics, cell)
            if reason:
                record.update(status="failed", note=reason)
            elif metrics.get("status") == "diverged":
                record.update(status="diverged", note=diverged_text(metrics.get("diverged")))
                record["cell_id"] = str(metrics.get("cell_id", run_dir.parent.name))
            else:
                record.update(status="done", note="")
                record.update({f: _number(metrics.get(f)) for f in METRIC_FIELDS})
                record["cell_id"] = str(metrics.get("cell_id", run_dir.parent.name))
                collapsed = metrics.get("collapsed_layers")
                if isinstance(collapsed, list):
                    record["n_collapsed_layers"] = float(len(collapsed))
                    record["collapsed_layers"] = ";".join(str(n) for n in collapsed)
                key = {k: cell[k] for k in CELL_KEY}
                history.extend({**key, **h} for h in _read_history(run_dir / "history.jsonl"))
                layers.extend({**key, **lay} for lay in _layer_records(metrics))
                record.update(inference_speedups(run_dir))
                record.update(_best_record(metrics.get("best")))
                record["environment"] = json.dumps(metrics.get("environment") or {},
                                                   sort_keys=True)
        elif summary.get("status") == "diverged":
            note = diverged_text(summary.get("diverged")) + "; not evaluated yet"
            record.update(status="diverged", note=note)
        elif failure is not None:
            record.update(status="failed", note=failure_text(failure))
        elif run_dir.is_dir():
            trained = (run_dir / "summary.json").is_file()
            note = "trained, not evaluated" if trained else "training not finished"
            record.update(status="incomplete", note=note)
        else:
            record.update(status="missing", note="no run directory")
        if math.isnan(record["wall_time_s"]):
            record["wall_time_s"] = _number(summary.get("wall_time_s"))
        record["logs"] = _existing_logs(cell["logs"]) if record["status"] != "done" else ""
        results.append(record)
    frame = pd.DataFrame(results)
    history_frame = pd.DataFrame(history, columns=[*CELL_KEY, *HISTORY_FIELDS])
    layer_columns = [*CELL_KEY, "layer_index", "layer", "numel", "nnz", "density",
                     "effective_nnz", "shared_users"]
    return Collected(frame, history_frame, pd.DataFrame(layers, columns=layer_columns))


def _best_record(best: Any) -> dict[str, Any]:
    """The best-validation model's epoch, nnz and selection (metrics.json ``best``)."""
    best = best if isinstance(best, dict) else {}
    return {"best_epoch": _number(best.get("epoch")), "best_nnz": _number(best.get("nnz")),
            "best_selection": str(best.get("selection") or "")}


def _environment_text(environments: pd.Series) -> str:
    """'' when the done seeds ran in one environment, else what differed: 'threads 1/2'."""
    from east.train.environment import differences

    records = [json.loads(e) for e in environments if isinstance(e, str) and e]
    found = differences(records) if len(records) > 1 else {}
    return "; ".join(f"{key} {'/'.join(map(str, values))}" for key, values in found.items())


def _order(values: Iterable[Any]) -> dict[Any, int]:
    """Position of each value's first appearance: grid order, not alphabetical."""
    return {value: i for i, value in enumerate(dict.fromkeys(values))}


def _stats(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample std (ddof=1); std is NaN below two values, both NaN for none."""
    if values.size == 0:
        return math.nan, math.nan
    std = float(np.std(values, ddof=1)) if values.size > 1 else math.nan
    return float(np.mean(values)), std


def _agree(values: np.ndarray) -> float:
    """The common value when all done seeds agree (e.g. an exact nnz budget), else NaN."""
    finite = values[np.isfinite(values)]
    if finite.size and np.all(finite == finite[0]):
        return float(finite[0])
    return math.nan


def _not_done_text(lacking: pd.DataFrame) -> str:
    """'seeds 0, 2: missing (no run directory); seed 1: failed (...)' — seeds grouped by why."""
    seeds_by_reason: dict[tuple[str, str], list[int]] = {}
    for seed, status, note in zip(lacking["seed"], lacking["status"], lacking["note"],
                                  strict=True):
        seeds_by_reason.setdefault((status, note), []).append(int(seed))
    parts = []
    for (status, note), seeds in seeds_by_reason.items():
        which = f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, sorted(seeds)))}"
        parts.append(f"{which}: {status}" + (f" ({note})" if note else ""))
    return "; ".join(parts)


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """One line per (arch, dataset, row, sparsity): seed statistics over done cells.

    Ordered by table (first appearance), row (first appearance: grid order), then
    sparsity ascending. ``not_done`` lists the seeds that are not done and why.
    """
    table_order = _order(zip(results["arch"], results["dataset"], strict=True))
    records: list[dict[str, Any]] = []
    for (arch, dataset, row, sparsity), group in results.groupby(GROUP_KEY, sort=False):
        done = group[group["status"] == "done"]
        acc_mean, acc_std = _stats(done["test_acc"].to_numpy(dtype=float))
        best_mean, best_std = _stats(done["test_acc_best_val"].dropna().to_numpy(dtype=float))
        nnz = done["nnz_masked"].to_numpy(dtype=float)
        lacking = group[group["status"] != "done"]
        records.append(
            {
                "arch": arch,
                "dataset": dataset,
                "row": row,
                "row_label": group["row_label"].iloc[0],
                "method": group["method"].iloc[0],
                "protocol": group["protocol"].iloc[0],
                "grid": group["grid"].iloc[0],
                "compare_as": group["compare_as"].iloc[0],
                # Rows of two grids may resolve to the same runs: equal keys, same numbers.
                "runs_key": "|".join(sorted(group["run_dir"])),
                "sparsity": sparsity,
                "n_expected": len(group),
                "n_done": len(done),
                "n_diverged": int((group["status"] == "diverged").sum()),
                "test_acc_mean": acc_mean,
                "test_acc_std": acc_std,
                "test_acc_min": float(done["test_acc"].min()) if len(done) else math.nan,
                "test_acc_max": float(done["test_acc"].max()) if len(done) else math.nan,
                "test_acc_best_val_mean": best_mean,
                "test_acc_best_val_std": best_std,
                "nnz_masked": _agree(nnz),
                "nnz_masked_min": float(np.nanmin(nnz)) if np.isfinite(nnz).any() else math.nan,
                "nnz_masked_max": float(np.nanmax(nnz)) if np.isfinite(nnz).any() else math.nan,
                "n_masked": _agree(done["n_masked"].to_numpy(dtype=float)),
                "effective_sparsity_mean": float(done["effective_sparsity"].mean())
                if len(done) else math.nan,
                "flops_inference_mean": float(done["flops_inference"].mean())
                if len(done) else math.nan,
                # NaN unless some done seed has a measured sparse export (inference.json).
                "inference_speedup_mean": float(done["inference_speedup"].mean())
                if len(done) and done["inference_speedup"].notna().any() else math.nan,
                "flops_train_vs_dense_mean": float(done["flops_train_vs_dense"].mean())
                if len(done) and done["flops_train_vs_dense"].notna().any() else math.nan,
                "environments_differ": _environment_text(done["environment"]),
                "wall_time_s_mean": float(done["wall_time_s"].mean()) if len(done) else math.nan,
                "not_done": _not_done_text(lacking),
                "_table": table_order[(arch, dataset)],
            }
        )
    summary = pd.DataFrame(records)
    if summary.empty:
        return summary
    row_order = _order(zip(results["arch"], results["dataset"], results["row"], strict=True))
    summary["_row"] = [
        row_order[key]
        for key in zip(summary["arch"], summary["dataset"], summary["row"], strict=True)
    ]
    summary = summary.sort_values(["_table", "_row", "sparsity"], kind="stable")
    return summary.drop(columns=["_table", "_row"]).reset_index(drop=True)


def status_counts(results: pd.DataFrame) -> dict[str, int]:
    """How many cells have each status (every status listed, zeros included)."""
    counts = results["status"].value_counts()
    return {status: int(counts.get(status, 0)) for status in STATUSES}


def flat_metrics(summary: pd.DataFrame) -> dict[str, dict[str, float | int | None]]:
    """``{"<arch>/<dataset>/<row>/<sparsity>": {...}}`` for ``dvc metrics`` (fractions)."""

    def clean(value: float) -> float | None:
        return None if not math.isfinite(value) else round(float(value), 6)

    out: dict[str, dict[str, float | int | None]] = {}
    for item in summary.itertuples(index=False):
        key = f"{item.arch}/{item.dataset}/{item.row}/{item.sparsity:.6g}"
        out[key] = {
            "test_acc_mean": clean(item.test_acc_mean),
            "test_acc_std": clean(item.test_acc_std),
            "test_acc_best_val_mean": clean(item.test_acc_best_val_mean),
            "seeds": int(item.n_done),
            "seeds_expected": int(item.n_expected),
            "seeds_diverged": int(item.n_diverged),
            "flops_train_vs_dense_mean": clean(item.flops_train_vs_dense_mean),
        }
    return out


def records_for_json(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain JSON-able dicts (NaN → null, numpy scalars → Python)."""
    out = []
    for record in frame.to_dict(orient="records"):
        clean: dict[str, Any] = {}
        for key, value in record.items():
            if isinstance(value, np.generic):
                value = value.item()
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            clean[str(key)] = value
        out.append(clean)
    return out
