"""CellConfig: validation, canonical round-trip, content hash, durations."""

from __future__ import annotations

import copy

import pytest

from east.config import CellConfig, resolve_duration
from east.errors import EastError

RAW = {
    "row": "rigl",
    "seed": 1,
    "data": {"name": "digits", "crop_padding": 1},
    "model": {"arch": "resnet20"},
    "train": {"epochs": 20, "lr_schedule": "onecycle"},
    "sparsity": {"method": "rigl", "sparsity": 0.99, "update_interval": "2ep"},
}


def test_round_trip_is_exact() -> None:
    cell = CellConfig.from_dict(copy.deepcopy(RAW))
    again = CellConfig.from_dict(cell.to_dict())
    assert again == cell
    assert again.canonical_json() == cell.canonical_json()


def test_hash_ignores_row_seed_and_execution_knobs() -> None:
    base = CellConfig.from_dict(copy.deepcopy(RAW))
    renamed = copy.deepcopy(RAW) | {"row": "rigl-renamed", "seed": 7}
    renamed["train"] = {**RAW["train"], "log_every": 3, "workers": 1, "device": "cpu"}
    renamed["data"] = {**RAW["data"], "root": "/elsewhere"}
    other = CellConfig.from_dict(renamed)
    assert other.content_hash() == base.content_hash()
    assert other.cell_id() == base.cell_id()
    assert other.run_dir() != base.run_dir()  # the seed is in the path, not the hash


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("train", "lr", 0.05), ("sparsity", "update_interval", 200), ("data", "augment", False)],
)
def test_hash_changes_with_semantic_fields(section: str, key: str, value: object) -> None:
    base = CellConfig.from_dict(copy.deepcopy(RAW))
    changed = copy.deepcopy(RAW)
    changed[section][key] = value
    assert CellConfig.from_dict(changed).content_hash() != base.content_hash()


def test_cell_id_is_readable() -> None:
    cell = CellConfig.from_dict(copy.deepcopy(RAW))
    assert cell.cell_id().startswith("resnet20-digits-rigl-s0.99-")
    assert len(cell.cell_id().rsplit("-", 1)[1]) == 10


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "epochs", "ten", "cell.train.epochs: expected int, got 'ten'"),
        ("train", "nesterov", 1, "cell.train.nesterov: expected bool, got 1"),
        ("train", "colour", "red", "cell.train.colour: unknown key"),
        ("sparsity", "update_interval", "3 weeks",
         "cell.sparsity.update_interval: expected duration"),
    ],
)
def test_errors_name_the_field(section: str, key: str, value: object, message: str) -> None:
    raw = copy.deepcopy(RAW)
    raw[section][key] = value
    with pytest.raises(EastError) as error:
        CellConfig.from_dict(raw)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (4000, 4000),
        ("4000it", 4000),
        ("25%", 250),
        ("2ep", 20),
        ("62.5ep", 625),
        ("50%-1ep", 490),
        ("1ep+5", 15),
        ("200%", 2000),
    ],
)
def test_durations_resolve_against_the_run(value: int | str, expected: int) -> None:
    assert resolve_duration(value, steps_per_epoch=10, total_steps=1000) == expected


@pytest.mark.parametrize("bad", ["", "ten", "5ep5ep", "-", True, -3, "5 weeks"])
def test_malformed_durations_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError):
        resolve_duration(bad, steps_per_epoch=10, total_steps=1000)  # type: ignore[arg-type]
