"""BatchNorm over the global batch under data parallelism.

Every rank normalises its shard with the statistics of the whole batch (all ranks' shards),
as one process would with the whole batch: a run's results then do not depend on its world
size beyond float summation order, which is why ``train.gpus`` is an execution knob, not
part of a cell's identity. (With per-rank statistics, as plain DDP has, a 4-GPU run is
another experiment than a 1-GPU run: tests/test_ddp.py measured the difference.)

On CUDA this is torch's ``nn.SyncBatchNorm`` (fused kernels). Those kernels do not exist on
the CPU and its module refuses CPU input, so CPU (gloo) runs use ``GlobalBatchNorm2d``: the
same forward and backward from plain tensor ops, with one all-gather of each rank's (count,
mean, variance) per layer forward and one all-reduce of two per-channel sums backward. Eval
mode uses the running statistics, which are then identical on every rank.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

_DIMS = (0, 2, 3)  # every axis but the channel of an NCHW (or channels-last) batch


def _per_channel(t: Tensor) -> Tensor:
    return t.view(1, -1, 1, 1)


class _GlobalBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor,
                eps: float, world: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        channels = x.shape[1]
        count = x.numel() // channels
        if count:
            var, mean = torch.var_mean(x, dim=_DIMS, correction=0)
        else:  # an empty shard still takes part in the collectives
            var = mean = x.new_zeros(channels)
        local = torch.cat([mean.new_full((1,), float(count)), mean, var])
        gathered = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(gathered, local)
        stats = torch.stack(gathered)
        counts, means, variances = stats[:, :1], stats[:, 1:channels + 1], stats[:, channels + 1:]
        total = counts.sum()
        # Chan et al.'s pairwise combination: exact whatever the shard sizes (empty included).
        global_mean = (counts * means).sum(0) / total
        global_var = (counts * (variances + (means - global_mean) ** 2)).sum(0) / total
        invstd = torch.rsqrt(global_var + eps)
        y = (x - _per_channel(global_mean)) * _per_channel(invstd * weight) + _per_channel(bias)
        ctx.save_for_backward(x, weight, global_mean, invstd, total)
        ctx.mark_non_differentiable(global_mean, global_var, total)
        return y, global_mean, global_var, total

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor, *_: Any) -> tuple[Tensor | None, ...]:
        x, weight, mean, invstd, total = ctx.saved_tensors
        x_hat = (x - _per_channel(mean)) * _per_channel(invstd)
        sum_dy = grad_y.sum(dim=_DIMS)
        sum_dy_xhat = (grad_y * x_hat).sum(dim=_DIMS)
        # The input gradient needs the sums over the whole batch; weight and bias keep this
        # rank's (the gradient all-reduce adds the ranks' up, as for every other parameter).
        both = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(both)
        global_dy, global_dy_xhat = both.split(sum_dy.numel())
        grad_x = _per_channel(weight * invstd) * (
            grad_y - _per_channel(global_dy / total) - x_hat * _per_channel(global_dy_xhat / total)
        )
        return grad_x, sum_dy_xhat, sum_dy, None, None


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode statistics are the global batch's when a
    process group of more than one rank exists; otherwise exactly ``nn.BatchNorm2d``."""

    def forward(self, x: Tensor) -> Tensor:
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if not self.training or world == 1:
            return super().forward(x)
        if not (self.affine and self.track_running_stats):
            raise NotImplementedError("GlobalBatchNorm2d needs affine=True and running stats")
        y, mean, var, total = _GlobalBatchNormFunction.apply(x, self.weight, self.bias,
                                                             self.eps, world)
        with torch.no_grad():
            self.num_batches_tracked += 1
            factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                      else self.momentum)
            unbiased = var * (total / (total - 1).clamp(min=1))
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return y


def use_global_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """Give every ``BatchNorm2d`` of ``model`` the global batch's statistics (call before
    the optimizer is built: on CUDA the layers are replaced by ``nn.SyncBatchNorm``).
    Parameters, buffers and state-dict keys are unchanged."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = GlobalBatchNorm2d  # same state, new forward
    return model
