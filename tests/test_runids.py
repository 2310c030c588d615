"""Run ids that survive new knobs: the hash covers non-default semantic fields only; run
directories named by older schemes are found, and renamed by `east runs migrate`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from train_helpers import make_cell

from east import cli
from east.config import SCHEMA_UPGRADES, CellConfig, TrainConfig
from east.grid import resolve_run_dir
from east.runs import plan


def test_the_hash_covers_only_non_default_fields() -> None:
    cell = make_cell(method="rigl", sparsity=0.9)
    semantic = cell.semantic_dict()
    assert semantic["defaults"] == cell.schema_version
    # Fields at their dataclass default are left out, required ones and others are in.
    assert "grad_clip_scope" not in semantic["train"] and "momentum" not in semantic["train"]
    assert semantic["train"]["epochs"] == 3 and semantic["model"] == {"arch": "resnet20"}
    # A default knob changed names another run, and enters the hash.
    other = dataclasses.replace(cell, train=dataclasses.replace(cell.train, momentum=0.8))
    assert other.cell_id() != cell.cell_id() and other.semantic_dict()["train"]["momentum"] == 0.8
    # Execution knobs never enter it.
    faster = dataclasses.replace(cell, train=dataclasses.replace(cell.train, threads=4,
                                                                 workers=0))
    assert faster.cell_id() == cell.cell_id()


def test_a_new_knob_with_todays_behaviour_as_default_renames_nothing() -> None:
    """Simulated: a TrainConfig with one more field whose default is today's behaviour
    hashes like today's, field for field."""
    cell = make_cell(method="east", sparsity=0.99)

    @dataclasses.dataclass(frozen=True)
    class Extended(TrainConfig):
        new_knob: float = 0.0  # e.g. a regulariser that is off by default

    extended = dataclasses.replace(cell, train=Extended(**dataclasses.asdict(cell.train)))
    import east.config as config

    saved = dict(config.SECTIONS)
    try:
        config.SECTIONS["train"] = Extended
        assert extended.cell_id() == cell.cell_id()
        changed = dataclasses.replace(extended, train=dataclasses.replace(extended.train,
                                                                          new_knob=0.1))
        assert changed.cell_id() != cell.cell_id()
    finally:
        config.SECTIONS.clear()
        config.SECTIONS.update(saved)


def _write_run(root: Path, name: str, cell: CellConfig, raw: dict | None = None) -> Path:
    folder = root / name / f"seed{cell.seed}"
    folder.mkdir(parents=True)
    (folder / "cell.json").write_text(json.dumps(raw or cell.to_dict()), encoding="utf-8")
    (folder / "summary.json").write_text("{}", encoding="utf-8")
    return folder


def _version1(cell: CellConfig) -> dict:
    raw = {**cell.to_dict(), "schema_version": 1}
    for section, values in SCHEMA_UPGRADES[1].items():
        raw[section] = {k: v for k, v in raw[section].items() if k not in values}
    raw["train"].pop("threads")
    return raw


def test_migrate_plans_and_renames_old_ids_with_their_logs(tmp_path, capsys) -> None:
    runs = tmp_path / "results" / "runs"
    v2 = make_cell(method="rigl", sparsity=0.9, seed=0)
    v1 = make_cell(method="set", sparsity=0.9, seed=1,
                   train={"grad_clip_scope": "masked"},
                   sparse={"regrow_dropped": False})
    v1 = dataclasses.replace(v1, model=dataclasses.replace(v1.model, conv_init="kaiming_fan_out"))
    now = make_cell(method="static", sparsity=0.9)
    old_v2 = _write_run(runs, v2.legacy_cell_ids()[0], v2)
    old_v1 = _write_run(runs, v1.legacy_cell_ids()[1], v1, raw=_version1(v1))
    _write_run(runs, now.cell_id(), now)
    stray = _write_run(runs, "resnet20-digits-rigl-s0.9-0123456789", v2)
    log = tmp_path / "results" / "logs" / "train" / old_v2.parent.name / "seed0.log"
    log.parent.mkdir(parents=True)
    log.write_text("trained\n", encoding="utf-8")

    moves = {m.source: m for m in plan(runs)}
    assert moves[old_v2].target == runs / v2.cell_id() / "seed0"
    assert moves[old_v1].target == runs / v1.cell_id() / "seed1"
    assert moves[stray].target is None and "named by no id" in moves[stray].reason
    assert [m.reason for m in moves.values() if m.target is None].count("up to date") == 1

    # Until migrated, the pipeline's cells find the old directories.
    assert resolve_run_dir(v2, str(runs)) == str(old_v2)
    assert cli.main(["runs", "migrate", "--runs", str(runs)]) == 0  # dry run: nothing moves
    assert "would rename 2 run directories (1 already current)" in capsys.readouterr().out
    assert old_v2.is_dir()
    assert cli.main(["runs", "migrate", "--runs", str(runs), "--apply"]) == 0
    assert (runs / v2.cell_id() / "seed0" / "summary.json").is_file() and not old_v2.exists()
    assert (runs / v1.cell_id() / "seed1" / "summary.json").is_file()
    assert not old_v2.parent.exists()  # its only seed left
    moved_log = tmp_path / "results" / "logs" / "train" / v2.cell_id() / "seed0.log"
    assert moved_log.read_text(encoding="utf-8") == "trained\n" and not log.exists()
    assert resolve_run_dir(v2, str(runs)) == v2.run_dir(str(runs))
    # A second migration has nothing left to do.
    assert [m.target for m in plan(runs)].count(None) == len(plan(runs))
