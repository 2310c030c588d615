"""DyReLU-B (Chen et al. 2020) with EAST's coefficient phasing (the spec, trick 1).

For x of shape (B, C, H, W): z = mean_HW(x), theta = 2*sigmoid(FC2(ReLU(FC1(z)))) - 1 with
FC1: C -> C/4 and FC2: C/4 -> 4C (K = 2 pieces). FC2's output is read per channel as
(a1, a2, b1, b2), i.e. output index 4*c + j. Coefficients, blended toward ReLU by beta:

    a1 = 1 + beta*theta1,  a2 = beta*theta2,  b1 = 0.5*beta*theta3,  b2 = 0.5*beta*theta4
    y  = max(a1*x + b1, a2*x + b2)

which is beta*coef_dyrelu + (1 - beta)*[1, 0, 0, 0] written out. At beta == 0 the module is
exactly ``torch.relu`` and runs no hyper-function.

Speed (docs/benchmarks.md has the profile): the whole module (mean, FCs, pieces) is one
autograd.Function, so that
- y = max((a1 - a2)*x + b1, b2) + a2*x takes three or four in-place elementwise ops on y;
  the pieces are never materialised,
- only x and small per-(sample, channel) tensors are saved; backward recomputes which piece
  is active; the four per-(sample, channel) sums the coefficient gradients need share one
  pass, which also leaves g*(active slope) in the input-gradient buffer; the mean's share of
  the input gradient (through the FCs, differentiated by hand) is one more broadcast add,
- on CPU the batch is walked in chunks (``CPU_CHUNK_ELEMS`` per thread) so that the ops of
  one pass find x, g and the buffers in cache; each op is parallel over its chunk, and the
  chunk grows with the thread count so that every thread keeps the same share,
- on CPU, each module hands its output/input-gradient buffer out again once no tensor uses
  it any more (``_ReusedBuffer``): a fresh activation-sized buffer from malloc costs its
  page faults on first touch, which measured about half of this module's extra time in a
  ResNet-18 step; the buffer is one the step needs anyway, so peak memory does not grow.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

__all__ = ["DyReLUB"]

# Elements per chunk and intra-op thread on CPU (1 MiB of float32). On a 2-core AMD EPYC
# (1 MiB L2 per core, 32 MiB shared L3) 2^16..2^20 cost the same work within noise and 2^22
# ~25 % more; 2^18 halves the op count of 2^17 and keeps a thread's x, g and buffers
# (~5 MiB) within an L3 share on larger machines too.
CPU_CHUNK_ELEMS = 1 << 18

# How many tensors use a storage (torch's own cudagraph trees rely on it for the same
# question). Absent in some future torch: then buffers are simply not reused.
_storage_use_count: Callable[[int], int] | None = getattr(torch._C, "_storage_Use_Count", None)


def _chunk_len(x: Tensor) -> int:
    """Samples per chunk: the whole batch off-CPU (chunking only buys cache locality on
    CPU, and costs kernel launches on a GPU)."""
    n = x.shape[0]
    if x.device.type != "cpu":
        return max(1, n)
    per_sample = max(1, math.prod(x.shape[1:]))
    return min(max(1, n), max(1, CPU_CHUNK_ELEMS * torch.get_num_threads() // per_sample))


def _dense_format(x: Tensor) -> torch.memory_format | None:
    if x.is_contiguous():
        return torch.contiguous_format
    if x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return None


class _ReusedBuffer:
    """One activation-sized block of memory that a module hands out again once no tensor
    refers to it any more (use count 1: only this object's reference).

    In a training step the module's output lives until the next layer's backward has used
    it, and the input gradient until the layer before has used it; so one block serves as
    the output in every forward and as the input gradient in every backward, instead of two
    fresh allocations per step. A block still in use (the caller kept the output, a graph
    was retained) is never handed out: a new one is allocated and kept instead. CPU only
    (the CUDA caching allocator already reuses memory). Copies and pickles of a module
    start empty.
    """

    def __init__(self) -> None:
        self._storage: torch.UntypedStorage | None = None
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (type(self), ())

    def release(self) -> None:
        with self._lock:
            self._storage = None

    def empty_like(self, x: Tensor) -> Tensor:
        """An uninitialised tensor with x's shape, dtype, device and (dense) layout."""
        fmt = _dense_format(x)
        if x.device.type != "cpu" or fmt is None or _storage_use_count is None:
            return torch.empty_like(x)
        nbytes = x.numel() * x.element_size()
        with self._lock:
            st = self._storage
            if (st is not None and st.nbytes() == nbytes and st.device == x.device
                    and _storage_use_count(st._cdata) == 1):
                out = torch.empty(0, dtype=x.dtype, device=x.device)
                strides = torch.empty_like(x, device="meta", memory_format=fmt).stride()
                return out.set_(st, 0, x.shape, strides)
            out = torch.empty_like(x, memory_format=fmt)
            self._storage = out.untyped_storage()
            return out


def _coefficients(s: Tensor, beta: float, dtype: torch.dtype) -> Tensor:
    """(5, n, C, 1, 1): a2, da = a1 - a2, b1, b2, db = b2 - b1, from s = sigmoid(FC2 output)
    (n, 4C). One contiguous buffer: strided views of theta make the elementwise kernels
    10-40x slower."""
    n, c = s.shape[0], s.shape[1] // 4
    t1, t2, t3, t4 = (2.0 * s - 1.0).view(n, c, 4).unbind(2)
    out = torch.empty(5, n, c, 1, 1, dtype=dtype, device=s.device)
    a2, da, b1, b2, db = (row.view(n, c) for row in out.unbind(0))
    torch.mul(t2, beta, out=a2)
    torch.sub(t1, t2, out=da).mul_(beta).add_(1.0)
    torch.mul(t3, 0.5 * beta, out=b1)
    torch.mul(t4, 0.5 * beta, out=b2)
    torch.sub(b2, b1, out=db)
    return out


def _hyper(
    z: Tensor, w1: Tensor, bias1: Tensor, w2: Tensor, bias2: Tensor
) -> tuple[Tensor, Tensor]:
    """Hyper-function on pooled features z (n, C): returns (FC1 pre-activation, sigmoid(FC2))."""
    h1 = F.linear(z, w1, bias1)
    s = torch.sigmoid(F.linear(torch.relu(h1), w2, bias2))
    return h1, s


class _DyReLUBFunction(torch.autograd.Function):
    """The whole DyReLU-B forward/backward; inputs x, FC1 weight/bias, FC2 weight/bias, beta
    and optionally the module's ``_ReusedBuffer`` for the output and input gradient."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        w1: Tensor,
        bias1: Tensor,
        w2: Tensor,
        bias2: Tensor,
        beta: float,
        buffer: _ReusedBuffer | None = None,
    ) -> Tensor:
        # Hyper-function in float32 even under autocast: it is tiny and feeds every activation.
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = torch.mean(x, dim=(2, 3), dtype=w1.dtype)
            h1, s = _hyper(z, w1, bias1, w2, bias2)
            coef = _coefficients(s, beta, x.dtype)
            y = buffer.empty_like(x) if buffer is not None else torch.empty_like(x)
            # CPU kernels vectorise a broadcast operand only when it is the sole one constant
            # along the innermost dim: one fused addcmul is right in channels_last (C
            # innermost), but in NCHW it runs slower than a mul and an add.
            fused = y.is_contiguous(memory_format=torch.channels_last)
            step = _chunk_len(x)
            for xs, ys, a2, da, b1, b2 in zip(x.split(step), y.split(step),
                                              *(c.split(step) for c in coef[:4]), strict=True):
                # max(a1 x + b1, a2 x + b2) = max(da x + b1, b2) + a2 x, in y's chunk.
                if fused:
                    torch.addcmul(b1, xs, da, out=ys)
                else:
                    torch.mul(xs, da, out=ys).add_(b1)
                ys.clamp_min_(b2).addcmul_(xs, a2)
        ctx.save_for_backward(x, w1, w2, z, h1, s, coef)
        ctx.beta = beta
        ctx.buffer = buffer
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, w1, w2, z, h1, s, coef = ctx.saved_tensors
        beta: float = ctx.beta
        buffer: _ReusedBuffer | None = ctx.buffer
        n, c, h, w = x.shape
        acc = torch.promote_types(x.dtype, torch.float32)  # sums in at least float32
        # Per (sample, channel) sums over H, W: of g*x*m, g*x, g*m, g (m: piece 1 active).
        sums = torch.empty(4, n, c, dtype=acc, device=x.device)
        with torch.autocast(device_type=x.device.type, enabled=False):
            # g*(active slope), then the input gradient in place.
            gx = buffer.empty_like(x) if buffer is not None else torch.empty_like(x)
            step = _chunk_len(x)
            scratch = torch.empty_like(x[:step])  # products to sum, one chunk at a time
            parts = zip(x.split(step), grad.split(step), gx.split(step), coef[0].split(step),
                        coef[1].split(step), coef[4].split(step),
                        *(row.split(step) for row in sums), strict=True)
            for xs, gs, us, a2, da, db, s_gxm, s_gx, s_gm, s_g in parts:
                p = scratch[: xs.shape[0]]
                torch.mul(xs, da, out=us).gt_(db)  # m: da x > b2 - b1, i.e. piece 1 wins
                torch.sum(gs, (2, 3), dtype=acc, out=s_g)
                torch.sum(torch.mul(gs, xs, out=p), (2, 3), dtype=acc, out=s_gx)
                us.mul_(gs)  # g*m
                torch.sum(us, (2, 3), dtype=acc, out=s_gm)
                torch.sum(torch.mul(us, xs, out=p), (2, 3), dtype=acc, out=s_gxm)
                us.mul_(da).addcmul_(gs, a2)  # g*(a2 + m*da)
            del scratch
            # d/d(a1, a2, b1, b2) -> theta -> FC2's output -> FC1 -> z, all (n, .) sized.
            s_gxm, s_gx, s_gm, s_g = sums.unbind(0)
            g_theta = torch.stack((s_gxm, s_gx - s_gxm, 0.5 * s_gm, 0.5 * (s_g - s_gm)), dim=2)
            gh2 = g_theta.view(n, 4 * c).mul_((2.0 * beta) * s * (1.0 - s)).to(w2.dtype)
            gh1 = (gh2 @ w2).mul_(h1 > 0)
            g_w1 = gh1.t() @ z if ctx.needs_input_grad[1] else None
            g_b1 = gh1.sum(0) if ctx.needs_input_grad[2] else None
            g_w2 = gh2.t() @ torch.relu(h1) if ctx.needs_input_grad[3] else None
            g_b2 = gh2.sum(0) if ctx.needs_input_grad[4] else None
            grad_x = None
            if ctx.needs_input_grad[0]:
                # The mean's share, g_z/(H*W), the same for every pixel: one pass, no chunks.
                gz = (gh1 @ w1).div_(h * w).to(x.dtype)
                grad_x = gx.add_(gz[:, :, None, None])
        return grad_x, g_w1, g_b1, g_w2, g_b2, None, None


class DyReLUB(nn.Module):
    """Channel-wise dynamic ReLU with K = 2 pieces and a phasing factor ``beta``.

    ``beta`` is a Python float (``forward`` branches on it without a device sync), set only
    through ``set_beta``; it starts at 1.0, where EAST's schedule starts. It is not part of the
    state_dict: the sparsifier's β schedule is its one source, which a checkpoint stores once
    and a model file's meta records (issue 15); readers set it from there. A ``beta`` entry in
    a state_dict of an older east (one per module) is accepted and ignored.
    ``inplace`` applies to the beta == 0 path only, like ``nn.ReLU(inplace=True)``: the
    ResNet places the module where its ReLU baseline is in-place, so after phase-out EAST
    allocates what the ReLU network allocates (and the reused buffer is let go).
    """

    def __init__(self, channels: int, reduction: int = 4, *, inplace: bool = False) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.channels = channels
        self.inplace = inplace
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, 4 * channels)
        self._beta = 1.0
        self._buffer = _ReusedBuffer()

    def set_beta(self, beta: float) -> None:
        beta = float(beta)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"DyReLU beta must be in [0, 1], got {beta}")
        self._beta = beta
        if beta == 0.0:
            self._buffer.release()

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
            x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, self._beta,
            self._buffer,
        )

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, hidden={self.fc1.out_features}, "
                f"beta={self._beta}, inplace={self.inplace}")
