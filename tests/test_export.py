"""`east export` (issue 20): weight-shared EAST models materialise into plain torchvision
ResNets, with the same logits and both non-zero counts."""

from __future__ import annotations

import pytest
import torch
from export_helpers import SPARSITY, copy_run, randomise, trained_east_run
from torch import nn

from east.cli import main
from east.errors import EastError
from east.models import SharedConv2d, build_model
from east.models.export import (
    materialized_state_dict,
    nonzero_counts,
    plain_model,
    torchvision_state_dict,
    torchvision_twin,
)
from east.train.export import export_run


def _stored_nonzeros(state: dict[str, torch.Tensor]) -> int:
    """Non-zero conv and classifier weights of a state_dict (BN vectors excluded)."""
    return sum(int(torch.count_nonzero(v)) for k, v in state.items()
               if k.endswith(".weight") and v.dim() in (2, 4))


def test_shared_resnet34_materialises_into_torchvision() -> None:
    torch.manual_seed(0)
    model = build_model("resnet34", num_classes=10, in_channels=3, activation="dyrelu",
                        sharing_ratio=2)
    model.set_beta(0.0)
    randomise(model, keep=0.05, seed=1)
    model.eval()
    state = torchvision_state_dict(model)
    twin = torchvision_twin("resnet34", 10, 3, "cifar")
    twin.load_state_dict(state, strict=True)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(twin.eval()(x), want, rtol=1e-5, atol=1e-5)
    assert want.abs().max() > 0.1  # a real check, not two near-zero outputs
    # Every user of a shared tensor has its own copy, the sharing scalar folded in.
    shared = {n: m for n, m in model.named_modules() if isinstance(m, SharedConv2d)}
    assert len(shared) == 16  # blocks >= 2 of stages of 3, 4, 6, 3 blocks; two convs each
    for name, user in shared.items():
        assert torch.equal(state[f"{name}.weight"], user.scale.detach() * user.owner.weight)
    assert not any("weight_mask" in k or ".act" in k or k.endswith(".scale") for k in state)
    reference = torchvision_twin("resnet34", 10, 3, "cifar").state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in reference.items()}
    # Both counts: unique (one per shared tensor) and what the plain network stores.
    counts = nonzero_counts(model)
    unique = sum(int(torch.count_nonzero(p)) for p in model.masked_parameters().values())
    assert counts.unique == unique
    assert counts.materialized == _stored_nonzeros(state) > unique
    assert (counts.n_full, counts.n_unique) == (21_265_088, 11_164_352)  # the spec's table


def test_materialised_unshared_model_is_a_plain_copy() -> None:
    torch.manual_seed(3)
    # ResNet-18 stages hold two blocks: with R = 2 nothing is shared, and it must export.
    east = build_model("resnet18", num_classes=10, in_channels=1, activation="dyrelu",
                       sharing_ratio=2)
    east.set_beta(0.0)
    randomise(east, keep=0.1, seed=4)
    state = materialized_state_dict(east)
    plain = build_model("resnet18", num_classes=10, in_channels=1)
    assert list(state) == list(plain.state_dict())
    for key, value in state.items():
        assert torch.equal(value, east.state_dict()[key])
    counts = nonzero_counts(east)
    assert counts.unique == counts.materialized == _stored_nonzeros(state)


def test_zero_sharing_scalar_materialises_to_zeros_and_is_not_counted() -> None:
    torch.manual_seed(5)
    model = build_model("resnet20", num_classes=10, in_channels=1, sharing_ratio=2)
    users = [m for m in model.modules() if isinstance(m, SharedConv2d)]
    with torch.no_grad():
        users[0].scale.zero_()
    state = materialized_state_dict(model)
    name = next(n for n, m in model.named_modules() if m is users[0])
    assert torch.count_nonzero(state[f"{name}.weight"]) == 0
    assert nonzero_counts(model).materialized == _stored_nonzeros(state)
    plain = plain_model(model)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model.eval()(x), rtol=1e-5, atol=1e-6)


def test_active_dyrelu_is_refused_with_its_beta() -> None:
    model = build_model("resnet34", num_classes=10, in_channels=3, activation="dyrelu",
                        sharing_ratio=2)
    model.set_beta(0.25)
    with pytest.raises(ValueError, match=r"beta = 0\.25 in act and others"):
        torchvision_state_dict(model)
    with pytest.raises(ValueError, match=r"beta = 0\.25"):
        materialized_state_dict(model)


def test_trained_digits_cell_exports_with_the_same_test_logits(tmp_path, capsys) -> None:
    from east.data import build_test_loader
    from east.evaluate import load_trained_model
    from east.train.run import read_cell

    run = trained_east_run()
    cell = read_cell(run / "cell.json")
    out = tmp_path / "resnet34.pt"
    assert main(["export", str(run), "--out", str(out)]) == 0
    line = capsys.readouterr().out
    model, meta = load_trained_model(run, cell, "model.pt", torch.device("cpu"))
    assert meta["beta"] == 0.0
    counts = nonzero_counts(model)
    assert counts.unique == round((1 - SPARSITY) * counts.n_full)  # the exact budget
    assert f"{counts.unique:,} unique" in line and f"{counts.materialized:,} materialised" in line
    twin = torchvision_twin("resnet34", 10, 1, "cifar")
    state = torch.load(out, weights_only=True)
    twin.load_state_dict(state, strict=True)
    assert _stored_nonzeros(state) == counts.materialized > counts.unique
    twin.eval()
    images = 0
    for x, _ in build_test_loader(cell.data, eval_batch_size=128):
        with torch.no_grad():
            want = model(x)
            torch.testing.assert_close(twin(x), want, rtol=1e-4, atol=1e-5)
        images += x.shape[0]
    assert images == 359  # digits' whole test split


def test_export_refuses_a_model_file_at_beta_above_zero(tmp_path) -> None:
    from east.rundir import load_model_file, save_model_file

    run = copy_run(tmp_path)
    loaded = load_model_file(run / "model.pt")
    save_model_file(run / "model.pt", loaded.state_dict, {**loaded.meta, "beta": 0.5})
    with pytest.raises(EastError, match=r"model\.pt: DyReLU is still active \(beta = 0\.5\)"):
        export_run(run, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_export_errors_are_one_line(tmp_path, capsys) -> None:
    from train_helpers import make_cell, write_cell

    run = tmp_path / "r20"
    write_cell(run, make_cell(method="static", sparsity=0.9, epochs=1))
    assert main(["export", str(run), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no torchvision counterpart" in err and "--format sparse" in err
    assert len(err.splitlines()) == 1
    assert main(["export", str(trained_east_run())]) == 2
    assert "--out: required for --format torchvision" in capsys.readouterr().err


def test_cifar_stem_documentation_matches_twin() -> None:
    """The documented CIFAR stem (3x3 stride-1 conv1, no max-pool) is what the twin uses."""
    twin = torchvision_twin("resnet50", 100, 3, "cifar")
    assert isinstance(twin.maxpool, nn.Identity)
    assert (twin.conv1.kernel_size, twin.conv1.stride, twin.conv1.padding) == ((3, 3), (1, 1),
                                                                               (1, 1))
