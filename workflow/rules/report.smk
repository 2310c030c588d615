"""Aggregate and report: one `east report` call over the selected grids.

It writes the aggregate tables (one line per expected cell; seed statistics; the flat
metrics for `dvc metrics`) and the rendered report (Markdown, HTML, the figures' data for
`dvc plots`), listed below as distinct outputs. Figures and per-table files, whose names
depend on the grids, land beside them in reports/figures and reports/tables.
"""

REPORT_AGGREGATE = {
    "results": "reports/results.csv",
    "results_json": "reports/results.json",
    "summary": "reports/summary.csv",
    "metrics": "reports/metrics.json",
}
REPORT_RENDERED = {
    "markdown": "reports/report.md",
    "html": "reports/index.html",
    "comparison": "reports/comparison.csv",
    **{
        f"plot_{name}": f"reports/plots/{name}.csv"
        for name in (
            "accuracy_vs_sparsity",
            "training_curves",
            "density_beta",
            "layer_density",
            "effective_sparsity",
        )
    },
}
REPORT_FILES = [*REPORT_AGGREGATE.values(), *REPORT_RENDERED.values()]


rule report:
    # Renaming or relabelling a row reruns this rule only (its inputs include the grids).
    input:
        metrics=[f"{path}/metrics.json" for path in RUNS],
        grids=GRID_FILES,
        defaults=DEFAULTS_FILE,
    output:
        **REPORT_AGGREGATE,
        **REPORT_RENDERED,
    log:
        "results/logs/report.log",
    localrule: True
    run:
        shell(
            "{EAST} report {input.grids} --runs results/runs --out reports > {log} 2>&1"
        )
