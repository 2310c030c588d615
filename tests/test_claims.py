"""east.report.claims: the paper's six claims judged from synthetic finished cells.

Each rule comes out each way (holds / does not hold / not enough cells) on frames built
here directly (no training); Welch's t, df and p are checked against numbers worked out by
hand below; one end-to-end report reads tricks and final β from real run-directory files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from east.report import build_report
from east.report.claims import (
    FAILS,
    HOLDS,
    METRIC_KEYS,
    SHORT,
    claims_metrics,
    judge_claims,
    judge_table,
    render_claims,
    welch,
)
from east.sparsity.budget import target_total

N_MASKED = 100_000
OFFSETS = (-0.01, 0.0, 0.01)  # three seeds, sample std 0.01
# Mean test accuracy per method and level: every claim holds (cifar10: chance 0.10).
PAPER = {
    "east": {0.99: 0.90, 0.999: 0.85, 0.9995: 0.80, 0.9999: 0.50},
    "rigl": {0.99: 0.905, 0.999: 0.80, 0.9995: 0.70, 0.9999: 0.10},
    "set": {0.99: 0.89, 0.999: 0.70, 0.9995: 0.60, 0.9999: 0.105},
    "synflow": {0.99: 0.88, 0.999: 0.60, 0.9995: 0.50, 0.9999: 0.095},
}
ABLATION = {"dyrelu": 0.83, "sharing": 0.82, "cyclic": 0.82}  # at 99.9 %, RigL at 0.80


def rows(row: str, method: str, sparsity: float, mean: float, *, seeds: int = 3,
         tricks: tuple[str, ...] = (), grid: str = "paper", **fields: object) -> list[dict]:
    """Done cells of one row at one level, accuracies mean + OFFSETS (first ``seeds``)."""
    east = method == "east"
    out = []
    for seed, offset in enumerate(OFFSETS[:seeds]):
        out.append({
            "arch": "resnet34", "dataset": "cifar10", "row": row, "row_label": row.upper(),
            "grid": grid, "method": method, "sparsity": sparsity, "seed": seed,
            "status": "done", "test_acc": mean + offset, "n_masked": N_MASKED,
            "nnz_masked": target_total(sparsity, N_MASKED, N_MASKED), "n_masked_unique":
            N_MASKED // 2 if east else N_MASKED, "final_beta": 0.0 if east else math.nan,
            "dyrelu": east or "dyrelu" in tricks, "sharing": east or "sharing" in tricks,
            "cyclic": east or "cyclic" in tricks, "run_dir": f"runs/{row}-{sparsity}/seed{seed}",
            **fields,
        })
    return out


def paper(**means: dict[float, float]) -> list[dict]:
    """The paper grid (PAPER with ``means`` overriding a method's levels) + the ablation."""
    records = []
    for method, levels in PAPER.items():
        for sparsity, mean in {**levels, **means.get(method, {})}.items():
            records += rows(method, method, sparsity, mean)
    records += rows("ablation-rigl", "rigl", 0.999, 0.80, grid="ablation")
    for trick, mean in ABLATION.items():
        records += rows(f"rigl-{trick}", "rigl", 0.999, mean, tricks=(trick,), grid="ablation")
    return records


def verdicts(records: list[dict]) -> dict[str, str]:
    return judge_table(pd.DataFrame(records), "resnet34", "cifar10").verdicts


def without(records: list[dict], method: str, sparsity: float, keep: int = 0) -> list[dict]:
    """Drop all but ``keep`` seeds of one method's paper row at one level."""
    out, kept = [], 0
    for r in records:
        if r["row"] == method and r["grid"] == "paper" and r["sparsity"] == sparsity:
            kept += 1
            if kept > keep:
                continue
        out.append(r)
    return out


# ---- Welch ----

def test_welch_equal_spread_matches_the_closed_form_for_four_df() -> None:
    # a = 1, 2, 3; b = 0, 1, 2: means 2 and 1, variances 1 and 1, n = 3 each.
    # t = 1 / sqrt(1/3 + 1/3) = 1.2247449; df = (2/3)^2 / (2 * (1/3)^2 / 2) = 4.
    # For 4 df, P(T > t) = 1/2 - (3/8) u (1 - t^2 / (12 (1 + t^2/4))), u = t / sqrt(1 + t^2/4).
    test = welch([1, 2, 3], [0, 1, 2])
    t = 1.2247449
    u = t / math.sqrt(1 + t * t / 4)
    assert test.t == pytest.approx(t, abs=1e-7)
    assert test.df == pytest.approx(4.0, abs=1e-12)
    assert test.p == pytest.approx(0.5 - 3 / 8 * u * (1 - t * t / (12 * (1 + t * t / 4))),
                                   abs=1e-7)
    assert test.p == pytest.approx(0.1439321, abs=1e-7)


def test_welch_unequal_spread_by_hand() -> None:
    # a = .80, .82, .84: mean .82, var .0004; b = .70, .75, .80: mean .75, var .0025.
    # se^2 = .0004/3 + .0025/3 = .00096667; t = .07 / .03109126 = 2.2514;
    # df = .00096667^2 / ((.00013333^2 + .00083333^2) / 2) = 9.3444e-7 / 3.5611e-7 = 2.6240.
    test = welch([0.80, 0.82, 0.84], [0.70, 0.75, 0.80])
    assert test.t == pytest.approx(2.2514, abs=1e-4)
    assert test.df == pytest.approx(2.6240, abs=1e-4)
    assert 0.05 < test.p < 0.1  # between the one-sided 2-df and 3-df values at this t


def test_welch_without_spread_is_decided_by_the_sign() -> None:
    up, down, same = (welch([0.5] * 3, [0.4] * 3), welch([0.4] * 3, [0.5] * 3),
                      welch([0.4] * 3, [0.4] * 3))
    assert (up.p, down.p, same.p) == (0.0, 1.0, 1.0)
    assert math.isnan(up.t) and math.isnan(up.df)


# ---- the claims, each way ----

def test_every_claim_holds_on_the_paper_numbers() -> None:
    assert verdicts(paper()) == dict.fromkeys(METRIC_KEYS, HOLDS)


def test_claim1_chance() -> None:
    assert verdicts(paper(rigl={0.9999: 0.30}))["claim1"] == FAILS  # RigL above chance
    assert verdicts(paper(east={0.9999: 0.11}))["claim1"] == FAILS  # EAST at chance
    assert verdicts(without(paper(), "east", 0.9999, keep=2))["claim1"] == SHORT
    assert verdicts(without(paper(), "synflow", 0.9999))["claim1"] == SHORT


def test_claim2_order() -> None:
    assert verdicts(paper(set={0.9995: 0.695}))["claim2"] == FAILS  # RigL 0.70 vs SET 0.695
    assert verdicts(paper(east={0.999: 0.78}))["claim2"] == FAILS  # EAST below RigL − std
    assert verdicts(without(paper(), "synflow", 0.9995, keep=2))["claim2"] == SHORT
    # A failing check outweighs a lacking one.
    short_and_wrong = without(paper(set={0.999: 0.79}), "synflow", 0.9995)
    assert verdicts(short_and_wrong)["claim2"] == FAILS


def test_claim3_does_not_hurt() -> None:
    # RigL at 99 %: 0.905 ± 0.01, so EAST's floor is 0.895.
    assert verdicts(paper(east={0.99: 0.895}))["claim3"] == HOLDS
    assert verdicts(paper(east={0.99: 0.894}))["claim3"] == FAILS
    assert verdicts(without(paper(), "rigl", 0.99))["claim3"] == SHORT


def test_claim4_exact_budget() -> None:
    records = paper()
    records[0] = {**records[0], "nnz_masked": records[0]["nnz_masked"] + 1}
    assert verdicts(records)["claim4"] == FAILS
    records[0] = {**records[0], "nnz_masked": math.nan}
    assert verdicts(records)["claim4"] == SHORT
    # The budget is over the unshared network (N_full), not the unique weights.
    assert paper()[0]["nnz_masked"] == 1_000 and paper()[0]["n_masked_unique"] == 50_000


def test_claim5_relu_only() -> None:
    records = paper()
    records[1] = {**records[1], "final_beta": 0.5}
    assert verdicts(records)["claim5"] == FAILS
    records[1] = {**records[1], "final_beta": math.nan}
    assert verdicts(records)["claim5"] == SHORT


def test_no_east_cells_lack_cells_and_no_table_without_east() -> None:
    records = [r for r in paper() if r["method"] != "east"]
    assert judge_claims(pd.DataFrame(records)) == []
    table = judge_table(pd.DataFrame(records), "resnet34", "cifar10")
    assert table.verdicts["claim4"] == table.verdicts["claim5"] == SHORT


def test_claim6_each_trick_on_its_own() -> None:
    records = paper()
    weak = [{**r, "test_acc": r["test_acc"] - 0.015} if r["row"] == "rigl-cyclic" else r
            for r in records]  # RigL+cyclic 0.805 vs RigL 0.80: p > 0.05
    found = verdicts(weak)
    assert (found["claim6_dyrelu"], found["claim6_cyclic"], found["claim6"]) == (
        HOLDS, FAILS, FAILS)
    short = [r for r in records if not (r["row"] == "rigl-sharing" and r["seed"] == 2)]
    found = verdicts(short)
    assert (found["claim6_sharing"], found["claim6"]) == (SHORT, SHORT)
    # Rows are told apart by method and tricks, not labels: relabelled, nothing changes.
    relabelled = [{**r, "row_label": "RigL"} for r in records]
    assert verdicts(relabelled) == dict.fromkeys(METRIC_KEYS, HOLDS)
    # Without ablation rows there is nothing to judge.
    plain = [r for r in records if not r["row"].startswith("rigl-")]
    assert verdicts(plain)["claim6"] == SHORT


def test_claim6_holds_at_some_level() -> None:
    records = paper()
    # A second level where +dyrelu loses does not undo the win at 99.9 %.
    records += rows("ablation-rigl", "rigl", 0.9995, 0.70, grid="ablation")
    records += rows("rigl-dyrelu", "rigl", 0.9995, 0.60, tricks=("dyrelu",), grid="ablation")
    assert verdicts(records)["claim6_dyrelu"] == HOLDS


# ---- rendering and metrics ----

def test_markdown_latex_html_and_metrics() -> None:
    (table,) = judge_claims(pd.DataFrame(paper(rigl={0.9999: 0.30})))
    markdown = render_claims(table, "md")
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + 6  # header and one line per claim
    assert lines[1].startswith("| 1 |") and lines[1].endswith(f"| **{FAILS}** |")
    assert all(line.endswith(f"| **{HOLDS}** |") for line in lines[2:])
    assert "Welch" in markdown and "alpha = 0.05" in markdown
    assert "RIGL 30.00 ± 1.00 (3) at chance (10.00) at 99.99% → does not hold" in markdown
    tex = render_claims(table, "tex")
    assert tex.count(r"\\") == 1 + 6 and r"\textbf{does not hold}" in tex
    assert '<td class="verdict does-not-hold">' in render_claims(table, "html")
    assert claims_metrics([table]) == {
        "resnet34/cifar10": {**dict.fromkeys(METRIC_KEYS, HOLDS), "claim1": FAILS}}


def _write_cell(run_dir: Path, record: dict) -> None:
    run_dir.mkdir(parents=True)
    metrics = {k: record[k] for k in ("arch", "dataset", "method", "sparsity", "seed",
                                      "test_acc", "n_masked", "nnz_masked", "n_masked_unique")}
    metrics["final_beta"] = None if math.isnan(record["final_beta"]) else record["final_beta"]
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "summary.json").write_text("{}")


def test_report_reads_tricks_and_beta_from_the_run_directories(tmp_path: Path) -> None:
    expected = []
    for record in paper():
        run_dir = tmp_path / "runs" / record["grid"] / record["run_dir"]
        ablation = record["row"].startswith("rigl-")
        _write_cell(run_dir, record)
        # Only the ablation rows carry their tricks (as the grid's frame does); the other
        # rows fall back to their presets. β and unique weights come from metrics.json.
        tricks = {t: record[t] for t in ("dyrelu", "sharing", "cyclic")} if ablation else {}
        expected.append({k: record[k] for k in ("row", "arch", "dataset", "method",
                                                "sparsity", "seed", "grid")}
                        | {"run_dir": str(run_dir), "row_label": "RigL" * ablation} | tricks)
    out = tmp_path / "reports"
    report = build_report(pd.DataFrame(expected), out, figures=False)
    everything = dict.fromkeys(METRIC_KEYS, HOLDS)
    assert claims_metrics(report.claims) == {"resnet34/cifar10": everything}
    assert json.loads((out / "claims.json").read_text()) == {"resnet34/cifar10": everything}
    assert json.loads((out / "metrics" / "claims-resnet34-cifar10.json").read_text()) == (
        everything)
    text = (out / "tables" / "resnet34-cifar10-claims.md").read_text()
    assert text in (out / "report.md").read_text()
    assert (out / "tables" / "resnet34-cifar10-claims.tex").is_file()
    assert 'id="table-resnet34-cifar10-claims"' in (out / "index.html").read_text()
