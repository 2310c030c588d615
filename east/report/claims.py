"""The paper's claims (the spec's "Claims a reproduction checks"), judged from finished cells.

One claims table per (arch, dataset) that has EAST cells; one line per claim: the cells it
uses, the numbers (percent, mean ± sample std, ddof=1, seed count), the rule and a verdict,
``holds``, ``does not hold`` or ``not enough cells``. Methods are told apart by the cells'
``method`` field and their EAST tricks (``dyrelu``, ``sharing``, ``cyclic``), never by
display labels. The rules are fixed here, not tuned (docs/design.md, "Claims"):

- *A beats B*: Welch's t-test, one-sided (H1: mean A > mean B), on the done seeds' test
  accuracies, at ``ALPHA``. When both groups have zero spread the test is degenerate: it
  holds iff mean A > mean B, with p = 0 (else p = 1); t and df are then undefined (NaN).
- *falls to chance*: mean within ``CHANCE_MARGIN`` of 1 / num_classes (the registry's).
- *does not hurt*: mean A ≥ mean B − std B (B's sample std over its seeds).
- A compared group needs ``MIN_SEEDS`` done seeds; a missing level, method or group with
  fewer seeds is ``not enough cells``.
- A claim made of several checks does not hold when one check does not hold; otherwise it
  lacks cells when one check does; otherwise it holds.

Where several rows match (a method at a level), the first row in grid order is used; for
the ablation (claim 6), a plain RigL row of the variant's own grid is preferred.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from east.data.registry import dataset_info
from east.errors import EastError
from east.report.aggregate import TRICKS
from east.report.tables import pm_text, render, slug, sparsity_label
from east.sparsity.budget import target_total
from east.sparsity.presets import preset_tricks

ALPHA = 0.05
MIN_SEEDS = 3
CHANCE_MARGIN = 0.02  # accuracy fraction: 2 percentage points
HOLDS, FAILS, SHORT = "holds", "does not hold", "not enough cells"
VERDICTS = (HOLDS, FAILS, SHORT)
# The spec's levels (ResNet-34 / CIFAR-10); other tables are judged at the same levels.
CHANCE_LEVEL = 0.9999
ORDER_LEVELS = (0.999, 0.9995)
SAFE_LEVEL = 0.99
BASELINES = ("rigl", "set", "synflow")
NAMES = {"east": "EAST", "rigl": "RigL", "set": "SET", "synflow": "SynFlow"}
# Stable keys of the claims metrics (claims.json, metrics/claims-<arch>-<dataset>.json).
METRIC_KEYS = ("claim1", "claim2", "claim3", "claim4", "claim5", "claim6",
               *(f"claim6_{trick}" for trick in TRICKS))

RULES_TEXT = (
    f"Rules (fixed, not tuned): \"A > B\" is Welch's t-test, one-sided, alpha = {ALPHA}, on "
    "the seeds' test accuracies (t, Welch–Satterthwaite df and p shown; with zero spread in "
    "both groups it holds iff mean A > mean B, p = 0 or 1); \"chance\" is a mean within "
    f"{100 * CHANCE_MARGIN:g} points of 100 / classes; \"A ≥ B\" (does not hurt) is mean A "
    "≥ mean B − sample std B. Each compared group needs "
    f"{MIN_SEEDS} done seeds, else the verdict is \"{SHORT}\"; a claim of several checks "
    f"\"{FAILS}\" when one check fails, else \"{SHORT}\" when one lacks cells."
)


@dataclass(frozen=True)
class Welch:
    """One-sided Welch test of mean A > mean B."""

    t: float
    df: float
    p: float


def welch(a: Sequence[float], b: Sequence[float]) -> Welch:
    """Welch's t, the Welch–Satterthwaite df and the one-sided p (needs two values each)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # no spread at all: the sign decides
        # (tested on equal values, not on var == 0: float means leave ~1e-34 variances)
        return Welch(math.nan, math.nan, 0.0 if a[0] > b[0] else 1.0)
    test = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
    return Welch(float(test.statistic), float(test.df), float(test.pvalue))


@dataclass(frozen=True)
class Group:
    """The done seeds of one row at one sparsity."""

    name: str
    row: str
    sparsity: float
    accs: tuple[float, ...]
    n_expected: int

    @property
    def enough(self) -> bool:
        return len(self.accs) >= MIN_SEEDS

    @property
    def mean(self) -> float:
        return float(np.mean(self.accs)) if self.accs else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.accs, ddof=1)) if len(self.accs) > 1 else math.nan

    @property
    def text(self) -> str:
        """'EAST 87.00 ± 0.50 (3)' in percent."""
        numbers = pm_text(100 * self.mean, 100 * self.std, len(self.accs), self.n_expected)
        return f"{self.name} {numbers}"

    @property
    def cells(self) -> str:
        return (f"{self.name} [{self.row}] {sparsity_label(self.sparsity)}: "
                f"{len(self.accs)} of {self.n_expected} seeds")


@dataclass(frozen=True)
class Check:
    text: str
    verdict: str


@dataclass(frozen=True)
class Claim:
    key: str
    statement: str
    rule: str
    cells: str
    checks: tuple[Check, ...]
    verdict: str
    parts: tuple[tuple[str, str], ...] = ()  # (metric key, verdict) of sub-claims


@dataclass(frozen=True)
class ClaimTable:
    arch: str
    dataset: str
    key: str
    claims: tuple[Claim, ...]
    rules: str = RULES_TEXT

    @property
    def metric_name(self) -> str:
        """The file stem of its ``dvc metrics`` file."""
        return f"claims-{slug(self.arch, self.dataset)}"

    @property
    def verdicts(self) -> dict[str, str]:
        out = {c.key: c.verdict for c in self.claims}
        for claim in self.claims:
            out.update(claim.parts)
        return {key: out[key] for key in METRIC_KEYS}


def combine(verdicts: Iterable[str]) -> str:
    verdicts = list(verdicts)
    if FAILS in verdicts:
        return FAILS
    return SHORT if not verdicts or SHORT in verdicts else HOLDS


# ---- groups and checks ----

def _matching(cells: pd.DataFrame, method: str, tricks: tuple[bool, ...]) -> pd.DataFrame:
    mask = cells["method"] == method
    for trick, on in zip(TRICKS, tricks, strict=True):
        mask &= cells[trick].astype(bool) == on
    return cells[mask]


def find_group(cells: pd.DataFrame, method: str, sparsity: float,
               tricks: tuple[bool, ...] | None = None, grid: str | None = None) -> Group | None:
    """The first matching row (grid order; ``grid``'s rows first) at ``sparsity``."""
    tricks = preset_tricks(method) if tricks is None else tricks
    match = _matching(cells, method, tricks)
    match = match[np.isclose(match["sparsity"].astype(float), sparsity, rtol=0, atol=1e-9)]
    if match.empty:
        return None
    rows = list(dict.fromkeys(match["row"]))
    if grid is not None and "grid" in match.columns:
        own = list(dict.fromkeys(match.loc[match["grid"] == grid, "row"]))
        rows = own + [r for r in rows if r not in own]
    lines = match[match["row"] == rows[0]]
    done = lines[lines["status"] == "done"]
    label = str(lines["row_label"].iloc[0]) if "row_label" in lines else rows[0]
    return Group(label, rows[0], sparsity, tuple(done["test_acc"].astype(float)), len(lines))


def _short(name: str, group: Group | None, sparsity: float) -> Check | None:
    """The 'not enough cells' check for a missing or short group, else None."""
    if group is None:
        return Check(f"no {name} cells at {sparsity_label(sparsity)}", SHORT)
    if not group.enough:
        return Check(f"{group.text} at {sparsity_label(sparsity)}: {MIN_SEEDS} seeds needed",
                     SHORT)
    return None


def beats(a: Group | None, b: Group | None, names: tuple[str, str], sparsity: float) -> Check:
    lacking = _short(names[0], a, sparsity) or _short(names[1], b, sparsity)
    if lacking:
        return lacking
    test = welch(a.accs, b.accs)
    numbers = ", ".join(f"{k} = {v:.{d}f}" if math.isfinite(v) else f"{k} undefined"
                        for k, v, d in (("t", test.t, 2), ("df", test.df, 2)))
    verdict = HOLDS if test.p < ALPHA else FAILS
    return Check(f"{a.name} > {b.name} at {sparsity_label(sparsity)}: {a.text} vs {b.text}; "
                 f"{numbers}, p = {test.p:.3g}", verdict)


def at_chance(group: Group | None, name: str, sparsity: float, chance: float, *,
              expect: bool) -> Check:
    """``expect`` True: the group falls to chance; False: it stays above chance."""
    lacking = _short(name, group, sparsity)
    if lacking:
        return lacking
    falls = abs(group.mean - chance) <= CHANCE_MARGIN
    word = "at chance" if expect else "above chance"
    return Check(f"{group.text} {word} ({100 * chance:.2f}) at {sparsity_label(sparsity)}",
                 HOLDS if falls == expect else FAILS)


def no_worse(a: Group | None, ref: Group | None, names: tuple[str, str],
             sparsity: float) -> Check:
    lacking = _short(names[0], a, sparsity) or _short(names[1], ref, sparsity)
    if lacking:
        return lacking
    floor = ref.mean - ref.std
    return Check(f"{a.name} ≥ {ref.name} − std at {sparsity_label(sparsity)}: {a.text} vs "
                 f"{ref.text} (floor {100 * floor:.2f})", HOLDS if a.mean >= floor else FAILS)


def _cells_text(groups: Iterable[Group | None]) -> str:
    unique = {(g.row, g.sparsity): g for g in groups if g is not None}  # a shared reference once
    return "; ".join(g.cells for g in unique.values()) or "none"


# ---- the six claims ----

def _chance_of(dataset: str) -> float:
    try:
        return 1.0 / dataset_info(dataset).num_classes
    except EastError:
        return math.nan


def claim1(cells: pd.DataFrame, dataset: str) -> Claim:
    s, chance = CHANCE_LEVEL, _chance_of(dataset)
    groups = {m: find_group(cells, m, s) for m in ("east", *BASELINES)}
    checks = [at_chance(groups[m], NAMES[m], s, chance, expect=True) for m in BASELINES]
    checks.append(at_chance(groups["east"], "EAST", s, chance, expect=False))
    return Claim("claim1", f"At {sparsity_label(s)} RigL, SET and SynFlow fall to chance; "
                 "EAST stays well above.", "chance (each baseline); not chance (EAST)",
                 _cells_text(groups.values()), tuple(checks), combine(c.verdict for c in checks))


def claim2(cells: pd.DataFrame) -> Claim:
    checks, used = [], []
    for s in ORDER_LEVELS:
        g = {m: find_group(cells, m, s) for m in ("east", *BASELINES)}
        used.extend(g.values())
        checks.append(no_worse(g["east"], g["rigl"], ("EAST", "RigL"), s))
        checks.append(beats(g["rigl"], g["set"], ("RigL", "SET"), s))
        checks.append(beats(g["set"], g["synflow"], ("SET", "SynFlow"), s))
    levels = " and ".join(sparsity_label(s) for s in ORDER_LEVELS)
    return Claim("claim2", f"At {levels} EAST ≥ RigL > SET > SynFlow.",
                 "EAST ≥ RigL: does not hurt; RigL > SET, SET > SynFlow: Welch",
                 _cells_text(used), tuple(checks), combine(c.verdict for c in checks))


def claim3(cells: pd.DataFrame) -> Claim:
    s = SAFE_LEVEL
    east, rigl = find_group(cells, "east", s), find_group(cells, "rigl", s)
    check = no_worse(east, rigl, ("EAST", "RigL"), s)
    return Claim("claim3", f"At {sparsity_label(s)} EAST does not hurt (against RigL).",
                 "does not hurt", _cells_text((east, rigl)), (check,), check.verdict)


def _east_cells(cells: pd.DataFrame) -> pd.DataFrame:
    return cells[(cells["method"] == "east") & (cells["status"] == "done")]


def _where(cell: Any) -> str:
    return f"[{cell.row}] {sparsity_label(cell.sparsity)} seed {cell.seed}"


def _every_cell(key: str, statement: str, rule: str, cells: pd.DataFrame,
                judge: Any) -> Claim:
    """A claim on every done EAST cell; ``judge(cell)`` → (verdict, text when not holds)."""
    east = _east_cells(cells)
    judged = [(cell, *judge(cell)) for cell in east.itertuples(index=False)]
    verdict = combine(v for _, v, _ in judged)
    bad = [f"{_where(c)}: {text}" for c, v, text in judged if v != HOLDS]
    summary = f"{sum(v == HOLDS for _, v, _ in judged)} of {len(judged)} done EAST cells"
    checks = (Check("; ".join([summary, *bad[:5]]) + ("; …" if len(bad) > 5 else ""),
                    verdict),)
    rows = ", ".join(dict.fromkeys(east["row"])) or "none"
    return Claim(key, statement, rule, f"{len(east)} done EAST cells (rows {rows})", checks,
                 verdict)


def _budget(cell: Any) -> tuple[str, str]:
    if not (math.isfinite(cell.nnz_masked) and math.isfinite(cell.n_masked)):
        return SHORT, "nnz not recorded"
    unique = cell.n_masked_unique if math.isfinite(cell.n_masked_unique) else cell.n_masked
    budget = target_total(float(cell.sparsity), int(cell.n_masked), int(unique))
    if int(cell.nnz_masked) == budget:
        return HOLDS, ""
    return FAILS, f"{int(cell.nnz_masked):,} non-zero, budget {budget:,}"


def _relu_only(cell: Any) -> tuple[str, str]:
    if not math.isfinite(cell.final_beta):
        return SHORT, "final β not recorded"
    return (HOLDS, "") if cell.final_beta == 0 else (FAILS, f"final β {cell.final_beta:g}")


def claim4(cells: pd.DataFrame) -> Claim:
    return _every_cell("claim4", "Non-zero unique masked weights = (1−s)·N_full exactly, "
                       "despite sharing.", "every done EAST cell's nnz equals its budget "
                       "round_half_up((1−s)·N_full), capped at N_unique", cells, _budget)


def claim5(cells: pd.DataFrame) -> Claim:
    return _every_cell("claim5", "The final network is ReLU-only (β = 0).",
                       "every done EAST cell's final model has β = 0", cells, _relu_only)


def _trick_verdict(cells: pd.DataFrame, trick: str) -> tuple[Check, list[Group | None]]:
    """+trick beats RigL at some level: holds at one level → holds; else a level lacking
    cells (or no variant at all) → not enough cells; else does not hold."""
    tricks = tuple(t == trick for t in TRICKS)
    variant = _matching(cells, "rigl", tricks)
    grid = str(variant["grid"].iloc[0]) if len(variant) and "grid" in variant else None
    results, used = [], []
    for s in sorted(set(variant["sparsity"].astype(float))):
        plus = find_group(cells, "rigl", s, tricks, grid)
        if plus is not None:  # the variant's name says which trick, whatever its label
            plus = Group(f"RigL+{trick}", plus.row, s, plus.accs, plus.n_expected)
        rigl = find_group(cells, "rigl", s, (False,) * len(TRICKS), grid)
        used.extend((plus, rigl))
        results.append(beats(plus, rigl, (f"RigL+{trick}", "RigL"), s))
    verdicts = [c.verdict for c in results]
    verdict = HOLDS if HOLDS in verdicts else (SHORT if not verdicts or SHORT in verdicts
                                               else FAILS)
    texts = [f"{c.text} ({c.verdict})" for c in results] or [f"no RigL+{trick} cells"]
    return Check(f"{trick}: " + "; ".join(texts), verdict), used


def claim6(cells: pd.DataFrame) -> Claim:
    judged = {trick: _trick_verdict(cells, trick) for trick in TRICKS}
    checks = tuple(check for check, _ in judged.values())
    used = [g for _, groups in judged.values() for g in groups]
    parts = tuple((f"claim6_{trick}", check.verdict) for trick, (check, _) in judged.items())
    return Claim("claim6", "Each trick helps on its own (RigL + one of DyReLU, sharing, "
                 "cyclic).", "Welch: RigL + trick > RigL at some level (per trick)",
                 _cells_text(used), checks, combine(c.verdict for c in checks), parts)


def judge_table(cells: pd.DataFrame, arch: str, dataset: str) -> ClaimTable:
    """The six claims on the cells of one (arch, dataset) (a frame like ``collect``'s results)."""
    claims = (claim1(cells, dataset), claim2(cells), claim3(cells), claim4(cells),
              claim5(cells), claim6(cells))
    return ClaimTable(arch, dataset, f"{slug(arch, dataset)}-claims", claims)


def judge_claims(cells: pd.DataFrame) -> list[ClaimTable]:
    """One claims table per (arch, dataset) with EAST cells, in first-appearance order."""
    tables = []
    for (arch, dataset), part in cells.groupby(["arch", "dataset"], sort=False):
        if (part["method"] == "east").any():  # the claims are EAST's: nothing to judge
            tables.append(judge_table(part, str(arch), str(dataset)))
    return tables


def claims_metrics(tables: Iterable[ClaimTable]) -> dict[str, dict[str, str]]:
    """``{"<arch>/<dataset>": {"claim1": "holds", ...}}`` (keys: ``METRIC_KEYS``)."""
    return {f"{t.arch}/{t.dataset}": t.verdicts for t in tables}


def render_claims(table: ClaimTable, fmt: str) -> str:
    """``fmt`` is ``md``, ``tex`` or ``html``."""
    return render(f"claims.{fmt}.j2", claims=table)
