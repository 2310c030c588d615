"""Sparse inference for a trained EAST/RigL ResNet: compile, run, save, load (``.east``).

``compile_sparse(model, ...)`` turns a (possibly weight-shared) ``EastResNet`` at beta = 0
into a ``SparseResNet`` that computes the same logits (within fp32 rounding) with work
proportional to the non-zero weights:

1. **Materialise** (``east.models.export.plain_model``): an unshared ReLU ResNet.
2. **Fold BatchNorm** into each conv: rows of W scaled by gamma / sqrt(var + eps), the shift
   becomes a bias.
3. **Remove dead channels**, from ``east.flops.analyze`` (effective weights at channel
   granularity: input channel reachable from the image, output channel reaching the
   logits). Every activation tensor keeps a set S of *computed* channels, built backwards
   from the classifier: the input channels some effective weight reads, plus, across an
   identity shortcut, the channels the next block computes. Every channel in S reaches the
   logits and S holds every channel that is also reachable from the input, so a channel
   left out either never reaches the logits (dropped exactly) or has no path from the
   input: its value is the same for every image (BN shifts through ReLUs). The contribution
   of such channels to a computed output is therefore a constant map, evaluated once at
   export on a probe image and folded into that layer's bias (per channel, or per channel
   and position where zero padding makes it vary at the borders). The sparse model is
   exact for every input of the export's image size, which it is tied to.
4. **Store each conv sparse**: the non-zeros among (computed out) x (computed in x taps),
   as CSR over the rows (input channel, kernel tap) that hold any non-zero, rows grouped by
   tap.

Running (``SparseResNet.__call__``; activations are kept channel-major with the batch
innermost, (C, H, W, B), so a channel's shifted window is a few long contiguous runs; batches
run in slices of ``chunk`` = 16 images, which measured fastest, side by side on torch's
threads with the default kernel). The default kernel, ``fused`` (``east.deploy.fused``,
compiled by numba), computes each output channel in one pass: its bias, then per non-zero
``weight * clipped input window`` added straight from the input (no padded copy, no
gathered matrix), then the shortcut and the ReLU. Work per conv: nnz*H*W*B multiply-adds
and one write of the output.

Kernels (``kernel=``; docs/benchmarks.md, ``sparse_inference``, gives the measurements; all
compute the same function, only the speed differs): ``fused`` (default), ``scipy`` (per
kernel tap, ``index_select`` gathers the shifted input rows into a (rows, H*W*B) matrix —
stride-2 convs first split the padded input into its 2x2 phases — then a ``scipy.sparse``
CSR x dense product), ``torch_csr`` (the same gather + ``torch.sparse.mm``), ``index_add``
(per tap: gather the input rows, scale them by their weights, ``index_add_`` into the
output rows), ``compact_dense`` (dense ``conv2d`` of the channel-compacted network, NCHW).

File format (``save_sparse`` / ``load_sparse``): one ``torch.save`` of plain containers,
tensors, ints, floats and strings, ``{"format": "east-sparse/1", "meta": {...}, "stem":
conv, "maxpool": bool, "blocks": [...], "fc": {...}}``, read with ``weights_only=True``
(loading never runs code). ``meta`` holds what a deployer needs: arch, classes, input
channels, image size, normalisation (mean, std of the pixels in [0, 1]), the eval resize
(ImageNet-stem models), non-zero counts and FLOPs both ways, computed channels, and where
the model came from.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from east.errors import EastError
from east.train.devices import torch_threads

__all__ = [
    "FORMAT",
    "KERNELS",
    "SparseBlock",
    "SparseConv",
    "SparseLinear",
    "SparseResNet",
    "compile_sparse",
    "load_sparse",
    "save_sparse",
]

FORMAT = "east-sparse/1"
KERNELS = ("fused", "scipy", "torch_csr", "index_add", "compact_dense")
# Logits of the sparse model vs the dense masked model: fp32 rounding of reordered sums.
CHECK_RTOL = 1e-4
CHECK_ATOL = 1e-4
# Images per pass through the network (larger batches are split).
DEFAULT_CHUNK = 16


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _filled(bias: Tensor, shape: tuple[int, ...]) -> Tensor:
    """A new tensor of ``shape`` holding ``bias`` broadcast: never ``bias`` itself (the
    caller adds into it in place; ``expand(...).contiguous()`` returns the bias unchanged
    when no dimension is expanded)."""
    return torch.empty(shape, dtype=bias.dtype).copy_(bias.expand(shape))


def _index(t: Tensor) -> Tensor:
    return t.to(torch.int64).contiguous()


# --------------------------------------------------------------------------- layers


@dataclass
class SparseConv:
    """One BN-folded conv between computed channel sets.

    ``in_index``/``out_index``: the original channel numbers of the computed input/output
    channels. The weight is CSR (``indptr``, ``indices``, ``values``) over ``len(out_index)``
    rows and R columns; column r is input channel ``row_channel[r]`` (local: a position in
    ``in_index``) at kernel tap ``row_tap[r]`` (= kh * kernel + kw), columns grouped by tap
    in ascending order. ``bias``: (O, 1, 1), or (O, H_out, W_out) when folded constant
    channels make it vary with position.
    """

    name: str
    kernel: int
    stride: int
    padding: int
    in_size: int  # input height = width
    in_total: int  # channels of the dense layer
    out_total: int
    in_index: Tensor
    out_index: Tensor
    row_channel: Tensor
    row_tap: Tensor
    indptr: Tensor
    indices: Tensor
    values: Tensor
    bias: Tensor
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def out_size(self) -> int:
        return _out_size(self.in_size, self.kernel, self.stride, self.padding)

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def rows(self) -> int:
        return int(self.row_channel.numel())

    @property
    def flops(self) -> int:
        """Per image, as the spec counts: 2 * nnz * H_out * W_out."""
        return 2 * self.nnz * self.out_size ** 2

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "name", "kernel", "stride", "padding", "in_size", "in_total", "out_total",
            "in_index", "out_index", "row_channel", "row_tap", "indptr", "indices", "values",
            "bias")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SparseConv:
        conv = cls(**{k: d[k] for k in (
            "name", "kernel", "stride", "padding", "in_size", "in_total", "out_total",
            "in_index", "out_index", "row_channel", "row_tap", "indptr", "indices", "values",
            "bias")})
        conv.validate()
        return conv

    def validate(self) -> None:
        """Shapes and index ranges; ValueError on the first inconsistency."""
        o, i, r = len(self.out_index), len(self.in_index), self.rows
        ho = self.out_size
        checks = [
            (self.kernel >= 1 and self.stride >= 1 and self.padding >= 0, "kernel/stride"),
            (ho >= 1, "output size"),
            (self.indptr.shape == (o + 1,), "indptr length"),
            (self.indices.shape == self.values.shape, "indices/values length"),
            (self.row_tap.shape == (r,), "row_tap length"),
            (self.bias.dim() == 3 and self.bias.shape[0] == o
             and self.bias.shape[1:] in ((1, 1), (ho, ho)), "bias shape"),
        ]
        for ok, what in checks:
            if not ok:
                raise ValueError(f"{self.name}: bad {what}")
        if o and (int(self.indptr[0]) != 0 or int(self.indptr[-1]) != self.nnz
                  or bool((self.indptr[1:] < self.indptr[:-1]).any())):
            raise ValueError(f"{self.name}: bad indptr")
        for t, bound, what in ((self.indices, r, "indices"), (self.row_channel, i, "row_channel"),
                               (self.row_tap, self.kernel ** 2, "row_tap"),
                               (self.in_index, self.in_total, "in_index"),
                               (self.out_index, self.out_total, "out_index")):
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= bound):
                raise ValueError(f"{self.name}: {what} out of range")
        if r and bool((self.row_tap[1:] < self.row_tap[:-1]).any()):
            raise ValueError(f"{self.name}: rows not grouped by tap")

    # --- precomputed forms of the weight, per kernel (built on first use) -------------

    def _groups(self) -> list[tuple[int, int, Tensor, int, int]]:
        """(kh, kw, local input channels, first row, end row) per tap that has rows."""
        if "groups" not in self._cache:
            groups = []
            taps = self.row_tap.tolist()
            start = 0
            while start < len(taps):
                end = start
                while end < len(taps) and taps[end] == taps[start]:
                    end += 1
                kh, kw = divmod(taps[start], self.kernel)
                groups.append((kh, kw, self.row_channel[start:end].contiguous(), start, end))
                start = end
            self._cache["groups"] = groups
        return self._cache["groups"]

    def _direct(self) -> bool:
        """A 1x1 stride-1 conv reading every computed input channel in order: the input
        itself is the dense operand, no gather needed."""
        if "direct" not in self._cache:
            self._cache["direct"] = (
                self.kernel == 1 and self.stride == 1 and self.padding == 0
                and self.rows == len(self.in_index)
                and torch.equal(self.row_channel, torch.arange(self.rows)))
        return self._cache["direct"]

    def scipy_matrix(self) -> scipy.sparse.csr_array:
        if "scipy" not in self._cache:
            self._cache["scipy"] = scipy.sparse.csr_array(
                (self.values.numpy(), self.indices.numpy().astype(np.int32),
                 self.indptr.numpy().astype(np.int32)),
                shape=(len(self.out_index), self.rows))
        return self._cache["scipy"]

    def torch_csr(self) -> Tensor:
        if "torch_csr" not in self._cache:
            with warnings.catch_warnings():  # "sparse CSR support is in beta": noise here
                warnings.simplefilter("ignore", UserWarning)
                self._cache["torch_csr"] = torch.sparse_csr_tensor(
                    self.indptr, self.indices, self.values, (len(self.out_index), self.rows),
                    check_invariants=False)
        return self._cache["torch_csr"]

    def _coo(self) -> tuple[Tensor, Tensor]:
        """(output row, column) of every stored non-zero."""
        counts = self.indptr[1:] - self.indptr[:-1]
        rows = torch.repeat_interleave(torch.arange(len(self.out_index)), counts)
        return rows, self.indices

    def tap_entries(self) -> list[tuple[int, int, Tensor, Tensor, Tensor]]:
        """Per tap: (kh, kw, local input channel, output row, value (n, 1, 1, 1))."""
        if "taps" not in self._cache:
            out_row, col = self._coo()
            tap = self.row_tap[col]
            order = torch.argsort(tap * max(1, self.rows) + col, stable=True)
            out_row, col, tap = out_row[order], col[order], tap[order]
            values = self.values[order]
            entries = []
            for t in torch.unique(tap).tolist():
                sel = tap == t
                kh, kw = divmod(t, self.kernel)
                entries.append((kh, kw, self.row_channel[col[sel]].contiguous(),
                                out_row[sel].contiguous(), values[sel].view(-1, 1, 1, 1)))
            self._cache["taps"] = entries
        return self._cache["taps"]

    def fused_operands(self) -> tuple[np.ndarray, ...]:
        """(indptr, input channel, tap row, tap column, value) per non-zero and the bias as
        (O, 1) or (O, H_out * W_out): the ``fused`` kernel's operands, as numpy arrays."""
        if "fused" not in self._cache:
            taps = self.row_tap[self.indices]
            bias = self.bias.reshape(len(self.out_index), -1)
            self._cache["fused"] = (
                self.indptr.numpy().astype(np.int64),
                self.row_channel[self.indices].numpy().astype(np.int64),
                (taps // self.kernel).numpy().astype(np.int64),
                (taps % self.kernel).numpy().astype(np.int64),
                self.values.numpy().astype(np.float32),
                np.ascontiguousarray(bias.numpy(), dtype=np.float32))
        return self._cache["fused"]

    def forward_fused(self, x: Tensor, relu: bool, residual: Tensor | None = None,
                      residual_row: Tensor | None = None) -> Tensor:
        """The ``fused`` kernel: x (len(in_index), H, W, B) contiguous -> act(conv(x) + bias
        + residual[residual_row]), (len(out_index), H_out, W_out, B). ``residual_row[o]``:
        the residual row added to output o (default: row o)."""
        from east.deploy.fused import sparse_conv_chwn

        b, o, ho = x.shape[-1], len(self.out_index), self.out_size
        out = torch.empty((o, ho, ho, b), dtype=torch.float32)
        if o == 0:
            return out
        indptr, channel, tap_h, tap_w, values, bias = self.fused_operands()
        if residual is None:
            res, rows = np.zeros((0, 1, 1, 1), np.float32), np.zeros(0, np.int64)
        else:
            res = residual.numpy()
            rows = (np.arange(o, dtype=np.int64) if residual_row is None
                    else residual_row.numpy().astype(np.int64))
        sparse_conv_chwn(x.numpy(), indptr, channel, tap_h, tap_w, values, self.stride,
                         self.padding, bias, res, rows, relu, out.numpy())
        return out

    def dense_weight(self) -> Tensor:
        """(O, I, k, k): the compacted dense weight (zeros included)."""
        if "dense" not in self._cache:
            k = self.kernel
            w = torch.zeros(len(self.out_index), len(self.in_index), k * k)
            out_row, col = self._coo()
            w[out_row, self.row_channel[col], self.row_tap[col]] = self.values
            self._cache["dense"] = w.view(len(self.out_index), len(self.in_index), k, k)
        return self._cache["dense"]

    # --- running ----------------------------------------------------------------------

    def _gather(self, x: Tensor) -> Tensor:
        """(rows, H_out, W_out, B): input row ``row_channel[r]`` shifted by tap r."""
        b = x.shape[-1]
        s, p, ho = self.stride, self.padding, self.out_size
        if p:
            x = F.pad(x, (0, 0, p, p, p, p))
        cols = torch.empty((self.rows, ho, ho, b), dtype=x.dtype)
        phases: dict[tuple[int, int], Tensor] = {}
        for kh, kw, channels, start, end in self._groups():
            if s == 1:
                src = x[:, kh:kh + ho, kw:kw + ho]
            else:
                # Phase (kh % s, kw % s) of the padded input, made contiguous once, so that
                # every tap reads unit-stride rows (a strided gather is several times slower).
                key = (kh % s, kw % s)
                if key not in phases:
                    phases[key] = x[:, key[0]::s, key[1]::s].contiguous()
                src = phases[key][:, kh // s:kh // s + ho, kw // s:kw // s + ho]
            torch.index_select(src, 0, channels, out=cols[start:end])
        return cols

    def forward_chwn(self, x: Tensor, kernel: str) -> Tensor:
        """x: (len(in_index), H, W, B) -> (len(out_index), H_out, W_out, B), contiguous,
        bias added."""
        b = x.shape[-1]
        o, ho = len(self.out_index), self.out_size
        bias = self.bias.unsqueeze(-1)
        if self.rows == 0 or o == 0:
            return _filled(bias, (o, ho, ho, b))
        if kernel == "index_add":
            return self._forward_index_add(x, bias)
        cols = x.reshape(self.rows, -1) if self._direct() else self._gather(x).view(self.rows, -1)
        if kernel == "scipy":
            out = torch.from_numpy(self.scipy_matrix() @ cols.numpy())
        elif kernel == "torch_csr":
            out = torch.sparse.mm(self.torch_csr(), cols)
        else:
            raise ValueError(f"kernel {kernel!r} does not run channel-major")
        return out.view(o, ho, ho, b).add_(bias)

    def _forward_index_add(self, x: Tensor, bias: Tensor) -> Tensor:
        b = x.shape[-1]
        s, p, ho = self.stride, self.padding, self.out_size
        if p:
            x = F.pad(x, (0, 0, p, p, p, p))
        out = _filled(bias, (len(self.out_index), ho, ho, b))
        span = s * (ho - 1) + 1
        for kh, kw, channels, rows, values in self.tap_entries():
            window = x[:, kh:kh + span:s, kw:kw + span:s]
            out.index_add_(0, rows, window.index_select(0, channels).mul_(values))
        return out

    def forward_nchw(self, x: Tensor) -> Tensor:
        """The ``compact_dense`` kernel: x (B, len(in_index), H, W), NCHW."""
        b = x.shape[0]
        o, ho = len(self.out_index), self.out_size
        if self.rows == 0 or o == 0 or x.shape[1] == 0:
            return _filled(self.bias.unsqueeze(0), (b, o, ho, ho))
        out = F.conv2d(x, self.dense_weight(), stride=self.stride, padding=self.padding)
        return out.add_(self.bias.unsqueeze(0))


@dataclass
class SparseLinear:
    """The classifier on the computed features: CSR weight (classes x len(in_index))."""

    in_total: int
    in_index: Tensor
    indptr: Tensor
    indices: Tensor
    values: Tensor
    bias: Tensor  # (classes,)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def flops(self) -> int:
        return 2 * self.nnz

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("in_total", "in_index", "indptr", "indices",
                                               "values", "bias")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SparseLinear:
        fc = cls(**{k: d[k] for k in ("in_total", "in_index", "indptr", "indices", "values",
                                       "bias")})
        classes = fc.bias.numel()
        if fc.indptr.shape != (classes + 1,) or fc.indices.shape != fc.values.shape:
            raise ValueError("fc: bad CSR shapes")
        if fc.indices.numel() and (int(fc.indices.min()) < 0
                                   or int(fc.indices.max()) >= len(fc.in_index)):
            raise ValueError("fc: indices out of range")
        if int(fc.indptr[-1]) != fc.nnz:
            raise ValueError("fc: bad indptr")
        return fc

    def dense_weight(self) -> Tensor:
        if "dense" not in self._cache:
            w = torch.zeros(self.bias.numel(), len(self.in_index))
            counts = self.indptr[1:] - self.indptr[:-1]
            rows = torch.repeat_interleave(torch.arange(self.bias.numel()), counts)
            w[rows, self.indices] = self.values
            self._cache["dense"] = w
        return self._cache["dense"]

    def __call__(self, features: Tensor) -> Tensor:
        """features (B, len(in_index)) -> logits (B, classes)."""
        return torch.addmm(self.bias, features, self.dense_weight().t())


@dataclass
class SparseBlock:
    """A residual block: ``convs`` in order (ReLU after each but the last), the shortcut
    (``downsample`` conv, or the identity on channels ``identity_index`` of the input),
    then ReLU. Computed channels: input ``convs[0].in_index``, output ``convs[-1].out_index``."""

    name: str
    convs: list[SparseConv]
    downsample: SparseConv | None
    in_index: Tensor
    out_index: Tensor
    identity_index: Tensor | None = None  # local positions in in_index (identity shortcut)

    def __post_init__(self) -> None:
        for a, b in zip(self.convs, self.convs[1:], strict=False):
            if not torch.equal(a.out_index, b.in_index):
                raise ValueError(f"{self.name}: {a.name} -> {b.name}: channel sets differ")
        if not torch.equal(self.convs[0].in_index, self.in_index) or not torch.equal(
                self.convs[-1].out_index, self.out_index):
            raise ValueError(f"{self.name}: block channel sets differ from its convs'")
        if self.downsample is not None:
            if not (torch.equal(self.downsample.in_index, self.in_index)
                    and torch.equal(self.downsample.out_index, self.out_index)):
                raise ValueError(f"{self.name}: shortcut channel sets differ")
            return
        position = {int(c): j for j, c in enumerate(self.in_index.tolist())}
        missing = [int(c) for c in self.out_index.tolist() if int(c) not in position]
        if missing:
            raise ValueError(f"{self.name}: identity shortcut lacks input channel {missing[0]}")
        self.identity_index = torch.tensor([position[int(c)] for c in self.out_index.tolist()],
                                           dtype=torch.int64)
        if torch.equal(self.identity_index, torch.arange(len(self.in_index))):
            self.identity_index = None  # the whole input, in order: add it as is

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "convs": [c.to_dict() for c in self.convs],
                "downsample": None if self.downsample is None else self.downsample.to_dict(),
                "in_index": self.in_index, "out_index": self.out_index}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SparseBlock:
        down = d["downsample"]
        return cls(d["name"], [SparseConv.from_dict(c) for c in d["convs"]],
                   None if down is None else SparseConv.from_dict(down), d["in_index"],
                   d["out_index"])


# --------------------------------------------------------------------------- the model


class SparseResNet:
    """A compiled sparse ResNet; call it on normalised images (B, C, S, S) float32 -> logits.

    ``trace``: a dict that, when given, receives every conv's output (after the folded BN,
    before ReLU and residual add) as (B, len(out_index), H, W), keyed by the plain model's
    module name: the per-layer check against the dense network.
    """

    def __init__(self, stem: SparseConv, maxpool: bool, blocks: Sequence[SparseBlock],
                 fc: SparseLinear, meta: dict[str, Any], kernel: str = "fused") -> None:
        self.stem, self.maxpool, self.blocks, self.fc = stem, maxpool, list(blocks), fc
        self.meta = dict(meta)
        self.kernel = kernel
        self.chunk = DEFAULT_CHUNK
        nodes = [stem.out_index] + [b.out_index for b in self.blocks]
        ins = [b.in_index for b in self.blocks] + [fc.in_index]
        for i, (produced, needed) in enumerate(zip(nodes, ins, strict=True)):
            if not torch.equal(produced, needed):
                raise ValueError(f"channel sets differ between stages at node {i}")

    @property
    def kernel(self) -> str:
        return self._kernel

    @kernel.setter
    def kernel(self, name: str) -> None:
        if name not in KERNELS:
            raise ValueError(f"unknown kernel {name!r}; expected one of {KERNELS}")
        self._kernel = name

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (int(self.meta["in_channels"]), self.stem.in_size, self.stem.in_size)

    @property
    def num_classes(self) -> int:
        return int(self.fc.bias.numel())

    def convs(self) -> list[SparseConv]:
        out = [self.stem]
        for block in self.blocks:
            out += block.convs + ([block.downsample] if block.downsample is not None else [])
        return out

    @property
    def nnz(self) -> int:
        return sum(c.nnz for c in self.convs()) + self.fc.nnz

    @property
    def flops(self) -> int:
        return sum(c.flops for c in self.convs()) + self.fc.flops

    def channel_summary(self) -> dict[str, Any]:
        """Computed vs total channels of every activation (the stem output and each block's
        inner activations and output)."""
        nodes: list[tuple[str, int, int]] = [
            (self.stem.name, len(self.stem.out_index), self.stem.out_total)]
        for block in self.blocks:
            for conv in block.convs[:-1]:
                nodes.append((conv.name, len(conv.out_index), conv.out_total))
            last = block.convs[-1]
            nodes.append((block.name, len(last.out_index), last.out_total))
        computed = sum(n[1] for n in nodes)
        total = sum(n[2] for n in nodes)
        return {"computed": computed, "total": total, "dead": total - computed,
                "nodes": [{"name": n, "computed": c, "total": t} for n, c, t in nodes]}

    def __call__(self, images: Tensor, trace: dict[str, Tensor] | None = None) -> Tensor:
        expected = self.input_shape
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"expected images of shape (B, {', '.join(map(str, expected))}), "
                             f"got {tuple(images.shape)}")
        x = images.detach().to(device="cpu", dtype=torch.float32)
        with torch.no_grad():
            if self.kernel == "compact_dense":
                return self._forward_nchw(x.contiguous(), trace)
            if trace is not None or x.shape[0] <= self.chunk:
                return self._forward_chwn(x.permute(1, 2, 3, 0).contiguous(), trace)
            # Batch slices small enough for each layer's working set to stay in cache.
            parts = x.split(self.chunk)

            def run(part: Tensor) -> Tensor:
                return self._forward_chwn(part.permute(1, 2, 3, 0).contiguous(), None)

            workers = min(len(parts), torch.get_num_threads())
            if self.kernel != "fused" or workers < 2:
                return torch.cat([run(part) for part in parts])
            # The fused kernel releases the GIL: slices run side by side on torch's threads.
            for layer in self.convs():
                layer.fused_operands()  # built once, before the threads share the cache
            with ThreadPoolExecutor(workers) as pool, torch_threads(1):
                return torch.cat(list(pool.map(run, parts)))

    def _forward_chwn(self, x: Tensor, trace: dict[str, Tensor] | None) -> Tensor:
        """Channel-major pass; x (C, S, S, B). (Writing each activation straight into a
        zero-ringed buffer instead of padding it in the next conv measured no faster.)"""
        kernel = self.kernel
        fused = kernel == "fused" and trace is None

        def conv(layer: SparseConv, inp: Tensor, relu: bool = False,
                 residual: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
            if fused:
                return layer.forward_fused(inp, relu, residual, rows)
            out = (layer.forward_fused(inp, False) if kernel == "fused"
                   else layer.forward_chwn(inp, kernel))
            if trace is not None:
                trace[layer.name] = out.permute(3, 0, 1, 2).clone()
            if residual is not None:
                out.add_(residual if rows is None else residual.index_select(0, rows))
            return torch.relu_(out) if relu else out

        x = conv(self.stem, x, relu=True)
        if self.maxpool:
            pooled = F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=3, stride=2, padding=1)
            x = pooled.permute(0, 2, 3, 1).contiguous()
        for block in self.blocks:
            if block.downsample is not None:
                shortcut, rows = conv(block.downsample, x), None
            else:
                shortcut, rows = x, block.identity_index
            out = x
            for layer in block.convs[:-1]:
                out = conv(layer, out, relu=True)
            x = conv(block.convs[-1], out, relu=True, residual=shortcut, rows=rows)
        features = x.mean(dim=(1, 2)).t()  # (B, C)
        return self.fc(features)

    def _forward_nchw(self, x: Tensor, trace: dict[str, Tensor] | None) -> Tensor:
        def conv(layer: SparseConv, inp: Tensor) -> Tensor:
            out = layer.forward_nchw(inp)
            if trace is not None:
                trace[layer.name] = out.clone()
            return out

        x = torch.relu_(conv(self.stem, x))
        if self.maxpool:
            x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        for block in self.blocks:
            shortcut = (conv(block.downsample, x) if block.downsample is not None
                        else x if block.identity_index is None
                        else x.index_select(1, block.identity_index))
            out = x
            for layer in block.convs[:-1]:
                out = torch.relu_(conv(layer, out))
            out = conv(block.convs[-1], out)
            x = torch.relu_(out.add_(shortcut))
        return self.fc(x.mean(dim=(2, 3)))

    # --- serialisation -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "meta": self.meta, "stem": self.stem.to_dict(),
                "maxpool": self.maxpool, "blocks": [b.to_dict() for b in self.blocks],
                "fc": self.fc.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], kernel: str = "fused") -> SparseResNet:
        return cls(SparseConv.from_dict(d["stem"]), bool(d["maxpool"]),
                   [SparseBlock.from_dict(b) for b in d["blocks"]],
                   SparseLinear.from_dict(d["fc"]), d["meta"], kernel)


def save_sparse(model: SparseResNet, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` atomically (``torch.save`` of plain containers and tensors)."""
    from east.io import atomic_write

    blob = model.to_dict()
    return atomic_write(path, lambda handle: torch.save(blob, handle))


def load_sparse(path: str | os.PathLike[str], kernel: str = "fused") -> SparseResNet:
    """Read a ``.east`` file (``weights_only=True``: no code runs); every problem is one
    ``EastError`` line naming the file."""
    from east.io import torch_load

    path = Path(path)
    blob = torch_load(path, what="sparse model")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise EastError(f"{path}: not an east sparse model (format {found!r}, expected "
                        f"{FORMAT!r}); write one with `east export RUN_DIR --format sparse`")
    try:
        return SparseResNet.from_dict(blob, kernel)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        raise EastError(f"{path}: damaged sparse model ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''})") from None


# --------------------------------------------------------------------------- compiling


def _bn_fold(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """(scale, shift) with bn(y) == scale * y + shift in eval mode."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias.detach() - bn.running_mean * scale


def _computed_inputs(effective: Tensor) -> Tensor:
    """Input channels some effective weight of this layer reads (bool, (I,))."""
    return effective.reshape(effective.shape[0], effective.shape[1], -1).any(-1).any(0)


def _indices(flags: Tensor) -> Tensor:
    return _index(torch.nonzero(flags).flatten())


def _sparse_conv(name: str, conv: nn.Conv2d, bn: nn.BatchNorm2d, probe: Tensor,
                 in_index: Tensor, out_index: Tensor) -> SparseConv:
    """BN-folded ``conv`` between computed channel sets; the contribution of every input
    channel outside ``in_index`` (constant by construction) folded into the bias, from
    ``probe``, the conv's input on the probe image (1, I, H, W)."""
    weight = conv.weight.detach().to(torch.float32)
    o_total, i_total, k, _ = weight.shape
    stride, padding = conv.stride[0], conv.padding[0]
    scale, shift = _bn_fold(bn)
    outside = torch.ones(i_total, dtype=torch.bool)
    outside[in_index] = False
    constant = F.conv2d(probe * outside.view(1, -1, 1, 1).to(probe.dtype), weight,
                        stride=stride, padding=padding)[0][out_index]
    bias = scale[out_index].view(-1, 1, 1) * constant + shift[out_index].view(-1, 1, 1)
    if bool((bias == bias[:, :1, :1]).all()):
        bias = bias[:, :1, :1]  # the common case: no border effect
    w = weight[out_index][:, in_index] * scale[out_index].view(-1, 1, 1, 1)
    n_out, n_in = w.shape[:2]
    # Rows (input channel, tap) holding any non-zero, grouped by tap, channels ascending.
    flat = w.reshape(n_out, n_in, k * k)
    used = (flat != 0).any(0)  # (n_in, taps)
    tap_major = used.t().reshape(-1)
    rows = torch.nonzero(tap_major).flatten()
    row_tap, row_channel = rows // max(1, n_in), rows % max(1, n_in)
    column = torch.full((k * k * n_in,), -1, dtype=torch.int64)
    column[rows] = torch.arange(len(rows))
    nz = torch.nonzero(flat)  # (n, 3): out, in, tap
    cols = column[nz[:, 2] * n_in + nz[:, 1]]
    # CSR order: by output row, columns ascending within a row (scipy and MKL expect it).
    order = torch.argsort(nz[:, 0] * max(1, len(rows)) + cols)
    out_rows, cols = nz[order, 0], cols[order]
    values = flat[out_rows, nz[order, 1], nz[order, 2]]
    indptr = torch.zeros(n_out + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(torch.bincount(out_rows, minlength=n_out), 0)
    return SparseConv(
        name=name, kernel=k, stride=stride, padding=padding, in_size=int(probe.shape[-1]),
        in_total=i_total, out_total=o_total, in_index=_index(in_index),
        out_index=_index(out_index), row_channel=_index(row_channel), row_tap=_index(row_tap),
        indptr=indptr, indices=_index(cols), values=values.contiguous().to(torch.float32),
        bias=bias.contiguous().to(torch.float32))


def _probe_inputs(plain: nn.Module, names: list[str], input_shape: tuple[int, ...]
                  ) -> dict[str, Tensor]:
    """Each named module's input on one all-zero image (any image would do for the
    channels read from it: they are the input-independent ones)."""
    seen: dict[str, Tensor] = {}
    handles = []
    for name in names:
        def hook(_m: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            seen[name] = args[0].detach().clone()
        handles.append(plain.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            plain(torch.zeros((1, *input_shape)))
    finally:
        for handle in handles:
            handle.remove()
    return seen


def compile_sparse(model: nn.Module, *, image_size: int, mean: Sequence[float],
                   std: Sequence[float], resize: int | None = None,
                   meta: dict[str, Any] | None = None, check: bool = True) -> SparseResNet:
    """The sparse inference model of an ``EastResNet`` (shared or not) at beta = 0.

    ``mean``/``std``: the pixel normalisation (per channel, pixels in [0, 1]) the model was
    trained with, stored for deployers; ``resize``: the eval resize before the centre crop
    (ImageNet-stem models). ``check``: compare logits with the dense materialised model on
    a random batch and raise RuntimeError on a mismatch. Raises ValueError when beta > 0.
    """
    from east.flops import analyze
    from east.models.export import nonzero_counts, plain_model
    from east.models.resnet import BasicBlock, Bottleneck

    plain = plain_model(model)  # ValueError if beta > 0
    input_shape = (plain.in_channels, image_size, image_size)
    analysis = analyze(plain, input_shape)
    effective = analysis.effective_masks

    stages = [getattr(plain, name) for name in plain.stage_names]
    blocks = [(f"{stage_name}.{i}", block) for stage_name, stage in
              zip(plain.stage_names, stages, strict=True) for i, block in enumerate(stage)]
    conv_names = ["conv1"]
    for name, block in blocks:
        parts = ("conv1", "conv2", "conv3") if isinstance(block, Bottleneck) else (
            "conv1", "conv2")
        conv_names += [f"{name}.{p}" for p in parts]
        if block.downsample is not None:
            conv_names.append(f"{name}.downsample.0")
    probes = _probe_inputs(plain, [*conv_names, "fc"], input_shape)

    # Computed channels, backwards from the classifier (see the module docstring).
    fc_in = _computed_inputs(effective["fc.weight"].unsqueeze(-1))
    node = fc_in
    plans: list[tuple[str, nn.Module, list[Tensor], Tensor, Tensor]] = []
    for name, block in reversed(blocks):
        parts = ("conv1", "conv2", "conv3") if isinstance(block, Bottleneck) else (
            "conv1", "conv2")
        if not isinstance(block, (BasicBlock, Bottleneck)):
            raise ValueError(f"{name}: unsupported block {type(block).__name__}")
        inner = [_computed_inputs(effective[f"{name}.{p}.weight"]) for p in parts[1:]]
        block_in = _computed_inputs(effective[f"{name}.conv1.weight"])
        if block.downsample is not None:
            block_in = block_in | _computed_inputs(effective[f"{name}.downsample.0.weight"])
        else:
            block_in = block_in | node
        plans.append((name, block, inner, block_in, node))
        node = block_in
    plans.reverse()

    stem = _sparse_conv("conv1", plain.conv1, plain.bn1, probes["conv1"],
                        torch.arange(plain.in_channels), _indices(node))
    sparse_blocks = []
    for name, block, inner, block_in, block_out in plans:
        parts = ("conv1", "conv2", "conv3") if isinstance(block, Bottleneck) else (
            "conv1", "conv2")
        sets = [_indices(block_in), *(_indices(s) for s in inner), _indices(block_out)]
        convs = [
            _sparse_conv(f"{name}.{p}", getattr(block, p), getattr(block, f"bn{j + 1}"),
                         probes[f"{name}.{p}"], sets[j], sets[j + 1])
            for j, p in enumerate(parts)
        ]
        down = None
        if block.downsample is not None:
            down = _sparse_conv(f"{name}.downsample.0", block.downsample[0],
                                block.downsample[1], probes[f"{name}.downsample.0"], sets[0],
                                sets[-1])
        sparse_blocks.append(SparseBlock(name, convs, down, sets[0], sets[-1]))

    fc_weight = plain.fc.weight.detach().to(torch.float32)
    keep = _indices(fc_in)
    pooled = probes["fc"][0]
    outside = torch.ones(fc_weight.shape[1], dtype=torch.bool)
    outside[keep] = False
    fc_bias = fc_weight[:, outside] @ pooled[outside]
    if plain.fc.bias is not None:
        fc_bias = fc_bias + plain.fc.bias.detach()
    w = fc_weight[:, keep]
    nz = torch.nonzero(w)
    indptr = torch.zeros(w.shape[0] + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(torch.bincount(nz[:, 0], minlength=w.shape[0]), 0)
    fc = SparseLinear(fc_weight.shape[1], keep, indptr, _index(nz[:, 1]),
                      w[nz[:, 0], nz[:, 1]].contiguous(), fc_bias.contiguous())

    counts = nonzero_counts(model) if hasattr(model, "masked_parameters") else None
    info: dict[str, Any] = {
        "arch": plain.arch, "stem": plain.stem, "num_classes": plain.num_classes,
        "in_channels": plain.in_channels, "image_size": image_size,
        "mean": [float(v) for v in mean], "std": [float(v) for v in std],
        "resize": resize, **(meta or {}),
    }
    sparse = SparseResNet(stem, isinstance(plain.maxpool, nn.MaxPool2d), sparse_blocks, fc,
                          info)
    info["nnz"] = {**(counts.as_dict() if counts is not None else {}),
                   "nnz_stored": sparse.nnz, "nnz_effective": analysis.effective_nnz}
    info["flops"] = {"dense": analysis.flops_dense, "materialized": analysis.flops,
                     "stored": sparse.flops}
    info["channels"] = {k: v for k, v in sparse.channel_summary().items() if k != "nodes"}
    sparse.meta = info
    if check:
        sparse.meta["check_max_abs_diff"] = check_against(sparse, plain)
    return sparse


def check_against(sparse: SparseResNet, dense: nn.Module, batch: int = 4, seed: int = 0
                  ) -> float:
    """Max |logit difference| on a random normal batch; RuntimeError beyond fp32 tolerance."""
    x = torch.randn((batch, *sparse.input_shape), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want = dense.eval()(x)
    got = sparse(x)
    diff = float((got - want).abs().max()) if want.numel() else 0.0
    bound = CHECK_ATOL + CHECK_RTOL * float(want.abs().max()) if want.numel() else 0.0
    if not math.isfinite(diff) or diff > bound:
        raise RuntimeError(f"sparse model disagrees with the dense model (max |diff| {diff:.3g}"
                           f" > {bound:.3g})")
    return diff
