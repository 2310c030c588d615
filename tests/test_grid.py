"""east.grid: the grid format, resolution order, expansion, and every error as one line."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pipeline_helpers import expected_cells

from east.archs import KNOWN_ARCHS, STAGE_BLOCKS, shared_blocks
from east.cli import main
from east.config import CellConfig, TrainConfig
from east.grid import (
    FILE_DEFAULT_KEYS,
    ROW_KEYS,
    GridError,
    cell_file_config,
    check_grids,
    grid_notes,
    load_grids,
    unique_runs,
)
from east.sparsity.presets import METHODS, PRESETS

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params"
SHIPPED = ("demo.yaml", "paper.yaml", "ablations.yaml", "imagenet.yaml", "cpu-paper.yaml",
           "cpu-paper-long.yaml", "cpu-paper-sharing.yaml")

# A defaults file in which every layer sets something the next layer may override.
DEFAULTS = {
    "datasets": {
        "digits": {
            "protocol": "cpu-test",
            "train": {"epochs": 3, "lr": 0.05, "batch_size": 64, "weight_decay": 0.001},
            "data": {"val_fraction": 0.2},
        },
        "cifar10": {"train": {"epochs": 7}},
    },
    "archs": {"resnet20": {"train": {"lr": 0.07, "eval_batch_size": 99}}},
}


def write(path: Path, data: Any) -> str:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return str(path)


@pytest.fixture
def defaults(tmp_path: Path) -> str:
    return write(tmp_path / "defaults.yaml", DEFAULTS)


def grid(tmp_path: Path, rows: list[dict[str, Any]], name: str = "g.yaml", **top: Any) -> str:
    return write(tmp_path / name, {**top, "rows": rows})


def errors_of(paths: list[str], defaults_path: str) -> list[str]:
    _, errors = check_grids(paths, defaults_path=defaults_path)
    assert errors, "expected errors"
    return errors


BASE_ROW = {"name": "r", "method": "static", "arch": "resnet20", "dataset": "digits",
            "sparsity": [0.9]}


# ----------------------------------------------------------------------------- contracts


def test_known_archs_match_the_model_registry() -> None:
    from east.models import ARCHS, build_model

    assert set(KNOWN_ARCHS) == set(ARCHS)
    for arch in KNOWN_ARCHS:
        model = build_model(arch, num_classes=10, in_channels=3)
        stages = [len(getattr(model, f"layer{i}")) for i in range(1, 5)
                  if hasattr(model, f"layer{i}")]
        assert tuple(stages) == STAGE_BLOCKS[arch]
        shared = build_model(arch, num_classes=10, in_channels=3, sharing_ratio=2)
        saved = shared.weight_counts().n_full - shared.weight_counts().n_unique
        assert (saved > 0) == (shared_blocks(arch, 2) > 0)


def test_sharing_that_shares_nothing_is_noted_once_per_row(tmp_path: Path,
                                                            defaults: str) -> None:
    rows = [{**BASE_ROW, "name": "east18", "method": "east", "arch": ["resnet18", "resnet20"],
             "sparsity": [0.9, 0.99], "seeds": [0, 1]},
            {**BASE_ROW, "name": "rigl18", "method": "rigl", "arch": "resnet18"},
            {**BASE_ROW, "name": "east34", "method": "east", "arch": "resnet34"}]
    cells, errors = check_grids([grid(tmp_path, rows)], defaults_path=defaults)
    assert not errors and len(cells) == 10
    shown = str(tmp_path / "g.yaml")
    assert [note for note in grid_notes(cells) if ": sharing: " in note] == [
        f"{shown}:east18: sharing: no effect on resnet18 (no stage has more than R = 2 "
        "blocks), so these cells train as without sharing"
    ]
    assert [shared_blocks(a, 2) for a in ("resnet18", "resnet34", "resnet50", "resnet20")] == [
        0, 8, 8, 3]


def test_grid_module_imports_without_torch() -> None:
    code = "import sys, east.grid, east.cli; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_schema_keys_match_the_grid_module() -> None:
    schema = yaml.safe_load((REPO / "workflow/schemas/grid.schema.yaml").read_text())
    row_keys = schema["properties"]["rows"]["items"]["propertyNames"]["enum"]
    assert row_keys == list(ROW_KEYS)
    assert schema["properties"]["defaults"]["propertyNames"]["enum"] == list(FILE_DEFAULT_KEYS)


# ----------------------------------------------------------------------------- shipped grids


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_grids_expand_to_the_rows_product(name: str) -> None:
    path = PARAMS / name
    cells = load_grids([str(path)], defaults_path=PARAMS / "defaults.yaml")
    got = [(c.row, c.arch, c.dataset, c.sparsity, c.seed) for c in cells]
    assert got == expected_cells(path)
    for cell in cells:
        assert cell.run_dir == f"results/runs/{cell.config.cell_id()}/seed{cell.seed}"
        assert cell.file == str(path)


def test_the_long_diagnosis_differs_from_cpu_paper_only_in_length() -> None:
    defaults = PARAMS / "defaults.yaml"
    paper = load_grids([str(PARAMS / "cpu-paper.yaml")], defaults_path=defaults)
    short = {(c.method, c.sparsity, c.seed): cell_file_config(c.config).to_dict()
             for c in paper if c.row in ("cpu-rigl", "cpu-east")}
    long = load_grids([str(PARAMS / "cpu-paper-long.yaml")], defaults_path=defaults)
    assert [(c.method, c.sparsity, c.seed) for c in long] == [("rigl", 0.9995, 0),
                                                              ("east", 0.9995, 0)]
    for cell in long:
        mine = cell_file_config(cell.config).to_dict()
        theirs = short[(cell.method, cell.sparsity, cell.seed)]
        assert (mine["train"]["epochs"], theirs["train"]["epochs"]) == (60, 20)
        mine["train"]["epochs"] = 20
        assert mine == theirs


def test_paper_and_ablations_share_the_rigl_and_east_runs() -> None:
    files = [str(PARAMS / "paper.yaml"), str(PARAMS / "ablations.yaml")]
    cells = load_grids(files, defaults_path=PARAMS / "defaults.yaml")
    runs = unique_runs(cells)
    ablation = {c.run_dir: c.row for c in cells if c.grid == "ablations"}
    paper = {c.run_dir: c.row for c in cells if c.grid == "paper"}
    shared = set(ablation) & set(paper)
    # 2 levels x 3 seeds for each of ablation-rigl (= rigl) and ablation-east (= east).
    assert len(shared) == 12
    assert {ablation[r] for r in shared} == {"ablation-rigl", "ablation-east"}
    assert {paper[r] for r in shared} == {"rigl", "east"}
    assert len(runs) == len(cells) - 12


def test_paper_protocol_matches_the_spec() -> None:
    cells = load_grids([str(PARAMS / "paper.yaml")], defaults_path=PARAMS / "defaults.yaml")
    cell = next(c for c in cells if c.row == "rigl" and c.dataset == "cifar10")
    t = cell.config.train
    assert (t.epochs, t.batch_size, t.lr, t.momentum, t.nesterov) == (250, 128, 0.1, 0.9, True)
    assert (t.lr_schedule, t.lr_milestones, t.lr_gamma) == ("multistep", ("50%", "75%"), 0.1)
    assert (t.weight_decay, t.grad_clip, t.label_smoothing) == (1e-4, 1.0, 0.0)
    assert (cell.config.data.crop_padding, cell.config.data.val_fraction) == (4, 0.1)
    assert cell.config.sparsity.update_interval == 4000  # the RigL preset
    assert cell.protocol == "paper"
    imagenet = load_grids([str(PARAMS / "imagenet.yaml")], defaults_path=PARAMS / "defaults.yaml")
    t = imagenet[0].config.train
    assert (t.epochs, t.batch_size, t.warmup, t.label_smoothing) == (100, 256, "5ep", 0.1)
    assert (t.lr_milestones, t.bn_weight_decay, t.grad_clip) == (("30%", "60%", "80%"), False, None)
    assert imagenet[0].config.model.stem == "imagenet"
    assert imagenet[0].protocol == "rigl-convention"


def test_demo_uses_the_cpu_protocol() -> None:
    cells = load_grids([str(PARAMS / "demo.yaml")], defaults_path=PARAMS / "defaults.yaml")
    assert {c.dataset for c in cells} == {"digits"}
    t = cells[0].config.train
    assert (t.epochs, t.lr_schedule, t.lr, t.batch_size) == (20, "onecycle", 0.1, 128)
    assert cells[0].config.data.crop_padding == 1


# ----------------------------------------------------------------------------- resolution


def test_resolution_order(tmp_path: Path, defaults: str) -> None:
    path = grid(
        tmp_path,
        [
            {"name": "plain", "method": "rigl", "sparsity": [0.9]},
            {"name": "row-wins", "method": "rigl", "sparsity": [0.9],
             "train": {"batch_size": 16}, "method_args": {"update_interval": "3ep"},
             "protocol": "mine"},
        ],
        defaults={"arch": "resnet20", "dataset": "digits",
                  "train": {"batch_size": 32, "momentum": 0.8},
                  "method_args": {"update_interval": 7}},
    )
    plain, row_wins = load_grids([path], defaults_path=defaults)
    t = plain.config.train
    assert t.epochs == 3  # defaults.yaml dataset section over the dataclass (none)
    assert t.weight_decay == 0.001  # dataset section over the dataclass default 1e-4
    assert t.lr == 0.07  # arch section over dataset section (0.05)
    assert t.eval_batch_size == 99  # arch section
    assert t.batch_size == 32  # file defaults over dataset section (64)
    assert t.momentum == 0.8  # file defaults over the dataclass
    assert t.lr_schedule == TrainConfig.lr_schedule  # nobody set it: dataclass default
    assert plain.config.data.val_fraction == 0.2
    assert plain.config.data.crop_padding == 1  # the dataset registry's values for digits
    assert plain.config.data.hflip is False
    assert plain.config.sparsity.update_interval == 7  # file defaults over the preset
    assert plain.config.sparsity.grow == "gradient"  # the preset fills the rest
    assert plain.protocol == "cpu-test" and plain.label == "plain"
    assert row_wins.config.train.batch_size == 16
    assert row_wins.config.sparsity.update_interval == "3ep"
    assert row_wins.protocol == "mine"


def test_defaults_method_args_apply_only_where_the_method_has_the_knob(
    tmp_path: Path, defaults: str
) -> None:
    path = grid(
        tmp_path,
        [{"name": "d", "method": "dense"}, {"name": "s", "method": "static"},
         {"name": "r", "method": "rigl"}],
        defaults={"arch": "resnet20", "dataset": "digits", "sparsity": [0.9, 0.99],
                  "method_args": {"update_interval": "1ep", "distribution": "uniform"}},
    )
    cells = load_grids([path], defaults_path=defaults)
    by_row = {row: [c for c in cells if c.row == row] for row in "dsr"}
    # dense ignores the file's levels and takes 0.0; it has neither knob.
    assert [c.sparsity for c in by_row["d"]] == [0.0]
    assert by_row["d"][0].config.sparsity.distribution == "erk"
    assert [c.config.sparsity.distribution for c in by_row["s"]] == ["uniform", "uniform"]
    assert by_row["s"][0].config.sparsity.update_interval == 100  # dataclass: static has no knob
    assert [c.config.sparsity.update_interval for c in by_row["r"]] == ["1ep", "1ep"]


def test_expansion_order_and_count(tmp_path: Path, defaults: str) -> None:
    row = {"name": "x", "method": "set", "arch": ["resnet20", "resnet18"],
           "dataset": ["digits", "cifar10"], "sparsity": [0.5, 0.9, 0.99], "seeds": [3, 1]}
    cells = load_grids([grid(tmp_path, [row])], defaults_path=defaults)
    assert len(cells) == 2 * 2 * 3 * 2
    got = [(c.dataset, c.arch, c.sparsity, c.seed) for c in cells]
    assert got == list(itertools.product(["digits", "cifar10"], ["resnet20", "resnet18"],
                                         [0.5, 0.9, 0.99], [3, 1]))
    assert {c.config.train.epochs for c in cells if c.dataset == "cifar10"} == {7}


def test_scalars_are_one_element_lists_and_seeds_default_to_zero(
    tmp_path: Path, defaults: str
) -> None:
    row = {"name": "x", "method": "static", "arch": "resnet20", "dataset": "digits",
           "sparsity": 0.9}
    (cell,) = load_grids([grid(tmp_path, [row])], defaults_path=defaults)
    assert (cell.arch, cell.dataset, cell.sparsity, cell.seed) == ("resnet20", "digits", 0.9, 0)


def test_run_dirs_follow_semantic_content_only(tmp_path: Path, defaults: str) -> None:
    rows = [
        dict(BASE_ROW),
        {**BASE_ROW, "name": "renamed", "label": "Another label", "protocol": "p"},
        {**BASE_ROW, "name": "knobs", "train": {"workers": 2, "log_every": 3, "gpus": 4}},
        {**BASE_ROW, "name": "lr", "train": {"lr": 0.2}},
    ]
    paths = [grid(tmp_path, [row], name=f"g{i}.yaml") for i, row in enumerate(rows)]
    dirs = [load_grids([p], defaults_path=defaults)[0].run_dir for p in paths]
    assert dirs[0] == dirs[1] == dirs[2]
    assert dirs[3] != dirs[0]


def test_cell_file_config_drops_the_row_name(tmp_path: Path, defaults: str) -> None:
    (cell,) = load_grids([grid(tmp_path, [BASE_ROW])], defaults_path=defaults)
    stored = cell_file_config(cell.config)
    assert stored.row == "" and cell.config.row == "r"
    again = CellConfig.from_dict(json.loads(json.dumps(stored.to_dict())))
    assert again == stored
    assert again.run_dir() == cell.run_dir


def test_rows_may_share_a_cell(tmp_path: Path, defaults: str) -> None:
    rows = [BASE_ROW, {**BASE_ROW, "name": "same", "label": "Same cell"}]
    cells = load_grids([grid(tmp_path, rows)], defaults_path=defaults)
    assert len(cells) == 2 and cells[0].run_dir == cells[1].run_dir
    assert list(unique_runs(cells).values()) == [cells[0]]


# ----------------------------------------------------------------------------- errors

ALLOWED_ROW_KEYS = ", ".join(ROW_KEYS)
CASES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown key", {"colour": 3},
     f"g.yaml:r: colour: unknown key (allowed: {ALLOWED_ROW_KEYS})"),
    ("misspelt key", {"sparsty": [0.9]},
     f"g.yaml:r: sparsty: unknown key, did you mean 'sparsity'? (allowed: {ALLOWED_ROW_KEYS})"),
    ("section key in the row", {"epochs": 3},
     f"g.yaml:r: epochs: unknown key, did you mean 'train.epochs'? (allowed: {ALLOWED_ROW_KEYS})"),
    ("wrong type", {"train": {"epochs": "ten"}},
     "g.yaml:r: train.epochs: expected int, got 'ten'"),
    ("bool is not a number", {"train": {"lr": True}},
     "g.yaml:r: train.lr: expected float, got True"),
    ("section not a mapping", {"train": [1]}, "g.yaml:r: train: expected a mapping, got list"),
    ("unknown train key", {"train": {"epoch": 3}},
     "g.yaml:r: train.epoch: unknown key, did you mean 'epochs'? (allowed: epochs, batch_size,"),
    ("unknown method", {"method": "rigll"},
     f"g.yaml:r: method: unknown method 'rigll', did you mean 'rigl'? (known: "
     f"{', '.join(METHODS)})"),
    ("unknown arch", {"arch": ["resnet20", "resnet99"]},
     f"g.yaml:r: arch: unknown arch 'resnet99' (known: {', '.join(KNOWN_ARCHS)})"),
    ("unknown dataset", {"dataset": "mnist"},
     "g.yaml:r: dataset: unknown dataset 'mnist' (known: digits, digits12, digits16, "
     "digits32, cifar10, cifar100, imagenet)"),
    ("sparsity out of range", {"sparsity": [0.9, 1.0]},
     "g.yaml:r: sparsity: 1.0 is out of range [0, 1)"),
    ("negative sparsity", {"sparsity": -0.1}, "g.yaml:r: sparsity: -0.1 is out of range [0, 1)"),
    ("sparsity not a number", {"sparsity": ["0.9"]},
     "g.yaml:r: sparsity: expected a number in [0, 1), got '0.9'"),
    ("duplicate level", {"sparsity": [0.9, 0.9]}, "g.yaml:r: sparsity: duplicate value 0.9"),
    ("duplicate seed", {"seeds": [0, 1, 0]}, "g.yaml:r: seeds: duplicate value 0"),
    ("negative seed", {"seeds": [-1]}, "g.yaml:r: seeds: expected a non-negative int, got -1"),
    ("empty list", {"arch": []}, "g.yaml:r: arch: empty list"),
    ("knob not valid for the method", {"method_args": {"update_interval": 50}},
     "g.yaml:r: method_args.update_interval: not valid for method 'static'"),
    ("knob fixed by the preset", {"method_args": {"init": "snip"}},
     "g.yaml:r: method_args.init: fixed by the method preset, not settable"),
    ("unknown knob", {"method_args": {"interval": 5}},
     "g.yaml:r: method_args.interval: unknown key (allowed: cycle_interval,"),
    ("misspelt knob", {"method_args": {"update_intervall": 5}},
     "g.yaml:r: method_args.update_intervall: unknown key, did you mean 'update_interval'? "
     "(allowed: "),
    ("knob out of range", {"method": "rigl", "method_args": {"drop_fraction": 1.5}},
     "g.yaml:r: method_args.drop_fraction: must be in [0, 1], got 1.5"),
    ("level set in method_args", {"method_args": {"sparsity": 0.5}},
     "g.yaml:r: method_args.sparsity: set by the row's 'sparsity' key, not here"),
    ("dataset set in data", {"data": {"name": "cifar10"}},
     "g.yaml:r: data.name: set by the row's 'dataset' key, not here"),
    ("dense at a sparsity", {"method": "dense", "sparsity": [0.5]},
     "g.yaml:r: sparsity: method 'dense' trains at sparsity 0, got 0.5"),
    ("value range", {"train": {"epochs": 0}}, "g.yaml:r: train.epochs: must be >= 1, got 0"),
    ("value range", {"train": {"gpus": -1}}, "g.yaml:r: train.gpus: must be >= 0, got -1"),
    ("unknown schedule", {"train": {"lr_schedule": "cosin"}},
     "g.yaml:r: train.lr_schedule: must be one of multistep, cosine, onecycle, constant, "
     "got 'cosin'"),
    ("bad duration", {"train": {"warmup": "5 epochs"}},
     "g.yaml:r: train.warmup: expected duration (iterations, or e.g. '25%', '2ep', "
     "'50%-1ep'), got '5 epochs'"),
    ("bad stem", {"model": {"stem": "tiny"}},
     "g.yaml:r: model.stem: must be one of cifar, imagenet, got 'tiny'"),
    ("empty label", {"label": ""}, "g.yaml:r: label: expected a non-empty string, got ''"),
]


@pytest.mark.parametrize(("change", "message"), [(c, m) for _, c, m in CASES],
                         ids=[name for name, _, _ in CASES])
def test_each_row_error_is_one_line(
    tmp_path: Path, defaults: str, change: dict[str, Any], message: str
) -> None:
    row = {**BASE_ROW, **change}
    path = grid(tmp_path, [row])
    (line,) = errors_of([path], defaults)
    assert line.startswith(str(tmp_path) + "/")
    assert line[len(str(tmp_path)) + 1:].startswith(message), line
    assert "\n" not in line


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{**BASE_ROW, "name": "a:b"}], "g.yaml:rows[0]: name: 'a:b' is not a valid row name"),
        ([{k: v for k, v in BASE_ROW.items() if k != "name"}], "g.yaml:rows[0]: name: missing"),
        ([{k: v for k, v in BASE_ROW.items() if k != "method"}],
         "g.yaml:r: method: missing (set it in the row or the file's defaults)"),
        ([{k: v for k, v in BASE_ROW.items() if k != "sparsity"}],
         "g.yaml:r: sparsity: missing (a list of levels in [0, 1))"),
        ([BASE_ROW, {**BASE_ROW, "label": "again"}],
         "g.yaml:r: name: duplicate row name (first defined in this file)"),
        (["just a string"], "g.yaml:rows[0]: expected a mapping, got str"),
        ([], "g.yaml: rows: expected a non-empty list of rows, got []"),
        # The same run directory from two rows that disagree on a non-semantic field.
        ([BASE_ROW, {**BASE_ROW, "name": "s", "train": {"workers": 2}}],
         "g.yaml:s: train.workers: 2 here but 8 in row 'r' (g.yaml) for the same cell "
         "results/runs/resnet20-digits-static-s0.9-"),
    ],
    ids=["bad name", "no name", "no method", "no sparsity", "duplicate name", "row not a mapping",
         "no rows", "shared cell defined differently"],
)
def test_row_level_errors(tmp_path: Path, defaults: str, rows: list[Any], message: str) -> None:
    path = grid(tmp_path, rows)
    lines = [line.replace(str(tmp_path) + "/", "") for line in errors_of([path], defaults)]
    assert len(lines) == 1, lines
    assert lines[0].startswith(message), lines[0]


def test_duplicate_row_names_across_files(tmp_path: Path, defaults: str) -> None:
    first = grid(tmp_path, [BASE_ROW], name="a.yaml")
    second = grid(tmp_path, [{**BASE_ROW, "sparsity": [0.5]}], name="b.yaml")
    (line,) = errors_of([first, second], defaults)
    assert line == f"{second}:r: name: duplicate row name (first defined in {first})"


def test_file_level_errors(tmp_path: Path, defaults: str) -> None:
    broken = write(tmp_path / "broken.yaml", "rows:\n  - name: [unclosed\n")
    listed = write(tmp_path / "list.yaml", "- 1\n- 2\n")
    empty = write(tmp_path / "empty.yaml", "")
    extra = grid(tmp_path, [BASE_ROW], name="extra.yaml", colour="blue")
    bad_defaults = grid(tmp_path, [{**BASE_ROW, "name": "z"}], name="defaults-bad.yaml",
                        defaults={"name": "x", "train": {"epochs": -1}})
    missing = str(tmp_path / "missing.yaml")
    _, lines = check_grids([broken, listed, empty, extra, bad_defaults, missing],
                           defaults_path=defaults)
    assert lines[0].startswith(f"{broken}: not valid YAML at line 3, column 1: ")
    assert lines[1:] == [
        f"{listed}: expected a mapping with keys description, defaults, rows",
        f"{empty}: empty file (expected keys description, defaults, rows)",
        f"{extra}: colour: unknown key (allowed: description, defaults, rows)",
        f"{bad_defaults}:defaults: name: unknown key (allowed: {', '.join(FILE_DEFAULT_KEYS)})",
        f"{bad_defaults}:defaults: train.epochs: must be >= 1, got -1",
        f"{missing}: file not found",
    ]


def test_defaults_file_errors(tmp_path: Path) -> None:
    bad = write(tmp_path / "defaults.yaml", {
        "datasets": {"mnist": {}, "digits": {"train": {"epochs": "x"}, "colour": 1}},
        "archs": {"resnet20": {"protocol": "p"}},
        "extra": 1,
    })
    path = grid(tmp_path, [BASE_ROW])
    _, lines = check_grids([path], defaults_path=bad)
    assert lines == [
        f"{bad}: extra: unknown key (allowed: datasets, archs)",
        f"{bad}:datasets.mnist: unknown dataset 'mnist' (known: digits, digits12, digits16, "
        "digits32, cifar10, cifar100, imagenet)",
        f"{bad}:datasets.digits: colour: unknown key (allowed: protocol, train, data, model, "
        "method_args)",
        f"{bad}:datasets.digits: train.epochs: expected int, got 'x'",
        f"{bad}:archs.resnet20: protocol: unknown key (allowed: train, data, model, method_args)",
    ]


def test_every_error_of_every_file_at_once(tmp_path: Path, defaults: str) -> None:
    first = grid(tmp_path, [
        {**BASE_ROW, "name": "a", "arch": "resnet99", "train": {"epochs": 0, "lr": "x"}},
        {**BASE_ROW, "name": "b", "method_args": {"update_interval": 5}},
        {**BASE_ROW, "name": "c"},
    ], name="one.yaml")
    second = grid(tmp_path, [{**BASE_ROW, "name": "c", "seeds": [0, 0]}], name="two.yaml")
    _, lines = check_grids([first, second], defaults_path=defaults)
    short = [line.replace(str(tmp_path) + "/", "") for line in lines]
    assert short == [
        f"one.yaml:a: arch: unknown arch 'resnet99' (known: {', '.join(KNOWN_ARCHS)})",
        "one.yaml:a: train.epochs: must be >= 1, got 0",
        "one.yaml:a: train.lr: expected float, got 'x'",
        "two.yaml:c: seeds: duplicate value 0",
        "two.yaml:c: name: duplicate row name (first defined in one.yaml)",
        "one.yaml:b: method_args.update_interval: not valid for method 'static'",
    ]
    with pytest.raises(GridError) as raised:
        load_grids([first, second], defaults_path=defaults)
    assert raised.value.errors == lines
    assert str(raised.value).startswith("6 errors in params grids: ")


def test_every_method_resolves_with_its_preset(tmp_path: Path, defaults: str) -> None:
    rows = [{"name": m, "method": m, "arch": "resnet20", "dataset": "digits",
             **({} if m == "dense" else {"sparsity": [0.9]})} for m in METHODS]
    cells = load_grids([grid(tmp_path, rows)], defaults_path=defaults)
    for cell in cells:
        preset = PRESETS[cell.method].preset()
        for key, value in preset.items():
            assert getattr(cell.config.sparsity, key) == value, (cell.method, key)


# ----------------------------------------------------------------------------- commands


def test_grid_check_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    assert main(["grid", "check", "params/demo.yaml", "params/ablations.yaml"]) == 0
    out = capsys.readouterr().out
    summary = "params/demo.yaml, params/ablations.yaml: OK: 10 rows, 43 cells, 43 distinct runs"
    assert out == summary + "\n"
    bad = grid(tmp_path, [{**BASE_ROW, "method": "nope"}, {**BASE_ROW, "name": "q",
                                                             "sparsity": [2]}])
    assert main(["grid", "check", bad]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{bad}:r: method: unknown method 'nope' (known: {', '.join(METHODS)})",
        f"{bad}:q: sparsity: 2 is out of range [0, 1)",
        f"east: error: 2 errors in {bad}",
    ]
    assert main(["grid", "check", "params/cpu-paper.yaml"]) == 0
    captured = capsys.readouterr()
    assert captured.out.endswith(": OK: 8 rows, 72 cells, 72 distinct runs\n")
    assert [line.split(": sharing: ")[0] for line in captured.err.splitlines()] == [
        "east: note: params/cpu-paper.yaml:cpu-east",
        "east: note: params/cpu-paper.yaml:cpu-ablation-sharing",
    ]


def test_grid_check_entry_point_prints_no_traceback(tmp_path: Path) -> None:
    bad = grid(tmp_path, [{**BASE_ROW, "train": {"epochs": "x"}}])
    result = subprocess.run([sys.executable, "-m", "east", "grid", "check", bad],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{bad}:r: train.epochs: expected int, got 'x'",
        f"east: error: 1 error in {bad}",
    ]


def test_grid_list_command(capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    assert main(["grid", "list", "params/demo.yaml", "--json", "--runs", "elsewhere"]) == 0
    records = json.loads(capsys.readouterr().out)
    cells = load_grids(["params/demo.yaml"], runs_root="elsewhere")
    assert [r["run_dir"] for r in records] == [c.run_dir for c in cells]
    assert all(r["run_dir"].startswith("elsewhere/") for r in records)
    assert {r["status"] for r in records} == {"new"}
    assert CellConfig.from_dict(records[3]["config"]) == cells[3].config
    assert records[3]["label"] == cells[3].label and records[3]["grid"] == "demo"
    assert main(["grid", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["row", "arch", "dataset", "method", "sparsity", "seed",
                                "status", "run_dir"]
    assert len(lines) == 1 + len(cells)
    first = load_grids(["params/demo.yaml"])[0]
    assert lines[1].split()[0] == first.row and lines[1].split()[-1] == first.run_dir


# ----------------------------------------------------------------------------- before submission


def test_repeated_keys_name_file_line_and_key(tmp_path: Path, defaults: str) -> None:
    path = write(tmp_path / "g.yaml", (
        "defaults:\n"                                  # 1
        "  arch: resnet20\n"                           # 2
        "  arch: resnet18\n"                           # 3
        "rows:\n"                                      # 4
        "  - name: r\n"                                # 5
        "    method: static\n"                         # 6
        "    dataset: digits\n"                        # 7
        "    sparsity: [0.9]\n"                        # 8
        "    train: {epochs: 3, lr: 0.1, lr: 0.2}\n"   # 9
        "    sparsity: [0.5]\n"                        # 10
        "  - {name: q, method: static, dataset: digits, sparsity: [0.9]}\n"  # 11
        "description: one\n"                           # 12
        "description: two\n"                           # 13
    ))
    assert errors_of([path], defaults) == [  # in the file's order
        f"{path}:defaults: arch: repeated key at line 3 (first at line 2); YAML would "
        "silently keep the last one",
        f"{path}:r: train.lr: repeated key at line 9, column 33 (first at column 24); YAML "
        "would silently keep the last one",
        f"{path}:r: sparsity: repeated key at line 10 (first at line 8); YAML would silently "
        "keep the last one",
        f"{path}: description: repeated key at line 13 (first at line 12); YAML would "
        "silently keep the last one",
    ]
    # The defaults file too, where a section may be repeated whole.
    bad = write(tmp_path / "defaults.yaml", (
        "datasets:\n  digits: {train: {epochs: 3}}\n  digits:\n    train: {epochs: 4, epochs: 5}\n"
    ))
    assert errors_of([grid(tmp_path, [BASE_ROW])], bad) == [
        f"{bad}: datasets.digits: repeated key at line 3 (first at line 2); YAML would "
        "silently keep the last one",
        f"{bad}:datasets.digits: train.epochs: repeated key at line 4, column 24 (first at "
        "column 13); YAML would silently keep the last one",
    ]


def test_a_file_that_is_not_utf8_names_the_line(tmp_path: Path, defaults: str) -> None:
    path = tmp_path / "g.yaml"
    path.write_bytes("rows:\n  - name: r\n    label: Réseau\n".encode()
                     + b"    protocol: caf\xe9\n")
    assert errors_of([str(path)], defaults) == [
        f"{path}: not UTF-8 at line 4, column 18 (byte 0xe9); save the file as UTF-8"]


def test_the_defaults_file_among_the_grids_is_checked_as_defaults(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(REPO)
    files = sorted(str(p.relative_to(REPO)) for p in PARAMS.glob("*.yaml"))
    assert "params/defaults.yaml" in files
    # What a user types first; --no-data: this machine has no ImageNet.
    assert main(["grid", "check", "--no-data", *files]) == 0
    out = capsys.readouterr().out.splitlines()
    grids = [f for f in files if f != "params/defaults.yaml"]
    assert out[0].startswith(f"{', '.join(grids)}: OK: ")
    assert out[1:] == ["params/defaults.yaml: OK: the training defaults (read with every grid; "
                       "not a grid)"]
    # A broken defaults file is named as such, not as a grid without rows.
    broken = write(tmp_path / "defaults.yaml", {"datasets": {"digits": {"train": {"epochs": 0}}}})
    cells, lines = check_grids([broken], defaults_path=broken)
    assert cells == [] and lines == [f"{broken}:datasets.digits: train.epochs: must be >= 1, got 0"]


def test_a_schedule_point_beyond_the_run_is_a_note_per_row(tmp_path: Path,
                                                           defaults: str) -> None:
    # digits with the test defaults: 1,150 training images in batches of 64 = 18
    # iterations per epoch, 3 epochs: 54 iterations.
    rows = [{**BASE_ROW, "name": "rigl", "method": "rigl", "sparsity": [0.9, 0.99],
             "seeds": [0, 1], "method_args": {"update_interval": 4000}},
            {**BASE_ROW, "name": "ok", "method": "rigl", "method_args": {"update_interval": 10}},
            {**BASE_ROW, "name": "late", "method": "set",
             "method_args": {"update_interval": "1ep", "update_end": "1ep"},
             "train": {"lr_milestones": ["50%", 60]}},
            {**BASE_ROW, "name": "dy", "method_args": {"dyrelu": True, "dyrelu_end": "2ep+40"}}]
    cells, errors = check_grids([grid(tmp_path, rows)], defaults_path=defaults)
    assert not errors and len(cells) == 7
    run = "the run has 54 iterations: 3 epochs of 18 on digits"
    shown = str(tmp_path / "g.yaml")
    assert grid_notes(cells) == [
        f"{shown}:rigl: method_args.update_interval: every 4000 iterations is beyond the run "
        f"({run}): no mask update ever happens",
        f"{shown}:late: method_args.update_interval: '1ep' puts the first update at "
        f"iteration 18, not before update_end '1ep' (iteration 18; {run}): no mask update "
        "ever happens",
        f"{shown}:late: train.lr_milestones: iteration 60 is beyond the run ({run}): the lr "
        "never decays there",
        f"{shown}:dy: method_args.dyrelu_end: '2ep+40' = iteration 76 is beyond the run "
        f"({run}): DyReLU is never fully phased out (β > 0 at the last step)",
    ]


def test_what_the_trainer_would_refuse_at_start_is_an_error_now(tmp_path: Path,
                                                                 defaults: str) -> None:
    rows = [{**BASE_ROW, "name": "gmp", "method": "gmp", "method_args": {"prune_end": "120%"}},
            {**BASE_ROW, "name": "cyc", "method": "rigl",
             "method_args": {"cyclic": True, "cycles": 4, "cycle_length": "1ep"}},
            {**BASE_ROW, "name": "warm", "train": {"warmup": "3ep"}},
            {**BASE_ROW, "name": "tiny", "method": "set",
             "method_args": {"update_interval": "0.5%"}}]
    run = "the run has 54 iterations: 3 epochs of 18 on digits"
    lines = [line.replace(str(tmp_path) + "/", "") for line in errors_of(
        [grid(tmp_path, rows)], defaults)]
    assert lines == [
        f"g.yaml:gmp: method_args.prune_end: '120%' is iteration 65, past the end of training "
        f"({run}): the target sparsity would never be reached",
        f"g.yaml:cyc: method_args.cycle_length: 4 cycles of '1ep' (18 iterations each) do not "
        f"fit ({run})",
        f"g.yaml:warm: train.warmup: '3ep' is 54 iterations, not shorter than the run ({run})",
        f"g.yaml:tiny: method_args.update_interval: '0.5%' resolves to 0 iterations ({run}); "
        "it must be at least 1",
    ]


def _imagenet(root: Path, classes: int = 1000, *, flat_val: bool = False) -> None:
    for split in ("train", "val"):
        (root / "imagenet" / split).mkdir(parents=True)
        if split == "val" and flat_val:
            (root / "imagenet" / split / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"")
            continue
        for index in range(classes):
            (root / "imagenet" / split / f"n{index:08d}").mkdir()


def test_an_imagenet_row_without_its_folder_fails_the_check(tmp_path: Path,
                                                           defaults: str) -> None:
    root = tmp_path / "data"
    rows = [{**BASE_ROW, "name": "in1", "dataset": "imagenet", "arch": "resnet50",
             "sparsity": [0.9, 0.99], "data": {"root": str(root)}, "train": {"epochs": 1}},
            {**BASE_ROW, "name": "in2", "dataset": "imagenet", "arch": "resnet50",
             "data": {"root": str(root)}, "train": {"epochs": 1}},
            {**BASE_ROW, "name": "digits"}]
    path = grid(tmp_path, rows)
    assert check_grids([path], defaults_path=defaults)[1] == []  # the format alone is fine
    expected = (f"data.root: dataset imagenet not found under {root}/: place ImageNet as "
                f"{root}/imagenet/{{train,val}}/<wnid>/*.JPEG (ImageFolder layout; it cannot "
                "be downloaded)")
    _, lines = check_grids([path], defaults_path=defaults, check_data=True)
    assert lines == [f"{path}:in1: {expected}", f"{path}:in2: {expected}"]
    _imagenet(root, flat_val=True)
    _, lines = check_grids([path], defaults_path=defaults, check_data=True)
    assert lines[0] == (
        f"{path}:in1: data.root: imagenet val/ has image files but no class folders "
        f"({root}/imagenet/val): the official validation archive is flat; sort it into "
        "val/<wnid>/ folders")
    shutil.rmtree(root)
    _imagenet(root)
    assert check_grids([path], defaults_path=defaults, check_data=True)[1] == []
    # A cell already evaluated needs no data: once all are, the folder may go.
    shutil.rmtree(root)
    runs = str(tmp_path / "runs")
    for cell in load_grids([path], defaults_path=defaults, runs_root=runs):
        Path(cell.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(cell.run_dir) / "metrics.json").write_text("{}")
    assert check_grids([path], defaults_path=defaults, runs_root=runs, check_data=True)[1] == []


def test_grid_list_into_head_exits_quietly() -> None:
    process = subprocess.Popen([sys.executable, "-m", "east", "grid", "list", "--json",
                                "params/paper.yaml"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline() == b"[\n"
    process.stdout.close()  # what `| head -1` does once it has its line
    assert process.wait(timeout=60) == 141
    assert process.stderr.read() == b""


def test_run_status_tells_diverged_and_failed_runs(tmp_path: Path) -> None:
    from east.grid import run_status

    run = tmp_path / "run"
    run.mkdir()
    assert run_status(run) == "new"
    (run / "FAILED.json").write_text('{"rule": "train", "exit_code": 2}')
    assert run_status(run) == "failed"
    (run / "summary.json").write_text('{"status": "diverged"}')
    assert run_status(run) == "diverged"
    (run / "summary.json").write_text('{"status": "done"}')
    assert run_status(run) == "trained"
    (run / "metrics.json").write_text('{"status": "diverged", "test_acc": null}')
    assert run_status(run) == "diverged"


def test_exponent_numbers_are_numbers(tmp_path: Path, defaults: str) -> None:
    # YAML 1.1 (PyYAML) reads 1e6 as text; a researcher writing `lr: 1e6` means a number.
    path = write(tmp_path / "g.yaml", "rows:\n  - {name: r, method: static, arch: resnet20, "
                 "dataset: digits, sparsity: [0.9], train: {lr: 1e6, weight_decay: 5e-4}}\n")
    (cell,) = load_grids([path], defaults_path=defaults)
    assert (cell.config.train.lr, cell.config.train.weight_decay) == (1e6, 5e-4)
