"""Export an EAST ResNet as a plain, unshared ReLU ResNet (torchvision's layout).

*Materialising* turns every weight-shared block into an ordinary one: each user of a shared
tensor gets its own copy of the weights, with its sharing scalar folded in (a shared block
computes ``conv(x, W_owner) * scale``, which is ``conv(x, scale * W_owner)``). BatchNorm is
never shared, so it is copied as is. Sparsity masks (``*.weight_mask``) and DyReLU modules
are dropped: the model must be at beta = 0 (DyReLU is then exactly ReLU), i.e. the final
EAST network, which is a plain sparse ReLU ResNet (the spec, claim 5).

The result has the module names of the *unshared* ``EastResNet`` of the same arch, which are
torchvision's. ``torchvision_state_dict`` adds the zero ``fc.bias`` torchvision's classifier
has (EAST's is bias-free). An ImageNet-stem, 3-channel model then loads into
``torchvision.models.<arch>(num_classes=...)`` with ``strict=True``. A CIFAR-stem model has
the same keys but a 3x3 ``conv1``: load it into a torchvision model whose ``conv1`` is
``nn.Conv2d(C, 64, 3, 1, 1, bias=False)`` and whose ``maxpool`` is ``nn.Identity()``.

Non-zero counts differ between the two views (``nonzero_counts``): training keeps ``unique``
non-zero weights (a shared tensor once); the materialised network stores every user's copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .dyrelu import DyReLUB
from .sharing import SharedConv2d

if TYPE_CHECKING:
    from .resnet import EastResNet

__all__ = [
    "MASK_SUFFIX",
    "NonzeroCounts",
    "active_dyrelu",
    "materialized_state_dict",
    "nonzero_counts",
    "plain_model",
    "torchvision_state_dict",
]

MASK_SUFFIX = "weight_mask"


def active_dyrelu(model: EastResNet) -> dict[str, float]:
    """DyReLU modules whose beta is not 0 (name -> beta); empty for a plain ReLU network."""
    return {
        name: float(m.beta) for name, m in model.named_modules()
        if isinstance(m, DyReLUB) and float(m.beta) != 0.0
    }


def _check_relu(model: EastResNet) -> None:
    live = active_dyrelu(model)
    if live:
        name, beta = next(iter(live.items()))
        more = " and others" if len(live) > 1 else ""
        raise ValueError(
            f"cannot export a model with active DyReLU (beta = {beta:g} in {name}{more}); "
            "only the final network (beta = 0, exactly ReLU) exports"
        )


def materialized_state_dict(model: EastResNet) -> dict[str, Tensor]:
    """A detached copy of ``model``'s weights as the unshared ReLU network's state_dict.

    Every ``SharedConv2d`` user's ``scale`` entry becomes its own ``weight`` =
    ``scale * W_owner`` (in the key order of the unshared model); masks and DyReLU state are
    dropped. Loads strictly into ``build_model(arch, ..., sharing_ratio=None)`` of the same
    arch, stem, classes and input channels. Raises ValueError if beta > 0 anywhere.
    """
    _check_relu(model)
    shared = {name: m for name, m in model.named_modules() if isinstance(m, SharedConv2d)}
    dyrelu = tuple(f"{name}." for name, m in model.named_modules() if isinstance(m, DyReLUB))
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if key.endswith(MASK_SUFFIX) or key.startswith(dyrelu):
            continue
        module_name, _, leaf = key.rpartition(".")
        if leaf == "scale" and module_name in shared:
            user = shared[module_name]
            with torch.no_grad():
                out[f"{module_name}.weight"] = (user.scale.detach() * user.owner.weight.detach()
                                                ).clone()
            continue
        out[key] = value.detach().clone()
    return out


def torchvision_state_dict(model: EastResNet) -> dict[str, Tensor]:
    """``materialized_state_dict`` plus a zero ``fc.bias``: torchvision's keys.

    Raises ValueError unless the arch has a torchvision counterpart and the model computes
    plain ReLU (activation "relu", or DyReLU with beta == 0 everywhere).
    """
    if not model.spec.torchvision:
        raise ValueError(f"{model.arch} has no torchvision counterpart to export to")
    out = materialized_state_dict(model)
    fc_weight = out["fc.weight"]
    out["fc.bias"] = torch.zeros(fc_weight.shape[0], dtype=fc_weight.dtype, device=fc_weight.device)
    return out


def plain_model(model: EastResNet) -> EastResNet:
    """The materialised network as a new unshared ReLU ``EastResNet`` in eval mode, on the
    CPU (the reference the sparse export is checked against)."""
    from .resnet import build_model

    state = {k: v.cpu() for k, v in materialized_state_dict(model).items()}
    plain = build_model(model.arch, num_classes=model.num_classes,
                        in_channels=model.in_channels, stem=model.stem)
    plain.load_state_dict(state, strict=True)
    return plain.eval()


@dataclass(frozen=True)
class NonzeroCounts:
    """Non-zero masked weights (conv and classifier weights), counted two ways.

    unique: what training kept, each shared tensor once (the sparsity budget's count);
    materialized: what the exported, unshared network stores (a shared tensor once per
    user). n_unique / n_full: the corresponding totals (dense).
    """

    unique: int
    materialized: int
    n_unique: int
    n_full: int

    def as_dict(self) -> dict[str, int]:
        return {"nnz_unique": self.unique, "nnz_materialized": self.materialized,
                "n_unique": self.n_unique, "n_full": self.n_full}


def nonzero_counts(model: EastResNet) -> NonzeroCounts:
    masked = model.masked_parameters()
    unique = sum(int(torch.count_nonzero(p.detach())) for p in masked.values())
    materialized = unique
    with torch.no_grad():  # each user's own copy: a sharing scalar of exactly 0 zeroes it
        for m in model.modules():
            if isinstance(m, SharedConv2d):
                materialized += int(torch.count_nonzero(m.scale * m.owner.weight))
    counts = model.weight_counts()
    return NonzeroCounts(unique, materialized, int(counts.n_unique), int(counts.n_full))


# The archs with a torchvision.models counterpart.
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50")


def torchvision_twin(arch: str, num_classes: int, in_channels: int, stem: str) -> torch.nn.Module:
    """The torchvision ResNet with the same shapes as an east model of this config."""
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if stem == "cifar":
        model.conv1 = torch.nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        model.maxpool = torch.nn.Identity()
    elif in_channels != 3:
        model.conv1 = torch.nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return model
