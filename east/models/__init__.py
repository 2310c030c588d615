"""ResNets for EAST: ``build_model`` and the views the sparsity engine uses."""

from .dyrelu import DyReLUB
from .resnet import (
    ARCHS,
    REGISTRY,
    ArchSpec,
    BasicBlock,
    Bottleneck,
    EastResNet,
    build_model,
    model_for_cell,
)
from .sharing import SharedConv2d, WeightCounts

__all__ = [
    "ARCHS",
    "REGISTRY",
    "ArchSpec",
    "BasicBlock",
    "Bottleneck",
    "DyReLUB",
    "EastResNet",
    "SharedConv2d",
    "WeightCounts",
    "build_model",
    "model_for_cell",
]
