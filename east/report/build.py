"""``build_report``: from an expected-cells frame to every file under ``reports/``.

Written (all atomically, paths relative to ``out_dir``):
- ``results.csv``, ``results.json``: one line per expected cell (status, note, metrics).
- ``summary.csv``: one line per (arch, dataset, row, sparsity) with the seed statistics.
- ``metrics.json``: flat ``{"<arch>/<dataset>/<row>/<sparsity>": {...}}`` (all in one file).
- ``metrics/<arch>-<dataset>-<row>-<sparsity>.json``: the same, one file per line of the
  summary, for ``dvc metrics show`` (one table line per file instead of one very wide line).
- ``tables/<arch>-<dataset>.{md,tex,html}``: the paper-layout tables.
- ``tables/<arch>-<dataset>-claims.{md,tex,html}``: the paper's claims judged (tables with
  EAST cells only; ``east.report.claims``), their verdicts in ``claims.json``
  (``{"<arch>/<dataset>": {"claim1": "holds", ...}}``) and, for ``dvc metrics show``,
  ``metrics/claims-<arch>-<dataset>.json``.
- ``comparison.{csv,md,tex}``: published vs ours.
- ``plots/*.csv``: the data behind the figures, for ``dvc plots``.
- ``figures/<kind>-<arch>-<dataset>.{png,pdf}``.
- ``report.md`` (everything, Markdown) and ``index.html`` (everything, self-contained).
Files in ``tables/`` and ``figures/`` that this run did not write (a table that left the
grid) are removed, so the folder always matches the report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from east.io import atomic_write_json, atomic_write_text
from east.report.aggregate import (
    STATUSES,
    Collected,
    collect,
    flat_metrics,
    records_for_json,
    status_counts,
    summarize,
)
from east.report.claims import (
    ClaimTable,
    claims_metrics,
    judge_claims,
    render_claims,
)
from east.report.html import NOT_DONE_LIMIT, plot_context, render_index
from east.report.plots import Plot, make_plots, write_plot_data
from east.report.published import Published, compare, load_published
from east.report.tables import (
    Table,
    build_tables,
    render,
    render_comparison,
    render_table,
)

RESULT_COLUMNS = [
    "row", "row_label", "grid", "protocol", "arch", "dataset", "method", "sparsity", "seed",
    "status", "note", "test_acc", "test_acc_best_val", "best_val_acc", "n_masked",
    "nnz_masked", "density_masked", "n_params", "nnz_params", "density_all",
    "flops_inference", "flops_inference_dense", "flops_train", "flops_train_vs_dense",
    "best_epoch", "best_nnz", "best_selection", "environment", "effective_nnz",
    "effective_sparsity", "n_collapsed_layers", "collapsed_layers", "wall_time_s", "cell_id",
    "run_dir", "logs", "inference_speedup", "inference_speedup_b1",
]


@dataclass(frozen=True)
class Report:
    """What ``build_report`` computed and wrote."""

    collected: Collected
    summary: pd.DataFrame
    tables: list[Table]
    comparison: pd.DataFrame
    plots: list[Plot]
    counts: dict[str, int]
    files: list[Path]
    claims: list[ClaimTable] = field(default_factory=list)

    @property
    def results(self) -> pd.DataFrame:
        return self.collected.results

    @property
    def index(self) -> Path:
        return next(f for f in self.files if f.name == "index.html")


def counts_line(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    rest = ", ".join(f"{counts[s]} {s}" for s in STATUSES if s != "done")
    return f"{counts['done']} of {total} cells done ({rest})"


def _remove_stale(folder: Path, keep: set[Path], suffixes: tuple[str, ...]) -> None:
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_file() and path.suffix in suffixes and path not in keep:
            path.unlink()


def build_report(expected: pd.DataFrame, out_dir: str | Path, *,
                 published: Published | None = None,
                 title: str = "EAST reproduction: results", figures: bool = True) -> Report:
    """Collect, summarise and render everything (see the module docstring).

    ``published`` defaults to the numbers shipped with east; ``figures=False`` skips the
    matplotlib figures (about a second each), e.g. for a quick look at the tables.
    """
    out = Path(out_dir)
    collected = collect(expected)
    summary = summarize(collected.results)
    counts = status_counts(collected.results)
    files: list[Path] = []

    results = collected.results[RESULT_COLUMNS]
    files.append(atomic_write_text(out / "results.csv",
                                   results.to_csv(index=False, float_format="%.10g")))
    files.append(atomic_write_json(out / "results.json", records_for_json(results)))
    files.append(atomic_write_text(out / "summary.csv",
                                   summary.to_csv(index=False, float_format="%.10g")))
    flat = flat_metrics(summary)
    files.append(atomic_write_json(out / "metrics.json", flat))
    claims = judge_claims(collected.results)
    verdicts = claims_metrics(claims)
    files.append(atomic_write_json(out / "claims.json", verdicts))
    # Claims first: a row whose file name would collide gets "_" appended below.
    metric_files: set[Path] = {
        atomic_write_json(out / "metrics" / f"{table.metric_name}.json",
                          verdicts[f"{table.arch}/{table.dataset}"])
        for table in claims
    }
    for key, values in flat.items():
        name = re.sub(r"[^A-Za-z0-9._+-]+", "_", key.replace("/", "-"))  # a file name
        while out / "metrics" / f"{name}.json" in metric_files:  # two rows, one slug
            name += "_"
        metric_files.add(atomic_write_json(out / "metrics" / f"{name}.json", values))
    _remove_stale(out / "metrics", metric_files, (".json",))
    files.extend(sorted(metric_files))

    tables = build_tables(summary)
    table_files: set[Path] = set()
    rendered: dict[str, dict[str, str]] = {}
    for table in tables:
        rendered[table.key] = {fmt: render_table(table, fmt) for fmt in ("md", "tex", "html")}
        for fmt, text in rendered[table.key].items():
            table_files.add(atomic_write_text(out / "tables" / f"{table.key}.{fmt}", text))
    claims_text: dict[tuple[str, str], dict[str, str]] = {}
    for claim_table in claims:
        texts = {fmt: render_claims(claim_table, fmt) for fmt in ("md", "tex", "html")}
        claims_text[(claim_table.arch, claim_table.dataset)] = texts
        for fmt, text in texts.items():
            table_files.add(atomic_write_text(out / "tables" / f"{claim_table.key}.{fmt}",
                                              text))
    _remove_stale(out / "tables", table_files, (".md", ".tex", ".html"))
    files.extend(sorted(table_files))

    published = published or load_published()
    comparison = compare(summary, published.frame)
    comparison_text = {fmt: render_comparison(comparison, fmt) for fmt in ("md", "tex", "html")}
    files.append(atomic_write_text(out / "comparison.csv",
                                   comparison.to_csv(index=False, float_format="%.10g")))
    files.append(atomic_write_text(out / "comparison.md", comparison_text["md"]))
    files.append(atomic_write_text(out / "comparison.tex", comparison_text["tex"]))

    data = write_plot_data(collected, summary, out / "plots")
    files.extend(out / "plots" / f"{name}.csv" for name in data)
    plots = make_plots(collected, summary, data, out / "figures") if figures else []
    figure_files = {p.png_path for p in plots} | {p.pdf_path for p in plots}
    if figures:  # a tables-only run leaves the figures folder alone
        _remove_stale(out / "figures", figure_files, (".png", ".pdf"))
    files.extend(sorted(figure_files))

    sources = "\n".join(published.notes).strip("\n")
    not_done = records_for_json(collected.results[collected.results["status"] != "done"])
    sections = []
    for table in tables:
        mine = [p for p in plots if (p.arch, p.dataset) == (table.arch, table.dataset)]
        judged = claims_text.get((table.arch, table.dataset), {})
        sections.append(
            {
                "table": table,
                "table_html": rendered[table.key]["html"],
                "table_md": rendered[table.key]["md"],
                "claims_md": judged.get("md", ""),
                "claims_html": judged.get("html", ""),
                "plots": plot_context(mine, out, embed=True),
            }
        )
    files.append(atomic_write_text(out / "report.md", render(
        "report.md.j2", title=title, counts_text=counts_line(counts), sections=sections,
        comparison_md=comparison_text["md"], sources=sources,
        not_done=not_done[:NOT_DONE_LIMIT], not_done_more=max(0, len(not_done) - NOT_DONE_LIMIT),
    )))
    files.append(atomic_write_text(out / "index.html", render_index(
        title=title, counts=counts, counts_text=counts_line(counts), sections=sections,
        comparison_html=comparison_text["html"], sources=sources, not_done=not_done,
    )))
    return Report(collected, summary, tables, comparison, plots, counts, files, claims)
