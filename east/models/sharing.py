"""Weight sharing within a residual stage (the spec, trick 2), and masked-weight counts.

A block i >= R of a stage owns no conv weights: each of its convs is a ``SharedConv2d`` that
reuses the ``nn.Conv2d`` of block R-1 (the *same* ``nn.Parameter``, hence one tensor and one
mask) times its own learnable scalar ``scale`` (init U(0, 1)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["SharedConv2d", "WeightCounts"]


@dataclass(frozen=True)
class WeightCounts:
    """Masked-weight counts of a model (the spec's N_full, N_u, N_s).

    n_full: masked weights of the unshared network; n_unique: unique masked weights (a shared
    tensor once); n_shared: conv weights that shared blocks would own without sharing.
    """

    n_full: int
    n_unique: int
    n_shared: int

    @property
    def density_factor(self) -> float:
        """d'/d = (N_u + N_s) / N_u: per-mask density scale that keeps nnz = (1-s)·N_full."""
        return (self.n_unique + self.n_shared) / self.n_unique


class SharedConv2d(nn.Module):
    """``owner``'s convolution with ``owner.weight``, times a learnable scalar ``scale``.

    The owner is held outside the module tree (in a tuple), so the shared weight is neither
    registered twice nor saved twice in ``state_dict``; ``.to()``/``.cuda()`` update the owner's
    parameter in place, so the reference stays valid.
    """

    def __init__(self, owner: nn.Conv2d) -> None:
        super().__init__()
        if owner.bias is not None:
            raise ValueError("SharedConv2d expects a bias-free owner convolution")
        self._owner = (owner,)
        self.scale = nn.Parameter(torch.empty(()).uniform_(0.0, 1.0))

    @property
    def owner(self) -> nn.Conv2d:
        return self._owner[0]

    @property
    def out_channels(self) -> int:
        return self.owner.out_channels

    def forward(self, x: Tensor) -> Tensor:
        owner = self.owner
        weight = owner.weight
        # conv(x, W)*s == conv(x, s*W); scale whichever tensor is smaller (the weight, in
        # most CIFAR layers at training batch sizes). Gradients reach W and s either way.
        out_numel = _conv_out_numel(owner, x)
        if weight.numel() < out_numel:
            return owner._conv_forward(x, weight * self.scale, None)
        return owner._conv_forward(x, weight, None) * self.scale

    def extra_repr(self) -> str:
        o = self.owner
        return (
            f"shares {o.in_channels}, {o.out_channels}, kernel_size={o.kernel_size}, "
            f"stride={o.stride}"
        )


def _conv_out_numel(conv: nn.Conv2d, x: Tensor) -> int:
    """Number of elements conv(x) will have (no padding modes other than zeros here)."""
    n = x.shape[0] if x.dim() == 4 else 1
    numel = n * conv.out_channels
    for size, k, s, p, d in zip(
        x.shape[-2:], conv.kernel_size, conv.stride, conv.padding, conv.dilation, strict=True
    ):
        numel *= (size + 2 * p - d * (k - 1) - 1) // s + 1
    return numel
