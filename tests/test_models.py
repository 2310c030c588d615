"""east.models: architectures, DyReLU-B, weight sharing, counts and torchvision export."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from east.models import ARCHS, SharedConv2d, WeightCounts, build_model
from east.models.export import torchvision_state_dict

# --- counts (the spec's table) -------------------------------------------------------------

SPEC_TABLE = [
    # arch, classes, N_full, N_u, N_s, d'/d
    ("resnet34", 10, 21_265_088, 11_164_352, 10_100_736, 1.9047),
    ("resnet34", 100, 21_311_168, 11_210_432, 10_100_736, 1.9010),
    ("resnet50", 10, 23_467_712, 13_928_128, 9_539_584, 1.6849),
    ("resnet50", 100, 23_652_032, 14_112_448, 9_539_584, 1.6760),
]


@pytest.mark.parametrize(("arch", "classes", "n_full", "n_u", "n_s", "factor"), SPEC_TABLE)
def test_counts_match_spec_table(arch, classes, n_full, n_u, n_s, factor):
    dense = build_model(arch, num_classes=classes, in_channels=3)
    assert dense.weight_counts() == WeightCounts(n_full, n_full, 0)
    assert sum(p.numel() for p in dense.masked_parameters().values()) == n_full

    shared = build_model(arch, num_classes=classes, in_channels=3, sharing_ratio=2)
    counts = shared.weight_counts()
    assert counts == WeightCounts(n_full=n_full, n_unique=n_u, n_shared=n_s)
    assert round(counts.density_factor, 4) == factor
    assert sum(p.numel() for p in shared.masked_parameters().values()) == n_u


def test_counts_of_digits_models():
    # cpu-notes: resnet20 and the CIFAR-style ResNet-18 on 1-channel digits.
    assert build_model("resnet20", num_classes=10, in_channels=1).weight_counts().n_full == 270_608
    r18 = build_model("resnet18", num_classes=10, in_channels=1)
    assert r18.weight_counts().n_full == 11_163_200


def test_masked_and_dense_parameters_partition_the_model():
    model = build_model("resnet18", num_classes=10, in_channels=3, activation="dyrelu")
    masked = model.masked_parameters()
    dense = model.dense_parameters()
    assert "conv1.weight" in masked and "fc.weight" in masked
    assert "layer2.0.downsample.0.weight" in masked
    assert all(p.dim() in (2, 4) for p in masked.values())
    assert not any(".act" in name for name in masked)  # DyReLU FCs are dense
    assert "layer1.0.act1.fc1.weight" in dense and "layer1.0.bn1.weight" in dense
    assert set(masked).isdisjoint(dense)
    assert set(masked) | set(dense) == {n for n, _ in model.named_parameters()}
    assert model.fc.bias is None


# --- shapes -------------------------------------------------------------------------------


def test_arch_registry():
    assert ARCHS == ("resnet18", "resnet34", "resnet50", "resnet20")


def test_resnet20_on_digits_shape():
    model = build_model("resnet20", num_classes=10, in_channels=1)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert model.stage_names == ("layer1", "layer2", "layer3")


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_cifar_stem_shapes(arch):
    model = build_model(arch, num_classes=100, in_channels=3).eval()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_dyrelu_shared_model_trains_a_step():
    model = build_model(
        "resnet20", num_classes=10, in_channels=1, activation="dyrelu", sharing_ratio=2
    )
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    loss = model(x).logsumexp(1).mean()
    loss.backward()
    assert model.layer1[1].conv1.weight.grad is not None
    assert model.layer1[2].conv1.scale.grad is not None
    assert model.layer1[0].act1.fc2.weight.grad is not None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"arch": "resnet99"},
        {"stem": "tiny"},
        {"activation": "gelu"},
        {"sharing_ratio": 1},
        {"sharing_ratio": True},
        {"num_classes": 0},
    ],
)
def test_build_model_rejects_bad_arguments(kwargs):
    args = {"arch": "resnet20", "num_classes": 10, "in_channels": 3} | kwargs
    arch = args.pop("arch")
    with pytest.raises(ValueError):
        build_model(arch, **args)


# --- weight sharing -------------------------------------------------------------------------


def test_shared_model_has_one_tensor_per_shared_conv():
    model = build_model("resnet34", num_classes=10, in_channels=3, sharing_ratio=2)
    stage3 = model.layer3  # six blocks: 0 and 1 own, 2..5 share block 1's convs
    for i in range(2, 6):
        for conv in ("conv1", "conv2"):
            user = getattr(stage3[i], conv)
            assert isinstance(user, SharedConv2d)
            assert user.owner.weight is getattr(stage3[1], conv).weight
            assert not hasattr(user, "weight")
        assert stage3[i].downsample is None
        assert stage3[i].bn1 is not stage3[1].bn1
    masked = model.masked_parameters()
    n_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert len(masked) == n_convs + 1
    assert len({p.data_ptr() for p in masked.values()}) == len(masked)
    all_ptrs = [p.data_ptr() for _, p in model.named_parameters(remove_duplicate=False)]
    assert len(all_ptrs) == len(set(all_ptrs))  # not even registered twice
    assert "layer3.2.conv1.weight" not in model.state_dict()
    assert "layer3.2.conv1.scale" in model.dense_parameters()
    users = model.shared_users()
    assert users["layer3.1.conv2.weight"] == [f"layer3.{i}.conv2" for i in range(1, 6)]
    assert users["layer3.0.conv1.weight"] == ["layer3.0.conv1"]
    assert set(users) == set(masked)


def test_deepcopy_keeps_sharing():
    model = build_model("resnet20", num_classes=10, in_channels=1, sharing_ratio=2)
    clone = copy.deepcopy(model)
    assert clone.layer2[2].conv1.owner is clone.layer2[1].conv1
    assert clone.layer2[2].conv1.owner is not model.layer2[1].conv1


def _unshared_twin(shared: nn.Module) -> nn.Module:
    """An unshared resnet20 whose user convs hold W_owner * scale_i; all else copied."""
    twin = build_model("resnet20", num_classes=10, in_channels=3).double()
    state = {k: v for k, v in shared.state_dict().items() if not k.endswith(".scale")}
    for name, module in shared.named_modules():
        if isinstance(module, SharedConv2d):
            state[f"{name}.weight"] = module.owner.weight.detach() * module.scale.detach()
    twin.load_state_dict(state, strict=True)
    return twin


@pytest.mark.parametrize("size", [8, 32])  # 8: output scaled; 32: weight scaled in layer1
def test_shared_gradient_is_sum_over_users(size):
    torch.manual_seed(3)
    shared = build_model("resnet20", num_classes=10, in_channels=3, sharing_ratio=2).double()
    twin = _unshared_twin(shared)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    out_shared, out_twin = shared(x), twin(x)
    torch.testing.assert_close(out_shared, out_twin)
    out_shared.square().sum().backward()
    out_twin.square().sum().backward()

    twin_params = dict(twin.named_parameters())
    for owner_key, user_names in shared.shared_users().items():
        expected = twin_params[owner_key].grad.clone()
        for user in user_names[1:]:
            scale = shared.get_submodule(user).scale
            user_grad = twin_params[f"{user}.weight"].grad
            expected += scale.detach() * user_grad
            # d loss / d scale = <W_owner, grad of the twin's user weight>
            owner_weight = shared.get_submodule(user).owner.weight.detach()
            torch.testing.assert_close(scale.grad, (owner_weight * user_grad).sum())
        torch.testing.assert_close(shared.masked_parameters()[owner_key].grad, expected)


def test_shared_conv_branches_agree():
    torch.manual_seed(4)
    owner = nn.Conv2d(4, 4, 3, padding=1, bias=False).double()
    shared = SharedConv2d(owner).double()
    for n, size in ((1, 2), (8, 16)):  # output smaller / larger than the weight
        x = torch.randn(n, 4, size, size, dtype=torch.float64)
        torch.testing.assert_close(shared(x), owner(x) * shared.scale)


# --- export -------------------------------------------------------------------------------


def _randomise_bn(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_export_loads_into_torchvision(arch):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(5)
    model = build_model(arch, num_classes=7, in_channels=3, stem="imagenet").eval()
    _randomise_bn(model)
    model.conv1.register_buffer("weight_mask", torch.ones_like(model.conv1.weight, dtype=bool))
    state = torchvision_state_dict(model)
    assert not any(k.endswith("weight_mask") for k in state)
    assert torch.equal(state["fc.bias"], torch.zeros(7))

    reference = getattr(torchvision.models, arch)(num_classes=7).eval()
    reference.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-6)


def test_export_refuses_what_torchvision_cannot_hold():
    # A shared model is materialised (tests/test_export.py): torchvision's keys, one weight
    # per conv.
    shared = build_model("resnet34", num_classes=10, in_channels=3, sharing_ratio=2)
    plain = build_model("resnet34", num_classes=10, in_channels=3)
    assert set(torchvision_state_dict(shared)) == set(
        torchvision_state_dict(plain))
    with pytest.raises(ValueError, match="torchvision"):
        torchvision_state_dict(build_model("resnet20", num_classes=10, in_channels=3))
    dy = build_model("resnet18", num_classes=10, in_channels=3, activation="dyrelu")
    with pytest.raises(ValueError, match="DyReLU"):
        torchvision_state_dict(dy)
    dy.set_beta(0.0)  # exactly ReLU now: exports, without the DyReLU modules
    relu = build_model("resnet18", num_classes=10, in_channels=3)
    assert set(torchvision_state_dict(dy)) == set(torchvision_state_dict(relu))


def test_cifar_stem_export_loads_into_patched_torchvision():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(6)
    model = build_model("resnet18", num_classes=10, in_channels=3).eval()
    _randomise_bn(model)
    reference = torchvision.models.resnet18(num_classes=10).eval()
    reference.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)  # the CIFAR stem
    reference.maxpool = nn.Identity()
    reference.load_state_dict(torchvision_state_dict(model), strict=True)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-6)


def test_resnet34_export_matches_torchvision_layout():
    torchvision = pytest.importorskip("torchvision")
    model = build_model("resnet34", num_classes=100, in_channels=3, stem="imagenet")
    state = torchvision_state_dict(model)
    reference = torchvision.models.resnet34(num_classes=100).state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in reference.items()}
