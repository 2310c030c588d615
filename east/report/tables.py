"""The paper's table layout, rendered from jinja2 templates to Markdown, LaTeX and HTML.

One table per (arch, dataset): rows are grid rows in grid order, columns are sparsities
ascending, a cell is the test accuracy of the final model in percent, mean ± sample std
(ddof=1) over the done seeds, with the seed count: ``86.99 ± 0.32 (3)``. A cell with some
seeds not done shows ``(2 of 3)`` and a footnote naming the seeds and their status (cells
lacking the same seeds for the same reason share a footnote); a cell with none shows a dash
and a footnote; a cell whose every seed diverged (non-finite training loss) shows
"diverged", as papers do, with a footnote saying where. A row that does not ask for a
sparsity (a dense row) leaves it blank.
With one seed there is no std: ``86.99 (1)``.
The best mean of each column is bold (ties at the printed precision: all of them).
A last line gives the masked non-zero weights per column (one number when every done cell
of the column agrees, else the range).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import jinja2
import pandas as pd

DECIMALS = 2


@dataclass(frozen=True)
class Cell:
    """One table cell; ``mean``/``std`` in percent, ``note`` a footnote number or None."""

    mean: float
    std: float
    n_done: int
    n_expected: int
    bold: bool = False
    note: int | None = None
    n_diverged: int = 0
    cost: float = math.nan  # training FLOPs / dense training's, mean over the done seeds

    @property
    def empty(self) -> bool:
        return self.n_done == 0

    @property
    def diverged(self) -> bool:
        """Every seed of the cell diverged: a result, printed as "diverged"."""
        return self.n_done == 0 and 0 < self.n_expected == self.n_diverged

    @property
    def absent(self) -> bool:
        """The row does not ask for this sparsity (not a gap: left blank)."""
        return self.n_expected == 0

    @property
    def mean_text(self) -> str:
        return f"{self.mean:.{DECIMALS}f}"

    @property
    def std_text(self) -> str | None:
        return None if not math.isfinite(self.std) else f"{self.std:.{DECIMALS}f}"

    @property
    def cost_text(self) -> str | None:
        """'0.12x' (2 significant digits), None when unknown."""
        return None if not math.isfinite(self.cost) else f"{self.cost:.2g}x"

    @property
    def count_text(self) -> str:
        if self.n_done == self.n_expected:
            return str(self.n_done)
        return f"{self.n_done} of {self.n_expected}"


@dataclass(frozen=True)
class Row:
    row: str
    label: str
    method: str
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class Table:
    arch: str
    dataset: str
    key: str
    sparsities: tuple[float, ...]
    rows: tuple[Row, ...]
    nnz: tuple[str, ...]
    notes: tuple[str, ...]
    protocols: tuple[str, ...] = field(default=())
    # (row label, text per sparsity): rows with a measured sparse export only (none: no line)
    speedups: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())

    speedup_note = (
        "Inference speed-up (measured): images/s of the sparse export (`east export --format "
        "sparse`, dead channels removed) / images/s of the dense model, batch 64, one CPU "
        "thread, mean over the seeds with a measured export (their inference.json); — where "
        "a cell has none."
    )

    @property
    def headers(self) -> tuple[str, ...]:
        return tuple(sparsity_label(s) for s in self.sparsities)

    @property
    def caption(self) -> str:
        protocol = f" ({', '.join(self.protocols)} protocol)" if self.protocols else ""
        return (
            f"{self.arch} on {self.dataset}{protocol}: top-1 test accuracy (%) of the final "
            "model by sparsity, mean ± sample std (ddof=1) over seeds, seed count in "
            "parentheses; best mean per column in bold; after the dot, the training cost: "
            "training FLOPs over those of dense training of the same network (RigL's "
            "accounting, dense-gradient steps and scoring included), mean over seeds."
        )


def sparsity_label(sparsity: float) -> str:
    """0.9995 → '99.95%' (no float noise, no trailing zeros)."""
    return f"{sparsity * 100:.10g}%"


def slug(*parts: str) -> str:
    """A file-name-safe key: 'resnet34-cifar10'."""
    return "-".join(re.sub(r"[^A-Za-z0-9._]+", "_", p) for p in parts)


def _nnz_text(column: pd.DataFrame) -> str:
    if column["nnz_masked_min"].isna().all():
        return "—"
    low, high = column["nnz_masked_min"].min(), column["nnz_masked_max"].max()
    if low == high:
        return f"{int(low):,}"
    return f"{int(low):,}–{int(high):,}"


def _speedup_rows(part: pd.DataFrame, rows: list[Row], sparsities: tuple[float, ...]
                  ) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """"Inference speed-up (measured)" per row and sparsity, for the rows where some cell
    has a measured sparse export (mean over its seeds of the batch-64 speed-up)."""
    if "inference_speedup_mean" not in part.columns:
        return ()
    out = []
    for row in rows:
        lines = part[part["row"] == row.row]
        texts = []
        for s in sparsities:
            values = lines.loc[lines["sparsity"] == s, "inference_speedup_mean"]
            value = float(values.iloc[0]) if len(values) else math.nan
            texts.append(f"{value:.1f}x" if math.isfinite(value) else "—")
        if any(t != "—" for t in texts):
            out.append((row.label, tuple(texts)))
    return tuple(out)


def build_tables(summary: pd.DataFrame) -> list[Table]:
    """Table models in summary order (see the module docstring)."""
    tables: list[Table] = []
    if summary.empty:
        return tables
    for (arch, dataset), part in summary.groupby(["arch", "dataset"], sort=False):
        sparsities = tuple(sorted(part["sparsity"].unique().tolist()))
        row_keys = list(dict.fromkeys(part["row"]))
        protocols = tuple(p for p in dict.fromkeys(part["protocol"]) if p)
        # Column-wise best, compared at the printed precision so ties are all bold.
        best = {
            s: round(100.0 * part.loc[part["sparsity"] == s, "test_acc_mean"].max(), DECIMALS)
            for s in sparsities
        }
        notes: list[str] = []
        rows: list[Row] = []
        for row_key in row_keys:
            lines = part[part["row"] == row_key]
            first = lines.iloc[0]
            label = first["row_label"]
            if len(protocols) > 1 and first["protocol"]:
                label = f"{label} [{first['protocol']}]"
            cells: list[Cell] = []
            for s in sparsities:
                match = lines[lines["sparsity"] == s]
                if match.empty:  # the row does not ask for this sparsity: not a gap
                    cells.append(Cell(math.nan, math.nan, 0, 0))
                    continue
                item = match.iloc[0]
                mean = 100.0 * float(item["test_acc_mean"])
                note = None
                texts = []
                if item["n_done"] < item["n_expected"]:
                    texts.append(item["not_done"])
                if item.get("environments_differ"):
                    texts.append("its seeds ran in different environments (CPU results "
                                 f"depend on them): {item['environments_differ']}")
                if texts:
                    # Cells with the same story share one footnote.
                    text = "; ".join(texts)
                    if text not in notes:
                        notes.append(text)
                    note = notes.index(text) + 1
                bold = item["n_done"] > 0 and round(mean, DECIMALS) == best[s]
                cells.append(
                    Cell(mean, 100.0 * float(item["test_acc_std"]), int(item["n_done"]),
                         int(item["n_expected"]), bold, note,
                         int(item.get("n_diverged", 0)),
                         float(item.get("flops_train_vs_dense_mean", math.nan)))
                )
            rows.append(Row(row_key, label, str(first["method"]), tuple(cells)))
        nnz = tuple(_nnz_text(part[part["sparsity"] == s]) for s in sparsities)
        tables.append(
            Table(arch, dataset, slug(arch, dataset), sparsities, tuple(rows), nnz,
                  tuple(notes), protocols, _speedup_rows(part, rows, sparsities))
        )
    return tables


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "—": "---",
    "–": "--",
}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in _LATEX_SPECIALS))
_MARKDOWN_RE = re.compile(r"([\\`*_|\[\]<>#])")


def latex_escape(text: Any) -> str:
    """Escape LaTeX's special characters (and spell ± and dashes the LaTeX way)."""
    return _LATEX_RE.sub(lambda m: _LATEX_SPECIALS[m.group(0)], str(text))


def markdown_escape(text: Any) -> str:
    """Backslash-escape what would break a Markdown table cell or start emphasis/markup."""
    return _MARKDOWN_RE.sub(r"\\\1", str(text)).replace("\n", " ")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _fmt(value: Any, spec: str = ".2f", empty: str = "—") -> str:
    return format(value, spec) if _finite(value) else empty


def pm_text(mean: Any, std: Any = None, n: Any = None, n_expected: Any = None) -> str:
    """'86.99 ± 0.32 (3)': std and count left out when unknown; '(2 of 3)' when short."""
    if not _finite(mean):
        return "—"
    text = f"{mean:.{DECIMALS}f}"
    if _finite(std):
        text += f" ± {std:.{DECIMALS}f}"
    if _finite(n):
        count = f"{int(n)}"
        if _finite(n_expected) and int(n_expected) != int(n):
            count += f" of {int(n_expected)}"
        text += f" ({count})"
    return text


def signed(value: Any) -> str:
    """A difference in percentage points with its sign: '+0.52', '-1.30'."""
    return f"{value:+.{DECIMALS}f}" if _finite(value) else "—"


@cache
def environment() -> jinja2.Environment:
    """Templates of ``east/report/templates``; HTML ones (``*.html.j2``) autoescape."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("east.report", "templates"),
        autoescape=lambda name: bool(name and name.endswith(".html.j2")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        tex=latex_escape, md=markdown_escape, fmt=_fmt, sparsity=sparsity_label, pm=pm_text,
        signed=signed,
    )
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def render_table(table: Table, fmt: str) -> str:
    """``fmt`` is ``md``, ``tex`` or ``html``."""
    return render(f"table.{fmt}.j2", table=table)


def render_comparison(comparison: pd.DataFrame, fmt: str) -> str:
    """The published-vs-ours table (see ``east.report.published.compare``)."""
    rows = comparison.to_dict(orient="records")
    return render(
        f"comparison.{fmt}.j2",
        exact=[r for r in rows if r["match"] == "exact"],
        context=[r for r in rows if r["match"] == "context"],
    )
