"""Shared helpers of the training tests: tiny digits cells, subprocess runs of ``east``,
comparison of two run directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from east.config import CellConfig, DataConfig, ModelConfig, TrainConfig, build_section
from east.rundir import LOCK_FILE
from east.sparsity.presets import resolve_sparsity
from east.train.history import read_history, without_timing

REPO = Path(__file__).resolve().parents[1]


def make_cell(
    *,
    method: str = "dense",
    sparsity: float = 0.0,
    epochs: int = 3,
    seed: int = 0,
    arch: str = "resnet20",
    dataset: str = "digits",
    data: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    sparse: dict[str, Any] | None = None,
) -> CellConfig:
    """A small cell (digits + resnet20 by default), method defaults filled in."""
    sections = {
        # digits: a 1-pixel crop padding, as params/defaults.yaml (4 pixels of 8 destroy it).
        "data": build_section(DataConfig, {"name": dataset, "crop_padding": 1, **(data or {})},
                              "data"),
        "model": build_section(ModelConfig, {"arch": arch}, "model"),
        "train": build_section(TrainConfig, {
            "epochs": epochs, "batch_size": 64, "lr": 0.1, "lr_schedule": "onecycle",
            "log_every": 1000, "eval_batch_size": 512, "device": "cpu", **(train or {}),
        }, "train"),
        "sparsity": resolve_sparsity({"method": method, "sparsity": sparsity, **(sparse or {})},
                                     "sparsity"),
    }
    return CellConfig(row="test", seed=seed, **sections)


def write_cell(folder: Path, cell: CellConfig, name: str = "cell.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(cell.canonical_json() + "\n", encoding="utf-8")
    return path


def east_env(threads: int | None = None) -> dict[str, str]:
    """Environment for an ``east`` subprocess with the test process's thread count (so its
    float reductions match an in-process run bit for bit)."""
    env = dict(os.environ)
    n = str(threads or torch.get_num_threads())
    env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def east_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "east", *args]


def run_east(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(east_command(*args), env=east_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def start_east(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(east_command(*args), env=east_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), except the run lock ``.lock``
    (created by any ``east train`` before it reads the directory: the one write allowed to
    a failing start). Never call it while this process holds that lock: reading the file
    (open + close) would drop the process's POSIX lock."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state_dict of a model file (model.pt / best.pt)."""
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def load_meta(path: Path) -> dict[str, Any]:
    """What a model file records of its model (epoch, step, beta, nnz, val_acc, selection)."""
    return torch.load(path, map_location="cpu", weights_only=True)["meta"]


def assert_same_run(a: Path, b: Path) -> None:
    """Two run directories hold the same result: summary and history equal except for the
    wall-clock keys (time_s, wall_time_s); model.pt and best.pt equal bit for bit."""
    summary_a = json.loads((a / "summary.json").read_text())
    summary_b = json.loads((b / "summary.json").read_text())
    assert without_timing(summary_a) == without_timing(summary_b)
    history_a = [without_timing(r) for r in read_history(a / "history.jsonl")]
    history_b = [without_timing(r) for r in read_history(b / "history.jsonl")]
    assert history_a == history_b
    for name in ("model.pt", "best.pt"):
        assert load_meta(a / name) == load_meta(b / name)
        wa, wb = load_weights(a / name), load_weights(b / name)
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), f"{name}: {key} differs"


def ddp_worker(rank: int, world: int, port: int, cell_json: str, out: str, dump: str,
               max_steps: int) -> None:
    """One rank of a CPU/gloo data-parallel run (torch.multiprocessing.spawn target):
    trains, recording the mask fingerprint after every step, then dumps its final masks,
    parameters and fingerprints to ``<dump>/rank<r>.pt``."""
    from east.train.distributed import mask_fingerprint
    from east.train.loop import Trainer

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cell = CellConfig.from_dict(json.loads(cell_json))
    prints: list[torch.Tensor] = []

    class Record:
        def on_step_end(self, trainer: Trainer, step: int) -> None:
            prints.append(mask_fingerprint(trainer.state.model))

    trainer = Trainer(cell, out, max_steps=max_steps, callbacks=[Record()], progress=False)
    outcome = trainer.run()
    state = {k: v.detach().clone() for k, v in trainer.state.model.state_dict().items()}
    torch.save({"exit": outcome.exit_code, "state": state, "fingerprints": torch.stack(prints),
                "updates": trainer.state.sparsifier.density_log()["updates"],
                "step": trainer.state.step}, Path(dump) / f"rank{rank}.pt")
