"""The overlapped, bucketed gradient all-reduce (east.train.grad_reducer) against the hand
all-reduce it replaces, on two gloo ranks on the CPU: the same sums bit for bit, the same
``grad = None`` parameters, buckets launched during backward, the empty-shard fallback, and
whole RigL/EAST training steps that end with identical masks and weights."""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn

from east.data.positioned import shard_range
from east.train import distributed as D
from east.train.distributed import free_port
from east.train.grad_reducer import GradReducer, every_shard_nonempty
from east.train.step import StepContext, train_step

WORLD = 2


class Blocked(torch.autograd.Function):
    """x * w whose backward gives w no gradient: w is in the graph, its hook fires with
    ``grad = None``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor) -> Tensor:
        return x * w.detach()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


class Net(nn.Module):
    """Linear layers where ``unused`` never takes part, ``rank0_only`` only on rank 0 and
    ``blocked`` is in the graph without a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.unused = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)
        self.rank0_only = nn.Linear(16, 16)
        self.blocked = nn.Parameter(torch.ones(16))
        self.c = nn.Linear(16, 4)

    def forward(self, x: Tensor, rank: int) -> Tensor:
        h = torch.relu(self.b(torch.relu(self.a(x))))
        if rank == 0:
            h = h + self.rank0_only(h)
        return self.c(Blocked.apply(h, self.blocked))


def _grads(params: list[nn.Parameter]) -> list[Tensor | None]:
    return [None if p.grad is None else p.grad.detach().clone() for p in params]


def _same(a: list[Tensor | None], b: list[Tensor | None]) -> bool:
    return all((x is None and y is None) or (x is not None and y is not None
                                             and torch.equal(x, y)) for x, y in zip(a, b,
                                                                                    strict=True))


def _check_hooks(rank: int, env: D.DistEnv) -> dict[str, Any]:
    torch.manual_seed(0)
    model = Net()
    params = list(model.parameters())
    reducer = GradReducer(params, bucket_bytes=16 * 16 * 4)  # about one weight per bucket
    out: dict[str, Any] = {"buckets": len(reducer.buckets), "same": [], "launched": []}
    for trial in range(3):
        g = torch.Generator().manual_seed(100 * trial + rank)  # different data per rank
        x, y = torch.randn(5, 8, generator=g), torch.randint(0, 4, (5,), generator=g)
        for p in params:
            p.grad = None
        F.cross_entropy(model(x, rank), y).backward()
        D.all_reduce_gradients(params, env)
        hand = _grads(params)
        for p in params:
            p.grad = None
        reducer.backward(F.cross_entropy(model(x, rank), y))
        out["launched"].append(reducer.launched)  # before finish(): during backward
        reducer.finish()
        out["same"].append(_same(hand, _grads(params)))
        out["none"] = [p.grad is None for p in params]
    # Disarmed, the hooks do nothing: a plain backward keeps this rank's own gradients.
    g = torch.Generator().manual_seed(7 + rank)
    x, y = torch.randn(5, 8, generator=g), torch.randint(0, 4, (5,), generator=g)
    twin = copy.deepcopy(model)
    out["copy_has_hooks"] = any(p._post_accumulate_grad_hooks for p in twin.parameters())
    for module in (model, twin):
        for p in module.parameters():
            p.grad = None
        F.cross_entropy(module(x, rank), y).backward()
    out["disarmed_local"] = _same(_grads(params), _grads(list(twin.parameters())))
    return out


def _contexts(env: D.DistEnv, sparse: dict[str, Any],
              when: str) -> tuple[StepContext, StepContext, int]:
    """The same training objects twice (hand all-reduce, reducer), built as the loop does,
    and the first step to run; small buckets so that resnet20's gradient spans several."""
    from east.bench.workload import build_step_setup, resolve_bench_device

    dev = resolve_bench_device("cpu")
    ctxs = []
    for overlap in (False, True):
        setup = build_step_setup("test", "resnet20", sparse, dev, batch_size=8, when=when)
        ctxs.append(dataclasses.replace(setup.ctx, env=env, overlap_grads=overlap,
                                        bucket_bytes=64 * 2**10))
    return ctxs[0], ctxs[1], setup.step


def _train(rank: int, env: D.DistEnv, sparse: dict[str, Any], when: str, steps: int,
           batches: list[int]) -> dict[str, Any]:
    hand, overlapped, first_step = _contexts(env, sparse, when)
    assert hand.reducer is None and overlapped.reducer is not None
    calls = {"hand": 0}
    original = D.all_reduce_gradients

    def counting(params: list[nn.Parameter], env: D.DistEnv) -> None:
        calls["hand"] += 1
        original(params, env)

    D.all_reduce_gradients = counting
    out: dict[str, Any] = {"hand_calls": [], "launched": [], "buckets":
                           len(overlapped.reducer.buckets)}
    try:
        for i in range(steps):
            step = first_step + i
            size = batches[i % len(batches)]
            g = torch.Generator().manual_seed(i)
            x, y = torch.randn(size, 3, 32, 32, generator=g), torch.randint(0, 10, (size,),
                                                                            generator=g)
            first, stop = shard_range(0, size, rank, WORLD)
            grads = []
            for ctx in (hand, overlapped):
                before = calls["hand"]
                train_step(ctx, x[first:stop], y[first:stop], step, size)
                grads.append(_grads(ctx.params))
                if ctx is overlapped:
                    out["hand_calls"].append(calls["hand"] - before)
                    out["launched"].append(ctx.reducer.launched_in_backward)
            out.setdefault("same_grads", []).append(_same(*grads))
            out.setdefault("without_grad", []).append(sum(g is None for g in grads[1]))
    finally:
        D.all_reduce_gradients = original
    out["states"] = [{k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
                     for ctx in (hand, overlapped)]
    out["updates"] = overlapped.sparsifier.density_log()["updates"]
    return out


def _worker(rank: int, port: int, dump: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    env = D.DistEnv(rank=rank, world_size=WORLD, local_rank=rank)
    D.init_distributed(env, torch.device("cpu"))
    try:
        rigl = {"method": "rigl", "sparsity": 0.9, "update_interval": 2, "update_end": "100%"}
        result = {
            "hooks": _check_hooks(rank, env),
            # Global batches of 16 (8 per rank) and one of 1: rank 1's shard is empty.
            "rigl": _train(rank, env, rigl, "quiet", 5, [16, 16, 1, 16, 16]),
            "east": _train(rank, env, {"method": "east", "sparsity": 0.9}, "phase_out", 2,
                           [16]),
        }
        torch.save(result, Path(dump) / f"rank{rank}.pt")
    finally:
        D.shutdown(True)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    dump = tmp_path_factory.mktemp("reducer")
    mp.spawn(_worker, args=(free_port(), str(dump)), nprocs=WORLD, join=True)
    return [torch.load(dump / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_every_shard_nonempty_follows_shard_range() -> None:
    for world in (1, 2, 3, 8):
        for batch in range(0, 20):
            sizes = [b - a for a, b in (shard_range(0, batch, r, world) for r in range(world))]
            assert every_shard_nonempty(batch, world) == (min(sizes) > 0)


def test_reducer_sums_equal_the_hand_all_reduce_bit_for_bit(ranks) -> None:
    for r in ranks:
        hooks = r["hooks"]
        assert hooks["buckets"] >= 3
        assert hooks["same"] == [True, True, True]
        # Overlap: buckets went out while backward ran, not only in finish().
        assert all(n >= 1 for n in hooks["launched"])
    names = [n for n, _ in Net().named_parameters()]
    none = {n for n, flag in zip(names, ranks[0]["hooks"]["none"], strict=True) if flag}
    # Unused on both ranks: no gradient; used on rank 0 only: a gradient on both.
    assert none == {"unused.weight", "unused.bias", "blocked"}
    assert ranks[0]["hooks"]["none"] == ranks[1]["hooks"]["none"]


def test_disarmed_hooks_leave_other_backward_passes_alone(ranks) -> None:
    for r in ranks:
        assert r["hooks"]["disarmed_local"]
        assert not r["hooks"]["copy_has_hooks"]  # scoring copies (deepcopy) carry none


def test_rigl_steps_match_the_hand_all_reduce_and_fall_back_on_an_empty_shard(ranks) -> None:
    for r in ranks:
        rigl = r["rigl"]
        assert rigl["buckets"] >= 3
        assert rigl["same_grads"] == [True] * 5
        assert rigl["without_grad"] == [0] * 5
        # The global batch of 1 (step 2) leaves rank 1 without examples: hand all-reduce.
        assert rigl["hand_calls"] == [0, 0, 1, 0, 0]
        assert all(n >= 1 for i, n in enumerate(rigl["launched"]) if i != 2)
        assert rigl["updates"] == 2  # after steps 1 and 3
        hand, overlapped = rigl["states"]
        assert hand.keys() == overlapped.keys()
        assert all(torch.equal(hand[k], overlapped[k]) for k in hand)
    masks = [k for k in ranks[0]["rigl"]["states"][0] if k.endswith("weight_mask")]
    assert masks and all(torch.equal(ranks[0]["rigl"]["states"][1][k],
                                     ranks[1]["rigl"]["states"][1][k]) for k in masks)


def test_east_at_beta_zero_keeps_dyrelu_branches_without_gradients(ranks) -> None:
    for r in ranks:
        east = r["east"]
        assert east["same_grads"] == [True, True]
        assert east["hand_calls"] == [0, 0]
        assert all(n > 0 for n in east["without_grad"])  # the DyReLU coefficient branches
        assert all(n >= 1 for n in east["launched"])
        hand, overlapped = east["states"]
        assert all(torch.equal(hand[k], overlapped[k]) for k in hand)
