"""Schedules: drop fraction, GMP cubic, EAST cyclic density, DyReLU β; state round-trips."""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch

from east.sparsity.presets import resolve_sparsity
from east.sparsity.schedules import Beta, CubicDensity, CyclicDensity, DropFraction, Periodic
from east.sparsity.timing import resolve_timing

EPOCHS, SPE = 250, 40  # the paper's 250 epochs, 40 iterations per epoch
TOTAL = EPOCHS * SPE


def test_paper_durations_resolve() -> None:
    cfg = resolve_sparsity({"method": "east", "sparsity": 0.9999}, "t")
    t = resolve_timing(cfg, SPE, TOTAL)
    assert t.cycle_length == 50 * SPE  # two cycles of 50 epochs
    assert t.dyrelu_start == int(62.5 * SPE)  # E/4
    assert t.dyrelu_end == 124 * SPE  # E/2 - 1
    # The drop fraction decays over the whole run, as in the authors' trainer.
    assert t.update_interval == 4000 and t.update_end == TOTAL


def test_cyclic_density_start_mid_end() -> None:
    d = 2_127 / 11_164_352
    length = 50 * SPE
    cyc = CyclicDensity(target=d, max_factor=3.0, cycles=2, length=length, interval=100)
    for it in (0, length, 2 * length, 2 * length + 1, TOTAL):
        assert cyc.density(it) == d  # exactly d' at every cycle boundary and after
    assert cyc.density(length // 2) == pytest.approx(3 * d, rel=1e-12)
    assert cyc.density(length + length // 2) == pytest.approx(3 * d, rel=1e-12)
    quarter = cyc.density(length // 4)
    assert quarter == pytest.approx(2 * d, rel=1e-12)  # ½(1 − cos π/2) = ½
    assert all(d <= cyc.density(it) <= 3 * d * (1 + 1e-12) for it in range(0, 2 * length, 7))
    due = [it for it in range(1, TOTAL) if cyc.due(it)]
    assert due[0] == 100 and due[-1] == 2 * length and len(due) == 2 * length // 100


def test_cyclic_peak_capped_at_dense_and_end_always_due() -> None:
    cyc = CyclicDensity(target=0.5, max_factor=3.0, cycles=1, length=30, interval=7)
    assert cyc.peak == 1.0 and cyc.density(15) == pytest.approx(1.0)
    assert cyc.due(28) and cyc.due(30) and not cyc.due(31)  # 30 is no multiple of 7


def test_beta_phasing() -> None:
    cfg = resolve_sparsity({"method": "east", "sparsity": 0.999}, "t")
    t = resolve_timing(cfg, SPE, TOTAL)
    beta = Beta(True, t.dyrelu_start, t.dyrelu_end)
    assert all(beta(s) == 1.0 for s in range(0, int(62.5 * SPE) + 1))
    assert all(beta(s) == 0.0 for s in range(124 * SPE, TOTAL))
    mid = (t.dyrelu_start + t.dyrelu_end) // 2
    assert beta(mid) == pytest.approx(0.5, abs=1 / (t.dyrelu_end - t.dyrelu_start))
    values = [beta(s) for s in range(TOTAL)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert Beta(False, 10, 20)(0) == 0.0  # no DyReLU: plain ReLU throughout



def test_drop_fraction_cosine() -> None:
    f = DropFraction(0.5, end=1000)
    assert f(0) == 0.5 and f(500) == pytest.approx(0.25) and f(1000) == 0.0 and f(5000) == 0.0
    assert f(250) == pytest.approx(0.25 * (1 + math.cos(math.pi / 4)))
    assert DropFraction(0.3, end=10, shape="constant")(9) == 0.3


def test_gmp_cubic() -> None:
    s = CubicDensity(initial=1.0, final=0.001, start=100, end=1100, interval=100)
    assert s.density(0) == 1.0 and s.density(100) == 1.0 and s.density(1100) == 0.001
    # Zhu & Gupta: s_t = s_f + (s_i - s_f)(1 - progress)^3 in sparsity, here at progress 0.5.
    sparsity = 0.999 + (0.0 - 0.999) * (1 - 0.5) ** 3
    assert s.density(600) == pytest.approx(1 - sparsity)
    assert [it for it in range(1, 2000) if s.due(it)] == list(range(100, 1101, 100))
    odd = CubicDensity(initial=1.0, final=0.1, start=0, end=250, interval=100)
    assert [it for it in range(1, 400) if odd.due(it)] == [100, 200, 250]


def test_periodic() -> None:
    p = Periodic(100, start=200, end=1000)
    assert [it for it in range(1, 1200) if p.due(it)] == list(range(300, 1000, 100))


@pytest.mark.parametrize(
    ("made", "other", "probe"),
    [
        (Periodic(7, 3, 50), Periodic(1), lambda s: [s.due(i) for i in range(60)]),
        (DropFraction(0.4, 77, "cosine"), DropFraction(0.1, 5, "constant"),
         lambda s: [s(i) for i in range(90)]),
        (CubicDensity(0.8, 0.01, 5, 95, 10), CubicDensity(1.0, 0.5, 0, 1, 1),
         lambda s: [(s.density(i), s.due(i)) for i in range(100)]),
        (CyclicDensity(0.01, 3.0, 2, 40, 6), CyclicDensity(0.5, 2.0, 1, 1, 1),
         lambda s: [(s.density(i), s.due(i)) for i in range(100)]),
        (Beta(True, 10, 30), Beta(False, 0, 0), lambda s: [s(i) for i in range(40)]),
    ],
)
def test_state_dict_round_trip(made, other, probe) -> None:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    torch.save(made.state_dict(), buffer)
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert probe(other) == probe(made)
    assert other.state_dict() == made.state_dict()


def test_state_dict_kind_mismatch() -> None:
    with pytest.raises(ValueError, match="cyclic_density"):
        Beta(True, 1, 2).load_state_dict(CyclicDensity(0.1, 3.0, 1, 10, 1).state_dict())
