"""DyReLU-B (Chen et al. 2020) with EAST's coefficient phasing (the spec, trick 1).

For x of shape (B, C, H, W): z = mean_HW(x), theta = 2*sigmoid(FC2(ReLU(FC1(z)))) - 1 with
FC1: C -> C/4 and FC2: C/4 -> 4C (K = 2 pieces). FC2's output is read per channel as
(a1, a2, b1, b2), i.e. output index 4*c + j. Coefficients, blended toward ReLU by beta:

    a1 = 1 + beta*theta1,  a2 = beta*theta2,  b1 = 0.5*beta*theta3,  b2 = 0.5*beta*theta4
    y  = max(a1*x + b1, a2*x + b2)

which is beta*coef_dyrelu + (1 - beta)*[1, 0, 0, 0] written out. At beta == 0 the module is
exactly ``torch.relu`` and runs no hyper-function.

Speed: a naive version (stack both pieces, torch.max over them) costs 1.8-3.3x a ReLU step on
CPU. Here the whole module (mean, FCs, pieces) is one autograd.Function, so that
- y = max((a1 - a2)*x + b1, b2) + a2*x takes three in-place elementwise ops on y,
- only x and small per-sample tensors are saved; backward recomputes the active piece,
- the four per-(sample, channel) coefficient-gradient sums share one pass, and the mean's
  gradient (through the FCs, differentiated by hand) is folded into the in-place pass that
  turns the buffer holding grad*mask into the input gradient: no extra full-size tensors,
- every elementwise op broadcasts per-(sample, channel) coefficients in a way the CPU kernels
  vectorise (see ``_affine``), and coefficients are contiguous,
- on CPU the batch is walked in chunks sized to stay in L2 between consecutive ops.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

__all__ = ["DyReLUB"]

# Elements per chunk and intra-op thread on CPU (512 KiB of float32): on a 2-core AVX-512
# machine (2 MiB L2 per core) 2^16..2^18 ran best of 2^14..2^30; small enough to keep each
# thread's share of x, grad and buffers in its L2, big enough to amortise per-op dispatch.
CPU_CHUNK_ELEMS = 1 << 17


def _chunks(x: Tensor) -> list[slice]:
    """Batch slices to process one at a time: the whole batch off-CPU (chunking only buys
    cache locality on CPU, and costs kernel launches on a GPU)."""
    n = x.shape[0]
    step = n
    if x.device.type == "cpu":
        per_sample = max(1, math.prod(x.shape[1:]))
        step = max(1, CPU_CHUNK_ELEMS * torch.get_num_threads() // per_sample)
    return [slice(lo, min(n, lo + step)) for lo in range(0, n, step)]


def _coefficients(s: Tensor, beta: float, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """(a2, da = a1 - a2, b1, b2), each (n, C, 1, 1), from s = sigmoid(FC2 output) (n, 4C)."""
    theta = (2.0 * s - 1.0).view(s.shape[0], s.shape[1] // 4, 4, 1, 1)
    t1, t2, t3, t4 = theta.unbind(2)
    a2 = beta * t2
    da = 1.0 + beta * (t1 - t2)
    b1 = (0.5 * beta) * t3
    b2 = (0.5 * beta) * t4
    # Contiguous (n, C, 1, 1): strided views of theta make the elementwise kernels 10-40x slower.
    return tuple(c.to(dtype).contiguous() for c in (a2, da, b1, b2))


def _hyper(
    z: Tensor, w1: Tensor, bias1: Tensor, w2: Tensor, bias2: Tensor
) -> tuple[Tensor, Tensor]:
    """Hyper-function on pooled features z (n, C): returns (FC1 pre-activation, sigmoid(FC2))."""
    h1 = F.linear(z, w1, bias1)
    s = torch.sigmoid(F.linear(torch.relu(h1), w2, bias2))
    return h1, s


def _affine(x: Tensor, a: Tensor, b: Tensor, out: Tensor) -> Tensor:
    """out = a*x + b for per-(sample, channel) a, b; ``out`` may be ``x`` itself.

    CPU kernels vectorise a broadcast operand only when it is the sole one that is constant
    along the innermost dim: fine for one fused op in channels_last (C innermost), but in NCHW
    a fused addcmul with two broadcasts runs 5-10x slower than two simple ops.
    """
    if x.is_contiguous(memory_format=torch.channels_last):
        return torch.addcmul(b, x, a, out=out)
    return torch.mul(x, a, out=out).add_(b)


class _DyReLUBFunction(torch.autograd.Function):
    """The whole DyReLU-B forward/backward; inputs x, FC1 weight/bias, FC2 weight/bias."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        w1: Tensor,
        bias1: Tensor,
        w2: Tensor,
        bias2: Tensor,
        beta: float,
    ) -> Tensor:
        # Hyper-function in float32 even under autocast: it is tiny and feeds every activation.
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = torch.mean(x, dim=(2, 3), dtype=w1.dtype)
            h1, s = _hyper(z, w1, bias1, w2, bias2)
            a2, da, b1, b2 = _coefficients(s, beta, x.dtype)
            y = torch.empty_like(x)
            for sl in _chunks(x):
                # max(a1 x + b1, a2 x + b2) = max(da x + b1, b2) + a2 x, computed in y's slice.
                t = _affine(x[sl], da[sl], b1[sl], out=y[sl]).clamp_min_(b2[sl])
                t.addcmul_(x[sl], a2[sl])
        ctx.save_for_backward(x, w1, w2, z, h1, s, a2, da, b1, b2)
        ctx.beta = beta
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, w1, w2, z, h1, s, a2, da, b1, b2 = ctx.saved_tensors
        beta: float = ctx.beta
        n, c, h, w = x.shape
        acc = torch.promote_types(x.dtype, torch.float32)  # sums in at least float32
        # Per (sample, channel) sums over H, W: of g*x*m, g*x, g*m, g (m: piece 1 active).
        sums = torch.empty(4, n, c, dtype=acc, device=x.device)
        s_gxm, s_gx, s_gm, s_g = sums.unbind(0)
        gm = torch.empty_like(x)  # g*m, later turned into the input gradient in place
        with torch.autocast(device_type=x.device.type, enabled=False):
            chunks = _chunks(x)
            for sl in chunks:
                xs, gs = x[sl], grad[sl]
                m = _affine(xs, da[sl], b1[sl], out=gm[sl]).gt_(b2[sl])  # forward's test
                p = gs * xs
                torch.sum(p, (2, 3), dtype=acc, out=s_gx[sl])
                torch.sum(p.mul_(m), (2, 3), dtype=acc, out=s_gxm[sl])
                torch.sum(gs, (2, 3), dtype=acc, out=s_g[sl])
                torch.sum(m.mul_(gs), (2, 3), dtype=acc, out=s_gm[sl])
            # d/d(a1, a2, b1, b2) -> theta -> FC2's output -> FC1 -> z, all (n, .) sized.
            g_theta = torch.stack((s_gxm, s_gx - s_gxm, 0.5 * s_gm, 0.5 * (s_g - s_gm)), dim=2)
            gh2 = g_theta.view(n, 4 * c).mul_((2.0 * beta) * s * (1.0 - s)).to(w2.dtype)
            gh1 = (gh2 @ w2).mul_(h1 > 0)
            g_w1 = gh1.t() @ z if ctx.needs_input_grad[1] else None
            g_b1 = gh1.sum(0) if ctx.needs_input_grad[2] else None
            g_w2 = gh2.t() @ torch.relu(h1) if ctx.needs_input_grad[3] else None
            g_b2 = gh2.sum(0) if ctx.needs_input_grad[4] else None
            grad_x = None
            if ctx.needs_input_grad[0]:
                # Input gradient: the active slope (a2 + m*da) plus the mean's share, g_z/(H*W).
                gz = (gh1 @ w1).div_(h * w).to(x.dtype)[:, :, None, None]
                for sl in chunks:
                    _affine(gm[sl], da[sl], gz[sl], out=gm[sl]).addcmul_(grad[sl], a2[sl])
                grad_x = gm
        return grad_x, g_w1, g_b1, g_w2, g_b2, None


class DyReLUB(nn.Module):
    """Channel-wise dynamic ReLU with K = 2 pieces and a phasing factor ``beta``.

    ``beta`` is a Python float (``forward`` branches on it without a device sync), set only
    through ``set_beta``; it starts at 1.0, where EAST's schedule starts. It is not part of the
    state_dict: the sparsifier's β schedule is its one source, which a checkpoint stores once
    and a model file's meta records (issue 15); readers set it from there. A ``beta`` entry in
    a state_dict of an older east (one per module) is accepted and ignored.
    ``inplace`` applies to the beta == 0 path only, like ``nn.ReLU(inplace=True)``: the
    ResNet places the module where its ReLU baseline is in-place, so after phase-out EAST
    allocates what the ReLU network allocates.
    """

    def __init__(self, channels: int, reduction: int = 4, *, inplace: bool = False) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.channels = channels
        self.inplace = inplace
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, 4 * channels)
        self._beta = 1.0

    def set_beta(self, beta: float) -> None:
        beta = float(beta)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"DyReLU beta must be in [0, 1], got {beta}")
        self._beta = beta

    @property
    def beta(self) -> float:
        return self._beta

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        state_dict.pop(prefix + "beta", None)  # stored per module before issue 15
        super()._load_from_state_dict(state_dict, prefix, *args)

    def forward(self, x: Tensor) -> Tensor:
        if self._beta == 0.0:
            # Exactly ReLU, no hyper-function work.
            return torch.relu_(x) if self.inplace else torch.relu(x)
        return _DyReLUBFunction.apply(
            x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, self._beta
        )

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, hidden={self.fc1.out_features}, "
                f"beta={self._beta}, inplace={self.inplace}")
