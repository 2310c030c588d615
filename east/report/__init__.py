"""Reports: per-cell results → tidy tables, paper-layout tables, figures and one HTML page.

``build_report(expected, out_dir)`` does it all; ``expected`` is a pandas frame of the cells
the grids ask for (columns ``row, arch, dataset, method, sparsity, seed, run_dir``; optional
``row_label, protocol, grid``). ``east.report.cli`` builds that frame from the grid files.
"""

from east.report.aggregate import STATUSES, Collected, collect, summarize
from east.report.build import Report, build_report
from east.report.published import compare, load_published

__all__ = [
    "STATUSES",
    "Collected",
    "Report",
    "build_report",
    "collect",
    "compare",
    "load_published",
    "summarize",
]
