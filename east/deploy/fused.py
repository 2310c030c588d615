"""The ``fused`` sparse-conv kernel: gather, multiply-add, bias, residual and ReLU in one pass.

The other kernels of ``east.deploy.sparse`` first copy every needed shifted input row into a
(rows, H*W*B) matrix and then multiply it by the sparse weight: three memory passes per
non-zero. Here, per output channel, each non-zero adds ``weight * input window`` straight
from the (unpadded) input into the output channel's plane, which stays in the L1/L2 cache;
the bias is its initial value, and the shortcut and the ReLU are applied before the plane
is left. Zero padding is the window's clipping at the borders, so no padded copy exists.

Activations are channel-major with the batch innermost, (C, H, W, B), as in
``east.deploy.sparse``: at stride 1 a clipped window row is one contiguous run of
(W_out - clipped) * B floats, which LLVM vectorises.

Compiled by numba (LLVM) on first use and cached on disk (``cache=True``), so a process
pays the compilation (about a second) once per machine, not once per model.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(inline="always")
def _axpy(acc: np.ndarray, src: np.ndarray, weight: float) -> None:
    # On slices, not offsets: numba then knows the indices are in range and non-negative,
    # and LLVM vectorises the loop (offset indexing measured 1.3 vs 11.5 GMAC/s here).
    for t in range(acc.shape[0]):
        acc[t] += weight * src[t]


@njit(cache=True, nogil=True, boundscheck=False)
def sparse_conv_chwn(x: np.ndarray, indptr: np.ndarray, channel: np.ndarray, tap_h: np.ndarray,
                     tap_w: np.ndarray, values: np.ndarray, stride: int, padding: int,
                     bias: np.ndarray, residual: np.ndarray, residual_row: np.ndarray,
                     relu: bool, out: np.ndarray) -> None:
    """``out[o] = act(bias[o] + sum_j values[j] * window(x[channel[j]], tap_j) + residual)``.

    x: (C_in, H, W, B) float32, contiguous. out: (O, H_out, W_out, B) float32, written whole.
    CSR over output channels (``indptr``, length O + 1) with, per non-zero, the local input
    channel and the kernel tap (``tap_h``, ``tap_w``). bias: (O, 1) or (O, H_out * W_out).
    residual: (R, H_out, W_out, B); row ``residual_row[o]`` is added to output ``o`` (an
    empty ``residual_row``: nothing added).
    """
    height, width, batch = x.shape[1], x.shape[2], x.shape[3]
    n_out, out_h, out_w = out.shape[0], out.shape[1], out.shape[2]
    plane = out_h * out_w * batch
    xs = x.reshape(x.shape[0], height * width * batch)
    outs = out.reshape(n_out, plane)
    per_position = bias.shape[1] > 1
    has_residual = residual_row.shape[0] > 0
    res = residual.reshape(residual.shape[0], -1)
    for o in range(n_out):
        acc = outs[o]
        if per_position:
            for p in range(out_h * out_w):
                acc[p * batch:(p + 1) * batch] = bias[o, p]
        else:
            acc[:] = bias[o, 0]
        for j in range(indptr[o], indptr[o + 1]):
            src = xs[channel[j]]
            weight = values[j]
            dh = tap_h[j] - padding
            dw = tap_w[j] - padding
            # Output positions whose input position (h * stride + dh) lies inside the image.
            h_lo = max(0, (-dh + stride - 1) // stride)
            h_hi = min(out_h, (height - 1 - dh) // stride + 1)
            w_lo = max(0, (-dw + stride - 1) // stride)
            w_hi = min(out_w, (width - 1 - dw) // stride + 1)
            if stride == 1:
                run = (w_hi - w_lo) * batch
                for h in range(h_lo, h_hi):
                    o_base = (h * out_w + w_lo) * batch
                    i_base = ((h + dh) * width + w_lo + dw) * batch
                    _axpy(acc[o_base:o_base + run], src[i_base:i_base + run], weight)
            else:
                for h in range(h_lo, h_hi):
                    i_row = (h * stride + dh) * width
                    for w in range(w_lo, w_hi):
                        o_base = (h * out_w + w) * batch
                        i_base = (i_row + w * stride + dw) * batch
                        _axpy(acc[o_base:o_base + batch], src[i_base:i_base + batch], weight)
        if has_residual:
            _axpy(acc, res[residual_row[o]], 1.0)
        if relu:
            for t in range(plane):
                acc[t] = max(acc[t], 0.0)
