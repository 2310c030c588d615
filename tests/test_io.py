"""Atomic writes: complete files only, usual permissions, nothing left behind on failure."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from east.io import atomic_write, atomic_write_json


def test_json_written_whole_with_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = atomic_write_json(tmp_path / "sub" / "a.json", {"b": 1, "a": [1, 2]})
    finally:
        os.umask(old)
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    target.write_text("old")

    def explode(handle: object) -> None:
        handle.write(b"partial")  # type: ignore[attr-defined]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, explode)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


def test_a_model_file_holding_code_is_refused_with_easts_message(tmp_path: Path) -> None:
    import pathlib

    import torch

    from east.errors import EastError
    from east.rundir import load_model_file

    path = tmp_path / "model.pt"
    torch.save({"format": "east-model/1", "state_dict": {}, "meta": {},
                "payload": pathlib.PurePosixPath("code")}, path)
    with pytest.raises(EastError) as raised:
        load_model_file(path)
    assert str(raised.value) == (f"{path}: model file holds objects other than tensors; "
                                 "refusing to load")
