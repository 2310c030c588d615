"""GlobalBatchNorm2d on gloo ranks equals one process's nn.BatchNorm2d on the whole batch:
outputs, input/weight/bias gradients, running statistics; uneven and empty shards."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from east.data.positioned import shard_range
from east.train.distributed import free_port

CHANNELS = 5
# (batch, world): shards 3/2/2, and 1/1/0 (one rank empty).
CASES = ((7, 3), (2, 3))


def _batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(size)
    x = torch.randn(size, CHANNELS, 4, 3, generator=generator, dtype=torch.float64) * 3 + 1
    weights = torch.randn(size, CHANNELS, 4, 3, generator=generator, dtype=torch.float64)
    return x, weights


def _bn() -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(CHANNELS).double()
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 1.5, CHANNELS))
        bn.bias.copy_(torch.linspace(-1, 1, CHANNELS))
    return bn


def _step(bn: nn.Module, x: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    y = bn(x)
    (y * weights).sum().backward()
    return {"y": y.detach(), "grad_x": x.grad, "grad_w": bn.weight.grad,
            "grad_b": bn.bias.grad, "running_mean": bn.running_mean.clone(),
            "running_var": bn.running_var.clone()}


def _rank(rank: int, world: int, port: int, dump: str) -> None:
    from east.train.global_bn import use_global_batch_norm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = []
    for batch, _ in CASES:
        x, weights = _batch(batch)
        start, stop = shard_range(0, batch, rank, world)
        bn = use_global_batch_norm(nn.Sequential(_bn()), torch.device("cpu"))[0]
        bn.train()
        results.append(_step(bn, x[start:stop], weights[start:stop]))
    torch.save(results, Path(dump) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_ranks_normalise_with_the_whole_batchs_statistics(tmp_path: Path) -> None:
    world = CASES[0][1]
    mp.spawn(_rank, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    for case, (batch, _) in enumerate(CASES):
        x, weights = _batch(batch)
        reference = _step(_bn().train(), x, weights)
        parts = [ranks[r][case] for r in range(world)]
        assert [p["y"].shape[0] for p in parts] == [
            shard_range(0, batch, r, world)[1] - shard_range(0, batch, r, world)[0]
            for r in range(world)]
        torch.testing.assert_close(torch.cat([p["y"] for p in parts]), reference["y"])
        torch.testing.assert_close(torch.cat([p["grad_x"] for p in parts]), reference["grad_x"])
        # Each rank's weight/bias gradient is its shard's part; the ranks' sum is the whole.
        for key in ("grad_w", "grad_b"):
            torch.testing.assert_close(sum(p[key] for p in parts), reference[key])
        for key in ("running_mean", "running_var"):  # unbiased over the whole batch
            for p in parts:
                torch.testing.assert_close(p[key], reference[key])


def test_one_process_is_plain_batch_norm() -> None:
    from east.train.global_bn import GlobalBatchNorm2d, use_global_batch_norm

    plain, converted = _bn(), use_global_batch_norm(nn.Sequential(_bn()), torch.device("cpu"))
    assert type(converted[0]) is GlobalBatchNorm2d
    assert converted[0].state_dict().keys() == plain.state_dict().keys()
    x, weights = _batch(6)
    a, b = _step(plain.train(), x, weights), _step(converted[0].train(), x, weights)
    assert all(torch.equal(a[k], b[k]) for k in a)  # no process group: bit for bit
