"""The methods, each a short preset of parts (``east.sparsity.parts``), with its paper.

Torch-free, so that ``east grid check`` and the Snakefile validate rows before anything is
submitted. A method names its initial mask, density schedule, drop and grow scorers and
defaults; the knobs a row may set are derived from those parts (``Method.knobs``), and the
same table drives grid validation, ``east budget``, the sparsifier (``methods.py``), the
report's variant test and the table in docs/design.md (``method_table``). Values are
checked by ``SparsityConfig.RULES``, once, where the fields are defined.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from east.config import SparsityConfig, build_section
from east.errors import EastError
from east.sparsity import parts as P

# The EAST tricks every method may switch on; cyclic needs drop and grow scorers.
_ALWAYS = ("dyrelu", "sharing")


@dataclass(frozen=True)
class Method:
    name: str
    reference: str
    init: str
    distribution: bool = True  # per-layer budgets (False: global scores, or dense)
    schedule: str = "constant"
    drop: str | None = None
    grow: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)

    @property
    def dynamic(self) -> bool:
        """Periodic drop-and-grow (the RigL family)."""
        return self.drop is not None and self.grow is not None

    @property
    def gradual(self) -> bool:
        return self.schedule == "cubic"

    @property
    def parts(self) -> list[P.Part]:
        out = [P.DISTRIBUTION] if self.distribution else []
        out += [P.INITS[self.init], P.SCHEDULES[self.schedule]]
        if self.dynamic:
            out += [P.DROPS[self.drop], P.GROWS[self.grow], P.TIMING]  # type: ignore[index]
        out += [P.TRICKS[t] for t in (*_ALWAYS, *(("cyclic",) if self.dynamic else ()))]
        return out

    @property
    def knobs(self) -> frozenset[str]:
        """The sparsity fields a row may set for this method."""
        return frozenset({"method", "sparsity"}) | {k for p in self.parts for k in p.knobs}

    def preset(self) -> dict[str, Any]:
        """The SparsityConfig values this method fixes or defaults (a row's knobs win)."""
        return {"init": self.init, "drop": self.drop or "none", "grow": self.grow or "none",
                **self.defaults}


PRESETS: dict[str, Method] = {m.name: m for m in (
    Method("dense", "dense baseline: every mask all True", init="dense", distribution=False),
    Method("static", "static random mask in the ERK budget (the ERK random baseline of Evci "
           "et al., ICML 2020)", init="random"),
    Method("snip", 'Lee, Ajanthan, Torr, "SNIP: Single-shot Network Pruning based on '
           'Connection Sensitivity", ICLR 2019', init="snip", distribution=False),
    Method("grasp", 'Wang, Zhang, Grosse, "Picking Winning Tickets Before Training by '
           'Preserving Gradient Flow", ICLR 2020', init="grasp", distribution=False),
    Method("synflow", 'Tanaka, Kunin, Yamins, Ganguli, "Pruning neural networks without any '
           'data by iteratively conserving synaptic flow", NeurIPS 2020', init="synflow",
           distribution=False, defaults={"synflow_rounds": 100}),
    Method("gmp", 'Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of '
           'pruning for model compression", 2017', init="dense", schedule="cubic",
           defaults={"initial_density": 1.0, "prune_start": "0%", "prune_end": "75%",
                     "prune_interval": 100}),
    Method("set", 'Mocanu et al., "Scalable training of artificial neural networks with '
           'adaptive sparse connectivity inspired by network science", Nat. Commun. 2018',
           init="random", drop="magnitude", grow="random",
           defaults={"update_interval": 1500}),
    Method("rigl", 'Evci, Gale, Menick, Castro, Elsen, "Rigging the Lottery: Making All '
           'Tickets Winners", ICML 2020', init="random", drop="magnitude", grow="gradient",
           defaults={"update_interval": 4000}),
    # GraNet's dense-to-sparse variant ("GraNet (s_i = 0)" of its README; the code's default
    # is s_i = 0.5, i.e. initial_density 0.5): gradual magnitude pruning from dense over
    # epochs 0-110 of 160 (0 %-68.75 %), each pruning step followed by regrowth of a
    # cosine-decayed fraction by gradient, both every 1000 iterations.
    Method("granet", 'Liu et al., "Sparse Training via Boosting Pruning Plasticity with '
           'Neuroregeneration", NeurIPS 2021', init="dense", schedule="cubic",
           drop="magnitude", grow="gradient",
           defaults={"initial_density": 1.0, "update_interval": 1000, "prune_start": "0%",
                     "prune_end": "68.75%", "prune_interval": 1000}),
    Method("mest", 'Yuan et al., "MEST: Accurate and Fast Memory-Economic Sparse Training '
           'Framework on the Edge", NeurIPS 2021 (the EM variant)', init="random",
           drop="mest", grow="random", defaults={"update_interval": 1500, "mest_lambda": 1.0}),
    Method("east", 'Li et al., "Pushing the Limits of Sparsity: A Bag of Tricks for Extreme '
           'Pruning", TMLR 2025 (arXiv 2411.13545)', init="random", drop="magnitude",
           grow="gradient", defaults={"update_interval": 4000, "dyrelu": True,
                                      "sharing": True, "cyclic": True}),
)}

METHODS: tuple[str, ...] = tuple(PRESETS)
DYNAMIC_METHODS: tuple[str, ...] = tuple(m for m, spec in PRESETS.items() if spec.dynamic)
# Knobs some method lets a row set.
SETTABLE_KNOBS: frozenset[str] = frozenset().union(*(m.knobs for m in PRESETS.values())) - {
    "method", "sparsity"}

# EAST's three switches: a row that sets one away from its method's preset is a variant.
TRICK_SWITCHES: tuple[str, ...] = ("dyrelu", "sharing", "cyclic")


def preset_tricks(method: str) -> tuple[bool, ...]:
    """The preset's value of each of ``TRICK_SWITCHES`` (all off for an unknown method)."""
    spec = PRESETS.get(method)
    preset = spec.preset() if spec is not None else {}
    return tuple(bool(preset.get(trick, False)) for trick in TRICK_SWITCHES)


def method_spec(name: str, where: str = "sparsity") -> Method:
    if name not in PRESETS:
        raise EastError(f"{where}.method: unknown method {name!r} (known: {', '.join(METHODS)})")
    return PRESETS[name]


def resolve_sparsity(raw: dict[str, Any], where: str) -> SparsityConfig:
    """Fill a method's preset into a row's sparsity fields, validating every field."""
    if not isinstance(raw, dict):
        raise EastError(f"{where}: expected a mapping")
    spec = method_spec(raw.get("method"), where)  # type: ignore[arg-type]
    known = {f.name for f in dataclasses.fields(SparsityConfig)}
    for key in sorted(raw):
        if key in known and key not in spec.knobs:
            raise EastError(f"{where}.{key}: not valid for method {spec.name!r}")
    config: SparsityConfig = build_section(SparsityConfig, {**spec.preset(), **raw}, where)
    if spec.name == "dense" and config.sparsity != 0.0:
        raise EastError(f"{where}.sparsity: method 'dense' trains at sparsity 0, got "
                        f"{config.sparsity}")
    return config


def method_table() -> str:
    """The methods as a Markdown table: parts, defaults and settable knobs (docs/design.md
    holds this table verbatim; a test keeps the two equal)."""
    lines = ["| method | initial mask | schedule | drop / grow | defaults | knobs besides "
             "the tricks' |", "|---|---|---|---|---|---|"]
    tricks = {k for p in P.TRICKS.values() for k in p.knobs}
    for m in PRESETS.values():
        defaults = ", ".join(f"{k}={v}" for k, v in m.defaults.items()) or "—"
        knobs = ", ".join(sorted(m.knobs - tricks - {"method", "sparsity"})) or "—"
        move = f"{m.drop} / {m.grow}" if m.dynamic else "—"
        init = m.init + ("" if m.distribution or m.init == "dense" else " (global)")
        lines.append(f"| {m.name} | {init} | {m.schedule} | {move} | {defaults} | {knobs} |")
    return "\n".join(lines)
