"""The machine description and the two report files: benchmarks.md and benchmarks.json."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from east.bench.results import MET, NOT_MET, CaseResult, format_value
from east.io import atomic_write_json, atomic_write_text

SCHEMA = 1
NOISE_NOTE = (
    "Measured on a shared machine: absolute times are noisy, which is why every number is "
    "a ratio of two arms timed alternately (ABBA) in one process, reported as the median "
    "over repeats with its interquartile range and min–max."
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(root: Path | None) -> dict[str, Any]:
    """HEAD of the checkout and whether its working tree differs from it."""
    if root is None:
        return {"commit": None, "dirty": None}

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def machine_info(device_label: str, root: Path | None) -> dict[str, Any]:
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device_label,
        "load_average_start": list(os.getloadavg()),
        **git_commit(root),
    }


def _spread_text(case: CaseResult) -> tuple[str, str, str]:
    """(IQR, min–max, repeats) columns."""
    s = case.spread
    if s is None:
        return "—", "—", "1"

    def fmt(value: float) -> str:
        return format_value(value, case.unit).split(" ")[0]

    return f"{fmt(s.q1)}–{fmt(s.q3)}", f"{fmt(s.lo)}–{fmt(s.hi)}", str(s.n)


def _status_text(case: CaseResult) -> str:
    text = case.status
    if case.status in (MET, NOT_MET) and case.straddles:
        text += " (IQR crosses the target)"
    return text


# What each kind of case reports, in a few words (the details say it in full).
SHORT = {
    "planning": "DAG jobs / dry-run seconds",
    "masked_step": "masked step / dense step",
    "dyrelu_step": "DyReLU-B step / ReLU step",
    "east_step": "EAST step (beta 0) / dense step",
    "rigl_update": "RigL updates, % of training",
    "east_update": "EAST updates, % of training",
    "input_pipeline": "throughput with loader / free input",
    "loader_vs_indexing": "loader / plain indexing",
    "peak_memory": "sparse / dense peak memory",
    "dyrelu_memory": "DyReLU-B / ReLU peak memory",
    "sparse_inference": "sparse / dense images/s (CPU)",
    "sparse_kernel": "kernel time / default kernel's",
}


def table_rows(cases: list[CaseResult]) -> list[list[str]]:
    rows = []
    for case in cases:
        iqr, rng, n = _spread_text(case)
        rows.append([case.id, SHORT.get(case.kind, case.title), format_value(case.value,
                     case.unit), iqr, rng, n,
                     case.target.text(case.unit) if case.target else "—", _status_text(case)])
    return rows


HEADER = ["case", "measure", "median", "IQR", "min–max", "n", "target", "status"]


def markdown_table(cases: list[CaseResult]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |",
             "|" + "|".join(["---", "---", "---:", "---:", "---:", "---:", "---", "---"])
             + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(cases)]
    return "\n".join(lines)


def text_table(cases: list[CaseResult]) -> str:
    """The same table, aligned for a terminal."""
    rows = [HEADER, *table_rows(cases)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    out = []
    for k, row in enumerate(rows):
        out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def slowest(cases: list[CaseResult]) -> CaseResult | None:
    """The targeted case with the smallest margin to its target (worst first)."""
    judged = [c for c in cases if c.margin is not None]
    return min(judged, key=lambda c: c.margin) if judged else None  # type: ignore[arg-type]


def _detail_lines(case: CaseResult) -> list[str]:
    lines = [f"### {case.id}: {case.title}", "", f"- measures: {case.measure}"]
    d = case.details
    if "baseline_s" in d and "variant_s" in d:
        lines.append(f"- {d.get('baseline', 'baseline')}: median "
                     f"{d['baseline_s']['median'] * 1e3:.4g} ms per unit; "
                     f"{d.get('variant', 'variant')}: {d['variant_s']['median'] * 1e3:.4g} ms")
    for key in ("arch", "batch_size", "image_size", "masked_weights", "shared_weights",
                "updates_in_run", "total_steps", "update_step", "cyclic_update_step",
                "weights_moved_per_update", "jobs", "seconds", "grid", "step_s",
                "model_images_per_s", "loader_images_per_s", "indexing_images_per_s",
                "measured_as", "mask_storage_mib", "gradient_clone_mib",
                "dense_images_per_s", "sparse_images_per_s", "flops_ratio",
                "share_of_flops_ratio", "nnz_unique", "nnz_materialized", "nnz_stored",
                "threads", "dyrelu_saved_input_mib", "dyrelu_fc_state_mib"):
        if key in d:
            value = d[key]
            if isinstance(value, float):
                value = f"{value:.4g}"
            lines.append(f"- {key.replace('_', ' ')}: {value}")
    for key in ("update_extra_s", "cyclic_update_extra_s", "rigl_update_extra_s"):
        if key in d:
            lines.append(f"- {key.replace('_', ' ')}: median {d[key]['median']:.4g} s "
                         f"(min {d[key]['min']:.4g}, max {d[key]['max']:.4g})")
    if "dense_step" in d:
        step = d["dense_step"]
        lines.append(f"- dense {step['arch']} step (batch {step['batch_size']}), the "
                     f"denominator: {step['seconds']['median']:.4g} s")
    for key in ("dense_mib", "sparse_mib", "relu_mib", "dyrelu_mib", "extra_mib"):
        if key in d:
            lines.append(f"- {key.replace('_', ' ')}: median {d[key]['median']:.1f} MiB")
    if case.notes:
        lines.append(f"- note: {case.notes}")
    lines.append("")
    return lines


def render_markdown(report: dict[str, Any], cases: list[CaseResult]) -> str:
    m = report["machine"]
    commit = m.get("commit") or "unknown"
    if m.get("dirty"):
        commit += " (with uncommitted changes)"
    worst = slowest(cases)
    lines = [
        "# east bench: what sparsity costs",
        "",
        f"Command: `{report['command']}` ({report['mode']} mode), {report['date']}, "
        f"{report['wall_s']:.0f} s.",
        f"Machine: {m['cpu']}, {m['usable_cores']} usable cores, torch {m['torch']} with "
        f"{m['torch_threads']} threads, device {m['device']}; load average "
        f"{m['load_average_start'][0]:.2f} at the start, {m['load_average_end'][0]:.2f} at "
        "the end.",
        f"Commit: {commit}.",
        "",
        NOISE_NOTE,
        "",
        markdown_table(cases),
        "",
    ]
    if worst is not None:
        lines += [f"Closest to (or furthest past) its target: **{worst.id}** at "
                  f"{format_value(worst.value, worst.unit)} against "
                  f"{worst.target.text(worst.unit)} ({worst.status}).", ""]  # type: ignore
    lines += ["## Details", ""]
    for case in cases:
        lines += _detail_lines(case)
    return "\n".join(lines).rstrip() + "\n"


def write_reports(out: Path, report: dict[str, Any], cases: list[CaseResult]) -> tuple[Path,
                                                                                       Path]:
    data = {**report, "schema": SCHEMA, "cases": [c.as_dict() for c in cases]}
    json_path = atomic_write_json(out / "benchmarks.json", data)
    md_path = atomic_write_text(out / "benchmarks.md", render_markdown(report, cases))
    return md_path, json_path


def now_utc() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
