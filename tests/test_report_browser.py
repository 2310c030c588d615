"""The HTML report in a real browser: headless Chromium, offline, from disk.

Checks that the page renders (the screenshot is not blank) and that every figure decoded:
the page's own script writes ``data-images-ok`` / ``data-images-total`` on ``<body>``, read
back with ``--dump-dom``. Set EAST_REPORT_SCREENSHOT=<path> to keep the screenshot.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from test_report import make_tree  # the synthetic results tree of the report tests

from east.report import build_report

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)),
                None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                    "(apt-get install --no-install-recommends chromium); .ci/run installs it")
def test_report_renders_offline_with_every_image(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "runs")
    report = build_report(tree.expected, tmp_path / "reports")
    page = report.index.resolve()
    n_images = len(re.findall(r"<img ", page.read_text()))
    assert n_images == len(report.plots) == 6

    shot = tmp_path / "shot.png"
    run = _chromium([f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri()],
                    tmp_path / "profile-shot")
    assert shot.is_file(), run.stderr[-2000:]
    pixels = imread(shot)
    assert pixels.shape[:2] == (2000, 1200)
    assert float(np.var(pixels[..., :3])) > 1e-3  # not a blank page
    # The top of the page holds the title and the first table: dark text on white.
    top = pixels[:400, :, :3].mean(axis=2)
    assert (top < 0.3).mean() > 0.005 and (top > 0.9).mean() > 0.5
    if os.environ.get("EAST_REPORT_SCREENSHOT"):
        shutil.copy(shot, os.environ["EAST_REPORT_SCREENSHOT"])

    dom = _chromium(["--virtual-time-budget=5000", "--window-size=1200,2000", "--dump-dom",
                     page.as_uri()],
                    tmp_path / "profile-dom")
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stderr[-2000:]
    total = re.search(r'data-images-total="(\d+)"', body.group(0))
    loaded = re.search(r'data-images-ok="(\d+)"', body.group(0))
    assert total and loaded, body.group(0)
    assert int(total.group(1)) == n_images
    assert int(loaded.group(1)) == n_images
    # Nothing sticks out sideways at 1200 px (wide tables scroll inside their own box).
    assert 'data-overflow-x="false"' in body.group(0)
