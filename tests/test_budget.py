"""Exact budgets: ERK / uniform allocation, the sharing adjustment, and ``east budget``."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest

from east.errors import EastError
from east.sparsity.budget import allocate, numel, target_total

# Masked-tensor shapes of the CIFAR ResNets, written out independently of east.models.
STAGES = {"resnet34": ("basic", (3, 4, 6, 3)), "resnet50": ("bottleneck", (3, 4, 6, 3))}
WIDTHS = (64, 128, 256, 512)


def cifar_resnet_shapes(
    arch: str, num_classes: int, in_channels: int = 3, sharing_ratio: int | None = None
) -> tuple[dict[str, tuple[int, ...]], int, int]:
    """(unique masked shapes by parameter name, N_full, N_s) of a CIFAR-stem ResNet.

    With sharing ratio R, block i >= R of a stage owns no conv weights (they are block
    R-1's); shortcut convs are never shared.
    """
    kind, blocks = STAGES[arch]
    expansion = 1 if kind == "basic" else 4
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, in_channels, 3, 3)}
    n_full = 64 * in_channels * 9
    n_shared = 0
    c_in = 64
    for s, (width, count) in enumerate(zip(WIDTHS, blocks, strict=True)):
        c_out = width * expansion
        for b in range(count):
            stride = 2 if (s > 0 and b == 0) else 1
            if kind == "basic":
                convs = {"conv1": (width, c_in, 3, 3), "conv2": (width, width, 3, 3)}
            else:
                convs = {"conv1": (width, c_in, 1, 1), "conv2": (width, width, 3, 3),
                         "conv3": (c_out, width, 1, 1)}
            prefix = f"layer{s + 1}.{b}"
            shared = sharing_ratio is not None and b >= sharing_ratio
            for name, shape in convs.items():
                size = numel(shape)
                n_full += size
                if shared:
                    n_shared += size
                else:
                    shapes[f"{prefix}.{name}.weight"] = shape
            if stride != 1 or c_in != c_out:
                shapes[f"{prefix}.downsample.0.weight"] = (c_out, c_in, 1, 1)
                n_full += c_out * c_in
            c_in = c_out
    shapes["fc.weight"] = (num_classes, c_in)
    n_full += num_classes * c_in
    return shapes, n_full, n_shared


SPARSITIES = (0.999, 0.9995, 0.9999)
CASES = [(a, k) for a in ("resnet34", "resnet50") for k in (10, 100)]
# The spec's table: non-zero unique masked weights at 99.9 / 99.95 / 99.99 %.
SPEC_NNZ = {
    ("resnet34", 10): (21_265, 10_633, 2_127),
    ("resnet34", 100): (21_311, 10_656, 2_131),
    ("resnet50", 10): (23_468, 11_734, 2_347),
    ("resnet50", 100): (23_652, 11_826, 2_365),
}
SPEC_COUNTS = {  # N_full, N_u, N_s
    ("resnet34", 10): (21_265_088, 11_164_352, 10_100_736),
    ("resnet34", 100): (21_311_168, 11_210_432, 10_100_736),
    ("resnet50", 10): (23_467_712, 13_928_128, 9_539_584),
    ("resnet50", 100): (23_652_032, 14_112_448, 9_539_584),
}


def reference_erk(shapes: dict[str, tuple[int, ...]], total: int) -> dict[str, int]:
    """ERK as in RigL's reference code, in exact rational arithmetic: repeatedly make the
    layer with the largest raw density dense until no layer exceeds density 1; then largest
    remainder with ties by layer order. (No per-layer minimum: callers check it is slack.)"""
    dense: set[str] = set()
    while True:
        free = [n for n in shapes if n not in dense]
        rest = total - sum(numel(shapes[n]) for n in dense)
        eps = Fraction(rest, sum(sum(shapes[n]) for n in free))
        raw = {n: Fraction(sum(shapes[n]), numel(shapes[n])) for n in free}
        top = max(raw.values())
        if eps * top <= 1:
            break
        dense |= {n for n in free if raw[n] == top}
    real = {n: Fraction(numel(s)) if n in dense else eps * sum(s) for n, s in shapes.items()}
    counts = {n: math.floor(v) for n, v in real.items()}
    left = total - sum(counts.values())
    order = sorted(shapes, key=lambda n: (-(real[n] - counts[n]), list(shapes).index(n)))
    for n in order[:left]:
        counts[n] += 1
    return counts


@pytest.mark.parametrize(("arch", "classes"), CASES)
def test_spec_counts_and_nnz(arch: str, classes: int) -> None:
    shapes, n_full, n_shared = cifar_resnet_shapes(arch, classes, sharing_ratio=2)
    n_unique = sum(numel(s) for s in shapes.values())
    assert (n_full, n_unique, n_shared) == SPEC_COUNTS[(arch, classes)]
    for s, expected in zip(SPARSITIES, SPEC_NNZ[(arch, classes)], strict=True):
        total = target_total(s, n_full, n_unique)
        assert total == expected
        budgets = allocate(shapes, total, "erk")
        assert sum(budgets.values()) == expected  # non-zero unique weights = spec
        assert all(1 <= budgets[n] <= numel(shapes[n]) for n in shapes)


@pytest.mark.parametrize(("arch", "classes"), CASES)
@pytest.mark.parametrize("sharing", [None, 2])
@pytest.mark.parametrize("sparsity", [*SPARSITIES, 0.9, 0.5, 0.2])
def test_erk_matches_independent_reference(
    arch: str, classes: int, sharing: int | None, sparsity: float
) -> None:
    shapes, n_full, _ = cifar_resnet_shapes(arch, classes, sharing_ratio=sharing)
    n_unique = sum(numel(s) for s in shapes.values())
    total = target_total(sparsity, n_full, n_unique)
    expected = reference_erk(shapes, total)
    assert min(expected.values()) >= 1  # the per-layer minimum is slack here
    got = allocate(shapes, total, "erk")
    assert got == expected
    assert sum(got.values()) == total


def test_low_sparsity_makes_small_layers_dense() -> None:
    shapes, n_full, _ = cifar_resnet_shapes("resnet34", 10)
    budgets = allocate(shapes, target_total(0.2, n_full, n_full), "erk")
    assert budgets["conv1.weight"] == numel(shapes["conv1.weight"])  # ERK density > 1 → dense
    assert budgets["fc.weight"] == numel(shapes["fc.weight"])
    assert budgets["layer4.2.conv2.weight"] < numel(shapes["layer4.2.conv2.weight"])


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_uniform_is_exact_and_proportional(sparsity: float) -> None:
    shapes, n_full, _ = cifar_resnet_shapes("resnet50", 100)
    total = target_total(sparsity, n_full, n_full)
    budgets = allocate(shapes, total, "uniform")
    assert sum(budgets.values()) == total
    # Layers held at the one-weight floor aside, all share one density up to rounding.
    floor = {n for n, shape in shapes.items() if Fraction(total, n_full) * numel(shape) < 1}
    assert all(budgets[n] == 1 for n in floor)
    free = [n for n in shapes if n not in floor]
    density = Fraction(total - len(floor), sum(numel(shapes[n]) for n in free))
    assert all(abs(budgets[n] - density * numel(shapes[n])) < 1 for n in free)


def test_per_layer_minimum_then_resolve() -> None:
    # ERK real counts: 12·(5/112) ≈ 0.54 for the tiny layer → clamped to 1; the other two
    # share the remaining 4 in proportion 50:50 → 2 each.
    shapes = {"a": (2, 2, 2, 2, 2, 2), "b": (48, 2), "c": (2, 48)}
    assert allocate(shapes, 5, "erk") == {"a": 1, "b": 2, "c": 2}
    # One weight per layer is the floor: fewer than one per layer is an error.
    with pytest.raises(EastError, match="sparsity"):
        allocate(shapes, 2, "erk")
    assert allocate(shapes, 3, "erk") == {"a": 1, "b": 1, "c": 1}


def test_largest_remainder_tie_and_dense_cap() -> None:
    shapes = {"x": (3, 1), "y": (3, 1), "z": (1, 1)}
    # Uniform density 4/7 would give z 4/7 < 1: z keeps 1, x and y share 3 → 1.5 each;
    # floors 1 + 1 + 1, the remaining weight goes to the tied largest fraction, x first.
    assert allocate(shapes, 4, "uniform") == {"x": 2, "y": 1, "z": 1}
    assert allocate(shapes, 7, "uniform") == {"x": 3, "y": 3, "z": 1}


def test_target_total_reads_the_decimal() -> None:
    # (1 - 0.9995) · 21,265,088 = 10,632.544 → 10,633; halves round up.
    assert target_total(0.9995, 21_265_088, 11_164_352) == 10_633
    assert target_total(0.5, 3, 3) == 2
    assert target_total(0.0, 100, 60) == 60  # capped at the unique weights
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(EastError, match="sparsity"):
            target_total(bad, 100, 100)


# --------------------------------------------------------------------------- on east.models


def _model(arch: str, classes: int, sharing: int | None, activation: str = "relu"):
    import torch

    from east.models import build_model

    with torch.device("meta"):
        return build_model(arch, num_classes=classes, in_channels=3, stem="cifar",
                           activation=activation, sharing_ratio=sharing)


@pytest.mark.parametrize(("arch", "classes"), CASES)
def test_models_agree_with_reference_shapes(arch: str, classes: int) -> None:
    model = _model(arch, classes, 2)
    shapes, _, _ = cifar_resnet_shapes(arch, classes, sharing_ratio=2)
    masked = model.masked_parameters()
    assert sorted(tuple(p.shape) for p in masked.values()) == sorted(shapes.values())
    wc = model.weight_counts()
    assert (wc.n_full, wc.n_unique, wc.n_shared) == SPEC_COUNTS[(arch, classes)]


@pytest.mark.parametrize(("arch", "classes"), CASES)
def test_budget_table_on_models(arch: str, classes: int) -> None:
    from east.sparsity.budget import budget_table
    from east.sparsity.presets import resolve_sparsity

    model = _model(arch, classes, 2, activation="dyrelu")
    for s, expected in zip(SPARSITIES, SPEC_NNZ[(arch, classes)], strict=True):
        cfg = resolve_sparsity({"method": "east", "sparsity": s}, "test")
        table = budget_table(model, cfg, arch=arch, dataset=f"cifar{classes}")
        masked = [r for r in table.rows if r.kind == "masked"]
        assert table.nnz_masked == expected == sum(r.nnz for r in masked)
        assert (table.n_full, table.n_unique, table.n_shared) == SPEC_COUNTS[(arch, classes)]
        assert all(r.nnz >= 1 for r in masked)
        # Every parameter is reported once: masked unique + dense = all parameters.
        n_params = sum(p.numel() for p in model.parameters())
        assert table.n_params == n_params
        assert table.nnz_params == expected + n_params - table.n_unique
        # Shared tensors name the blocks that reuse them.
        assert any(r.shared_with for r in masked)


def test_cmd_budget_json_and_text(capsys: pytest.CaptureFixture[str]) -> None:
    from east.cli import main

    assert main(["budget", "--arch", "resnet34", "--dataset", "cifar10", "--sparsity", "0.9999",
                 "--method", "east", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["nnz_masked"] == 2_127
    assert out["n_full"] == 21_265_088 and out["n_unique"] == 11_164_352
    assert sum(r["nnz"] for r in out["rows"] if r["kind"] == "masked") == 2_127
    assert out["density_masked_full"] == pytest.approx(2_127 / 21_265_088)
    assert main(["budget", "--arch", "resnet50", "--dataset", "cifar100", "--sparsity", "0.999",
                 "--method", "rigl", "--distribution", "uniform"]) == 0
    text = capsys.readouterr().out
    assert "23,652" in text and "allocation uniform" in text


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--method", "nope", "--sparsity", "0.9"], "method"),
        (["--method", "rigl", "--sparsity", "1.0"], "sparsity"),
        (["--method", "snip", "--sparsity", "0.9", "--distribution", "uniform"], "distribution"),
    ],
)
def test_cmd_budget_bad_input(argv: list[str], field: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    from east.cli import main

    assert main(["budget", "--arch", "resnet34", "--dataset", "cifar10", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("east: error:") and field in err and "\n" not in err
