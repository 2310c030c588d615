"""Aggregate and report: one `east report` call over the selected grids.

It writes the aggregate tables (one line per expected cell; seed statistics; the flat
metrics for `dvc metrics`) and the rendered report (Markdown, HTML, the figures' data for
`dvc plots`), listed below as distinct outputs. Figures and per-table files, whose names
depend on the grids, land beside them in reports/figures and reports/tables.

When jobs fail, the rule cannot run (an input is missing); `onerror` then renders the
report of what finished, with the failed and missing cells listed with their logs. With
`--keep-going` (the SLURM profile's default) that is after every other cell has run. Only
the rule writes reports/.complete: a report rendered by `onerror` lacks it, so the next
run renders it again (and retries the failed cells) instead of finding it up to date.
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
    "claims": "reports/claims.json",
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
REPORT_COMPLETE = "reports/.complete"
REPORT_FILES = [*REPORT_AGGREGATE.values(), *REPORT_RENDERED.values(), REPORT_COMPLETE]
REPORT_LOG = f"{LOGS_ROOT}/report.log"
# One command for the rule and for onerror.
REPORT_COMMAND = (
    f"{EAST} report {' '.join(shlex.quote(g) for g in GRID_FILES)} "
    f"--runs {RUNS_ROOT} --logs {LOGS_ROOT} --out reports"
)


rule report:
    # Renaming or relabelling a row reruns this rule only (its inputs include the grids).
    input:
        metrics=[f"{path}/metrics.json" for path in RUNS],
        grids=GRID_FILES,
        defaults=DEFAULTS_FILE,
    output:
        **REPORT_AGGREGATE,
        **REPORT_RENDERED,
        complete=touch(REPORT_COMPLETE),
    log:
        REPORT_LOG,
    localrule: True
    run:
        shell("{REPORT_COMMAND} > {log} 2>&1")


onerror:
    report_after_failure(REPORT_COMMAND, REPORT_LOG, incomplete=REPORT_COMPLETE)
