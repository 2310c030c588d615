"""The Snakemake workflow and the DVC stage: planning, validation, a tiny DAG end to end.

One tiny DAG (digits, resnet20, one epoch; tests/pipeline_helpers.py) runs once per module
through `dvc repro`, in a temporary git + DVC copy of the repository; the other tests copy
that repository and change it (rename, add a row) to check what Snakemake would rerun.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml
from pipeline_helpers import (
    BIN,
    REPO,
    TINY_GRID,
    copy_repo,
    expected_cells,
    job_counts,
    make_repo,
    run,
    snakemake,
)

from east.grid import cell_file_config, load_grids, unique_runs

# ----------------------------------------------------------------------------- planning


def test_paper_grid_plans_the_expected_jobs(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", grid=None)
    cells = expected_cells(repo / "params/paper.yaml")
    n_cells = len(set(cells))
    datasets = {dataset for _, _, dataset, _, _ in cells}
    start = time.perf_counter()
    result = snakemake(repo, "-n", "--config", "grids=[params/paper.yaml]")
    seconds = time.perf_counter() - start
    counts = job_counts(result.stdout)
    print(f"\npaper grid: {sum(counts.values())} jobs planned in {seconds:.1f} s")
    # Each cell: train + evaluate; one fetch per dataset; one report; the `all` target.
    assert counts == {"fetch_data": len(datasets), "train": n_cells, "evaluate": n_cells,
                      "report": 1, "all": 1}
    assert sum(counts.values()) == 2 * n_cells + len(datasets) + 2
    assert seconds < 60


def test_selected_grids_share_runs(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", grid=None)
    result = snakemake(repo, "-n", "--config", "grids=[params/paper.yaml,params/ablations.yaml]")
    paper = set(expected_cells(repo / "params/paper.yaml"))
    ablations = expected_cells(repo / "params/ablations.yaml")
    # ablation-rigl and ablation-east are the paper's rigl and east cells (2 levels x 3 seeds).
    n_runs = len(paper) + len(ablations) - 12
    assert job_counts(result.stdout)["train"] == n_runs


def test_lint_is_clean(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", grid=None)
    result = snakemake(repo, "--lint")
    assert "Congratulations, your workflow is in a good condition!" in result.stdout
    assert "Lints for" not in result.stdout


def test_snakefmt_is_clean() -> None:
    result = run([str(BIN / "snakefmt"), "--check", "workflow"], REPO, check=False)
    assert result.returncode == 0, result.stdout


def test_an_invalid_grid_stops_the_workflow_with_one_line_per_error(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", grid=TINY_GRID.replace("method: static\n", (
        "method: static\n    arch: resnet99\n    train: {lr: fast}\n"), 1))
    result = snakemake(repo, "-n", check=False)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    errors = [line for line in lines if line.startswith("params/demo.yaml:")]
    assert errors == [
        "params/demo.yaml:static: arch: unknown arch 'resnet99' (known: resnet18, resnet34, "
        "resnet50, resnet20)",
        "params/demo.yaml:static: train.lr: expected float, got 'fast'",
    ]
    assert "east: error: 2 errors in params/demo.yaml: nothing was run" in lines
    assert "Traceback" not in result.stdout and 'File "' not in result.stdout


def test_the_schema_speaks_when_east_grid_has_nothing_to_say(tmp_path: Path) -> None:
    # The schema and east.grid agree on every shipped grid; a grid only the schema
    # rejects would be a bug in one of them, so simulate one with a stricter schema.
    repo = make_repo(tmp_path / "repo")
    schema_path = repo / "workflow/schemas/grid.schema.yaml"
    schema = yaml.safe_load(schema_path.read_text())
    schema["properties"]["rows"]["maxItems"] = 1
    schema_path.write_text(yaml.safe_dump(schema))
    result = snakemake(repo, "-n", check=False)
    assert result.returncode == 1
    assert any(line.startswith("params/demo.yaml: does not match workflow/schemas/grid.schema.yaml")
               for line in result.stdout.splitlines())


def test_grids_given_as_a_string_or_a_list(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", grid=None)
    single = job_counts(snakemake(repo, "-n", "--config", "grids=params/ablations.yaml").stdout)
    listed = job_counts(snakemake(repo, "-n", "--config", "grids=[params/ablations.yaml]").stdout)
    assert single == listed and single["train"] == len(expected_cells(
        repo / "params/ablations.yaml"))
    unknown = snakemake(repo, "-n", "--config", "grid=params/ablations.yaml", check=False)
    assert unknown.returncode == 1
    assert unknown.stdout.splitlines()[-2:] == [
        "grid: unknown key (allowed: grids)",
        "east: error: 1 error in --config: nothing was run",
    ]


# ----------------------------------------------------------------------------- a tiny DAG


@pytest.fixture(scope="module")
def dag(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The tiny grid run end to end by `dvc repro` in a git + DVC repository."""
    repo = make_repo(tmp_path_factory.mktemp("dag") / "repo", git=True)
    result = run([str(BIN / "dvc"), "repro"], repo)
    return repo, result.stdout


def test_the_dag_ran_every_job_once(dag: tuple[Path, str]) -> None:
    _, output = dag
    # Three rows, two distinct cells (static-again is static's cell).
    assert job_counts(output) == {"fetch_data": 1, "train": 2, "evaluate": 2, "report": 1,
                                  "all": 1}


def test_each_cell_has_its_files(dag: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    repo, _ = dag
    monkeypatch.chdir(repo)
    cells = load_grids(["params/demo.yaml"])
    runs = unique_runs(cells)
    assert len(cells) == 3 and len(runs) == 2
    for run_dir, cell in runs.items():
        path = repo / run_dir
        stored = json.loads((path / "cell.json").read_text())
        assert stored == cell_file_config(cell.config).to_dict()
        metrics = json.loads((path / "metrics.json").read_text())
        assert (metrics["arch"], metrics["dataset"], metrics["method"], metrics["seed"]) == (
            cell.arch, cell.dataset, cell.method, cell.seed)
        assert (path / "summary.json").is_file() and (path / "model.pt").is_file()
        tail = run_dir.removeprefix("results/runs/")
        assert (repo / f"results/logs/train/{tail}.log").stat().st_size > 0
        assert (repo / f"results/benchmarks/train/{tail}.tsv").is_file()
        assert (repo / f"results/benchmarks/evaluate/{tail}.tsv").is_file()
    results = (repo / "reports/results.csv").read_text().splitlines()
    assert len(results) == 1 + 3  # one line per row's cell
    for name in ("report.md", "index.html", "summary.csv", "metrics.json"):
        assert (repo / "reports" / name).is_file()


def test_a_second_run_does_nothing(dag: tuple[Path, str]) -> None:
    repo, _ = dag
    again = run([str(BIN / "dvc"), "repro"], repo)
    assert "Stage 'pipeline' didn't change, skipping" in again.stdout
    assert "Data and pipelines are up to date." in run([str(BIN / "dvc"), "status"], repo).stdout
    assert "Nothing to be done" in snakemake(repo, "-n").stdout


def test_dvc_metrics_show_prints_the_report_metrics(dag: tuple[Path, str]) -> None:
    repo, _ = dag
    shown = json.loads(run([str(BIN / "dvc"), "metrics", "show", "--json"], repo).stdout)
    ((_, entry),) = shown.items()
    data = entry["data"]["reports/metrics.json"]["data"]
    # DVC shows the numbers (a single seed's null standard deviation is left out).
    numbers = {key: {k: v for k, v in values.items() if isinstance(v, (int, float))}
               for key, values in json.loads((repo / "reports/metrics.json").read_text()).items()}
    assert data == numbers
    assert data["resnet20/digits/static/0.9"]["test_acc_mean"] > 0
    assert set(data) == {"resnet20/digits/dense/0", "resnet20/digits/static/0.9",
                         "resnet20/digits/static-again/0.9"}
    table = run([str(BIN / "dvc"), "metrics", "show"], repo).stdout
    assert "reports/metrics.json" in table and "resnet20/digits/static/0.9" in table


def test_renaming_a_row_retrains_nothing(dag: tuple[Path, str], tmp_path: Path) -> None:
    repo = copy_repo(dag[0], tmp_path / "repo")
    grid = repo / "params/demo.yaml"
    grid.write_text(grid.read_text().replace("name: static\n", "name: static-renamed\n"))
    assert job_counts(snakemake(repo, "-n").stdout) == {"report": 1, "all": 1}


def test_a_non_semantic_change_retrains_nothing(dag: tuple[Path, str], tmp_path: Path) -> None:
    repo = copy_repo(dag[0], tmp_path / "repo")
    grid = repo / "params/demo.yaml"
    grid.write_text(grid.read_text().replace("{epochs: 1}", "{epochs: 1, log_every: 3}"))
    assert job_counts(snakemake(repo, "-n").stdout) == {"report": 1, "all": 1}
    # A semantic change names new run directories: every cell trains again.
    grid.write_text(grid.read_text().replace("{epochs: 1, log_every: 3}", "{epochs: 2}"))
    assert job_counts(snakemake(repo, "-n").stdout) == {"train": 2, "evaluate": 2,
                                                         "report": 1, "all": 1}


def test_adding_a_row_trains_only_its_cells(dag: tuple[Path, str], tmp_path: Path) -> None:
    repo = copy_repo(dag[0], tmp_path / "repo")
    with (repo / "params/demo.yaml").open("a") as handle:
        handle.write("  - name: set\n    method: set\n")
    result = snakemake(repo, "-n")
    assert job_counts(result.stdout) == {"train": 1, "evaluate": 1, "report": 1, "all": 1}
    planned = re.findall(r"^    output: (results/runs/[^/]+)/seed0/summary.json", result.stdout,
                         flags=re.MULTILINE)
    assert len(planned) == 1 and "-digits-set-s0.9-" in planned[0]


def test_dvc_push_pull_and_touch_restore_a_clone(dag: tuple[Path, str], tmp_path: Path) -> None:
    repo = copy_repo(dag[0], tmp_path / "repo")
    dvc = str(BIN / "dvc")
    run(["git", "add", "dvc.lock"], repo)
    run(["git", "commit", "-qm", "results"], repo)
    run([dvc, "remote", "add", "-d", "local", str(tmp_path / "remote")], repo)
    run(["git", "commit", "-qam", "remote"], repo)
    run([dvc, "push"], repo)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    run([dvc, "pull"], clone)
    assert (clone / "reports/metrics.json").read_text() == (
        repo / "reports/metrics.json").read_text()
    snakemake(clone, "--touch", "--cores", "1")
    assert job_counts(snakemake(clone, "-n").stdout) == {}
    assert "Data and pipelines are up to date." in run([dvc, "status"], clone).stdout
