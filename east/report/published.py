"""Published accuracies beside ours.

The numbers ship as package data (``published-results.csv``; its ``#`` header names the
sources in full). Matching rule, per summary line of ours with at least one done seed:
- ``exact``: same arch, dataset, method and sparsity (our ``compare_as``, which is the
  method unless the row is a variant of it) → published mean ± std, ours, and
  the difference ours − published in percentage points.
- ``context``: same method and sparsity on another arch or dataset (e.g. a CPU-scale
  digits grid next to the paper's ResNet-34 / CIFAR-10) → both shown, labelled with both
  setups, and no difference: the numbers are not comparable.
Several published sources (or paper versions) for one key give one line each; rows of
two grids that share the same runs are listed once. Our side
also carries its grid ``protocol`` label so a differing training protocol stays visible.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd

from east.errors import EastError

COLUMNS = ("source", "table", "arch", "dataset", "method", "sparsity", "top1_mean", "top1_std",
           "seeds")
_SPARSITY_TOL = 1e-9


@dataclass(frozen=True)
class Published:
    """The published table (accuracies in percent) and its header comment (the citations)."""

    frame: pd.DataFrame
    notes: tuple[str, ...]


def _parse(text: str, where: str) -> Published:
    lines = text.splitlines()
    notes = tuple(line[1:].rstrip() for line in lines if line.startswith("#"))
    body = "\n".join(line for line in lines if not line.startswith("#"))
    try:
        frame = pd.read_csv(io.StringIO(body), dtype={"source": str, "table": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise EastError(f"{where}: not a CSV table ({error})") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise EastError(f"{where}: missing column(s) {', '.join(missing)}")
    for column in ("sparsity", "top1_mean", "top1_std", "seeds"):
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = numbers.isna() & frame[column].notna()
        if bad.any():
            line = int(bad.to_numpy().nonzero()[0][0]) + 2
            raise EastError(f"{where}: data line {line}: {column}: not a number")
        frame[column] = numbers.astype(float)
    if frame["sparsity"].isna().any() or frame["top1_mean"].isna().any():
        raise EastError(f"{where}: sparsity and top1_mean are required on every line")
    for column in ("source", "table", "arch", "dataset", "method"):
        frame[column] = frame[column].fillna("").astype(str)
    return Published(frame[list(COLUMNS)], notes)


def load_published(path: str | Path | None = None) -> Published:
    """Read a published-results CSV; the default is the copy shipped with east."""
    if path is None:
        text = resources.files("east.report").joinpath("published-results.csv").read_text(
            encoding="utf-8"
        )
        return _parse(text, "east/report/published-results.csv")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise EastError(f"{path}: cannot read ({error.strerror})") from None
    return _parse(text, str(path))


def compare(summary: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """Published next to ours (see the module docstring); percent, ``diff`` = ours − published.

    Ordered like ``summary`` (tables, grid rows, sparsity), exact matches before context.
    """
    columns = ["match", "arch", "dataset", "row", "row_label", "protocol", "method",
               "sparsity", "ours_mean", "ours_std", "ours_n", "ours_expected", "source",
               "table", "pub_arch", "pub_dataset", "pub_mean", "pub_std", "pub_seeds", "diff"]
    records = []
    ours = summary[summary["n_done"] > 0] if len(summary) else summary
    seen: set[tuple[str, str, str]] = set()
    for item in ours.itertuples(index=False):
        same = published[
            (published["method"] == item.compare_as)
            & ((published["sparsity"] - item.sparsity).abs() <= _SPARSITY_TOL)
        ]
        exact = (same["arch"] == item.arch) & (same["dataset"] == item.dataset)
        for match, subset in (("exact", same[exact]), ("context", same[~exact])):
            for pub in subset.itertuples(index=False):
                # The same runs reached through two grids' rows: list them once.
                key = (item.runs_key, pub.source, pub.table)
                if key in seen:
                    continue
                seen.add(key)
                ours_mean = 100.0 * item.test_acc_mean
                records.append(
                    {
                        "match": match,
                        "arch": item.arch,
                        "dataset": item.dataset,
                        "row": item.row,
                        "row_label": item.row_label,
                        "protocol": item.protocol,
                        "method": item.method,
                        "sparsity": item.sparsity,
                        "ours_mean": ours_mean,
                        "ours_std": 100.0 * item.test_acc_std,
                        "ours_n": int(item.n_done),
                        "ours_expected": int(item.n_expected),
                        "source": pub.source,
                        "table": pub.table,
                        "pub_arch": pub.arch,
                        "pub_dataset": pub.dataset,
                        "pub_mean": pub.top1_mean,
                        "pub_std": pub.top1_std,
                        "pub_seeds": pub.seeds,
                        "diff": ours_mean - pub.top1_mean if match == "exact" else math.nan,
                    }
                )
    frame = pd.DataFrame(records, columns=columns)
    if frame.empty:
        return frame
    # Exact matches first, each block in summary order (the records were built in it).
    frame["_exact"] = frame["match"] != "exact"
    return frame.sort_values("_exact", kind="stable").drop(columns="_exact").reset_index(
        drop=True
    )
