"""Typed, frozen configuration of one cell: data, model, training, sparsity.

A cell is one (row, arch, dataset, sparsity, method configuration, seed). Its run directory
is named from a hash of the *semantic* fields that differ from their defaults (open_lth's
scheme), with the defaults' version (``SCHEMA_VERSION``): renaming a row or changing a log
interval retrains nothing, changing anything that affects the result does, and adding a
knob whose default reproduces today's behaviour renames nothing. Run directories named by
an older scheme are recognised (``CellConfig.legacy_cell_ids``) and renamed by
``east runs migrate``. This module is torch-free: it runs in the Snakefile and in
``east grid check``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

from east.errors import EastError

# Version 2 (the fidelity fixes): gradient clipping over the dense gradient, regrowth of
# just-dropped weights, PyTorch's default conv init, drop-fraction decay over the whole run.
SCHEMA_VERSION = 2
# What a version-1 cell.json meant for the fields version 2 added: reading an old cell
# fills these in, so an old run directory keeps describing what it computed.
SCHEMA_UPGRADES: dict[int, dict[str, dict[str, Any]]] = {
    1: {
        "train": {"grad_clip_scope": "masked"},
        "model": {"conv_init": "kaiming_fan_out"},
        "sparsity": {"regrow_dropped": False},
    },
}

# A schedule point: int = iterations, or a string of +/- terms "<x>ep", "<x>%", "<x>it".
Duration = Union[int, str]  # noqa: UP007 (kept as a named alias for the type check below)

_DURATION_TERM = re.compile(r"\s*([+-]?)\s*(\d+(?:\.\d+)?)\s*(ep|%|it)?\s*")


def parse_duration(value: Duration) -> list[tuple[float, str]]:
    """Split a duration into (amount, unit) terms; raise ValueError when malformed."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value}")
        return [(float(value), "it")]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"expected a duration (int iterations or e.g. '25%', '2ep'), got {value!r}"
        )
    terms: list[tuple[float, str]] = []
    pos = 0
    text = value.strip()
    while pos < len(text):
        match = _DURATION_TERM.match(text, pos)
        if not match or match.end() == pos or (terms and not match.group(1)):
            raise ValueError(
                f"malformed duration {value!r}: use iterations, '<x>ep', '<x>%', "
                "'<x>it', joined by + or -"
            )
        sign = -1.0 if match.group(1) == "-" else 1.0
        terms.append((sign * float(match.group(2)), match.group(3) or "it"))
        pos = match.end()
    return terms


def resolve_duration(value: Duration, steps_per_epoch: int, total_steps: int) -> int:
    """Resolve a duration to a whole number of iterations (rounded, clamped at 0)."""
    scale = {"it": 1.0, "ep": float(steps_per_epoch), "%": total_steps / 100.0}
    total = sum(amount * scale[unit] for amount, unit in parse_duration(value))
    return max(0, math.floor(total + 0.5))


# A field's rule: (valid(value), what it must be). The config classes own their rules
# (``RULES``), so that a grid, a hand-written cell.json and the trainer all check a field
# the same way, once, where it is defined.
Rule = tuple[Callable[[Any], bool], str]


def _one_of(choices: tuple[str, ...]) -> Rule:
    return (lambda v: v in choices, f"must be one of {', '.join(choices)}")


def _at_least(low: float, *, none: str = "") -> Rule:
    text = f"must be >= {low:g}" + (f" or null ({none})" if none else "")
    return (lambda v: (none and v is None) or (v is not None and v >= low), text)


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class DataConfig:
    name: str
    root: str = "data"
    val_fraction: float = 0.1
    augment: bool = True
    crop_padding: int = 4
    # Horizontal flips suit natural images, not digits (a mirrored 2 is no digit).
    hflip: bool = True

    RULES: ClassVar[dict[str, Rule]] = {
        "val_fraction": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
        "crop_padding": _at_least(0),
        "root": (lambda v: bool(v.strip()), "must not be empty"),
    }


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    stem: str = "cifar"
    # "pytorch": nn.Conv2d's own init (kaiming-uniform, a = √5), as the authors' trainer;
    # "kaiming_fan_out": torchvision's ResNet init (He-normal, fan_out).
    conv_init: str = "pytorch"

    CONV_INITS: ClassVar[tuple[str, ...]] = ("pytorch", "kaiming_fan_out")
    STEMS: ClassVar[tuple[str, ...]] = ("cifar", "imagenet")
    RULES: ClassVar[dict[str, Rule]] = {
        "stem": _one_of(STEMS),
        "conv_init": _one_of(CONV_INITS),
    }


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    bn_weight_decay: bool = True
    lr_schedule: str = "multistep"
    lr_milestones: tuple[Duration, ...] = ("50%", "75%")
    lr_gamma: float = 0.1
    warmup: Duration = 0
    label_smoothing: float = 0.0
    grad_clip: float | None = 1.0
    # "dense": the clip factor comes from the gradient backward produced, pruned positions
    # included (the authors' trainer clips before masking); "masked": from the masked one.
    grad_clip_scope: str = "dense"
    precision: str = "auto"
    # Not semantic: how the run is executed and observed, not what it computes.
    channels_last: str = "auto"
    device: str = "auto"
    log_every: int = 50
    checkpoint_minutes: float = 10.0
    workers: int = 8
    eval_batch_size: int = 1024
    # CPU threads of the training process (None: torch's default). Not semantic, but CPU
    # results depend on it (float summation order): summary.json records what ran.
    threads: int | None = None
    # GPUs of the cell's train job in the workflow: what SLURM is asked for and, when > 1,
    # the ranks `east train --ranks N` starts on one node (threads and workers above are
    # the job's, divided among its ranks). `east train` run by hand ignores it: its ranks
    # are its --ranks or the launcher's. Not semantic: results do not depend on the world
    # size (BatchNorm statistics are global under data parallelism) beyond float
    # summation order.
    gpus: int = 1

    LR_SCHEDULES: ClassVar[tuple[str, ...]] = ("multistep", "cosine", "onecycle", "constant")
    PRECISIONS: ClassVar[tuple[str, ...]] = ("auto", "fp32", "bf16")
    GRAD_CLIP_SCOPES: ClassVar[tuple[str, ...]] = ("dense", "masked")
    CHANNELS_LAST: ClassVar[tuple[str, ...]] = ("auto", "on", "off", "true", "false")
    RULES: ClassVar[dict[str, Rule]] = {
        "epochs": _at_least(1),
        "batch_size": _at_least(1),
        "lr": (lambda v: v > 0, "must be > 0"),
        "momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
        "weight_decay": _at_least(0),
        "lr_schedule": _one_of(LR_SCHEDULES),
        "lr_gamma": (lambda v: v > 0, "must be > 0"),
        "label_smoothing": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
        "grad_clip": (lambda v: v is None or v > 0, "must be > 0 or null (no clipping)"),
        "grad_clip_scope": _one_of(GRAD_CLIP_SCOPES),
        "precision": _one_of(PRECISIONS),
        "channels_last": _one_of(CHANNELS_LAST),
        "device": (lambda v: bool(_DEVICE.fullmatch(v)), "must be auto, cpu, cuda or cuda:N"),
        "log_every": _at_least(1),
        # 0: a checkpoint after every step (tests of pre-emption use it).
        "checkpoint_minutes": _at_least(0),
        "workers": _at_least(0),
        "eval_batch_size": _at_least(1),
        "threads": _at_least(1, none="torch's default"),
        "gpus": _at_least(0),
    }


@dataclass(frozen=True)
class SparsityConfig:
    """Every knob of every method; ``east.sparsity.presets`` fills the method's defaults."""

    method: str
    sparsity: float = 0.0
    distribution: str = "erk"
    init: str = "random"
    drop: str = "none"
    grow: str = "none"
    update_interval: Duration = 100
    # The drop fraction decays to 0 over [0, update_end]; the authors decay it over the
    # whole run (RigL's paper: 75 %).
    update_end: Duration = "100%"
    drop_fraction: float = 0.5
    drop_schedule: str = "cosine"
    # Whether a weight dropped by an update may be regrown by the same update (then it
    # keeps its value and optimizer state): RigL's and the authors' code allow it.
    regrow_dropped: bool = True
    prune_start: Duration = 0
    prune_end: Duration = "75%"
    prune_interval: Duration = 100
    initial_density: float = 1.0
    mest_lambda: float = 0.0
    synflow_rounds: int = 100
    dyrelu: bool = False
    dyrelu_start: Duration = "25%"
    dyrelu_end: Duration = "50%-1ep"
    sharing: bool = False
    sharing_ratio: int = 2
    cyclic: bool = False
    cycles: int = 2
    cycle_length: Duration = "20%"
    cycle_max_factor: float = 3.0
    cycle_interval: Duration = 100

    DISTRIBUTIONS: ClassVar[tuple[str, ...]] = ("erk", "uniform")
    RULES: ClassVar[dict[str, Rule]] = {
        "sparsity": (lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
        "distribution": _one_of(DISTRIBUTIONS),
        "drop_fraction": (lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]"),
        "drop_schedule": _one_of(("cosine", "constant")),
        "initial_density": (lambda v: 0.0 < v <= 1.0, "must be in (0, 1]"),
        "mest_lambda": _at_least(0),
        "synflow_rounds": _at_least(1),
        # R = 1 would share block 0's convs, whose input width or stride differ.
        "sharing_ratio": _at_least(2),
        "cycles": _at_least(1),
        "cycle_max_factor": _at_least(1),
    }


# Fields that do not change what a cell computes: excluded from the content hash.
NON_SEMANTIC: dict[str, frozenset[str]] = {
    "data": frozenset({"root"}),
    "model": frozenset(),
    "train": frozenset(
        {"channels_last", "device", "log_every", "checkpoint_minutes", "workers", "eval_batch_size",
         "threads", "gpus"}
    ),
    "sparsity": frozenset(),
}

SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "sparsity": SparsityConfig,
}


def _type_ok(value: Any, annotation: Any) -> bool:
    """Check a YAML/JSON value against a field annotation (the subset this module uses)."""
    if annotation is Duration or annotation == "Duration":
        try:
            parse_duration(value)
        except ValueError:
            return False
        return True
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if origin is tuple:
        (item, _ellipsis) = typing.get_args(annotation)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    raise TypeError(f"unsupported annotation {annotation!r}")


def _type_name(annotation: Any) -> str:
    if annotation is Duration:
        return "duration (iterations, or e.g. '25%', '2ep', '50%-1ep')"
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a config dataclass (ClassVars excluded)."""
    hints = typing.get_type_hints(cls, globalns={**globals(), "Duration": Duration})
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def build_section(cls: type, raw: Any, where: str) -> Any:
    """Build one config section from a mapping; every error names ``where: field``."""
    if not isinstance(raw, dict):
        raise EastError(f"{where}: expected a mapping, got {type(raw).__name__}")
    types_ = field_types(cls)
    unknown = sorted(set(raw) - set(types_))
    if unknown:
        raise EastError(f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(types_)})")
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
    for name in required:
        if name not in raw:
            raise EastError(f"{where}.{name}: missing required key")
    values: dict[str, Any] = {}
    rules: dict[str, Rule] = getattr(cls, "RULES", {})
    for name, value in raw.items():
        annotation = types_[name]
        if not _type_ok(value, annotation):
            raise EastError(
                f"{where}.{name}: expected {_type_name(annotation)}, got {value!r}"
            )
        rule = rules.get(name)
        if rule is not None and not rule[0](value):
            raise EastError(f"{where}.{name}: {rule[1]}, got {value!r}")
        if typing.get_origin(annotation) is tuple:
            value = tuple(value)
        if annotation is float and isinstance(value, int):
            value = float(value)
        values[name] = value
    return cls(**values)


def _section_dict(section: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _sha256(blob: dict[str, Any]) -> str:
    text = json.dumps(blob, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _field_defaults(cls: type) -> dict[str, Any]:
    """Field name -> its default (as ``to_dict`` writes it) for fields that have one."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
    return out


def upgrade_cell_dict(raw: dict[str, Any]) -> dict[str, Any]:
    """An older cell dict rewritten to the current schema: the fields added since its
    version get the values that reproduce what that version computed."""
    version = raw.get("schema_version", SCHEMA_VERSION)
    if version == SCHEMA_VERSION:
        return raw
    out = dict(raw)
    for old in sorted(v for v in SCHEMA_UPGRADES if v >= version):
        for section, values in SCHEMA_UPGRADES[old].items():
            if isinstance(out.get(section), dict):
                out[section] = {**values, **out[section]}
    out["schema_version"] = SCHEMA_VERSION
    return out


@dataclass(frozen=True)
class CellConfig:
    """One cell: a resolved method configuration on one (arch, dataset, sparsity, seed)."""

    row: str
    seed: int
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    sparsity: SparsityConfig
    schema_version: int = field(default=SCHEMA_VERSION)

    @classmethod
    def from_dict(cls, raw: Any, where: str = "cell") -> CellConfig:
        if not isinstance(raw, dict):
            raise EastError(f"{where}: expected a mapping")
        allowed = {"row", "seed", "schema_version", *SECTIONS}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise EastError(f"{where}.{unknown[0]}: unknown key")
        version = raw.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION and version not in SCHEMA_UPGRADES:
            raise EastError(
                f"{where}.schema_version: {version!r} is not supported (this east reads "
                f"{', '.join(str(v) for v in (*SCHEMA_UPGRADES, SCHEMA_VERSION))})"
            )
        raw = upgrade_cell_dict(raw)
        for key in ("row", "seed", *SECTIONS):
            if key not in raw:
                raise EastError(f"{where}.{key}: missing required key")
        if not isinstance(raw["row"], str):
            raise EastError(f"{where}.row: expected str")
        seed = raw["seed"]
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise EastError(f"{where}.seed: expected a non-negative int, got {seed!r}")
        sections = {
            name: build_section(cls_, raw[name], f"{where}.{name}")
            for name, cls_ in SECTIONS.items()
        }
        return cls(row=raw["row"], seed=seed, **sections)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": self.schema_version, "row": self.row}
        out["seed"] = self.seed
        for name in SECTIONS:
            out[name] = _section_dict(getattr(self, name))
        return out

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def semantic_dict(self) -> dict[str, Any]:
        """What the result depends on and the run id hashes: the semantic fields that
        differ from their dataclass defaults (required fields always), and the defaults'
        version. No row name, no seed, no execution knobs."""
        out: dict[str, Any] = {"defaults": self.schema_version}
        for name, cls in SECTIONS.items():
            defaults = _field_defaults(cls)
            section = _section_dict(getattr(self, name))
            out[name] = {k: v for k, v in section.items()
                         if k not in NON_SEMANTIC[name] and (k not in defaults
                                                             or v != defaults[k])}
        return out

    def content_hash(self) -> str:
        return _sha256(self.semantic_dict())

    def cell_id(self) -> str:
        return self._named(self.content_hash())

    def run_dir(self, runs_root: str = "results/runs") -> str:
        return f"{runs_root}/{self.cell_id()}/seed{self.seed}"

    def legacy_content_hashes(self) -> list[str]:
        """The hashes older east versions gave this cell (every semantic field hashed,
        ``schema_version`` included): for version 2, and for version 1 when the cell's
        version-2 fields hold what version 1 meant. Checkpoints and run directories of
        those versions are recognised by them."""
        full = {"schema_version": SCHEMA_VERSION}
        for name in SECTIONS:
            section = _section_dict(getattr(self, name))
            full[name] = {k: v for k, v in section.items() if k not in NON_SEMANTIC[name]}
        hashes = [_sha256(full)]
        v1 = dict(full, schema_version=1)
        added = SCHEMA_UPGRADES[1]
        if all(full[sec].get(k) == v for sec, values in added.items() for k, v in values.items()):
            for section, values in added.items():
                v1[section] = {k: v for k, v in full[section].items() if k not in values}
            hashes.append(_sha256(v1))
        return hashes

    def legacy_cell_ids(self) -> list[str]:
        return [self._named(h) for h in self.legacy_content_hashes()]

    def _named(self, digest: str) -> str:
        sparsity = f"{self.sparsity.sparsity:.6g}"
        return (f"{self.model.arch}-{self.data.name}-{self.sparsity.method}-s{sparsity}-"
                f"{digest[:10]}")

    @property
    def activation(self) -> str:
        return "dyrelu" if self.sparsity.dyrelu else "relu"

    @property
    def sharing_ratio(self) -> int | None:
        return self.sparsity.sharing_ratio if self.sparsity.sharing else None
