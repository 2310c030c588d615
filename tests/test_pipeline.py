"""The Snakemake workflow and the DVC stage: planning, validation, a tiny DAG end to end.

One tiny DAG (digits, resnet20, one epoch; tests/pipeline_helpers.py) runs once per module
through `dvc repro`, in a temporary git + DVC copy of the repository; the other tests copy
that repository and change it (rename, add a row) to check what Snakemake would rerun.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import pytest
import torch
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
from east.pipeline import StepFailed, attempt, retryable

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
    result = run([str(BIN / "snakefmt"), "--check", "Snakefile", "workflow"], REPO, check=False)
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


def test_an_imagenet_row_without_its_folder_stops_the_dag_before_anything_runs(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo", grid=None)
    result = snakemake(repo, "-n", "--config", "grids=[params/imagenet.yaml]", check=False)
    assert result.returncode == 1
    layout = ("data.root: dataset imagenet not found under data/: place ImageNet as "
              "data/imagenet/{train,val}/<wnid>/*.JPEG (ImageFolder layout; it cannot be "
              "downloaded)")
    assert [line for line in result.stdout.splitlines() if line.startswith("params/")] == [
        f"params/imagenet.yaml:rigl-imagenet: {layout}",
        f"params/imagenet.yaml:east-imagenet: {layout}",
    ]
    assert "east: error: 2 errors in params/imagenet.yaml: nothing was run" in result.stdout
    assert "Job stats" not in result.stdout and "fetch_data" not in result.stdout


def test_the_snakefile_is_at_the_root_and_defined_once() -> None:
    from snakemake.cli import parse_args

    assert (REPO / "Snakefile").is_file() and not (REPO / "workflow/Snakefile").exists()
    assert {p.name for p in (REPO / "workflow/rules").glob("*.smk")} == {
        "common.smk", "data.smk", "train.smk", "evaluate.smk", "report.smk"}
    # From the root, Snakemake finds it and its workflow profile (the per-rule resources).
    cwd = Path.cwd()
    os.chdir(REPO)
    try:
        _, args = parse_args(["-n"])
    finally:
        os.chdir(cwd)
    assert set(args.set_resources) == {"train", "evaluate"}


# ----------------------------------------------------------------------------- retry policy


def _fail(code: int) -> None:
    raise subprocess.CalledProcessError(code, "east train")


def test_a_permanent_failure_is_tried_once_and_its_log_says_why_once(tmp_path: Path) -> None:
    run_dir, log = tmp_path / "run", tmp_path / "logs/train.log"
    failing = attempt("train", run_dir, log, 1, attempts=4)
    with pytest.raises(StepFailed, match=r"run: train exited 2 in attempt 1 of 4; see "), failing:
        log.open("a").write("east: error: something the user must fix\n")
        _fail(2)
    failure = json.loads((run_dir / "FAILED.json").read_text())
    assert {k: failure[k] for k in ("rule", "exit_code", "attempt", "retryable")} == {
        "rule": "train", "exit_code": 2, "attempt": 1, "retryable": False}
    before = log.read_text()
    for number in (2, 3, 4):  # Snakemake's retries: each deletes the log first
        log.unlink()
        ran = []
        retry = attempt("train", run_dir, log, number, attempts=4)
        with pytest.raises(StepFailed, match="not retried: train exited 2 in attempt 1"), retry:
            ran.append(number)
        assert ran == [] and log.read_text() == before
    lines = before.splitlines()
    assert lines[0].startswith("east: train attempt 1 of 4 on ") and len(lines) == 3
    assert lines[2].startswith("east: train exited 2: an error that a retry would repeat")
    # A new Snakemake run (attempt 1 again) tries again, and success clears the marker.
    log.unlink()
    with attempt("train", run_dir, log, 1, attempts=4):
        pass
    assert not (run_dir / "FAILED.json").exists() and not (run_dir / "FAILED.log").exists()
    assert log.read_text().count("east: train attempt ") == 2  # the history is kept


@pytest.mark.parametrize("code", [75, 143, 137, -15])
def test_preemption_and_time_limits_are_retried_and_resume(tmp_path: Path, code: int) -> None:
    run_dir, log = tmp_path / "run", tmp_path / "train.log"
    with pytest.raises(StepFailed), attempt("train", run_dir, log, 1, attempts=4):
        _fail(code)
    assert json.loads((run_dir / "FAILED.json").read_text())["retryable"] is True
    assert f"east: train exited {code} (pre-empted or out of time; the checkpoint is kept): " \
        "attempt 2 resumes it" in log.read_text()
    log.unlink()
    ran = []
    with attempt("train", run_dir, log, 2, attempts=4):
        ran.append(2)
    assert ran == [2] and not (run_dir / "FAILED.json").exists()
    assert log.read_text().count("east: train attempt ") == 2


def test_only_preemption_and_signals_are_retryable() -> None:
    assert [code for code in (0, 1, 2, 65, 73, 75, 130, 137, 139, 143, -9, -11, -15)
            if retryable(code)] == [75, 137, 143, -9, -15]


# ----------------------------------------------------------------------------- a tiny DAG


@pytest.fixture(scope="module")
def dag(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The tiny grid run end to end by `dvc repro` in a git + DVC repository."""
    repo = make_repo(tmp_path_factory.mktemp("dag") / "repo", git=True)
    result = run([str(BIN / "dvc"), "repro"], repo)
    return repo, result.stdout


def train_attempts(log: Path) -> int:
    """How many times a train job ran `east train` into this log (one header each)."""
    return sum(line.startswith("east: train attempt ") for line in log.read_text().splitlines())


def test_the_dag_ran_every_job_once(dag: tuple[Path, str]) -> None:
    repo, output = dag
    # Three rows, two distinct cells (static-again is static's cell).
    assert job_counts(output) == {"fetch_data": 1, "train": 2, "evaluate": 2, "report": 1,
                                  "all": 1}
    logs = sorted((repo / "results/logs/train").glob("*/seed0.log"))
    assert len(logs) == 2 and [train_attempts(log) for log in logs] == [1, 1]
    assert (repo / "reports/.complete").is_file()


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


def test_dvc_metrics_show_prints_one_line_per_row_and_sparsity(dag: tuple[Path, str]) -> None:
    repo, _ = dag
    shown = json.loads(run([str(BIN / "dvc"), "metrics", "show", "--json"], repo).stdout)
    ((_, entry),) = shown.items()
    data = {path: value["data"] for path, value in entry["data"].items()}
    # DVC shows the numbers (a single seed's null standard deviation is left out), one
    # file per line of reports/metrics.json.
    numbers = {f"reports/metrics/{key.replace('/', '-')}.json":
               {k: v for k, v in values.items() if isinstance(v, (int, float))}
               for key, values in json.loads((repo / "reports/metrics.json").read_text()).items()}
    assert data == numbers
    assert set(data) == {"reports/metrics/resnet20-digits-dense-0.json",
                         "reports/metrics/resnet20-digits-static-0.9.json",
                         "reports/metrics/resnet20-digits-static-again-0.9.json"}
    assert data["reports/metrics/resnet20-digits-static-0.9.json"]["test_acc_mean"] > 0
    shown_md = run([str(BIN / "dvc"), "metrics", "show", "--md"], repo).stdout
    table = [line for line in shown_md.splitlines() if line]
    assert table[0].startswith("| Path ") and "| test_acc_mean " in table[0]
    assert len(table) == 2 + 3  # header, rule, one line per (arch, dataset, row, sparsity)


def test_dvc_plots_show_renders_every_plot_file(dag: tuple[Path, str]) -> None:
    repo, _ = dag
    shown = json.loads(run([str(BIN / "dvc"), "plots", "show", "--json"], repo).stdout)
    assert "errors" not in shown
    stage = yaml.safe_load((repo / "dvc.yaml").read_text())
    used = {json.dumps(entry) for entry in stage["plots"]}
    for csv in sorted((repo / "reports/plots").glob("*.csv")):
        assert any(f"reports/plots/{csv.name}" in entry for entry in used), csv.name
    for plot_id, plots in shown["data"].items():
        path = plot_id if plot_id.endswith(".csv") else next(
            iter(next(e for e in stage["plots"] if plot_id in e)[plot_id]["y"]))
        rows = len((repo / path).read_text().splitlines()) - 1
        values = [len(p["content"]["data"]["values"]) for p in plots]
        assert (sum(values) > 0) == (rows > 0), (plot_id, values, rows)


def test_a_diverging_and_a_failing_cell_do_not_block_the_report(
    dag: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One diverging row (train.lr: 1e6): a result, trained once, "diverged" in the report
    and not retrained. One cell whose training fails for good (its checkpoint holds code):
    tried once, the retries stop at once, and the report rendered after the failure lists
    it with its log. The cells already done stay done."""
    repo = copy_repo(dag[0], tmp_path / "repo")
    with (repo / "params/demo.yaml").open("a") as handle:
        handle.write("  - name: diverge\n    method: static\n    train: {epochs: 1, lr: 1e6}\n"
                     "  - name: broken\n    method: static\n    sparsity: [0.8]\n")
    monkeypatch.chdir(repo)
    cells = {cell.row: cell for cell in load_grids(["params/demo.yaml"])}
    broken = repo / cells["broken"].run_dir
    (broken / "checkpoints").mkdir(parents=True)
    torch.save({"step": 1, "payload": PurePosixPath("code")}, broken / "checkpoints/ckpt-1.pt")

    result = snakemake(repo, "--cores", "2", "--keep-going", check=False)
    assert result.returncode == 1
    assert job_counts(result.stdout) == {"train": 2, "evaluate": 2, "report": 1, "all": 1}
    # Snakemake retries the failed job 3 times; each retry stops before running anything
    # (the log below shows one attempt).
    assert result.stdout.count("Trying to restart job") == 3
    assert (f"{cells['broken'].run_dir}: not retried: train exited 2 in attempt 1 of 4, "
            "which a retry would repeat") in result.stdout

    def log_of(row: str) -> Path:
        tail = cells[row].run_dir.removeprefix("results/runs/")
        return repo / "results/logs/train" / f"{tail}.log"

    assert {row: train_attempts(log_of(row)) for row in ("static", "dense", "diverge",
                                                         "broken")} == dict.fromkeys(
        ("static", "dense", "diverge", "broken"), 1)
    lines = log_of("broken").read_text().splitlines()
    assert lines[1:] == [
        f"east: error: {cells['broken'].run_dir}/checkpoints: no readable checkpoint: ckpt-1.pt "
        "(checkpoint holds objects other than tensors; refusing to load); remove the "
        "checkpoints/ folder to train this cell from the start",
        "east: train exited 2: an error that a retry would repeat, so it is not retried; fix "
        "the cause (above) and run snakemake again",
    ]
    assert json.loads((broken / "FAILED.json").read_text())["exit_code"] == 2
    # The report of what finished, the failed cell listed with its log.
    results = {r["row"]: r for r in json.loads((repo / "reports/results.json").read_text())}
    assert {row: r["status"] for row, r in results.items()} == {
        "dense": "done", "static": "done", "static-again": "done", "diverge": "diverged",
        "broken": "failed"}
    assert results["broken"]["logs"] == str(log_of("broken").relative_to(repo))
    assert results["broken"]["note"] == "train exited 2 in attempt 1 of 4"
    summary = json.loads((repo / cells["diverge"].run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and not (
        repo / cells["diverge"].run_dir / "model.pt").exists()
    table = (repo / "reports/tables/resnet20-digits.md").read_text()
    (line,) = [line for line in table.splitlines() if line.startswith("| diverge |")]
    assert line.endswith("| diverged [1] |")  # the 90 % column, every seed diverged
    assert not (repo / "reports/.complete").exists()
    # Next time: the diverged cell is a result (not retrained); the failed one is retried.
    assert job_counts(snakemake(repo, "-n").stdout) == {"train": 1, "evaluate": 1,
                                                        "report": 1, "all": 1}


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


def test_results_named_by_an_older_run_id_are_found_then_migrated(
        dag: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A results tree of the previous id scheme (every semantic field hashed): the DAG
    trains nothing, `east runs migrate --apply` renames it, and still nothing trains."""
    repo = copy_repo(dag[0], tmp_path / "repo")
    monkeypatch.chdir(repo)
    runs = unique_runs(load_grids(["params/demo.yaml"]))
    for run_dir, cell in runs.items():
        old = repo / "results/runs" / cell.config.legacy_cell_ids()[0]
        old.mkdir(parents=True)
        (repo / run_dir).rename(old / f"seed{cell.seed}")
        (repo / run_dir).parent.rmdir()
    planned = job_counts(snakemake(repo, "-n").stdout)
    assert "train" not in planned and "evaluate" not in planned
    moved = run([sys.executable, "-m", "east", "runs", "migrate", "--apply"], repo).stdout
    assert f"renamed {len(runs)} run directories" in moved
    assert all((repo / run_dir / "metrics.json").is_file() for run_dir in runs)
    planned = job_counts(snakemake(repo, "-n").stdout)
    assert "train" not in planned and "evaluate" not in planned


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
