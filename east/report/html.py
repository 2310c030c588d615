"""The one-page HTML report: tables, figures and the comparison, openable offline.

Everything is inline (CSS, figures as base64 PNG data URIs), so the file can be mailed or
opened from disk with no network. A small inline script records on ``<body>`` how many
images decoded (``data-images-ok`` of ``data-images-total``): the browser test reads it.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from east.report.plots import Plot
from east.report.tables import render

NOT_DONE_LIMIT = 200  # longer lists stay in results.csv


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def plot_context(plots: list[Plot], out_dir: Path, *, embed: bool) -> list[dict[str, Any]]:
    """Template view of figures: base64 PNG (``embed``) and paths relative to ``out_dir``."""
    return [
        {
            "kind": p.kind,
            "title": p.title,
            "caption": p.caption,
            "data": base64.b64encode(p.png).decode("ascii") if embed else "",
            "png": _relative(p.png_path, out_dir),
            "pdf": _relative(p.pdf_path, out_dir),
        }
        for p in plots
    ]


def render_index(*, title: str, counts: dict[str, int], counts_text: str,
                 sections: list[dict[str, Any]], comparison_html: str, sources: str,
                 not_done: list[dict[str, Any]]) -> str:
    """``sections``: per table ``{"table": Table, "table_html": str, "plots": [...]}``."""
    return render(
        "index.html.j2",
        title=title,
        counts=counts,
        counts_text=counts_text,
        sections=sections,
        comparison_html=comparison_html,
        sources=sources,
        not_done=not_done[:NOT_DONE_LIMIT],
        not_done_more=max(0, len(not_done) - NOT_DONE_LIMIT),
    )
