"""Two-process data parallelism on the CPU (gloo): ranks stay identical through RigL
mask updates."""

from __future__ import annotations

import torch
import torch.multiprocessing as mp
from train_helpers import ddp_worker, free_port, make_cell


def test_two_rank_gloo_run_keeps_identical_masks_through_rigl_updates(tmp_path) -> None:
    cell = make_cell(method="rigl", sparsity=0.9, epochs=1,
                     sparse={"update_interval": 2, "update_end": "100%"})
    steps = 8
    out, dump = tmp_path / "run", tmp_path / "dump"
    dump.mkdir()
    mp.spawn(ddp_worker, args=(2, free_port(), cell.canonical_json(), str(out), str(dump),
                               steps), nprocs=2, join=True)
    ranks = [torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["exit"] for r in ranks] == [0, 0]
    assert [r["step"] for r in ranks] == [steps, steps]
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
    # Only rank 0 wrote the checkpoint of the stop.
    assert (out / "checkpoints" / f"ckpt-{steps}.pt").exists()
    assert sum(int(state0[k].sum()) for k in masks) == round(0.1 * 270608)
    # The same run in one process counts the same examples and FLOPs: the ranks' shards
    # tile each batch. (Its weights differ: BatchNorm normalises each rank's shard with the
    # shard's own statistics, as DDP does; gradient equality without BN across world sizes
    # is tests/test_fidelity.py::test_two_gloo_ranks_clip_by_the_same_factor_as_one_process.)
    from east.train.loop import Trainer

    torch.set_num_threads(1)
    single = Trainer(cell, tmp_path / "single", max_steps=steps, progress=False)
    assert single.run().exit_code == 0
    saved = torch.load(out / "checkpoints" / f"ckpt-{steps}.pt", weights_only=True)
    assert saved["cost"] == single.state.cost.state_dict()
    assert saved["cost"]["examples"] == single.state.cost.examples == steps * 64
