"""`east train --ranks N`: ranks started as torchrun --standalone does, east's exit codes,
and pre-emption under data parallelism (2 gloo ranks on the CPU): SIGTERM checkpoints once
and the resumed run ends bit for bit where an uninterrupted one does."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from train_helpers import assert_same_run, east_command, east_env, make_cell, write_cell

from east.train import checkpoint as ckpt
from east.train.devices import rank_share
from east.train.history import read_history
from east.train.launch import launch_exit_code

# 21 steps an epoch (1,294 digits training images in batches of 64); long enough for a
# signal to land mid-run, short enough for three launches.
CELL = dict(method="rigl", sparsity=0.9, epochs=4, sparse={"update_interval": 10})


@pytest.mark.parametrize(("codes", "expected"), [
    ({0: 75, 1: 75}, 75),          # every rank checkpointed: pre-empted
    ({1: 2}, 2),                   # a user error on one rank
    ({0: 75, 1: 1}, 1),            # a bug on one rank beats the other's pre-emption
    ({1: -9, 0: 75}, 137),         # killed by SIGKILL: retryable as from a shell
])
def test_one_exit_code_from_the_ranks(codes: dict[int, int], expected: int) -> None:
    assert launch_exit_code(codes) == expected


def test_threads_and_workers_are_divided_among_the_ranks() -> None:
    assert [rank_share(16, n) for n in (1, 2, 4, 32)] == [16, 8, 4, 1]
    assert rank_share(0, 4) == 0  # no loader processes stays none
    assert rank_share(None, 4) is None  # torch's default thread count


def _launch(cell_file: Path, out: Path) -> subprocess.Popen[str]:
    # Two job threads: one per rank (OMP_NUM_THREADS is divided by the launcher).
    return subprocess.Popen(
        east_command("train", str(cell_file), "--out", str(out), "--ranks", "2"),
        env=east_env(threads=2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sigterm_under_two_ranks_checkpoints_once_and_resumes_exactly(tmp_path: Path) -> None:
    cell = make_cell(**CELL)
    cell_file = write_cell(tmp_path, cell)
    reference, out = tmp_path / "reference", tmp_path / "run"
    uninterrupted = _launch(cell_file, reference)
    _, stderr = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, stderr
    summary = (reference / "summary.json").read_text()
    assert '"world_size": 2' in summary

    process = _launch(cell_file, out)
    _wait_for(lambda: len(read_history(out / "history.jsonl")) >= 1, process)
    process.send_signal(signal.SIGTERM)  # to the launcher, which forwards it to the ranks
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr  # retryable for the pipeline
    # Rank 0 alone reports and writes; both ranks stopped at the same step.
    stops = [line for line in stderr.splitlines() if "pre-empted (SIGTERM) at step" in line]
    assert len(stops) == 1, stderr
    step = int(stops[0].split("at step ")[1].split("/")[0])
    assert step in [s for s, _ in ckpt.list_checkpoints(out)]
    assert 21 <= step < 4 * 21 and not (out / "summary.json").exists()
    assert "Traceback" not in stderr

    resumed = _launch(cell_file, out)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert f"from ckpt-{step}.pt (step {step}/" in resumed_log(stderr), stderr
    assert_same_run(reference, out)


def resumed_log(stderr: str) -> str:
    return next((line for line in stderr.splitlines() if line.startswith("east: resuming")), "")


def test_ranks_below_one_is_a_one_line_error(tmp_path: Path) -> None:
    cell_file = write_cell(tmp_path, make_cell(epochs=1))
    result = subprocess.run(
        east_command("train", str(cell_file), "--out", str(tmp_path / "run"), "--ranks", "0"),
        env=east_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["east: error: --ranks: must be >= 1, got 0"]
    assert not (tmp_path / "run").exists()
