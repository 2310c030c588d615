"""Two-process data parallelism on the CPU (gloo): ranks stay identical through RigL
mask updates, and end where one process ends (global BatchNorm), empty shards included."""

from __future__ import annotations

import torch
import torch.multiprocessing as mp
from train_helpers import ddp_worker, make_cell

from east.train.distributed import free_port


def _two_ranks(cell, tmp_path, steps):
    """Train ``cell`` for ``steps`` steps as 2 gloo ranks: (run dir, each rank's dump)."""
    out, dump = tmp_path / "run", tmp_path / "dump"
    dump.mkdir()
    mp.spawn(ddp_worker, args=(2, free_port(), cell.canonical_json(), str(out), str(dump),
                               steps), nprocs=2, join=True)
    ranks = [torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["exit"] for r in ranks] == [0, 0]
    assert [r["step"] for r in ranks] == [steps, steps]
    return out, ranks


def test_two_rank_gloo_run_keeps_identical_masks_through_rigl_updates(tmp_path) -> None:
    cell = make_cell(method="rigl", sparsity=0.9, epochs=1,
                     sparse={"update_interval": 2, "update_end": "100%"})
    steps = 8
    out, ranks = _two_ranks(cell, tmp_path, steps)
    # Mask updates happened after steps 2, 4, 6, 8 (it = step + 1 divisible by 2) ...
    assert ranks[0]["updates"] == ranks[1]["updates"] == 4
    prints = ranks[0]["fingerprints"]
    assert len({tuple(p.tolist()) for p in prints}) >= 4  # ... and moved the masks,
    # identically on both ranks after every step.
    assert torch.equal(ranks[0]["fingerprints"], ranks[1]["fingerprints"])
    state0, state1 = ranks[0]["state"], ranks[1]["state"]
    masks = [k for k in state0 if k.endswith("weight_mask")]
    assert masks and all(torch.equal(state0[k], state1[k]) for k in masks)
    # Identical all-reduced gradients give identical parameters (BN statistics are rank 0's
    # at every forward, as in DDP).
    weights = [k for k, v in state0.items() if v.is_floating_point() and "running" not in k]
    assert all(torch.equal(state0[k], state1[k]) for k in weights)
    # ... and global BatchNorm gives every rank the same running statistics, without the
    # per-step broadcast DDP needs.
    stats = [k for k in state0 if "running" in k or "num_batches" in k]
    assert stats and all(torch.equal(state0[k], state1[k]) for k in stats)
    # Only rank 0 wrote the checkpoint of the stop.
    assert (out / "checkpoints" / f"ckpt-{steps}.pt").exists()
    assert sum(int(state0[k].sum()) for k in masks) == round(0.1 * 270608)
    # The same run in one process counts the same examples and FLOPs (the ranks' shards
    # tile each batch) and, BatchNorm being global, ends with the same masks and weights up
    # to float summation order (with per-shard statistics they differed by ~1e-4 after one
    # step and the masks diverged at the first update).
    single = _single_process(cell, tmp_path / "single", steps)
    saved = torch.load(out / "checkpoints" / f"ckpt-{steps}.pt", weights_only=True)
    assert saved["cost"] == single.state.cost.state_dict()
    assert saved["cost"]["examples"] == single.state.cost.examples == steps * 64
    _assert_same_up_to_rounding(state0, single.state.model.state_dict())


def _single_process(cell, out, steps):
    from east.train.loop import Trainer

    torch.set_num_threads(1)
    single = Trainer(cell, out, max_steps=steps, progress=False)
    assert single.run().exit_code == 0
    return single


def _assert_same_up_to_rounding(ranked: dict, single: dict) -> None:
    assert ranked.keys() == single.keys()
    for key, value in ranked.items():
        if value.dtype == torch.bool or "num_batches" in key:
            assert torch.equal(value, single[key]), key
        else:
            torch.testing.assert_close(value, single[key], rtol=0, atol=2e-5, msg=key)


def test_an_empty_shard_trains_as_one_process(tmp_path) -> None:
    """Batches of 431 of the 1,294 training images: every fourth batch has one example, so
    rank 1's shard is empty; it still runs the (zero-example) pass that BatchNorm's
    collectives need, and two epochs end where one process ends."""
    cell = make_cell(method="rigl", sparsity=0.9, epochs=2, train={"batch_size": 431},
                     sparse={"update_interval": 2, "update_end": "100%"})
    steps = 8
    _, ranks = _two_ranks(cell, tmp_path, steps)
    single = _single_process(cell, tmp_path / "single", steps)
    assert single.state.cost.examples == 2 * 1294
    _assert_same_up_to_rounding(ranks[0]["state"], single.state.model.state_dict())
