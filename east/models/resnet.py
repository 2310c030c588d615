"""ResNets for EAST: torchvision module names, CIFAR or ImageNet stem, ReLU or DyReLU-B,
optional weight sharing within each stage.

Module names follow torchvision (conv1, bn1, layer1.0.conv1, ..., downsample.0/1, fc) so an
unshared ReLU model exports to ``torchvision.models.resnet*`` by copying its state_dict.
Activations are extra modules (``act`` in the stem; ``act1``, ``act2`` [, ``act3``] in blocks,
the last one after the residual sum); plain ReLUs hold no state, so they add no keys.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from east.archs import STAGE_BLOCKS
from east.config import CellConfig

from .dyrelu import DyReLUB
from .sharing import SharedConv2d, WeightCounts

__all__ = ["ARCHS", "ArchSpec", "BasicBlock", "Bottleneck", "EastResNet", "build_model",
           "model_for_cell"]

ActivationFactory = Callable[[int], nn.Module]
STEMS = ("cifar", "imagenet")
ACTIVATIONS = ("relu", "dyrelu")
CONV_INITS = ("pytorch", "kaiming_fan_out")


def _activation_factory(kind: str) -> ActivationFactory:
    if kind == "relu":
        return lambda channels: nn.ReLU(inplace=True)
    if kind == "dyrelu":
        return lambda channels: DyReLUB(channels, inplace=True)
    raise ValueError(f"unknown activation {kind!r}; expected one of {ACTIVATIONS}")


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)


def _conv_or_shared(
    in_ch: int, out_ch: int, kernel: int, stride: int, owner: nn.Conv2d | None
) -> nn.Module:
    """A fresh conv, or a ``SharedConv2d`` reusing ``owner`` (which must have the same shape)."""
    if owner is None:
        return _conv(in_ch, out_ch, kernel, stride)
    expected = (out_ch, in_ch, kernel, kernel)
    if tuple(owner.weight.shape) != expected or owner.stride != (stride, stride):
        raise ValueError(f"cannot share {tuple(owner.weight.shape)} as {expected}")
    return SharedConv2d(owner)


def _norm_act_eager(norm: nn.Module, act: nn.Module, h: Tensor,
                    residual: Tensor | None) -> Tensor:
    out = norm(h)
    if residual is not None:
        out += residual  # in place, as torchvision: BN's backward does not need its output
    return act(out)


@contextlib.contextmanager
def _statistics_frozen(norm: nn.Module) -> Iterator[None]:
    """BatchNorm's recomputation in backward normalises exactly as its forward did (batch
    statistics) but must not count the batch into the running statistics a second time:
    momentum 0 leaves them bit for bit (r·1 + s·0), the batch counter is put back."""
    momentum, tracked = norm.momentum, norm.num_batches_tracked.clone()
    norm.momentum = 0.0
    try:
        yield
    finally:
        norm.momentum = momentum
        norm.num_batches_tracked.copy_(tracked)


def _norm_act(norm: nn.Module, act: nn.Module, h: Tensor,
              residual: Tensor | None = None) -> Tensor:
    """``act(norm(h) [+ residual])``. For an active DyReLU-B in a training step the region is
    recomputed in backward (non-reentrant checkpoint) instead of keeping DyReLU-B's input:
    ReLU's backward needs only its output, which the next conv keeps anyway, but DyReLU-B's
    needs its input, one activation-sized tensor more per activation (the whole of its
    memory overhead, docs/benchmarks.md). Recomputed, the region keeps only ``h`` (which
    BatchNorm keeps anyway) and ``residual`` (the block input, which conv1 keeps), and the
    same ops on the same inputs give the same values: gradients are unchanged bit for bit,
    at the cost of a second BatchNorm and DyReLU-B forward."""
    if not (isinstance(act, DyReLUB) and act.beta > 0.0 and torch.is_grad_enabled()
            and h.requires_grad):
        return _norm_act_eager(norm, act, h, residual)
    return checkpoint(_norm_act_eager, norm, act, h, residual, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _statistics_frozen(norm)))


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Sequential | None:
    """1x1 conv + BN when the residual changes shape (torchvision's ``downsample``)."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(_conv(in_ch, out_ch, 1, stride), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int,
        act: ActivationFactory,
        owner: BasicBlock | None = None,
    ) -> None:
        super().__init__()
        own1 = owner.conv1 if owner is not None else None
        own2 = owner.conv2 if owner is not None else None
        self.conv1 = _conv_or_shared(in_ch, planes, 3, stride, own1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = act(planes)
        self.conv2 = _conv_or_shared(planes, planes, 3, 1, own2)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(in_ch, planes, stride)
        self.act2 = act(planes)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = _norm_act(self.bn1, self.act1, self.conv1(x))
        return _norm_act(self.bn2, self.act2, self.conv2(out), identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 conv."""

    expansion = 4

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int,
        act: ActivationFactory,
        owner: Bottleneck | None = None,
    ) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        own = (owner.conv1, owner.conv2, owner.conv3) if owner is not None else (None,) * 3
        self.conv1 = _conv_or_shared(in_ch, planes, 1, 1, own[0])
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = act(planes)
        self.conv2 = _conv_or_shared(planes, planes, 3, stride, own[1])
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = act(planes)
        self.conv3 = _conv_or_shared(planes, out_ch, 1, 1, own[2])
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.downsample = _shortcut(in_ch, out_ch, stride)
        self.act3 = act(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = _norm_act(self.bn1, self.act1, self.conv1(x))
        out = _norm_act(self.bn2, self.act2, self.conv2(out))
        return _norm_act(self.bn3, self.act3, self.conv3(out), identity)


Block = type[BasicBlock] | type[Bottleneck]


@dataclass(frozen=True)
class ArchSpec:
    """One registry entry: block type, blocks per stage, stage widths (planes)."""

    block: Block
    layers: tuple[int, ...]
    widths: tuple[int, ...]
    torchvision: bool  # has a torchvision.models counterpart to export to


REGISTRY: dict[str, ArchSpec] = {
    "resnet18": ArchSpec(BasicBlock, STAGE_BLOCKS["resnet18"], (64, 128, 256, 512), True),
    "resnet34": ArchSpec(BasicBlock, STAGE_BLOCKS["resnet34"], (64, 128, 256, 512), True),
    "resnet50": ArchSpec(Bottleneck, STAGE_BLOCKS["resnet50"], (64, 128, 256, 512), True),
    "resnet20": ArchSpec(BasicBlock, STAGE_BLOCKS["resnet20"], (16, 32, 64), False),
}
ARCHS: tuple[str, ...] = tuple(REGISTRY)


class EastResNet(nn.Module):
    """A ResNet with EAST's switches; build it with ``build_model``."""

    def __init__(
        self,
        arch: str,
        spec: ArchSpec,
        *,
        num_classes: int,
        in_channels: int,
        stem: str,
        activation: str,
        sharing_ratio: int | None,
        conv_init: str = "pytorch",
    ) -> None:
        super().__init__()
        self.arch = arch
        self.spec = spec
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.stem = stem
        self.activation = activation
        self.sharing_ratio = sharing_ratio
        act = _activation_factory(activation)
        width = spec.widths[0]
        if stem == "cifar":
            self.conv1 = _conv(in_channels, width, 3)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.act = act(width)
        in_ch = width
        self.stage_names: tuple[str, ...] = tuple(f"layer{i + 1}" for i in range(len(spec.layers)))
        for i, (n_blocks, planes) in enumerate(zip(spec.layers, spec.widths, strict=True)):
            stride = 1 if i == 0 else 2
            stage = self._make_stage(spec.block, in_ch, planes, n_blocks, stride, act)
            self.add_module(self.stage_names[i], stage)
            in_ch = planes * spec.block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes, bias=False)
        if conv_init == "kaiming_fan_out":
            self._init_kaiming_fan_out()
        # "pytorch": every module keeps the init its constructor drew (conv and linear:
        # kaiming-uniform with a = √5; BN: weight 1, bias 0), as in the authors' trainer.

    def _make_stage(
        self, block: Block, in_ch: int, planes: int, n: int, stride: int, act: ActivationFactory
    ) -> nn.Sequential:
        r = self.sharing_ratio
        blocks: list[nn.Module] = []
        for i in range(n):
            # Blocks 0..R-1 own their convs; blocks >= R reuse block R-1's.
            owner = blocks[r - 1] if r is not None and i >= r else None
            blocks.append(block(in_ch, planes, stride if i == 0 else 1, act, owner))
            in_ch = planes * block.expansion
        return nn.Sequential(*blocks)

    def _init_kaiming_fan_out(self) -> None:
        # torchvision's init: He-normal (fan_out) convs, BN at identity; fc keeps nn.Linear's.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(_norm_act(self.bn1, self.act, self.conv1(x)))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))

    # --- sparsity-facing views -----------------------------------------------------------

    def _masked_modules(self) -> Iterator[tuple[str, nn.Module]]:
        """Modules owning a masked weight: every Conv2d (stem, blocks, shortcuts) and fc."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d) or m is self.fc:
                yield name, m

    def masked_parameters(self) -> dict[str, nn.Parameter]:
        """Every conv weight and the classifier weight, each unique tensor once, by owner name."""
        return {f"{name}.weight": m.weight for name, m in self._masked_modules()}

    def dense_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters outside the sparsity budget: BN, biases, DyReLU FCs, sharing scalars."""
        masked = {id(p) for p in self.masked_parameters().values()}
        return {n: p for n, p in self.named_parameters() if id(p) not in masked}

    def shared_users(self) -> dict[str, list[str]]:
        """Masked parameter name -> names of the modules computing with it (owner first)."""
        owner_names = {id(m): name for name, m in self._masked_modules()}
        users = {name: [name] for name in owner_names.values()}
        for name, m in self.named_modules():
            if isinstance(m, SharedConv2d):
                users[owner_names[id(m.owner)]].append(name)
        return {f"{name}.weight": names for name, names in users.items()}

    def weight_counts(self) -> WeightCounts:
        n_unique = sum(p.numel() for p in self.masked_parameters().values())
        n_shared = sum(
            m.owner.weight.numel() for m in self.modules() if isinstance(m, SharedConv2d)
        )
        return WeightCounts(n_full=n_unique + n_shared, n_unique=n_unique, n_shared=n_shared)

    def set_beta(self, beta: float) -> None:
        """DyReLU phasing factor on every DyReLU module (no-op for a ReLU model)."""
        beta = float(beta)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        for m in self.modules():
            if isinstance(m, DyReLUB):
                m.set_beta(beta)


def build_model(
    arch: str,
    *,
    num_classes: int,
    in_channels: int,
    stem: str = "cifar",
    activation: str = "relu",
    sharing_ratio: int | None = None,
    conv_init: str = "pytorch",
) -> EastResNet:
    """Build ``arch`` (one of ``ARCHS``); parameters are drawn from torch's global RNG."""
    if conv_init not in CONV_INITS:
        raise ValueError(f"unknown conv_init {conv_init!r}; expected one of {CONV_INITS}")
    if arch not in REGISTRY:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; expected one of {STEMS}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    for field, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{field} must be a positive int, got {value!r}")
    if sharing_ratio is not None and (
        isinstance(sharing_ratio, bool) or not isinstance(sharing_ratio, int) or sharing_ratio < 2
    ):
        # R = 1 would share block 0's convs, whose input width or stride differ from the rest.
        raise ValueError(f"sharing_ratio must be None or an int >= 2, got {sharing_ratio!r}")
    return EastResNet(
        arch,
        REGISTRY[arch],
        num_classes=num_classes,
        in_channels=in_channels,
        stem=stem,
        activation=activation,
        sharing_ratio=sharing_ratio,
        conv_init=conv_init,
    )


def model_for_cell(cell: CellConfig) -> EastResNet:
    """The network a cell trains (before any mask): its arch, the dataset's classes and
    channels, stem, activation, sharing and conv init. The one place a cell becomes a model."""
    from east.data.registry import dataset_info

    info = dataset_info(cell.data.name)
    return build_model(
        cell.model.arch, num_classes=info.num_classes, in_channels=info.in_channels,
        stem=cell.model.stem, activation=cell.activation, sharing_ratio=cell.sharing_ratio,
        conv_init=cell.model.conv_init,
    )
