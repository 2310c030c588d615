"""Figures (matplotlib, no pyplot, so no GUI backend is ever touched) and their data as CSV.

Per (arch, dataset) table, each only when it has data:
- ``accuracy``: test accuracy vs sparsity, x = compression 1/(1−s) on a log axis, one line per
  row (mean), a band of ± sample std, and every seed as a dot.
- ``ablation``: grouped bars, accuracy per row at each sparsity with std error bars and seed
  dots. Rows: those of grids whose name contains "ablation" when the table has any, else
  every row of the table (the same comparison, easier to read at a few sparsities).
- ``curves``: validation accuracy vs epoch (history.jsonl), mean over seeds per row, one panel
  per sparsity.
- ``density``: density (log axis) and the DyReLU phasing factor β vs epoch, mean over seeds,
  for rows whose density moves or whose β is ever non-zero (EAST and its ablations); one
  panel per sparsity. Density is relative to the *unshared* network's masked weights
  (``density_full`` = nnz / N_full, what the nominal sparsity means: 1 − s at the target,
  drawn as a dotted line), not to the unique tensors weight sharing leaves (``density``,
  which would end above 1 − s: 0.156 for a 90 % EAST cell).
- ``layers``: final per-layer density (metrics.json ``layers``), mean over seeds, one panel per
  sparsity.
- ``effective``: nominal vs effective density (1 − sparsity; effective counts only weights on
  some input→output path), log–log, with the identity line; a cell whose network is fully
  disconnected (effective density 0) is drawn on the axis floor as an x.
Figures are written as PNG and PDF (metadata pinned, so unchanged inputs give unchanged files).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator

from east.io import atomic_write_bytes, atomic_write_text
from east.report.aggregate import GROUP_KEY, Collected
from east.report.tables import slug, sparsity_label

PNG_DPI = 110
_PNG_META = {"Software": None}
_PDF_META = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}


@dataclass(frozen=True)
class Plot:
    """One rendered figure: where it went and the PNG bytes (for the HTML page)."""

    kind: str
    arch: str
    dataset: str
    title: str
    caption: str
    png: bytes
    png_path: Path
    pdf_path: Path


def compression(sparsity: np.ndarray | float) -> np.ndarray:
    """x = 1/(1−s): 99.9 % → 1000x."""
    return 1.0 / (1.0 - np.asarray(sparsity, dtype=float))


def _colors(labels: list[str]) -> dict[str, tuple[float, float, float, float]]:
    """A stable colour per row label (tab10, then tab20 for more rows)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def _grid(n: int, width: float = 4.2, height: float = 3.2) -> tuple[Figure, list[Axes]]:
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _compression_axis(ax: Axes, sparsities: list[float]) -> None:
    ticks = compression(np.array(sparsities))
    if len(set(ticks.tolist())) == 1:  # one level: a zero-width log axis would be singular
        ax.set_xlim(ticks[0] / 2, ticks[0] * 2)
    ax.set_xscale("log")
    ax.set_xticks(ticks)
    ax.set_xticklabels(
        [f"{sparsity_label(s)}\n{c:,.0f}×" for s, c in zip(sparsities, ticks, strict=True)],
        fontsize=7,
    )
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("sparsity (compression 1/(1−s), log scale)")


def _save(fig: Figure, out_dir: Path, kind: str, arch: str, dataset: str, title: str,
          caption: str) -> Plot:
    fig.suptitle(title, fontsize=11)
    stem = f"{kind}-{slug(arch, dataset)}"
    png, pdf = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=PNG_DPI, metadata=_PNG_META)
    fig.set_layout_engine("none")  # the layout is solved once; the PDF reuses it (~2x faster)
    fig.savefig(pdf, format="pdf", metadata=_PDF_META)
    png_path = atomic_write_bytes(out_dir / f"{stem}.png", png.getvalue())
    pdf_path = atomic_write_bytes(out_dir / f"{stem}.pdf", pdf.getvalue())
    return Plot(kind, arch, dataset, title, caption, png.getvalue(), png_path, pdf_path)


def _plain_log(axis: Axis, values: np.ndarray) -> None:
    """Log axis with plain-number labels and unlabelled minor ticks.

    Labels sit at powers of ten, and also at 2x and 5x when the data span under two
    decades (else one label would be all there is). Matplotlib's default labels are
    mathtext and label minor ticks on short ranges: several times slower, and cluttered.
    """
    positive = np.asarray(values, dtype=float)
    positive = positive[np.isfinite(positive) & (positive > 0)]
    narrow = positive.size > 0 and positive.max() / positive.min() < 100
    subs = (1.0, 2.0, 5.0) if narrow else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
    axis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _log_y(ax: Axes, values: np.ndarray) -> None:
    """Log y axis when there is something positive to show; else say why the panel is empty."""
    if np.any(np.asarray(values, dtype=float) > 0):
        ax.set_yscale("log")
        _plain_log(ax.yaxis, values)
    else:
        ax.text(0.5, 0.5, "no non-zero values", transform=ax.transAxes, ha="center",
                va="center", fontsize=8, color="grey")


def _legend(ax: Axes) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best", frameon=False)


def plot_accuracy(summary: pd.DataFrame, results: pd.DataFrame, arch: str, dataset: str,
                  out_dir: Path) -> Plot | None:
    part = summary[(summary["arch"] == arch) & (summary["dataset"] == dataset)]
    part = part[part["n_done"] > 0]
    if part.empty:
        return None
    seeds = results[(results["arch"] == arch) & (results["dataset"] == dataset)
                    & (results["status"] == "done")]
    labels = list(dict.fromkeys(part["row_label"]))
    colors = _colors(labels)
    fig = Figure(figsize=(7.5, 4.6), layout="constrained")
    ax = fig.subplots()
    for row, lines in part.groupby("row", sort=False):
        label = lines["row_label"].iloc[0]
        x = compression(lines["sparsity"].to_numpy())
        mean = 100 * lines["test_acc_mean"].to_numpy(dtype=float)
        std = np.nan_to_num(100 * lines["test_acc_std"].to_numpy(dtype=float))
        ax.plot(x, mean, marker="o", ms=4, color=colors[label], label=label)
        ax.fill_between(x, mean - std, mean + std, color=colors[label], alpha=0.18, lw=0)
        dots = seeds[seeds["row"] == row]
        ax.scatter(compression(dots["sparsity"].to_numpy()), 100 * dots["test_acc"],
                   s=9, color=colors[label], alpha=0.6, lw=0)
    _compression_axis(ax, sorted(part["sparsity"].unique().tolist()))
    ax.set_ylabel("top-1 test accuracy (%)")
    ax.grid(alpha=0.3)
    _legend(ax)
    return _save(
        fig, out_dir, "accuracy", arch, dataset, f"{arch} / {dataset}: accuracy vs sparsity",
        "Final-model test accuracy: line = mean over seeds, band = ± sample std, dots = seeds.",
    )


def plot_ablation(summary: pd.DataFrame, results: pd.DataFrame, arch: str, dataset: str,
                  out_dir: Path) -> Plot | None:
    part = summary[(summary["arch"] == arch) & (summary["dataset"] == dataset)]
    ablation = part[part["grid"].str.contains("ablation", case=False)]
    chosen = "rows of the ablation grid" if not ablation.empty else "every row of the table"
    part = ablation if not ablation.empty else part
    part = part[part["n_done"] > 0]
    if part.empty:
        return None
    seeds = results[(results["arch"] == arch) & (results["dataset"] == dataset)
                    & (results["status"] == "done")]
    sparsities = sorted(part["sparsity"].unique().tolist())
    labels = list(dict.fromkeys(part["row_label"]))
    rows = list(dict.fromkeys(part["row"]))
    colors = _colors(labels)
    width = 0.8 / len(rows)
    fig = Figure(figsize=(max(6.0, 1.2 + 0.35 * len(rows) * len(sparsities)), 4.4),
                 layout="constrained")
    ax = fig.subplots()
    for i, row in enumerate(rows):
        lines = part[part["row"] == row]
        label = lines["row_label"].iloc[0]
        pos = np.array([sparsities.index(s) for s in lines["sparsity"]]) + (i - (len(rows) - 1)
                                                                         / 2) * width
        mean = 100 * lines["test_acc_mean"].to_numpy(dtype=float)
        std = np.nan_to_num(100 * lines["test_acc_std"].to_numpy(dtype=float))
        ax.bar(pos, mean, width * 0.92, yerr=std, capsize=2, color=colors[label], label=label,
               error_kw={"lw": 0.8})
        dots = seeds[seeds["row"] == row]
        dot_pos = np.array([sparsities.index(s) for s in dots["sparsity"]]) + (
            i - (len(rows) - 1) / 2) * width
        ax.scatter(dot_pos, 100 * dots["test_acc"], s=7, color="black", alpha=0.6, lw=0,
                   zorder=3)
    ax.set_xticks(range(len(sparsities)))
    ax.set_xticklabels([sparsity_label(s) for s in sparsities])
    ax.set_xlabel("sparsity")
    ax.set_ylabel("top-1 test accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    _legend(ax)
    return _save(
        fig, out_dir, "ablation", arch, dataset, f"{arch} / {dataset}: rows side by side",
        f"Bars: mean test accuracy over seeds, error bars ± sample std, dots = seeds; "
        f"{chosen}.",
    )


def _epoch_mean(history: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean, sample std and seed count of ``column`` per (row, sparsity, epoch)."""
    clean = history.dropna(subset=[column])
    grouped = clean.groupby([*GROUP_KEY, "epoch"], sort=True)[column]
    out = grouped.agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"mean": f"{column}_mean", "std": f"{column}_std",
                               "count": "seeds"})


def _panels(table: pd.DataFrame, summary: pd.DataFrame, arch: str, dataset: str,
            draw: Callable[[Axes, pd.DataFrame, dict[str, tuple], dict[str, str]], None],
            ) -> Figure | None:
    """One panel per sparsity of ``table`` (a frame keyed by row and sparsity)."""
    if table.empty:
        return None
    mine = summary[(summary["arch"] == arch) & (summary["dataset"] == dataset)]
    label_of = dict(zip(mine["row"], mine["row_label"], strict=False))
    colors = _colors(list(dict.fromkeys(mine["row_label"])))
    sparsities = sorted(table["sparsity"].unique().tolist())
    fig, axes = _grid(len(sparsities))
    order = {row: i for i, row in enumerate(dict.fromkeys(mine["row"]))}
    for ax, s in zip(axes, sparsities, strict=True):
        panel = table[table["sparsity"] == s]
        # Grid order for lines and legend (the data frames arrive sorted by name).
        panel = panel.iloc[np.argsort(panel["row"].map(order).to_numpy(), kind="stable")]
        draw(ax, panel, colors, label_of)
        ax.set_title(f"sparsity {sparsity_label(s)}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    _legend(axes[0])
    return fig


def _select(frame: pd.DataFrame, arch: str, dataset: str) -> pd.DataFrame:
    return frame[(frame["arch"] == arch) & (frame["dataset"] == dataset)]


def curves_data(history: pd.DataFrame) -> pd.DataFrame:
    return _epoch_mean(history, "val_acc")


def plot_curves(curves: pd.DataFrame, summary: pd.DataFrame, arch: str, dataset: str,
                out_dir: Path) -> Plot | None:
    def draw(ax: Axes, panel: pd.DataFrame, colors: dict, label_of: dict) -> None:
        for row, lines in panel.groupby("row", sort=False):
            label = label_of.get(row, row)
            mean = 100 * lines["val_acc_mean"].to_numpy(dtype=float)
            std = np.nan_to_num(100 * lines["val_acc_std"].to_numpy(dtype=float))
            ax.plot(lines["epoch"], mean, color=colors.get(label), label=label, lw=1.2)
            ax.fill_between(lines["epoch"], mean - std, mean + std, color=colors.get(label),
                            alpha=0.15, lw=0)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("validation accuracy (%)", fontsize=8)

    fig = _panels(_select(curves, arch, dataset), summary, arch, dataset, draw)
    if fig is None:
        return None
    return _save(fig, out_dir, "curves", arch, dataset, f"{arch} / {dataset}: training curves",
                 "Validation accuracy per epoch, mean over seeds (band ± sample std).")


DENSITY_COLUMNS = [*GROUP_KEY, "epoch", "density_mean", "target_density", "beta_mean", "seeds"]


def density_data(history: pd.DataFrame) -> pd.DataFrame:
    """Mean density (nnz / N of the unshared network) and β per (row, sparsity, epoch) for
    rows where either moves; ``target_density`` = 1 − s."""
    if history.empty:
        return pd.DataFrame(columns=DENSITY_COLUMNS)
    history = history.copy()
    # Histories written before density_full existed only have the unique-tensor density.
    full = history["density_full"] if "density_full" in history else history["density"]
    history["density_nominal"] = full.fillna(history["density"])
    spread = history.groupby(GROUP_KEY, sort=False).agg(
        d_min=("density_nominal", "min"), d_max=("density_nominal", "max"),
        b_max=("beta", "max"),
    )
    moving = spread[(spread["d_max"] > spread["d_min"]) | (spread["b_max"] > 0)].reset_index()
    chosen = history.merge(moving[GROUP_KEY], on=GROUP_KEY)
    density = _epoch_mean(chosen, "density_nominal").rename(
        columns={"density_nominal_mean": "density_mean"})
    beta = _epoch_mean(chosen, "beta").drop(columns=["seeds", "beta_std"])
    out = density.merge(beta, on=[*GROUP_KEY, "epoch"], how="outer")
    out["target_density"] = 1.0 - out["sparsity"].astype(float)
    return out[DENSITY_COLUMNS]


def plot_density(density: pd.DataFrame, summary: pd.DataFrame, arch: str, dataset: str,
                 out_dir: Path) -> Plot | None:
    def draw(ax: Axes, panel: pd.DataFrame, colors: dict, label_of: dict) -> None:
        twin = ax.twinx()
        for row, lines in panel.groupby("row", sort=False):
            label = label_of.get(row, row)
            ax.plot(lines["epoch"], lines["density_mean"], color=colors.get(label), lw=1.2,
                    label=f"{label}: density")
            twin.plot(lines["epoch"], lines["beta_mean"], color=colors.get(label), lw=1.0,
                      ls="--", label=f"{label}: β")
        target = float(panel["target_density"].iloc[0])
        ax.axhline(target, color="grey", lw=0.9, ls=":", label="target 1 − s")
        _log_y(ax, np.append(panel["density_mean"].to_numpy(dtype=float), target))
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("density nnz / N, unshared network (solid, log)", fontsize=8)
        twin.set_ylabel("β (dashed)", fontsize=8)
        twin.set_ylim(-0.05, 1.05)
        twin.tick_params(labelsize=7)

    fig = _panels(_select(density, arch, dataset), summary, arch, dataset, draw)
    if fig is None:
        return None
    return _save(
        fig, out_dir, "density", arch, dataset, f"{arch} / {dataset}: density and β over training",
        "Masked density (solid, log scale) and DyReLU phasing factor β (dashed) per epoch, mean "
        "over seeds; rows whose density moves (cyclic sparsity) or whose β is ever non-zero. "
        "Density = non-zero masked weights / masked weights of the unshared network, the "
        "denominator of the nominal sparsity, so it ends on the dotted target 1 − s also "
        "when weights are shared.",
    )


def layers_data(layers: pd.DataFrame) -> pd.DataFrame:
    if layers.empty:
        return pd.DataFrame(columns=[*GROUP_KEY, "layer_index", "layer", "density_mean",
                                     "nnz_mean", "seeds"])
    grouped = layers.groupby([*GROUP_KEY, "layer_index", "layer"], sort=True)
    out = grouped.agg(density_mean=("density", "mean"), nnz_mean=("nnz", "mean"),
                      seeds=("seed", "nunique"))
    return out.reset_index()


def plot_layers(layer_table: pd.DataFrame, summary: pd.DataFrame, arch: str, dataset: str,
                out_dir: Path) -> Plot | None:
    def draw(ax: Axes, panel: pd.DataFrame, colors: dict, label_of: dict) -> None:
        # x = position of the layer's name in the longest row's list: a row with shared
        # weights lists fewer tensors, and its points must sit above the right names.
        by_row = [lines for _row, lines in panel.groupby("row", sort=False)]
        names: list[str] = []
        for lines in sorted(by_row, key=len, reverse=True):
            names.extend(n for n in lines.sort_values("layer_index")["layer"] if n not in names)
        where = {name: i for i, name in enumerate(names)}
        for lines in by_row:
            label = label_of.get(lines["row"].iloc[0], lines["row"].iloc[0])
            density = np.full(len(names), np.nan)  # NaN: no such tensor here, a gap
            for name, value in zip(lines["layer"], lines["density_mean"], strict=True):
                density[where[name]] = value if value > 0 else np.nan
            ax.plot(range(len(names)), density, marker=".", ms=3, lw=0.9,
                    color=colors.get(label), label=label)
        if 0 < len(names) <= 60:
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, rotation=90, fontsize=4)
        _log_y(ax, panel["density_mean"].to_numpy(dtype=float))
        ax.set_ylabel("layer density (log)", fontsize=8)

    fig = _panels(_select(layer_table, arch, dataset), summary, arch, dataset, draw)
    if fig is None:
        return None
    return _save(fig, out_dir, "layers", arch, dataset,
                 f"{arch} / {dataset}: final density per layer",
                 "Density of each masked tensor at the end of training, mean over seeds "
                 "(layers in network order; a fully pruned layer leaves a gap, and so does "
                 "a block whose weights are shared: its tensor is the owner's).")


def effective_data(results: pd.DataFrame) -> pd.DataFrame:
    done = results[results["status"] == "done"]
    out = done[[*GROUP_KEY, "seed", "row_label", "effective_sparsity"]].copy()
    out["nominal_density"] = 1.0 - done["sparsity"].to_numpy(dtype=float)
    out["effective_density"] = 1.0 - done["effective_sparsity"].to_numpy(dtype=float)
    return out.dropna(subset=["effective_density"]).reset_index(drop=True)


def plot_effective(effective: pd.DataFrame, summary: pd.DataFrame, arch: str, dataset: str,
                   out_dir: Path) -> Plot | None:
    part = _select(effective, arch, dataset)
    part = part[part["nominal_density"] > 0]
    if part.empty:
        return None
    colors = _colors(list(dict.fromkeys(_select(summary, arch, dataset)["row_label"])))
    positive = part["effective_density"][part["effective_density"] > 0]
    floor = min(positive.min() if len(positive) else 1.0, part["nominal_density"].min()) / 3
    fig = Figure(figsize=(6.2, 4.8), layout="constrained")
    ax = fig.subplots()
    for label, lines in part.groupby("row_label", sort=False):
        y = lines["effective_density"].to_numpy(dtype=float)
        dead = y <= 0
        ax.scatter(lines["nominal_density"][~dead], y[~dead], s=18, alpha=0.75,
                   color=colors.get(label), label=label)
        if dead.any():
            ax.scatter(lines["nominal_density"][dead], np.full(dead.sum(), floor), marker="x",
                       s=28, color=colors.get(label))
    low = min(part["nominal_density"].min(), floor)
    ax.plot([low, 1], [low, 1], color="grey", lw=0.8, ls=":", label="effective = nominal")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log(ax.xaxis, np.append(part["nominal_density"].to_numpy(dtype=float), 1.0))
    _plain_log(ax.yaxis, np.append(part["effective_density"].to_numpy(dtype=float), floor))
    ax.set_xlabel("nominal density 1 − s (log)")
    ax.set_ylabel("effective density (log)")
    ax.grid(alpha=0.3)
    _legend(ax)
    return _save(
        fig, out_dir, "effective", arch, dataset, f"{arch} / {dataset}: nominal vs effective",
        "Each dot is a seed. Effective density counts only weights on some input→output path; "
        "x on the bottom edge: no path left (effective density 0).",
    )


def _write_csv(path: Path, frame: pd.DataFrame) -> Path:
    return atomic_write_text(path, frame.to_csv(index=False, float_format="%.6g"))


def write_plot_data(collected: Collected, summary: pd.DataFrame, out_dir: Path) -> dict[
        str, pd.DataFrame]:
    """The data behind the figures as CSV (``dvc plots`` reads them); returns the frames."""
    accuracy = summary[[*GROUP_KEY, "row_label", "n_done", "test_acc_mean", "test_acc_std"]]
    accuracy = accuracy.assign(compression=compression(summary["sparsity"].to_numpy()))
    data = {
        "accuracy_vs_sparsity": accuracy.rename(columns={"n_done": "seeds"}),
        "training_curves": curves_data(collected.history),
        "density_beta": density_data(collected.history),
        "layer_density": layers_data(collected.layers),
        "effective_sparsity": effective_data(collected.results),
    }
    for name, frame in data.items():
        _write_csv(out_dir / f"{name}.csv", frame)
    return data


def make_plots(collected: Collected, summary: pd.DataFrame, data: dict[str, pd.DataFrame],
               out_dir: Path) -> list[Plot]:
    """Every figure, table by table, in summary order (see the module docstring)."""
    plots: list[Plot] = []
    tables = list(dict.fromkeys(zip(summary["arch"], summary["dataset"], strict=True)))
    for arch, dataset in tables:
        made = [
            plot_accuracy(summary, collected.results, arch, dataset, out_dir),
            plot_ablation(summary, collected.results, arch, dataset, out_dir),
            plot_curves(data["training_curves"], summary, arch, dataset, out_dir),
            plot_density(data["density_beta"], summary, arch, dataset, out_dir),
            plot_layers(data["layer_density"], summary, arch, dataset, out_dir),
            plot_effective(data["effective_sparsity"], summary, arch, dataset, out_dir),
        ]
        plots.extend(p for p in made if p is not None)
    return plots
