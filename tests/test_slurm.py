"""The SLURM profiles, and a small DAG on a real single-node SLURM cluster.

The cluster (slurmctld, slurmd, munge from apt; tests/slurm_cluster.sh) runs the jobs
through tests/profiles/slurm-cpu, the project's SLURM profile without GPUs. Those tests
are marked `slurm` and skipped when the cluster cannot be started here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from pipeline_helpers import BIN, REPO, env, job_counts, make_repo, snakemake

WORKFLOW_PROFILE = REPO / "profiles/default/config.yaml"
SLURM_PROFILE = REPO / "profiles/slurm/config.yaml"
TEST_PROFILE = REPO / "tests/profiles/slurm-cpu"
CLUSTER = REPO / "tests/slurm_cluster.sh"
# Keys the test variant may set differently from the real profile (test speed, a CPU-only
# cluster without accounting).
TEST_ONLY = {"jobs", "latency-wait", "slurm-status-command", "slurm-no-account",
             "slurm-init-seconds-before-status-checks", "slurm-keep-successful-logs"}


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


# ----------------------------------------------------------------------------- profiles


def test_slurm_resolves_from_the_repository_root() -> None:
    assert (REPO / "slurm").is_symlink()
    assert (REPO / "slurm/config.yaml").resolve() == SLURM_PROFILE.resolve()


def test_resources_are_set_in_one_place() -> None:
    workflow = load(WORKFLOW_PROFILE)
    assert set(workflow) == {"set-threads", "set-resources"}
    for executor in (load(SLURM_PROFILE), load(TEST_PROFILE / "config.yaml")):
        # The workflow profile would silently replace these keys.
        assert not {"set-threads", "set-resources"} & set(executor)
        assert executor["executor"] == "slurm"
    assert load(SLURM_PROFILE)["default-resources"] == {"gpu": 1}


def test_the_test_variant_differs_only_in_gpus_and_test_settings() -> None:
    real, test = load(SLURM_PROFILE), load(TEST_PROFILE / "config.yaml")
    assert test["default-resources"] == {"gpu": 0}
    shared = (set(real) | set(test)) - TEST_ONLY - {"default-resources"}
    assert {k: real.get(k) for k in shared} == {k: test.get(k) for k in shared}


def _evaluate(expression: Any, arch: str, dataset: str, threads: int = 1) -> Any:
    if not isinstance(expression, str):
        return expression
    namespace = {"wildcards": SimpleNamespace(arch=arch, dataset=dataset), "threads": threads}
    return eval(expression, namespace)  # the profile's own Python expressions


@pytest.mark.parametrize(
    ("arch", "dataset", "threads", "mem_mb", "runtime"),
    [
        ("resnet20", "digits", 1, 2000, 15),
        ("resnet18", "digits16", 1, 2000, 15),  # every digits variant is a digits job
        ("resnet18", "digits32", 1, 2000, 15),
        ("resnet34", "cifar10", 4, 16000, 480),
        ("resnet50", "cifar100", 4, 16000, 720),
        ("resnet50", "imagenet", 32, 64000, 2880),
        ("resnet18", "imagenet", 32, 64000, 1440),
    ],
)
def test_train_resources_by_arch_and_dataset(
    arch: str, dataset: str, threads: int, mem_mb: int, runtime: int
) -> None:
    profile = load(WORKFLOW_PROFILE)
    got_threads = _evaluate(profile["set-threads"]["train"], arch, dataset)
    train = {k: _evaluate(v, arch, dataset, got_threads)
             for k, v in profile["set-resources"]["train"].items()}
    assert got_threads == threads
    assert train == {"cpus_per_task": threads, "mem_mb": mem_mb, "runtime": runtime}


def test_snakemake_reads_the_profiles_together() -> None:
    from snakemake.cli import parse_args

    cwd = Path.cwd()
    os.chdir(REPO)
    try:
        _, args = parse_args(["--profile", "slurm", "-n"])
        _, test_args = parse_args(["--profile", str(TEST_PROFILE), "-n"])
    finally:
        os.chdir(cwd)
    assert args.executor == "slurm"
    assert args.default_resources["gpu"].value == 1
    assert test_args.default_resources["gpu"].value == 0
    assert set(args.set_resources) == {"train", "evaluate"}
    assert set(args.set_threads) == {"train", "evaluate"}


# ----------------------------------------------------------------------------- cluster


def _cluster_skip_reason() -> str:
    if shutil.which("slurmctld") is None or shutil.which("slurmd") is None:
        return ("slurmctld/slurmd not installed (apt-get install slurmctld slurmd "
                "slurm-client munge; .ci/run installs them)")
    if shutil.which("munged") is None or shutil.which("sbatch") is None:
        return "munge or slurm-client not installed"
    if os.geteuid() != 0:
        return "starting a SLURM cluster needs root"
    conf = Path("/etc/slurm/slurm.conf")
    if conf.exists() and not conf.is_symlink():
        return "/etc/slurm/slurm.conf belongs to a real SLURM installation"
    return ""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    reason = _cluster_skip_reason()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    subprocess.run([str(CLUSTER), "start", str(state)], check=True, timeout=120)
    try:
        yield state
    finally:
        subprocess.run([str(CLUSTER), "stop", str(state)], check=False, timeout=120)


@pytest.mark.slurm
def test_a_small_dag_runs_on_slurm(cluster: Path, tmp_path: Path) -> None:
    """One good row and one diverging row (train.lr: 1e6): one report, one "diverged"
    cell, exactly one training attempt each (no SLURM job resubmitted)."""
    grid = ("defaults: {arch: resnet20, dataset: digits, train: {epochs: 1}}\n"
            "rows:\n  - {name: static, method: static, sparsity: [0.9]}\n"
            "  - {name: diverge, method: static, sparsity: [0.9], train: {epochs: 1, lr: 1e6}}\n")
    repo = make_repo(tmp_path / "repo", grid=grid)
    result = snakemake(repo, "--profile", str(TEST_PROFILE), "--cores", "2")
    assert job_counts(result.stdout) == {"fetch_data": 1, "train": 2, "evaluate": 2,
                                         "report": 1, "all": 1}
    submitted = re.findall(
        r"has been submitted with SLURM jobid (\d+) \(log: .*/slurm_logs/rule_(\w+)/",
        result.stdout)
    assert sorted(rule for _, rule in submitted) == ["evaluate", "evaluate", "train", "train"]
    assert "Trying to restart job" not in result.stdout
    logs = sorted(repo.glob("results/logs/train/*/seed0.log"))
    assert [sum(line.startswith("east: train attempt 1 of 4 on ") for line in
                log.read_text().splitlines()) for log in logs] == [1, 1]
    results = {r["row"]: r for r in json.loads((repo / "reports/results.json").read_text())}
    assert {row: r["status"] for row, r in results.items()} == {"static": "done",
                                                                "diverge": "diverged"}
    assert "| diverge | diverged [1] |" in (repo / "reports/report.md").read_text()
    # The workflow profile's resources reached SLURM; the CPU variant asks for no GPU.
    train_id = next(job for job, rule in submitted if rule == "train")  # both ask the same
    shown = subprocess.run(["scontrol", "show", "job", train_id], capture_output=True,
                           text=True, env=env(), check=True).stdout
    assert "NumCPUs=1 " in shown
    assert "TimeLimit=00:15:00" in shown
    assert "mem=2000M" in shown
    assert "gpu" not in shown.lower()
    assert "JobState=COMPLETED" in shown


@pytest.mark.slurm
def test_a_two_gpu_cell_runs_two_ranks_and_resumes_after_sigterm(cluster: Path,
                                                                  tmp_path: Path) -> None:
    """A row with train.gpus 2 asks SLURM for two (fake) GPUs and trains as two gloo ranks;
    SIGTERM to the running job (as a time limit sends) checkpoints it, Snakemake's retry
    resumes it, and the result equals an uninterrupted two-rank run bit for bit."""
    from train_helpers import assert_same_run, east_command, east_env

    from east.train.history import read_history

    grid = ("defaults: {arch: resnet20, dataset: digits, train: {epochs: 6, gpus: 2}}\n"
            "rows:\n  - {name: rigl, method: rigl, sparsity: [0.9]}\n")
    repo = make_repo(tmp_path / "repo", grid=grid)
    output = tmp_path / "snakemake.out"
    with output.open("w") as sink:
        process = subprocess.Popen(
            [str(BIN / "snakemake"), "--profile", str(TEST_PROFILE),
             "--cores", "2"], cwd=repo, env=env(), stdout=sink, stderr=subprocess.STDOUT,
            text=True)
        try:
            deadline = time.monotonic() + 300
            while not any(len(read_history(h)) >= 1
                          for h in repo.glob("results/runs/*/seed0/history.jsonl")):
                assert process.poll() is None, output.read_text()
                assert time.monotonic() < deadline, output.read_text()
                time.sleep(0.2)
            running = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i"], env=env(),
                                     capture_output=True, text=True, check=True).stdout.split()
            assert len(running) == 1, running  # the train job (fetch_data ran locally)
            shown = subprocess.run(["scontrol", "show", "job", running[0]], env=env(),
                                   capture_output=True, text=True, check=True).stdout
            subprocess.run(["scancel", "--signal=TERM", running[0]], env=env(),
                           check=True)
            assert process.wait(timeout=600) == 0, output.read_text()
        finally:
            if process.poll() is None:
                process.kill()
    assert "TresPerJob=gres:gpu:2" in shown  # the row's gpus reached SLURM
    run = next(repo.glob("results/runs/*/seed0"))
    log = next(repo.glob("results/logs/train/*/seed0.log")).read_text()
    assert [line.startswith("east: train attempt ") for line in log.splitlines()].count(
        True) == 2, log
    # Attempt 1: the ranks checkpointed at one step after the first epoch (11 steps), the
    # launcher exited 128 + SIGTERM; attempt 2 resumed from that very checkpoint.
    stopped = re.findall(r"pre-empted \(SIGTERM\) at step (\d+)/66; checkpoint saved", log)
    assert len(stopped) == 1 and int(stopped[0]) >= 11, log
    assert "east: train exited 143 (pre-empted or out of time" in log, log
    assert f"from ckpt-{stopped[0]}.pt (step {stopped[0]}/66)" in log, log
    summary = json.loads((run / "summary.json").read_text())
    assert summary["environment"]["world_size"] == 2
    # The same cell, two ranks, never interrupted; the job had one thread (digits).
    reference = tmp_path / "reference"
    subprocess.run(east_command("train", str(run / "cell.json"), "--out", str(reference),
                                "--ranks", "2"), env=east_env(threads=1), cwd=repo,
                   check=True, capture_output=True, timeout=300)
    assert_same_run(reference, run)
