"""One writer per run directory (east/runlock.py): two trainings of a cell never interleave,
readers wait for the writer, a SIGKILLed holder leaves no stale lock, and a run killed at
any write point resumes to the solo run's result (history included, line for line)."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from train_helpers import (
    REPO,
    assert_same_run,
    east_env,
    make_cell,
    snapshot,
    start_east,
    write_cell,
)

from east import cli
from east.errors import EastError
from east.rundir import LOCK_FILE
from east.runlock import EXIT_LOCKED, RunLock, RunLocked, read_holder
from east.train import checkpoint as ckpt
from east.train.history import read_history, truncate_history, write_history
from east.train.run import train_cell

# Two epochs of three steps (1,294 digits images in batches of 512), sparse: small enough
# for seconds per run, with mask updates, epoch ends and a validation split to resume over.
CELL = {"method": "rigl", "sparsity": 0.9, "epochs": 2,
        "train": {"batch_size": 512, "eval_batch_size": 1024},
        "sparse": {"update_interval": 1}}
STEPS_PER_EPOCH = 3
HOST = socket.gethostname()

# Holds a run's lock in another process (torch-free: starts in a fraction of a second):
# argv run_dir, exclusive|shared, seconds[, marker written just before the release].
HOLD = """
import sys, time
from pathlib import Path
from east.runlock import RunLock
run, mode, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
with RunLock(run, "train" if mode == "exclusive" else "evaluate", shared=mode == "shared"):
    print("held", flush=True)
    time.sleep(seconds)
    if len(sys.argv) > 4:
        Path(sys.argv[4]).write_text("released")
"""

# Trains a cell and, at a chosen point, SIGKILLs itself or pauses (holding the lock) until
# a file appears: argv cell.json, run_dir, point, kill|pause[, flag folder].
# Points: epoch-end-<k> (history line k appended, before any checkpoint that counts it),
# inside-<step> (halfway through writing ckpt-<step>.pt: its temp file is left),
# sidecar-<step> (ckpt-<step>.pt written, its .sha256 not yet), summary (model files
# written, summary.json not yet).
HOOKED = """
import os, signal, sys, time
from pathlib import Path
from east.train.run import read_cell, train_cell
cell_file, out, point, action = sys.argv[1:5]

def stop(*_args, **_kwargs):
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    flags = Path(sys.argv[5])
    (flags / "paused").write_text(str(os.getpid()))
    while not (flags / "go").exists():
        time.sleep(0.02)

class At:
    def on_epoch_end(self, trainer, record):
        if point == f"epoch-end-{record['epoch']}":
            stop()

if point.startswith("sidecar-"):
    import east.train.checkpoint as ckpt
    write = ckpt.atomic_write_text
    def sidecar_then_stop(path, text):
        if Path(path).name == f"ckpt-{point.split('-')[1]}.pt.sha256":
            stop()
        return write(path, text)
    ckpt.atomic_write_text = sidecar_then_stop
if point.startswith("inside-"):
    import east.train.checkpoint as ckpt
    atomic_write = ckpt.atomic_write
    def torn(handle):
        handle.write(b"PK\x03\x04 the first bytes of a checkpoint")
        handle.flush()
        stop()
    def write_then_stop(path, write):
        hit = Path(path).name == f"ckpt-{point.split('-')[1]}.pt"
        return atomic_write(path, torn if hit else write)
    ckpt.atomic_write = write_then_stop
if point == "summary":
    import east.train.callbacks as callbacks
    callbacks.write_summary = stop
outcome = train_cell(read_cell(cell_file), out, callbacks=[At()], progress=False)
sys.exit(outcome.exit_code)
"""

_started: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _stop_our_processes() -> Iterator[None]:
    """A failing test must not leave its lock holders running (each killed by its pid)."""
    yield
    while _started:
        process = _started.pop()
        if process.poll() is None:
            process.kill()
        process.communicate()


def _python(*args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, *args], env=east_env(), cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _started.append(process)
    return process


def hold(run: Path, mode: str = "exclusive", seconds: float = 60.0,
         marker: Path | None = None) -> subprocess.Popen[str]:
    """Another process holding ``run``'s lock (returns once it holds it)."""
    process = _python("-c", HOLD, str(run), mode, str(seconds),
                      *([str(marker)] if marker else []))
    assert process.stdout is not None
    assert process.stdout.readline() == "held\n", process.communicate()
    return process


def can_lock_elsewhere(run: Path) -> bool:
    """Whether another process gets the exclusive lock now (it releases it at once)."""
    probe = _python("-c", "import sys; from east.runlock import RunLock, RunLocked\n"
                    "try:\n    RunLock(sys.argv[1], 'train').acquire()\n"
                    "except RunLocked:\n    sys.exit(73)", str(run))
    return probe.wait(timeout=30) == 0


def _wait_for(predicate, process: subprocess.Popen[str], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def solo(tmp_path_factory) -> Path:
    """The cell trained alone, uninterrupted, in this process."""
    out = tmp_path_factory.mktemp("solo")
    outcome = train_cell(make_cell(**CELL), out, progress=False)
    assert outcome.exit_code == 0, outcome.message
    return out


def assert_equals_solo(solo: Path, run: Path) -> None:
    """The same result as the solo run: model files byte for byte, summary and history
    equal but for wall-clock keys, exactly one history line per epoch, lock released."""
    assert_same_run(solo, run)
    for name in ("model.pt", "best.pt"):
        assert (run / name).read_bytes() == (solo / name).read_bytes(), name
    assert [r["epoch"] for r in read_history(run / "history.jsonl")] == [1, 2]
    assert (run / LOCK_FILE).read_text() == ""


# ----------------------------------------------------------------------------- the lock


def test_another_process_is_refused_naming_the_holder(tmp_path) -> None:
    run = tmp_path / "run"
    holder = hold(run)
    recorded = read_holder(run)
    assert recorded is not None and (recorded.pid, recorded.host) == (holder.pid, HOST)
    with pytest.raises(RunLocked) as caught:
        RunLock(run, "train").acquire()
    assert caught.value.exit_code == EXIT_LOCKED == 73
    message = str(caught.value)
    assert message.startswith(f"{run}: locked by east train on host {HOST} (pid {holder.pid}, "
                              f"since {recorded.since}")
    assert "\n" not in message and "--if-locked wait" in message
    # Readers are refused too while a writer holds it (in fail mode).
    with pytest.raises(RunLocked, match=f"pid {holder.pid}"):
        RunLock(run, "evaluate", shared=True).acquire()


def test_sigkill_of_the_holder_leaves_no_stale_lock(tmp_path) -> None:
    run = tmp_path / "run"
    holder = hold(run)
    holder.send_signal(signal.SIGKILL)
    holder.communicate()
    assert holder.returncode == -signal.SIGKILL
    # Its identity is still written (nobody cleared it) but no lock is held.
    stale = read_holder(run)
    assert stale is not None and stale.pid == holder.pid
    with RunLock(run, "train"):
        assert read_holder(run).pid == os.getpid()
        assert not can_lock_elsewhere(run)
    assert (run / LOCK_FILE).read_text() == ""  # a clean release names nobody
    assert can_lock_elsewhere(run)


def test_a_reader_clears_a_killed_trainers_identity(tmp_path) -> None:
    run = tmp_path / "run"
    holder = hold(run)
    holder.kill()
    holder.communicate()
    with RunLock(run, "evaluate", shared=True):
        # A trainer refused now must not be told the dead one holds it.
        assert (run / LOCK_FILE).read_text() == ""


def test_wait_prints_one_line_then_proceeds_when_the_holder_ends(tmp_path) -> None:
    run, marker = tmp_path / "run", tmp_path / "released"
    holder = hold(run, seconds=1.0, marker=marker)
    stream = io.StringIO()
    with RunLock(run, "train", if_locked="wait", poll_s=0.05, stream=stream):
        assert marker.exists()  # got it only after the holder let go
        assert read_holder(run).pid == os.getpid()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"east: {run}: locked by east train on host {HOST} "
                               f"(pid {holder.pid}, since ")
    assert lines[0].endswith("; waiting for it to finish")


def test_waiting_on_a_deleted_lock_file_starts_again_on_the_new_one(tmp_path) -> None:
    # A lock on a deleted file excludes nobody: the waiter must lock what is there now.
    run = tmp_path / "run"
    hold(run, seconds=1.0)
    remover = threading.Timer(0.3, (run / LOCK_FILE).unlink)
    remover.start()
    with RunLock(run, "train", if_locked="wait", poll_s=0.05, stream=io.StringIO()):
        assert read_holder(run).pid == os.getpid()
        assert not can_lock_elsewhere(run)
    remover.join()


def test_readers_share_and_exclude_writers(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()  # readers never create a run directory
    reader = hold(run, mode="shared")
    stream = io.StringIO()
    with RunLock(run, "evaluate", shared=True, if_locked="wait", stream=stream):
        pass
    assert stream.getvalue() == ""  # no wait: readers do not block each other
    with pytest.raises(RunLocked, match="east evaluate/export reading it"):
        RunLock(run, "train").acquire()
    assert reader.poll() is None


def test_a_second_lock_in_the_same_process_is_refused_and_keeps_the_first(tmp_path) -> None:
    # POSIX locks never conflict within a process, and any close drops them: the module's
    # own table must refuse here without opening (and closing) the file again.
    run = tmp_path / "run"
    with RunLock(run, "train"):
        for shared in (False, True):
            with pytest.raises(RunLocked, match="this same process"):
                RunLock(run, "evaluate" if shared else "train", shared=shared,
                        if_locked="wait").acquire()
        assert not can_lock_elsewhere(run)
    with RunLock(run, "evaluate", shared=True):
        with RunLock(run, "evaluate", shared=True):  # nested readers: one lock, counted
            pass
        assert not can_lock_elsewhere(run)  # the inner release kept the outer's lock
    assert can_lock_elsewhere(run)


def test_a_filesystem_without_locks_is_a_one_line_error(tmp_path, monkeypatch) -> None:
    import fcntl

    def refuse(fd: int, mode: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "lockf", refuse)
    with pytest.raises(EastError) as caught:
        RunLock(tmp_path / "run", "train").acquire()
    assert caught.value.exit_code == 2 and "-o flock" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_out_of_sequence_history_is_refused_not_cut(tmp_path) -> None:
    # What two unlocked trainings left behind: truncation alone would keep a wrong prefix.
    path = tmp_path / "history.jsonl"
    write_history(path, [{"epoch": 1}, {"epoch": 1}, {"epoch": 2}])
    with pytest.raises(EastError, match=r"history.jsonl:2: epoch 1 where epoch 2 belongs"):
        truncate_history(path, 2)
    assert truncate_history(path, 1) == 2 and read_history(path) == [{"epoch": 1}]


# ----------------------------------------------------------------------------- east train


def test_the_lock_comes_before_reading_the_run_directory(tmp_path, capsys) -> None:
    # A done run (summary.json) of another cell: unlocked, `east train` would say "holds
    # another cell"; locked, it must not have looked.
    run = tmp_path / "run"
    write_cell(run, make_cell(method="dense", epochs=1))
    (run / "summary.json").write_text("{}")
    path = write_cell(tmp_path, make_cell(**CELL))
    holder = hold(run)
    before = snapshot(run)
    capsys.readouterr()
    assert cli.main(["train", str(path), "--out", str(run)]) == 73
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"east: error: {run}: locked by east train on host {HOST} "
                          f"(pid {holder.pid}, since ")
    assert snapshot(run) == before


def test_two_trainings_one_refused_one_waiting_the_result_equals_a_solo_run(
        solo, tmp_path, capsys) -> None:
    path = write_cell(tmp_path, make_cell(**CELL))
    run, flags = tmp_path / "run", tmp_path / "flags"
    flags.mkdir()
    # The first pauses, holding the lock, after epoch 1's history line.
    first = _python("-c", HOOKED, str(path), str(run), "epoch-end-1", "pause", str(flags))
    _wait_for(lambda: (flags / "paused").exists(), first)
    assert read_holder(run).pid == first.pid
    before = snapshot(run)
    capsys.readouterr()
    assert cli.main(["train", str(path), "--out", str(run)]) == 73
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"east: error: {run}: locked by east train on host {HOST} "
                          f"(pid {first.pid}, since ")
    waiting = start_east("train", str(path), "--out", str(run), "--if-locked", "wait")
    _started.append(waiting)
    assert waiting.stderr is not None
    line = waiting.stderr.readline()
    assert f"locked by east train on host {HOST} (pid {first.pid}" in line
    assert line.endswith("; waiting for it to finish\n")
    assert snapshot(run) == before  # neither the refused nor the waiting one wrote
    (flags / "go").write_text("")
    assert first.wait(timeout=120) == 0, first.communicate()
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert "already trained" in out and err == ""
    assert_equals_solo(solo, run)


def test_sigkill_at_each_write_point_then_resume_equals_a_solo_run(solo, tmp_path) -> None:
    path = write_cell(tmp_path, make_cell(**CELL))
    run = tmp_path / "run"
    last = 2 * STEPS_PER_EPOCH

    def killed_at(point: str) -> None:
        process = _python("-c", HOOKED, str(path), str(run), point, "kill")
        _, err = process.communicate(timeout=120)
        assert process.returncode == -signal.SIGKILL, err

    def state() -> tuple[list[int], list[str], list[str]]:
        # best.pt is left out: it may hold the killed epoch's model (see the resume below).
        files = sorted(p.name for p in run.iterdir()
                       if p.is_file() and p.name not in (LOCK_FILE, "best.pt"))
        steps = [p.name for _, p in ckpt.list_checkpoints(run)]
        return [r["epoch"] for r in read_history(run / "history.jsonl")], steps, files

    # Epoch 1's line is written; no checkpoint counts it yet.
    killed_at("epoch-end-1")
    assert state() == ([1], [], ["cell.json", "history.jsonl"])
    # A fresh start: the orphan line goes, epoch 1 is redone (one line, not two); killed
    # after its checkpoint and before the sidecar.
    killed_at(f"sidecar-{STEPS_PER_EPOCH}")
    assert state()[:2] == ([1], [f"ckpt-{STEPS_PER_EPOCH}.pt"])
    assert not ckpt.sidecar(ckpt.checkpoint_path(run, STEPS_PER_EPOCH)).exists()
    # Resumed from the sidecar-less checkpoint; epoch 2's line is written, then killed
    # halfway through the final checkpoint.
    killed_at(f"inside-{last}")
    assert state()[:2] == ([1, 2], [f"ckpt-{STEPS_PER_EPOCH}.pt"])
    assert len(list((run / "checkpoints").glob(f".ckpt-{last}.pt.*.tmp"))) == 1
    # Resumed from step 3: epoch 2's line is cut and written again, the torn temp file
    # removed; killed between the model files and summary.json.
    killed_at("summary")
    epochs, steps, files = state()
    assert (epochs, steps) == ([1, 2], [f"ckpt-{STEPS_PER_EPOCH}.pt", f"ckpt-{last}.pt"])
    assert "model.pt" in files and "summary.json" not in files
    assert not list((run / "checkpoints").glob("*.tmp"))
    outcome = train_cell(make_cell(**CELL), run, progress=False)
    assert outcome.exit_code == 0 and "already trained" not in outcome.message
    assert_equals_solo(solo, run)


# ----------------------------------------------------------------------------- readers


def test_evaluate_waits_for_the_trainer(solo, tmp_path, capsys) -> None:
    from east.evaluate import evaluate_run

    run, marker = tmp_path / "run", tmp_path / "released"
    shutil.copytree(solo, run)
    holder = hold(run, seconds=1.0, marker=marker)
    capsys.readouterr()
    metrics = evaluate_run(run)
    err = capsys.readouterr().err
    waits = [line for line in err.splitlines() if "waiting for it to finish" in line]
    assert len(waits) == 1 and f"(pid {holder.pid}, since " in waits[0]
    # metrics.json was written after the trainer let go.
    assert (run / "metrics.json").stat().st_mtime_ns >= marker.stat().st_mtime_ns
    assert json.loads((run / "metrics.json").read_text())["test_acc"] == metrics["test_acc"]


def test_export_waits_for_the_trainer_and_not_for_readers(solo, tmp_path, capsys) -> None:
    from east.train.export import export_run

    run, marker = tmp_path / "run", tmp_path / "released"
    shutil.copytree(solo, run)
    reader = hold(run, mode="shared")
    capsys.readouterr()
    with pytest.raises(EastError, match="no torchvision counterpart"):  # resnet20
        export_run(run, tmp_path / "out.pt")
    assert capsys.readouterr().err == "" and reader.poll() is None
    reader.kill()
    reader.communicate()
    holder = hold(run, seconds=1.0, marker=marker)
    with pytest.raises(EastError, match="no torchvision counterpart"):
        export_run(run, tmp_path / "out.pt")
    assert marker.exists()  # it read the run only after the trainer let go
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"(pid {holder.pid}, since " in err
