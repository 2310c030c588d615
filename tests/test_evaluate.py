"""FLOPs and effective sparsity (east.flops) against hand counts and a brute-force path
reference; `east evaluate` end to end on a tiny trained cell."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from east.flops import analyze


class TinyResNet(nn.Module):
    """conv-BN-ReLU, a residual block with a 1x1 stride-2 shortcut, pool, bias-free fc.

    ``plain=True`` runs the path reference: no BatchNorm, no ReLU (SynFlow's linearised net).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(6)
        self.shortcut = nn.Conv2d(4, 6, 1, stride=2, bias=False)
        self.bn_s = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3, bias=False)
        self.plain = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def bn(m: nn.Module, t: torch.Tensor) -> torch.Tensor:
            return t if self.plain else m(t)

        def act(t: torch.Tensor) -> torch.Tensor:
            return t if self.plain else F.relu(t)

        h = act(bn(self.bn1, self.conv1(x)))
        a = act(bn(self.bn2, self.conv2(h)))
        a = bn(self.bn3, self.conv3(a))
        out = act(a + bn(self.bn_s, self.shortcut(h)))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


MASKED = ["conv1.weight", "conv2.weight", "conv3.weight", "shortcut.weight", "fc.weight"]


def _sparsify(model: nn.Module, density: float, generator: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in MASKED:
                keep = torch.rand(p.shape, generator=generator) < density
                p.mul_(keep)


def _path_reference(model: TinyResNet, input_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Brute force: |w|, no BN, no ReLU, float64; a weight lies on an input->output path
    iff it is non-zero and d(sum of logits)/dw != 0 on an all-ones input."""
    ref = TinyResNet().double()
    ref.load_state_dict(model.state_dict())
    ref.plain = True
    with torch.no_grad():
        for p in ref.parameters():
            p.abs_()
    ref(torch.ones((1, *input_shape), dtype=torch.float64)).sum().backward()
    params = dict(ref.named_parameters())
    return {n: (params[n] != 0) & (params[n].grad != 0) for n in MASKED}


def test_flops_match_hand_count() -> None:
    model = TinyResNet()
    with torch.no_grad():
        model.conv1.weight.zero_()
        model.conv1.weight[0, 0, 1, 1] = 1.0  # 1 nnz
        model.conv1.weight[3, 1] = 1.0  # + 9 nnz -> 10
        model.conv2.weight[:, :2] = 0.0  # 6*4*9 = 216 -> 108 nnz
        model.shortcut.weight[0, 0] = 0.0  # 24 -> 23 nnz
        model.fc.weight[2] = 0.0  # 18 -> 12 nnz
    stats = {layer.name: layer for layer in analyze(model, (2, 8, 8)).layers}
    # conv1: 8x8 output; conv2, conv3, shortcut: 4x4; fc: one position.
    assert stats["conv1.weight"].flops == 2 * 10 * 64 == 1280
    assert stats["conv2.weight"].flops == 2 * 108 * 16 == 3456
    assert stats["conv3.weight"].flops == 2 * 324 * 16 == 10368
    assert stats["shortcut.weight"].flops == 2 * 23 * 16 == 736
    assert stats["fc.weight"].flops == 2 * 12 == 24
    assert stats["conv1.weight"].flops_dense == 2 * 72 * 64
    assert sum(s.flops_dense for s in stats.values()) == 2 * (72 * 64 + 216 * 16 + 324 * 16
                                                              + 24 * 16 + 18)
    assert [stats[n].nnz for n in MASKED] == [10, 108, 324, 23, 12]


def test_effective_weights_equal_path_reference() -> None:
    generator = torch.Generator().manual_seed(0)
    shape = (2, 8, 8)
    fewer = collapsed = 0
    for trial in range(40):
        torch.manual_seed(trial)
        model = TinyResNet()
        _sparsify(model, density=0.05 + 0.3 * (trial % 5) / 4, generator=generator)
        analysis = analyze(model, shape)
        reference = _path_reference(model, shape)
        for name in MASKED:
            assert torch.equal(analysis.effective_masks[name], reference[name]), (trial, name)
        by_name = {layer.name: layer for layer in analysis.layers}
        assert analysis.effective_nnz == sum(int(reference[n].sum()) for n in MASKED)
        assert all(by_name[n].effective_nnz <= by_name[n].nnz for n in MASKED)
        fewer += analysis.effective_nnz < analysis.nnz_masked
        collapsed += bool(analysis.collapsed_layers)
        assert analysis.collapsed_layers == [
            n for n in MASKED if int(reference[n].sum()) == 0
        ]
    # The sample must exercise the interesting cases, not only fully connected nets.
    assert fewer >= 10
    assert collapsed >= 3


def test_dense_net_is_fully_effective_and_counts_parameters() -> None:
    model = TinyResNet()
    analysis = analyze(model, (2, 8, 8))
    assert analysis.effective_nnz == analysis.nnz_masked == 72 + 216 + 324 + 24 + 18
    assert analysis.collapsed_layers == []
    bn = 2 * (4 + 6 + 6 + 6)
    assert analysis.n_params == 72 + 216 + 324 + 24 + 18 + bn
    # The analysis works on a copy: the model is unchanged.
    assert not model.plain and model.training


# ----------------------------------------------------------------------------- end to end

CONTRACT_KEYS = {
    "cell_id", "arch", "dataset", "method", "sparsity", "seed", "test_acc", "test_acc_best_val",
    "best_val_acc", "n_masked", "nnz_masked", "n_params", "nnz_params", "density_masked",
    "density_all", "flops_inference", "flops_inference_dense", "flops_train", "effective_nnz",
    "effective_sparsity", "collapsed_layers", "layers", "wall_time_s",
}
# resnet20 on 8x8 digits (1x1 conv shortcuts), multiply-accumulates per layer group:
# stem 1*16*9*64, stage 1 6*16*16*9*64, stage 2 16*32*9*16 + 5*32*32*9*16 + 16*32*16,
# stage 3 32*64*9*4 + 5*64*64*9*4 + 32*64*4, fc 64*10.
RESNET20_DIGITS_MACS = (9216 + 884736 + 73728 + 737280 + 8192 + 73728 + 737280 + 8192 + 640)


def test_evaluate_a_trained_cell(tmp_path, one_thread, capsys) -> None:
    from train_helpers import make_cell, write_cell

    from east import cli
    from east.data import build_loaders
    from east.models import build_model
    from east.sparsity.masks import register_masks

    cell = make_cell(method="static", sparsity=0.99, epochs=2)
    out = tmp_path / "run"
    write_cell(out, cell)
    assert cli.main(["train", str(out / "cell.json"), "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(out)]) == 0
    assert "test acc" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= CONTRACT_KEYS

    # Test accuracy, recomputed independently from model.pt.
    model = build_model("resnet20", num_classes=10, in_channels=1)
    register_masks(model, model.masked_parameters())
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True)["state_dict"])
    model.eval()
    test = build_loaders(cell.data, batch_size=64, eval_batch_size=100, seed=0).test
    correct = total = 0
    with torch.no_grad():
        for x, y in test:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    assert total == 359 and metrics["test_acc"] == correct / total

    n_full = 270608
    nnz = round(0.01 * n_full)
    assert metrics["n_masked"] == n_full and metrics["nnz_masked"] == nnz
    assert metrics["density_masked"] == nnz / n_full
    assert metrics["flops_inference_dense"] == 2 * RESNET20_DIGITS_MACS
    layers = metrics["layers"]
    assert len(layers) == 22 and sum(layer["nnz"] for layer in layers) == nnz
    assert metrics["flops_inference"] == sum(layer["flops"] for layer in layers)
    assert metrics["flops_inference"] < metrics["flops_inference_dense"] / 20
    # Static masks: constant density, so training FLOPs = 3 x inference x examples seen.
    assert metrics["flops_train"] == 3 * metrics["flops_inference"] * 2 * 1294
    assert metrics["flops_train_parts"] == {"sparse_steps": metrics["flops_train"],
                                            "dense_gradient_steps": 0, "scoring": 0,
                                            "dyrelu": 0}
    assert metrics["flops_train_vs_dense"] == pytest.approx(
        metrics["flops_inference"] / metrics["flops_inference_dense"])
    assert metrics["effective_nnz"] <= nnz
    assert metrics["effective_sparsity"] == pytest.approx(1 - metrics["effective_nnz"] / n_full)
    assert metrics["collapsed_layers"] == [
        layer["name"] for layer in layers if layer["effective_nnz"] == 0]
    bn = 2 * (16 + 6 * 16 + 6 * 32 + 32 + 6 * 64 + 64)  # BN scale+shift: stem, blocks, shortcuts
    assert metrics["n_params"] == n_full + bn
    summary = json.loads((out / "summary.json").read_text())
    assert metrics["best_val_acc"] == summary["best_val_acc"]


def test_export_resnet18_to_torchvision(tmp_path, one_thread) -> None:
    from train_helpers import make_cell, write_cell

    from east.errors import EastError
    from east.models import build_model
    from east.models.export import torchvision_twin
    from east.sparsity.methods import build_sparsifier
    from east.train.export import export_run

    cell = make_cell(method="static", sparsity=0.9, arch="resnet18", epochs=1)
    run = tmp_path / "run"
    write_cell(run, cell)
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, in_channels=1)
    build_sparsifier(model, cell.sparsity, steps_per_epoch=21, total_steps=21,
                     seed=0).initialize(model)
    with torch.no_grad():  # non-trivial BN statistics
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    from east.rundir import save_model_file

    save_model_file(run / "model.pt", model.state_dict(), {"beta": 0.0, "step": 21})
    (run / "summary.json").write_text(json.dumps({"steps": 21}))
    path = export_run(run, tmp_path / "tv.pt").path
    twin = torchvision_twin("resnet18", 10, 1, "cifar")
    twin.load_state_dict(torch.load(path, weights_only=True))
    model.eval()
    twin.eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(twin(x), model(x), atol=1e-5)

    # Sharing (R = 2) shares nothing in ResNet-18 and the model exports (tests/test_export.py
    # covers shared models); resnet20 has no torchvision counterpart.
    write_cell(run, make_cell(method="static", sparsity=0.9, epochs=1))
    with pytest.raises(EastError, match="no torchvision counterpart"):
        export_run(run, tmp_path / "x.pt")


def test_sharing_and_dyrelu_models_cost_what_the_plain_relu_model_costs() -> None:
    """Shared blocks still compute (same dense FLOPs as the unshared net, N_full unchanged),
    and DyReLU hyper-functions are gone at beta = 0 (same parameter count as ReLU)."""
    from east.models import build_model

    shape = (1, 8, 8)
    plain = analyze(build_model("resnet20", num_classes=10, in_channels=1), shape)
    shared_model = build_model("resnet20", num_classes=10, in_channels=1, sharing_ratio=2)
    shared = analyze(shared_model, shape)
    dyrelu = analyze(build_model("resnet20", num_classes=10, in_channels=1,
                                 activation="dyrelu"), shape)
    assert plain.flops_dense == shared.flops_dense == dyrelu.flops_dense
    assert plain.flops_dense == 2 * RESNET20_DIGITS_MACS
    assert shared.n_masked_full == plain.n_masked_full == 270608
    assert shared.n_masked < plain.n_masked  # unique tensors
    assert any(len(layer.shared_users) > 1 for layer in shared.layers)
    assert shared.effective_nnz == shared.nnz_masked == shared.n_masked  # dense: all on paths
    assert dyrelu.n_params == plain.n_params
    # FLOPs of a shared tensor: one conv per user.
    layer = next(la for la in shared.layers if len(la.shared_users) > 1)
    same = next(la for la in plain.layers if la.name == layer.name)
    assert layer.flops_dense == len(layer.shared_users) * same.flops_dense
