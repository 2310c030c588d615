"""Checkpoint files: atomic save, retention, integrity checks, weights_only RNG state;
the history file's append/truncate semantics."""

from __future__ import annotations

import pathlib
import random

import numpy as np
import pytest
import torch

from east.errors import EastError
from east.train import checkpoint as ckpt
from east.train.history import (
    append_history,
    read_history,
    truncate_history,
    without_timing,
)


def _state(step: int) -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    return {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "rng": ckpt.capture_rng(), "best_val_acc": None, "flag": True}


def test_roundtrip_is_weights_only_and_keeps_last_two(tmp_path) -> None:
    saved = {}
    for step in (10, 20, 30, 40):
        saved[step] = _state(step)
        ckpt.save_checkpoint(tmp_path, step, saved[step])
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["ckpt-30.pt", "ckpt-30.pt.sha256", "ckpt-40.pt", "ckpt-40.pt.sha256"]
    loaded = ckpt.load_latest(tmp_path)
    assert loaded is not None and loaded.step == 40 and loaded.rejected == ()
    for key, value in saved[40]["model"].items():
        assert torch.equal(loaded.state["model"][key], value)
    momentum = loaded.state["optimizer"]["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, saved[40]["optimizer"]["state"][0]["momentum_buffer"])
    assert loaded.state["flag"] is True and loaded.state["best_val_acc"] is None


def test_no_checkpoint_is_none(tmp_path) -> None:
    assert ckpt.load_latest(tmp_path) is None


def test_truncated_latest_falls_back_with_warning(tmp_path, capsys) -> None:
    ckpt.save_checkpoint(tmp_path, 5, _state(5))
    latest = ckpt.save_checkpoint(tmp_path, 9, _state(9))
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])
    loaded = ckpt.load_latest(tmp_path)
    assert loaded is not None and loaded.step == 5
    assert [p.name for p, _ in loaded.rejected] == ["ckpt-9.pt"]
    ckpt.quarantine(loaded.rejected, loaded.path)
    err = capsys.readouterr().err
    assert "ckpt-9.pt is unreadable" in err and "resuming from ckpt-5.pt" in err
    # Kept for inspection, out of the rotation: the next save keeps ckpt-5 and the new one.
    assert (tmp_path / "checkpoints" / "ckpt-9.pt.corrupt").exists()
    ckpt.save_checkpoint(tmp_path, 7, _state(7))
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [5, 7]


def test_flipped_byte_caught_by_sha256_without_sidecar_torch_load_still_checks(tmp_path) -> None:
    ckpt.save_checkpoint(tmp_path, 1, _state(1))
    latest = ckpt.save_checkpoint(tmp_path, 2, _state(2))
    data = bytearray(latest.read_bytes())
    data[len(data) // 3] ^= 0xFF  # same length: only the checksum can tell
    latest.write_bytes(bytes(data))
    loaded = ckpt.load_latest(tmp_path)
    assert loaded.step == 1 and "sha256 mismatch" in loaded.rejected[0][1]
    # Without its sidecar (killed between the two writes) a truncated file still fails.
    ckpt.sidecar(latest).unlink()
    latest.write_bytes(bytes(data[:100]))
    loaded = ckpt.load_latest(tmp_path)
    assert loaded.step == 1 and loaded.rejected[0][1].startswith(
        "checkpoint is not readable (PytorchStreamReader failed")


def test_all_unreadable_is_a_user_error_and_deletes_nothing(tmp_path) -> None:
    path = ckpt.save_checkpoint(tmp_path, 3, _state(3))
    path.write_bytes(b"garbage")
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    with pytest.raises(EastError, match="no readable checkpoint"):
        ckpt.load_latest(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


def test_a_checkpoint_holding_code_is_refused_with_easts_reason(tmp_path, capsys) -> None:
    # A pickle payload: an object torch's weights_only loader would only build if told to
    # trust the file (its advice). Its sidecar matches, so only the content can tell.
    ckpt.save_checkpoint(tmp_path, 1, _state(1))
    ckpt.save_checkpoint(tmp_path, 2, {"step": 2, "payload": pathlib.PurePosixPath("x")})
    loaded = ckpt.load_latest(tmp_path)
    assert loaded.step == 1
    assert loaded.rejected[0][1] == "checkpoint holds objects other than tensors; refusing to load"
    ckpt.quarantine(loaded.rejected, loaded.path)
    err = capsys.readouterr().err
    assert "ckpt-2.pt is unreadable (checkpoint holds objects other than tensors" in err
    assert "weights_only" not in err
    # Alone, it stops the run with one line (exit 2), still without torch's advice.
    (tmp_path / "checkpoints" / "ckpt-1.pt").unlink()
    (tmp_path / "checkpoints" / "ckpt-2.pt.corrupt").rename(tmp_path / "checkpoints" / "ckpt-2.pt")
    with pytest.raises(EastError) as raised:
        ckpt.load_latest(tmp_path)
    assert str(raised.value) == (
        f"{tmp_path / 'checkpoints'}: no readable checkpoint: ckpt-2.pt (checkpoint holds "
        "objects other than tensors; refusing to load); remove the checkpoints/ folder to "
        "train this cell from the start")


def test_rng_states_survive_weights_only(tmp_path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    ckpt.save_checkpoint(tmp_path, 1, {"step": 1, "rng": ckpt.capture_rng()})
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    ckpt.restore_rng(ckpt.load_latest(tmp_path).state["rng"])
    got = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1]
    assert torch.equal(got[2], expected[2])


def test_history_append_truncate(tmp_path) -> None:
    path = tmp_path / "history.jsonl"
    assert read_history(path) == []
    for epoch in range(1, 5):
        append_history(path, {"epoch": epoch, "val_acc": epoch / 10, "time_s": 1.5})
    assert [r["epoch"] for r in read_history(path)] == [1, 2, 3, 4]
    assert truncate_history(path, 2) == 2
    assert [r["epoch"] for r in read_history(path)] == [1, 2]
    mtime = path.stat().st_mtime_ns
    assert truncate_history(path, 5) == 0 and path.stat().st_mtime_ns == mtime
    assert without_timing(read_history(path)[0]) == {"epoch": 1, "val_acc": 0.1}
    assert path.read_text().count("\n") == 2
