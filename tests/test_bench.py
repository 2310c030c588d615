"""`east bench`: the interleaved timing engine, the statistics, the schedule arithmetic the
cases rely on, the report, and one quick end-to-end run (no timing assertions)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from east.bench.planning import parse_job_count
from east.bench.report import markdown_table, render_markdown, slowest, text_table
from east.bench.results import MET, NO_TARGET, NOT_MET, CaseResult, Target, format_value
from east.bench.timing import Arm, interleave, quantile, spread, time_units
from east.cli import main
from east.errors import EastError

QUICK_KINDS = {"planning", "masked_step", "dyrelu_step", "east_step", "rigl_update",
               "east_update", "input_pipeline", "loader_vs_indexing", "peak_memory",
               "sparse_inference", "sparse_kernel", "dyrelu_memory"}



# ----------------------------------------------------------------------------- timing


class FakeClock:
    """A clock that only moves when a unit of work says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_interleave_runs_abba_after_warmup_and_pairs_ratios_by_repeat() -> None:
    clock = FakeClock()
    log: list[str] = []
    costs = {"a": [1.0, 2.0, 4.0], "b": [3.0, 3.0, 2.0]}  # seconds per repeat
    calls = {"a": 0, "b": 0}

    def unit(name: str, warm: int):
        def run() -> None:
            log.append(name)
            calls[name] += 1
            if calls[name] > warm:  # warm-up units cost nothing on the fake clock
                repeat = (calls[name] - warm - 1) // 2  # two inner units per repeat
                clock.now += costs[name][repeat]
        return run

    paired = interleave(Arm("a", unit("a", 1)), Arm("b", unit("b", 1)), repeats=3, inner=2,
                        warmup=1, clock=clock)
    # one warm-up each, then A A B B | B B A A | A A B B
    assert log == ["a", "b", "a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]
    assert paired.order == ["a", "b", "b", "a", "a", "b"]
    assert paired.baseline == [1.0, 2.0, 4.0]
    assert paired.variant == [3.0, 3.0, 2.0]
    assert paired.ratios == [3.0, 1.5, 0.5]
    assert paired.ratio_spread().median == 1.5


def test_time_units_excludes_prepare_and_syncs_around_each_unit() -> None:
    clock = FakeClock()
    events: list[str] = []

    def prepare() -> None:
        events.append("prepare")
        clock.now += 100.0  # untimed work

    def run() -> None:
        events.append("run")
        clock.now += 0.5

    seconds = time_units(Arm("x", run, prepare), 3, sync=lambda: events.append("sync"),
                         clock=clock)
    assert seconds == 0.5
    assert events == ["prepare", "sync", "run", "sync"] * 3


def test_interleave_rejects_bad_arguments() -> None:
    def noop() -> None:
        return None

    with pytest.raises(ValueError, match="distinct"):
        interleave(Arm("x", noop), Arm("x", noop), repeats=1)
    with pytest.raises(ValueError, match="repeats"):
        interleave(Arm("x", noop), Arm("y", noop), repeats=0)


@pytest.mark.parametrize("values", [[3.0], [5.0, 1.0], [1.0, 9.0, 2.0, 7.0, 4.0],
                                    [0.9, 1.1, 1.0, 1.3, 0.95, 1.02, 1.07, 0.99]])
def test_spread_matches_numpy_percentiles(values: list[float]) -> None:
    s = spread(values)
    assert s.median == pytest.approx(np.percentile(values, 50))
    assert s.q1 == pytest.approx(np.percentile(values, 25))
    assert s.q3 == pytest.approx(np.percentile(values, 75))
    assert (s.lo, s.hi, s.n) == (min(values), max(values), len(values))
    assert quantile(sorted(values), 0.0) == min(values)


# ----------------------------------------------------------------------------- results


def _case(value: float, target: Target | None, q1: float, q3: float,
          unit: str = "x", kind: str = "masked_step") -> CaseResult:
    return CaseResult(f"{kind}/m", kind, "t", "m", unit, value,
                      spread([q1, value, q3]) if q1 <= value <= q3 else spread([value]),
                      target)


def test_status_margin_and_straddling() -> None:
    upper = Target("<=", 1.03)
    assert _case(1.01, upper, 1.00, 1.02).status == MET
    assert not _case(1.01, upper, 1.00, 1.02).straddles
    assert _case(1.05, upper, 1.04, 1.06).status == NOT_MET
    assert _case(1.02, upper, 1.00, 1.05).straddles
    assert _case(1.06, upper, 1.06, 1.06).margin == pytest.approx(-0.03 / 1.03)
    lower = Target(">=", 0.95)
    assert _case(0.99, lower, 0.98, 0.99, unit="fraction").status == MET
    assert _case(0.90, lower, 0.90, 0.90, unit="fraction").margin == pytest.approx(-0.05 / 0.95)
    assert _case(2.0, None, 2.0, 2.0).status == NO_TARGET
    assert _case(2.0, None, 2.0, 2.0).margin is None


def test_format_and_tables() -> None:
    assert format_value(1.0234, "x") == "1.023x"
    assert format_value(0.42, "%") == "0.42 %"
    assert format_value(float("nan"), "x") == "n/a"
    cases = [_case(1.01, Target("<=", 1.03), 1.0, 1.02),
             _case(1.20, Target("<=", 1.05), 1.1, 1.3, kind="east_step"),
             _case(2.3, None, 2.2, 2.4, kind="dyrelu_step")]
    table = markdown_table(cases)
    assert table.count("\n") == 2 + len(cases) - 1
    for case in cases:
        assert f"| {case.id} |" in table
    assert "| not met |" in table and "| met |" in table and "report only" in table
    assert slowest(cases) is cases[1]  # furthest past its target
    lines = text_table(cases).splitlines()
    assert len(lines) == 2 + len(cases)
    report = {"command": "east bench", "mode": "full", "date": "d", "wall_s": 1.0,
              "machine": {"cpu": "c", "usable_cores": 2, "torch": "t", "torch_threads": 2,
                          "device": "cpu", "load_average_start": [1.0, 1.0, 1.0],
                          "load_average_end": [2.0, 2.0, 2.0], "commit": "abc",
                          "dirty": True}}
    md = render_markdown(report, cases)
    assert "abc (with uncommitted changes)" in md
    assert "**east_step/m**" in md
    assert md.count("### ") == len(cases)


def test_parse_job_count() -> None:
    output = ("Job stats:\njob           count\n----------  -------\ntrain           208\n"
              "evaluate        208\nall               1\ntotal           421\n\nReasons:\n")
    assert parse_job_count(output) == 421
    assert parse_job_count("Building DAG of jobs...\nNothing to be done (all requested "
                           "files are present and up to date).") == 0
    with pytest.raises(ValueError):
        parse_job_count("something else")


# ----------------------------------------------------------------------------- schedules


def test_paper_run_length_and_update_counts() -> None:
    from east.bench.cases import EAST, RIGL, _east_update_counts
    from east.bench.workload import (
        build_step_setup,
        due_iterations,
        paper_run_length,
        phase_out_step,
        quiet_step,
        resolve_bench_device,
        update_step,
    )

    steps_per_epoch, total = paper_run_length()
    assert (steps_per_epoch, total) == (352, 88_000)  # ceil(45,000 / 128) x 250
    dev = resolve_bench_device("cpu")
    rigl = build_step_setup("rigl", "resnet20", RIGL, dev, batch_size=2, image_size=8)
    sp = rigl.sparsifier
    # RigL: every 4000 iterations strictly inside (0, 88,000): the drop fraction decays
    # over the whole run, as in the authors' trainer.
    assert due_iterations(sp, total) == {"drop_grow": len(range(4000, 88_000, 4000))}
    assert update_step(sp, "drop_grow") == 3999
    assert quiet_step(sp) == 0 and quiet_step(sp, 3999) == 4000
    assert rigl.step == 0
    # EAST: cyclic every 100 iterations through two cycles of 20 % (17,600 iterations
    # each), then RigL's updates between 35,200 and the end.
    assert _east_update_counts(total) == {
        "cyclic": 2 * 17_600 // 100,
        "drop_grow": len(range(36_000, 88_000, 4000)),
    }
    east = build_step_setup("east", "resnet20", EAST, dev, batch_size=2, image_size=8,
                            when="phase_out")
    # β falls to 0 at 50 % - 1 epoch = 44,000 - 352 iterations.
    assert east.step == phase_out_step(east.sparsifier) >= 43_648
    assert east.sparsifier.beta(east.step) == 0.0 and east.sparsifier.beta(43_647) > 0.0
    assert not any(rule.due(east.step + 1) for rule in east.sparsifier.rules)
    with pytest.raises(ValueError, match="no 'cyclic' rule"):
        update_step(sp, "cyclic")


def test_update_bench_restores_state_and_times_real_updates() -> None:
    from east.bench.cases import RIGL, RIGL_CYCLIC, Reps, UpdateBench, _steepest_cyclic_update
    from east.bench.workload import resolve_bench_device, update_step

    dev = resolve_bench_device("cpu")
    bench = UpdateBench("resnet20", RIGL, dev)
    before = [m.clone() for m in bench.sparsifier.masks.values()]
    budgets = dict(bench.sparsifier.budgets)
    at = update_step(bench.sparsifier, "drop_grow")
    result = bench.compare(at, Reps(2, 1, 0), dev)
    # Each timed update moved weights (drop k, grow k) from the same starting masks.
    assert len(result["moved"]) == 2 and len(set(result["moved"])) == 1
    assert result["moved"][0] > 0
    assert result["last"]["drop_grow.dropped"] == result["last"]["drop_grow.grown"]
    bench.restore()
    after = list(bench.sparsifier.masks.values())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert bench.sparsifier.budgets == budgets
    assert all(torch.equal(p.grad, g) for p, g in zip(bench.params, bench.grads, strict=True))

    cyclic = UpdateBench("resnet20", RIGL_CYCLIC, dev)
    prev, at = _steepest_cyclic_update(cyclic.sparsifier)
    rule = next(r for r in cyclic.sparsifier.rules if r.name == "cyclic")
    assert rule.due(prev + 1) and rule.due(at + 1) and at - prev == 100


# ----------------------------------------------------------------------------- DyReLU


def test_dyrelu_thread_counts_are_one_two_and_all_cores() -> None:
    from east.bench.cases import dyrelu_thread_counts

    assert dyrelu_thread_counts(1) == (1,)
    assert dyrelu_thread_counts(2) == (1, 2)
    assert dyrelu_thread_counts(16) == (1, 2, 16)


def test_dyrelu_memory_floor_counts_every_activation_input_and_fc() -> None:
    from east.bench.dyrelu import dyrelu_memory_floor

    # resnet20 (widths 16/32/64, 3 blocks a stage, 2 activations a block) at 8x8: the stem
    # and stage 1 at 8x8, stage 2 at 4x4, stage 3 at 2x2; fp32, 3 images.
    per_image = 16 * 64 + 6 * 16 * 64 + 6 * 32 * 16 + 6 * 64 * 4
    # FC1 C -> C/4 and FC2 C/4 -> 4C with biases, per module: C^2/4 + C/4 + C^2 + 4C.
    fc = sum(n * (c * c // 4 + c // 4 + c * c + 4 * c) for n, c in ((7, 16), (6, 32), (6, 64)))
    assert dyrelu_memory_floor("resnet20", 3, 8) == {"saved_input_bytes": 3 * 4 * per_image,
                                                     "fc_state_bytes": 3 * 4 * fc}


# ----------------------------------------------------------------------------- memory


def test_peak_rss_counts_new_memory_only() -> None:
    from east.bench.memory import PeakRSS

    peak = PeakRSS()
    if not peak.exact:
        pytest.skip("no /proc/self/clear_refs here")
    block = bytearray(64 * 1024 * 1024)
    block[:: 4096] = b"\1" * len(block[:: 4096])  # touch every page
    growth = peak.growth()
    del block
    assert 60 * 1024 * 1024 <= growth < 200 * 1024 * 1024


# ----------------------------------------------------------------------------- CLI


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine_is_a_one_line_error(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from east.bench.workload import resolve_bench_device

    with pytest.raises(EastError, match="no CUDA device"):
        resolve_bench_device("cuda")
    assert main(["bench", "--quick", "--device", "cuda", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("east: error: --device cuda:") and "\n" not in err
    assert not list(tmp_path.iterdir())


def test_quick_bench_writes_every_case(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(2)  # quick mode sets 1 and must put this back
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 0
    # The run leaves the process's torch settings as it found them.
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic

    data = json.loads((tmp_path / "benchmarks.json").read_text())
    assert data["mode"] == "quick" and data["schema"] == 1
    cases = data["cases"]
    assert {c["kind"] for c in cases} == QUICK_KINDS
    assert len({c["id"] for c in cases}) == len(cases)
    for c in cases:
        assert math.isfinite(c["value"]) and c["value"] > 0, c["id"]
        if c["spread"] is not None:
            s = c["spread"]
            assert all(math.isfinite(s[k]) for k in ("median", "q1", "q3", "min", "max"))
            assert s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"]
            assert s["median"] == pytest.approx(c["value"])
        expected = NO_TARGET if c["target"] is None else (
            MET if Target(c["target"]["op"], c["target"]["bound"]).holds(c["value"])
            else NOT_MET)
        assert c["status"] == expected
    by_kind = {c["kind"]: c for c in cases}
    assert by_kind["masked_step"]["target"] == {"op": "<=", "bound": 1.03}
    assert by_kind["east_step"]["target"] == {"op": "<=", "bound": 1.05}
    assert by_kind["rigl_update"]["target"] == {"op": "<=", "bound": 1.0}
    assert by_kind["input_pipeline"]["target"] == {"op": ">=", "bound": 0.95}
    # DyReLU: timed at the quick plan's one thread, memory against the ReLU run.
    dyrelu = [c for c in cases if c["kind"] == "dyrelu_step"]
    assert [c["id"] for c in dyrelu] == ["dyrelu_step/resnet20/1t"]
    assert dyrelu[0]["target"] == {"op": "<=", "bound": 1.3}
    assert dyrelu[0]["details"]["threads"] == 1
    assert by_kind["dyrelu_memory"]["target"] == {"op": "<=", "bound": 1.2}
    assert by_kind["dyrelu_memory"]["details"]["dyrelu_saved_input_mib"] > 0
    assert by_kind["rigl_update"]["details"]["updates_in_run"] == {"drop_grow": 21}
    assert by_kind["planning"]["details"]["jobs"] > 0
    assert by_kind["peak_memory"]["details"]["sparse_mask_updates"] == 1
    machine = data["machine"]
    assert machine["torch"] == torch.__version__ and machine["device"] == "cpu"
    assert machine["cores"] == os.cpu_count()

    md = (tmp_path / "benchmarks.md").read_text()
    out = capsys.readouterr().out
    for c in cases:
        assert f"| {c['id']} |" in md
        assert c["id"] in out
    assert "east bench --quick --device cpu" in md
