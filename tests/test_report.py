"""east.report: aggregation, tables (Markdown, LaTeX, HTML), comparison, plots, CLI.

Every test builds a synthetic results tree with real ``metrics.json`` / ``history.jsonl``
files and checks the report against numbers computed here independently (numpy; the std
convention is the sample std, ddof=1).
"""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from east.errors import EastError
from east.report import build_report, collect, compare, load_published, summarize
from east.report.published import Published
from east.report.tables import build_tables, latex_escape, markdown_escape, render_table

REPO = Path(__file__).resolve().parents[1]

SPECIAL = "east_v2 & 100% #1"  # a row name with every LaTeX special the tables must escape
ROWS = [("rigl", "RigL", "rigl"), ("set", "SET", "set"), ("east", "EAST", "east"),
        (SPECIAL, "", "east")]
SPARSITIES = [0.99, 0.999, 0.9999]
SEEDS = [0, 1, 2]
# Mean accuracy per row and sparsity: the best row differs between columns.
BASE = {"rigl": [0.95, 0.85, 0.10], "set": [0.93, 0.80, 0.10], "east": [0.94, 0.87, 0.62],
        SPECIAL: [0.90, 0.86, 0.55]}
EPOCHS = 4
MISSING = ("set", 0.999, 1)  # no run directory
INCOMPLETE = ("rigl", 0.9999, 2)  # trained (summary.json) but not evaluated
FAILED = (SPECIAL, 0.99, 0)  # metrics.json is corrupt


@dataclass
class Tree:
    expected: pd.DataFrame
    acc: dict[tuple[str, float, int], float] = field(default_factory=dict)
    val: dict[tuple[str, float, int], list[float]] = field(default_factory=dict)


def write_metrics(run_dir: Path, *, arch: str, dataset: str, method: str, sparsity: float,
                  seed: int, acc: float, n_masked: int = 10_000, epochs: int = EPOCHS,
                  dynamic_density: bool = False, val: list[float] | None = None) -> None:
    """A finished, evaluated cell with the files and keys of docs/design.md."""
    run_dir.mkdir(parents=True, exist_ok=True)
    density = 1.0 - sparsity
    val = val if val is not None else [acc * (e + 1) / epochs for e in range(epochs)]
    history = []
    for epoch in range(epochs):
        moving = dynamic_density and 0 < epoch < epochs - 1
        history.append({
            "epoch": epoch, "step": 10 * (epoch + 1), "lr": 0.1, "train_loss": 1.0 / (epoch + 1),
            "train_acc": val[epoch], "val_loss": 1.0, "val_acc": val[epoch],
            "density": density * (3.0 if moving else 1.0),
            "beta": max(0.0, 1.0 - epoch / 2) if dynamic_density else 0.0, "time_s": 1.0,
        })
    (run_dir / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    nnz = round(density * n_masked)
    layers = [
        {"name": f"layer{i}.conv", "shape": [10, 10, 10, 10], "numel": n_masked // 4,
         "nnz": nnz // 4, "density": (nnz // 4) / (n_masked // 4), "effective_nnz": nnz // 8,
         "shared_users": [f"layer{i}"]}
        for i in range(4)
    ]
    metrics = {
        "cell_id": run_dir.parent.name, "arch": arch, "dataset": dataset, "method": method,
        "sparsity": sparsity, "seed": seed, "test_acc": acc, "test_acc_best_val": acc - 0.01,
        "best_val_acc": acc + 0.01, "n_masked": n_masked, "nnz_masked": nnz,
        "n_params": n_masked + 100, "nnz_params": nnz + 100, "density_masked": nnz / n_masked,
        "density_all": (nnz + 100) / (n_masked + 100), "flops_inference": 2.0 * nnz,
        "flops_inference_dense": 2.0 * n_masked, "flops_train": 6.0 * nnz,
        "effective_nnz": nnz // 2, "effective_sparsity": 1 - (nnz // 2) / n_masked,
        "collapsed_layers": [], "layers": layers, "wall_time_s": 3.5,
    }
    (run_dir / "summary.json").write_text(json.dumps({"cell_id": run_dir.parent.name}))
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


def make_tree(root: Path, *, arch: str = "resnet20", dataset: str = "digits",
              protocol: str = "cpu-scale", grid: str = "demo") -> Tree:
    """ROWS x SPARSITIES x SEEDS on one (arch, dataset); one cell each missing/incomplete/failed."""
    rng = np.random.default_rng(7)
    tree = Tree(pd.DataFrame())
    records = []
    for index, (row, label, method) in enumerate(ROWS):
        for j, sparsity in enumerate(SPARSITIES):
            for seed in SEEDS:
                run_dir = root / f"{arch}-{dataset}-cell{index}-{j}" / f"seed{seed}"
                records.append({"row": row, "row_label": label, "arch": arch,
                                "dataset": dataset, "method": method, "sparsity": sparsity,
                                "seed": seed, "run_dir": str(run_dir), "protocol": protocol,
                                "grid": grid})
                key = (row, sparsity, seed)
                if key == MISSING:
                    continue
                if key == INCOMPLETE:
                    run_dir.mkdir(parents=True)
                    (run_dir / "summary.json").write_text("{}")
                    continue
                acc = float(BASE[row][j] + rng.normal(0.0, 0.01))
                val = [float(acc * (e + 1) / EPOCHS + rng.normal(0, 0.01)) for e in range(EPOCHS)]
                write_metrics(run_dir, arch=arch, dataset=dataset, method=method,
                              sparsity=sparsity, seed=seed, acc=acc, val=val,
                              dynamic_density=method == "east")
                if key == FAILED:
                    (run_dir / "metrics.json").write_text('{"test_acc": 0.9')  # torn file
                    continue
                tree.acc[key] = acc
                tree.val[key] = val
    tree.expected = pd.DataFrame(records)
    return tree


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("report")
    tree = make_tree(root / "runs")
    report = build_report(tree.expected, root / "reports")
    return tree, report, root / "reports"


def parse_markdown_table(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """Header sparsity labels and {row label (unescaped): [cell texts]} of a Markdown table."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [re.split(r"(?<!\\)\|", line)[1:-1] for line in lines]
    header = [c.strip() for c in split[0][1:]]
    rows = {}
    for cells in split[2:]:
        label = re.sub(r"\\(.)", r"\1", cells[0].strip())
        rows[label] = [c.strip() for c in cells[1:]]
    return header, rows


CELL = re.compile(r"^(\*\*)?(\d+\.\d\d)(?: ± (\d+\.\d\d))?(\*\*)? \((\d+)(?: of (\d+))?\)"
                  r"(?: \[(\d+)\])?$")


def test_markdown_numbers_equal_independent_mean_and_sample_std(built) -> None:
    tree, _report, out = built
    text = (out / "tables" / "resnet20-digits.md").read_text()
    header, rows = parse_markdown_table(text)
    assert header == ["99%", "99.9%", "99.99%"]
    labels = [label or row for row, label, _ in ROWS]
    assert list(rows)[:-1] == labels  # grid order, then the nnz line
    assert rows["*masked non-zero weights*"] == ["100", "10", "1"]
    for (row, label, _method) in ROWS:
        for j, sparsity in enumerate(SPARSITIES):
            accs = np.array([tree.acc[(row, sparsity, s)] for s in SEEDS
                             if (row, sparsity, s) in tree.acc]) * 100
            match = CELL.match(rows[label or row][j])
            assert match, rows[label or row][j]
            assert float(match.group(2)) == pytest.approx(np.mean(accs), abs=0.005 + 1e-9)
            assert float(match.group(3)) == pytest.approx(np.std(accs, ddof=1), abs=0.005 + 1e-9)
            assert int(match.group(5)) == len(accs)
            lacking = len(accs) < len(SEEDS)
            assert (match.group(6) is not None) == lacking
            assert (match.group(7) is not None) == lacking
    # Bold = the best mean of each column, exactly one per column here.
    for j, sparsity in enumerate(SPARSITIES):
        best = max(
            ROWS, key=lambda r: np.mean([tree.acc[(r[0], sparsity, s)] for s in SEEDS
                                         if (r[0], sparsity, s) in tree.acc])
        )
        bold = [row for row, label, _ in ROWS if rows[label or row][j].startswith("**")]
        assert bold == [best[0]]


def test_missing_incomplete_and_failed_cells_are_marked_not_dropped(built) -> None:
    _tree, report, out = built
    results = pd.read_csv(out / "results.csv")
    assert len(results) == len(ROWS) * len(SPARSITIES) * len(SEEDS)
    status = {(r.row, r.sparsity, r.seed): (r.status, r.note) for r in results.itertuples()}
    assert status[MISSING] == ("missing", "no run directory")
    assert status[INCOMPLETE] == ("incomplete", "trained, not evaluated")
    assert status[FAILED][0] == "failed"
    assert "metrics.json unreadable" in status[FAILED][1]
    assert report.counts == {"done": len(results) - 3, "diverged": 0, "incomplete": 1,
                             "failed": 1, "missing": 1}
    text = (out / "tables" / "resnet20-digits.md").read_text()
    _header, rows = parse_markdown_table(text)
    set_cell = rows["SET"][SPARSITIES.index(MISSING[1])]
    note = CELL.match(set_cell).group(7)
    assert "(2 of 3)" in set_cell
    assert f"[{note}] seed 1: missing (no run directory)" in text
    failed_cell = rows[SPECIAL][SPARSITIES.index(FAILED[1])]
    failed_note = CELL.match(failed_cell).group(7)
    assert f"[{failed_note}] seed 0: failed (metrics.json unreadable" in text
    # results.json carries the same lines; NaN becomes null.
    records = json.loads((out / "results.json").read_text())
    assert len(records) == len(results)
    missing = next(r for r in records if (r["row"], r["sparsity"], r["seed"]) == MISSING)
    assert missing["test_acc"] is None and missing["status"] == "missing"


def test_run_dir_without_summary_is_training_not_finished(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "runs")
    run_dir = Path(tree.expected.iloc[0]["run_dir"])
    (run_dir / "metrics.json").unlink()
    (run_dir / "summary.json").unlink()
    results = collect(tree.expected).results
    assert results.iloc[0]["status"] == "incomplete"
    assert results.iloc[0]["note"] == "training not finished"


def test_metrics_disagreeing_with_the_grid_is_failed(tmp_path: Path) -> None:
    write_metrics(tmp_path / "c" / "seed0", arch="resnet18", dataset="digits", method="rigl",
                  sparsity=0.9, seed=0, acc=0.5)
    expected = pd.DataFrame([{"row": "r", "arch": "resnet20", "dataset": "digits",
                              "method": "rigl", "sparsity": 0.9, "seed": 0,
                              "run_dir": str(tmp_path / "c" / "seed0")}])
    results = collect(expected).results
    assert results.iloc[0]["status"] == "failed"
    assert results.iloc[0]["note"] == (
        "metrics.json says arch 'resnet18', the grid says 'resnet20'"
    )


def test_summary_and_dvc_metrics(built) -> None:
    tree, _report, out = built
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics) == len(ROWS) * len(SPARSITIES)
    entry = metrics["resnet20/digits/east/0.999"]
    accs = np.array([tree.acc[("east", 0.999, s)] for s in SEEDS])
    assert entry["test_acc_mean"] == pytest.approx(accs.mean(), abs=1e-6)
    assert entry["test_acc_std"] == pytest.approx(accs.std(ddof=1), abs=1e-6)
    assert entry["seeds"] == 3 and entry["seeds_expected"] == 3
    assert metrics["resnet20/digits/set/0.999"]["seeds"] == 2


def test_one_seed_has_no_std_and_ties_are_all_bold(tmp_path: Path) -> None:
    records = []
    for row in ("a", "b"):
        run_dir = tmp_path / row / "seed0"
        write_metrics(run_dir, arch="resnet20", dataset="digits", method="rigl", sparsity=0.9,
                      seed=0, acc=0.8)
        records.append({"row": row, "arch": "resnet20", "dataset": "digits", "method": "rigl",
                        "sparsity": 0.9, "seed": 0, "run_dir": str(run_dir)})
    tables = build_tables(summarize(collect(pd.DataFrame(records)).results))
    _header, rows = parse_markdown_table(render_table(tables[0], "md"))
    assert rows["a"] == ["**80.00** (1)"] and rows["b"] == ["**80.00** (1)"]


def test_latex_table_is_well_formed_and_escaped(built) -> None:
    _tree, _report, out = built
    tex = (out / "tables" / "resnet20-digits.tex").read_text()
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", tex):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env
    assert stack == []
    assert tex.count(r"\begin{") == tex.count(r"\end{") == 3  # table, tabular, minipage
    for rule in (r"\toprule", r"\bottomrule"):
        assert tex.count(rule) == 1
    lines = tex.splitlines()
    first, second = [i for i, line in enumerate(lines) if line == r"\midrule"]
    body = lines[first + 1:second]
    assert len(body) == len(ROWS)  # one line per grid row
    assert body[3].startswith(r"east\_v2 \& 100\% \#1 & ")
    for line in body:
        assert line.endswith(r" \\")
        # Unescaped & separate the columns; no unescaped % would comment out the rest.
        assert len(re.findall(r"(?<!\\)&", line)) == len(SPARSITIES)
        assert not re.search(r"(?<!\\)%", line)
    assert r"\textbf{" in body[2]  # EAST is best at 99.9 % and 99.99 %


def test_escapes() -> None:
    assert latex_escape("a_b & 5% #1 {x} $y ~ ^ \\") == (
        r"a\_b \& 5\% \#1 \{x\} \$y \textasciitilde{} \textasciicircum{} \textbackslash{}"
    )
    assert markdown_escape("a|b *c* _d_") == r"a\|b \*c\* \_d\_"


def test_published_numbers_ship_with_sources() -> None:
    published = load_published()
    frame = published.frame
    assert len(frame) == 25
    east = frame[(frame["source"] == "arXiv:2411.13545v4") & (frame["method"] == "east")
                 & (frame["sparsity"] == 0.999)]
    assert east[["top1_mean", "top1_std", "seeds"]].to_numpy().tolist() == [[86.99, 0.32, 3.0]]
    notes = "\n".join(published.notes)
    for cited in ("Pushing the Limits of Sparsity", "Rigging the Lottery",
                  "iteratively conserving synaptic flow"):
        assert cited in notes


def test_bad_published_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pub.csv"
    path.write_text("source,table,arch\nx,y,z\n")
    with pytest.raises(EastError, match=r"pub\.csv: missing column\(s\) dataset"):
        load_published(path)
    path.write_text("source,table,arch,dataset,method,sparsity,top1_mean,top1_std,seeds\n"
                    "s,t,resnet34,cifar10,east,high,1,,\n")
    with pytest.raises(EastError, match=r"pub\.csv: data line 2: sparsity: not a number"):
        load_published(path)


def _cells(root: Path, arch: str, dataset: str, row: str, method: str, accs: list[float],
           sparsity: float = 0.999, **extra: str) -> list[dict]:
    records = []
    for seed, acc in enumerate(accs):
        run_dir = root / f"{arch}-{dataset}-{row}" / f"seed{seed}"
        write_metrics(run_dir, arch=arch, dataset=dataset, method=method, sparsity=sparsity,
                      seed=seed, acc=acc)
        records.append({"row": row, "arch": arch, "dataset": dataset, "method": method,
                        "sparsity": sparsity, "seed": seed, "run_dir": str(run_dir), **extra})
    return records


def test_published_vs_ours_difference(tmp_path: Path) -> None:
    accs = [0.8812, 0.8790, 0.8845]
    records = _cells(tmp_path, "resnet34", "cifar10", "east", "east", accs, protocol="paper")
    # A RigL row with a trick switched on is a variant: never matched to RigL's number.
    records += _cells(tmp_path, "resnet34", "cifar10", "rigl-dyrelu", "rigl", [0.86],
                      compare_as="")
    # The CPU-scale grid: context only, no difference.
    records += _cells(tmp_path, "resnet20", "digits", "east-digits", "east", [0.5],
                      protocol="cpu-scale")
    expected = pd.DataFrame(records).fillna({"protocol": "", "compare_as": ""})
    expected.loc[expected["row"] != "rigl-dyrelu", "compare_as"] = expected["method"]
    published = Published(pd.DataFrame([
        {"source": "paper v4", "table": "Table 1", "arch": "resnet34", "dataset": "cifar10",
         "method": "east", "sparsity": 0.999, "top1_mean": 86.99, "top1_std": 0.32,
         "seeds": 3.0},
        {"source": "paper v4", "table": "Table 1", "arch": "resnet34", "dataset": "cifar10",
         "method": "rigl", "sparsity": 0.999, "top1_mean": 85.71, "top1_std": 0.23,
         "seeds": 3.0},
    ]), ("paper v4: the source",))
    report = build_report(expected, tmp_path / "out", published=published, figures=False)
    comparison = report.comparison
    exact = comparison[comparison["match"] == "exact"]
    assert exact["row"].tolist() == ["east"]
    ours = float(np.mean(accs) * 100)
    assert exact["diff"].iloc[0] == pytest.approx(ours - 86.99, abs=1e-9)
    context = comparison[comparison["match"] == "context"]
    assert context[["row", "protocol", "pub_arch"]].to_numpy().tolist() == [
        ["east-digits", "cpu-scale", "resnet34"]]
    assert math.isnan(context["diff"].iloc[0])
    md = (tmp_path / "out" / "comparison.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| resnet34 / cifar10 | east |"))
    cells = [c.strip() for c in line.split("|")[1:-1]]
    assert cells[2:7] == ["paper", "99.9%", f"{ours:.2f} ± {np.std(accs, ddof=1) * 100:.2f} (3)",
                          "86.99 ± 0.32 (3)", f"{ours - 86.99:+.2f}"]
    assert "| resnet20 / digits | east-digits | cpu-scale |" in md
    assert "paper v4: the source" in (tmp_path / "out" / "index.html").read_text()


def test_rows_sharing_runs_are_compared_once_and_labels_disambiguated(tmp_path: Path) -> None:
    records = _cells(tmp_path, "resnet34", "cifar10", "rigl", "rigl", [0.85, 0.86],
                     row_label="RigL", grid="paper")
    shared = [dict(r, row="ablation-rigl", grid="ablations") for r in records]
    expected = pd.DataFrame(records + shared)
    summary = summarize(collect(expected).results)
    assert summary["row_label"].tolist() == ["RigL (rigl)", "RigL (ablation-rigl)"]
    comparison = compare(summary, load_published().frame)
    assert comparison["row"].tolist() == ["rigl"]
    assert comparison["diff"].iloc[0] == pytest.approx(85.5 - 85.71, abs=1e-9)


def test_expected_frame_errors(tmp_path: Path) -> None:
    good = {"row": "r", "arch": "resnet20", "dataset": "digits", "method": "rigl",
            "sparsity": 0.9, "seed": 0, "run_dir": str(tmp_path)}
    with pytest.raises(EastError, match="missing column"):
        collect(pd.DataFrame([{k: v for k, v in good.items() if k != "run_dir"}]))
    with pytest.raises(EastError, match="twice"):
        collect(pd.DataFrame([good, good]))
    with pytest.raises(EastError, match=r"sparsity 1\.0 is not in \[0, 1\)"):
        collect(pd.DataFrame([dict(good, sparsity=1.0)]))


def test_plot_files_and_their_data(built) -> None:
    tree, report, out = built
    kinds = {p.kind for p in report.plots}
    assert kinds == {"accuracy", "ablation", "curves", "density", "layers", "effective"}
    for plot in report.plots:
        assert plot.png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert plot.pdf_path.read_bytes()[:5] == b"%PDF-"
    accuracy = pd.read_csv(out / "plots" / "accuracy_vs_sparsity.csv")
    line = accuracy[(accuracy["row"] == "rigl") & (accuracy["sparsity"] == 0.99)].iloc[0]
    assert line["compression"] == pytest.approx(100.0)
    assert line["test_acc_mean"] == pytest.approx(
        np.mean([tree.acc[("rigl", 0.99, s)] for s in SEEDS]), rel=1e-5)
    curves = pd.read_csv(out / "plots" / "training_curves.csv")
    point = curves[(curves["row"] == "east") & (curves["sparsity"] == 0.999)
                   & (curves["epoch"] == 2)].iloc[0]
    values = [tree.val[("east", 0.999, s)][2] for s in SEEDS]
    assert point["val_acc_mean"] == pytest.approx(np.mean(values), rel=1e-5)
    assert point["val_acc_std"] == pytest.approx(np.std(values, ddof=1), rel=1e-5)
    assert point["seeds"] == 3
    # Density/β: only rows whose density moves or whose β is non-zero (the EAST rows).
    density = pd.read_csv(out / "plots" / "density_beta.csv")
    assert set(density["row"]) == {"east", SPECIAL}
    first = density[(density["row"] == "east") & (density["sparsity"] == 0.99)]
    assert first["density_mean"].round(9).tolist() == [0.01, 0.03, 0.03, 0.01]
    assert first["beta_mean"].tolist() == [1.0, 0.5, 0.0, 0.0]
    layers = pd.read_csv(out / "plots" / "layer_density.csv")
    assert len(layers) == 4 * (len(ROWS) * len(SPARSITIES))
    effective = pd.read_csv(out / "plots" / "effective_sparsity.csv")
    assert len(effective) == report.counts["done"]


def test_html_is_self_contained(built) -> None:
    _tree, report, out = built
    html = (out / "index.html").read_text()
    assert "<link" not in html and "http://" not in html and "https://" not in html
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == len(report.plots) == 6
    for src in sources:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix):])[:4] == b"\x89PNG"
    # The tables escape HTML (the special row name) and mark gaps.
    assert "east_v2 &amp; 100% #1" in html
    assert html.count('id="table-resnet20-digits"') == 1


def test_stale_figures_are_removed(tmp_path: Path) -> None:
    records = _cells(tmp_path, "resnet20", "digits", "r", "rigl", [0.5, 0.6])
    out = tmp_path / "out"
    stale = out / "figures" / "accuracy-resnet99-gone.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    keep = out / "figures" / "notes.txt"
    keep.write_text("mine")
    build_report(pd.DataFrame(records), out)
    assert not stale.exists() and keep.exists()
    assert (out / "figures" / "accuracy-resnet20-digits.png").is_file()


def test_cli_report_from_a_grid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from east.cli import main
    from east.grid import load_grids

    (tmp_path / "params").mkdir()
    shutil.copy(REPO / "params" / "defaults.yaml", tmp_path / "params" / "defaults.yaml")
    (tmp_path / "params" / "tiny.yaml").write_text(
        "description: tiny\n"
        "defaults: {arch: resnet20, dataset: digits, sparsity: [0.9, 0.99], seeds: [0, 1]}\n"
        "rows:\n"
        "  - {name: tiny-rigl, label: RigL, method: rigl}\n"
        "  - {name: tiny-rigl-dyrelu, label: RigL + DyReLU, method: rigl,"
        " method_args: {dyrelu: true}}\n"
    )
    monkeypatch.chdir(tmp_path)
    cells = load_grids(["params/tiny.yaml"], runs_root="runs")
    for i, cell in enumerate(cells[:-1]):  # the last cell stays missing
        write_metrics(Path(cell.run_dir), arch=cell.arch, dataset=cell.dataset,
                      method=cell.method, sparsity=cell.sparsity, seed=cell.seed,
                      acc=0.5 + 0.01 * i)
    assert main(["report", "params/tiny.yaml", "--runs", "runs", "--out", "out"]) == 0
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert results["status"].tolist() == ["done"] * 7 + ["missing"]
    assert results["row_label"].tolist()[:1] == ["RigL"]
    assert results["grid"].unique().tolist() == ["tiny"]
    _header, rows = parse_markdown_table(
        (tmp_path / "out" / "tables" / "resnet20-digits.md").read_text())
    assert list(rows) == ["RigL", "RigL + DyReLU", "*masked non-zero weights*"]
    assert "(1 of 2)" in rows["RigL + DyReLU"][1]
    # The DyReLU variant is not RigL: only the plain row sits beside published RigL numbers.
    comparison = pd.read_csv(tmp_path / "out" / "comparison.csv")
    assert set(comparison["row"]) == {"tiny-rigl"}


# ----------------------------------------------------------------------------- failures


DIVERGED = {"epoch": 1, "step": 7, "last_finite_loss": 2.3026}


def _diverged_run(run_dir: Path, cell: dict, *, evaluated: bool = True) -> None:
    """A run whose training diverged: summary.json (and metrics.json once evaluated) say
    so, with where, as the trainer and evaluator write them; no model.pt."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps({
        "cell_id": run_dir.parent.name, "seed": cell["seed"], "status": "diverged",
        "diverged": DIVERGED, "wall_time_s": 1.5}))
    if evaluated:
        (run_dir / "metrics.json").write_text(json.dumps({
            "cell_id": run_dir.parent.name, "status": "diverged", "diverged": DIVERGED,
            "test_acc": None, "test_acc_best_val": None,
            **{k: cell[k] for k in ("arch", "dataset", "method", "sparsity", "seed")}}))


@pytest.fixture(scope="module")
def failures(tmp_path_factory: pytest.TempPathFactory):
    """rigl: done; big-lr: every seed diverged; half: one seed done, one diverged (not yet
    evaluated); broken: its train job failed (the pipeline's marker and log); never: no
    run directory."""
    root = tmp_path_factory.mktemp("failures")
    runs, logs = root / "runs", root / "logs"
    records = _cells(runs, "resnet20", "digits", "rigl", "rigl", [0.81, 0.83, 0.82], 0.9)
    for row, seeds in (("big-lr", [0, 1, 2]), ("half", [0, 1]), ("broken", [0]),
                       ("never", [0])):
        for seed in seeds:
            run_dir = runs / f"resnet20-digits-{row}" / f"seed{seed}"
            tail = f"resnet20-digits-{row}/seed{seed}"
            cell = {"row": row, "arch": "resnet20", "dataset": "digits", "method": "static",
                    "sparsity": 0.9, "seed": seed, "run_dir": str(run_dir),
                    "logs": f"{logs}/train/{tail}.log;{logs}/evaluate/{tail}.log"}
            records.append(cell)
            if row == "big-lr" or (row == "half" and seed == 1):
                _diverged_run(run_dir, cell, evaluated=row == "big-lr")
            elif row == "half":
                write_metrics(run_dir, arch="resnet20", dataset="digits", method="static",
                              sparsity=0.9, seed=0, acc=0.7)
            elif row == "broken":
                run_dir.mkdir(parents=True)
                (run_dir / "FAILED.json").write_text(json.dumps({
                    "rule": "train", "exit_code": 2, "attempt": 1, "attempts": 4,
                    "retryable": False, "log": f"{logs}/train/{tail}.log"}))
                (logs / "train" / f"resnet20-digits-{row}").mkdir(parents=True)
                (logs / "train" / f"{tail}.log").write_text("east: error: ...\n")
    out = root / "reports"
    return build_report(pd.DataFrame(records), out, figures=False), out, logs


def test_a_diverged_cell_reads_diverged_and_failed_cells_list_their_logs(failures) -> None:
    report, out, logs = failures
    assert report.counts == {"done": 4, "diverged": 4, "incomplete": 0, "failed": 1,
                             "missing": 1}
    results = pd.read_csv(out / "results.csv", keep_default_na=False)
    why = {(r.row, r.seed): (r.status, r.note, r.logs) for r in results.itertuples()}
    diverged = "epoch 1, step 7; last finite loss 2.303"
    assert why[("big-lr", 0)] == ("diverged", diverged, "")
    assert why[("half", 1)] == ("diverged", f"{diverged}; not evaluated yet", "")
    broken_log = f"{logs}/train/resnet20-digits-broken/seed0.log"
    assert why[("broken", 0)] == ("failed", "train exited 2 in attempt 1 of 4", broken_log)
    assert why[("never", 0)] == ("missing", "no run directory", "")
    assert why[("rigl", 0)] == ("done", "", "")
    # The table: "diverged" where every seed diverged (as papers print it), a mean over
    # the finished seeds with a footnote where some did.
    text = (out / "tables" / "resnet20-digits.md").read_text()
    _header, rows = parse_markdown_table(text)
    assert rows["big-lr"] == ["diverged [1]"]
    assert rows["half"] == ["70.00 (1 of 2) [2]"]
    assert rows["broken"] == ["— [3]"]
    assert "[1] seeds 0, 1, 2: diverged (epoch 1, step 7; last finite loss 2.303)" in text
    assert "[3] seed 0: failed (train exited 2 in attempt 1 of 4)" in text
    assert rows["rigl"] == ["**82.00 ± 1.00** (3)"]
    tex = (out / "tables" / "resnet20-digits.tex").read_text()
    assert "big-lr & diverged\\textsuperscript{1} \\\\" in tex
    html = (out / "tables" / "resnet20-digits.html").read_text()
    assert '<td class="diverged"><span class="diverged">diverged</span>' in html
    # report.md and index.html list every cell not done, with the logs that exist.
    markdown = (out / "report.md").read_text()
    assert "## Cells not done" in markdown
    assert (f"| resnet20 / digits | broken | 90% | 0 | failed | train exited 2 in attempt 1 "
            f"of 4 | {out.parent}/runs/resnet20-digits-broken/seed0 | {broken_log} |"
            ) in markdown.replace("\\_", "_").replace("\\-", "-")
    index = (out / "index.html").read_text()
    assert f"<td>{broken_log}</td></tr>" in index
    assert index.count('<td class="diverged">diverged</td>') == 4
    # dvc metrics: one small file per summary line; the flat file says what diverged.
    flat = json.loads((out / "metrics.json").read_text())
    assert flat["resnet20/digits/big-lr/0.9"] == {
        "test_acc_mean": None, "test_acc_std": None, "test_acc_best_val_mean": None,
        "seeds": 0, "seeds_expected": 3, "seeds_diverged": 3,
        "flops_train_vs_dense_mean": None}
    files = sorted(p.name for p in (out / "metrics").iterdir())
    assert files == ["resnet20-digits-big-lr-0.9.json", "resnet20-digits-broken-0.9.json",
                     "resnet20-digits-half-0.9.json", "resnet20-digits-never-0.9.json",
                     "resnet20-digits-rigl-0.9.json"]
    assert json.loads((out / "metrics" / "resnet20-digits-rigl-0.9.json").read_text()) == (
        flat["resnet20/digits/rigl/0.9"])


def test_density_plot_is_relative_to_the_unshared_network(tmp_path: Path) -> None:
    # A 90 % EAST cell with weight sharing: nnz / unique weights ends at 0.156, nnz / the
    # unshared network's weights at 0.1 = 1 - s, which is what "90 %" means.
    run_dir = tmp_path / "resnet34-cifar10-east" / "seed0"
    write_metrics(run_dir, arch="resnet34", dataset="cifar10", method="east", sparsity=0.9,
                  seed=0, acc=0.9, dynamic_density=True)
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    for record, full in zip(history, [0.1, 0.3, 0.3, 0.1], strict=True):
        record["density_full"], record["density"] = full, full * 1.56
    (run_dir / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    expected = pd.DataFrame([{"row": "east", "arch": "resnet34", "dataset": "cifar10",
                              "method": "east", "sparsity": 0.9, "seed": 0,
                              "run_dir": str(run_dir)}])
    report = build_report(expected, tmp_path / "out")
    density = pd.read_csv(tmp_path / "out" / "plots" / "density_beta.csv")
    assert density["density_mean"].round(9).tolist() == [0.1, 0.3, 0.3, 0.1]
    assert density["target_density"].round(9).tolist() == [0.1] * 4
    (plot,) = [p for p in report.plots if p.kind == "density"]
    assert "masked weights of the unshared network" in plot.caption
    assert "target 1 − s" in plot.caption


def test_training_cost_best_model_and_environments_in_the_report(tmp_path: Path) -> None:
    """Training FLOPs relative to dense sit next to accuracy; the best model's epoch and
    nnz reach results.csv; seeds run in different environments get a footnote."""
    records = _cells(tmp_path / "runs", "resnet18", "digits", "rigl", "rigl", [0.8, 0.82])
    for seed, (ratio, threads) in enumerate([(0.031, 1), (0.035, 2)]):
        path = Path(records[seed]["run_dir"]) / "metrics.json"
        metrics = json.loads(path.read_text())
        metrics.update(flops_train_vs_dense=ratio,
                       best={"epoch": 7 + seed, "nnz": 1116, "beta": 0.0, "step": 70,
                             "val_acc": 0.8, "selection": "best validation accuracy"},
                       environment={"threads": threads, "torch": "2.14.1", "device": "cpu"})
        path.write_text(json.dumps(metrics))
    report = build_report(pd.DataFrame(records), tmp_path / "reports")
    table = (tmp_path / "reports" / "tables" / "resnet18-digits.md").read_text()
    assert "**81.00 ± 1.41** (2) · 0.033x [1]" in table  # mean of 0.031 and 0.035
    assert "[1] its seeds ran in different environments (CPU results depend on them): " \
           "threads 1/2" in table
    results = pd.read_csv(tmp_path / "reports" / "results.csv")
    assert results["best_epoch"].tolist() == [7, 8]
    assert results["best_nnz"].tolist() == [1116, 1116]
    assert report.summary["flops_train_vs_dense_mean"].iloc[0] == pytest.approx(0.033)
    # One environment: no footnote.
    same = _cells(tmp_path / "same", "resnet18", "digits", "set", "set", [0.5, 0.6])
    build_report(pd.DataFrame(same), tmp_path / "reports-same")
    assert "environments" not in (tmp_path / "reports-same" / "tables" /
                                  "resnet18-digits.md").read_text()
