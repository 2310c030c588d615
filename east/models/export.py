"""Export an EAST ResNet to torchvision's ``resnet18/34/50`` state_dict layout.

The model already uses torchvision's module names, so export is a filtered copy of its
state_dict: sparsity masks (``*.weight_mask``) and DyReLU modules are dropped, and a zero
``fc.bias`` is added (EAST's classifier is bias-free, torchvision's is not).

An ImageNet-stem, 3-channel model loads into ``torchvision.models.<arch>(num_classes=...)``
with ``strict=True``. A CIFAR-stem model has the same keys but a 3x3 ``conv1``: load it into a
torchvision model whose ``conv1`` is a 3x3 stride-1 conv and whose ``maxpool`` is
``nn.Identity()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .dyrelu import DyReLUB
from .sharing import SharedConv2d

if TYPE_CHECKING:
    from .resnet import EastResNet

__all__ = ["MASK_SUFFIX", "torchvision_state_dict"]

MASK_SUFFIX = "weight_mask"


def torchvision_state_dict(model: EastResNet) -> dict[str, Tensor]:
    """A detached copy of ``model``'s weights under torchvision's keys.

    Raises ValueError unless the model is unshared, has a torchvision counterpart, and computes
    plain ReLU (activation "relu", or DyReLU with beta == 0 everywhere, which is ReLU exactly).
    """
    if not model.spec.torchvision:
        raise ValueError(f"{model.arch} has no torchvision counterpart to export to")
    if any(isinstance(m, SharedConv2d) for m in model.modules()):
        raise ValueError(
            "cannot export a weight-shared model: torchvision's ResNet has one weight per conv"
        )
    dyrelu = [name for name, m in model.named_modules() if isinstance(m, DyReLUB)]
    live = [name for name in dyrelu if model.get_submodule(name)._beta != 0.0]
    if live:
        raise ValueError(
            "cannot export a model with active DyReLU (beta > 0 in "
            f"{live[0]}{' and others' if len(live) > 1 else ''}); only ReLU models export"
        )
    prefixes = tuple(f"{name}." for name in dyrelu)
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if key.endswith(MASK_SUFFIX) or key.startswith(prefixes):
            continue
        out[key] = value.detach().clone()
    fc_weight = out["fc.weight"]
    out["fc.bias"] = torch.zeros(fc_weight.shape[0], dtype=fc_weight.dtype, device=fc_weight.device)
    return out
