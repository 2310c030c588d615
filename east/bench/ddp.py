"""Data-parallel step time: the overlapped gradient all-reduce against the hand one.

``python -m east.bench.ddp [--arch resnet18] [--batch 64] [--steps N] [--repeats K]``
spawns two gloo ranks on the CPU (one thread each) and, on one model built as
``east.bench.workload`` builds it (CIFAR shapes, a step with no mask update due), times
alternately (ABBA, ``east.bench.timing.interleave``):

* ``hand``       — ``train_step`` with ``distributed.all_reduce_gradients`` after backward;
* ``overlapped`` — ``train_step`` with ``GradReducer`` (buckets all-reduced during backward);
* ``compute``    — the same step without any collective (each rank alone), the floor.

``--batch`` is the global batch (each rank gets half). Each timed step starts after an
untimed barrier; a repeat's time is the slower rank's. Also reported: the gradient volume
each arm all-reduces per step, and a bare all-reduce of the hand volume (fp32, one buffer).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from east.bench.timing import Arm, interleave, spread
from east.bench.workload import build_step_setup, resolve_bench_device, synthetic_batch
from east.train import distributed as D
from east.train.grad_reducer import DEFAULT_BUCKET_BYTES
from east.train.step import train_step

WORLD = 2
SPARSE = {
    "dense": {"method": "dense"},
    "rigl": {"method": "rigl", "sparsity": 0.999},
    "east": {"method": "east", "sparsity": 0.999},
}


def _slowest(values: list[float]) -> list[float]:
    """Element-wise max over ranks (a step lasts as long as its slowest rank)."""
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def _bare_all_reduce(numel: int, repeats: int) -> list[float]:
    flat = torch.ones(numel, dtype=torch.float32)
    dist.all_reduce(flat)  # warm-up (connections, buffers)
    times = []
    for _ in range(repeats):
        dist.barrier()
        began = time.perf_counter()
        dist.all_reduce(flat)
        times.append(time.perf_counter() - began)
    return _slowest(times)


def _rank(rank: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    env = D.DistEnv(rank=rank, world_size=WORLD, local_rank=rank)
    D.init_distributed(env, torch.device("cpu"))
    try:
        dev = resolve_bench_device("cpu")
        per_rank = args.batch // WORLD
        setup = build_step_setup("ddp", args.arch, SPARSE[args.method], dev,
                                 batch_size=per_rank, when=args.when)
        x, y = synthetic_batch(per_rank, 32, dev, seed=1 + rank)  # each rank its own data
        bucket_bytes = int(args.bucket_mb * 2**20)
        # Three contexts on one model, optimizer and sparsifier: only the all-reduce differs.
        hand = dataclasses.replace(setup.ctx, env=env, overlap_grads=False)
        overlapped = dataclasses.replace(setup.ctx, env=env, bucket_bytes=bucket_bytes)
        alone = setup.ctx  # world 1: no collective at all
        reducer = overlapped.reducer
        assert reducer is not None

        def arm(name: str, ctx: Any) -> Arm:
            return Arm(name, lambda: train_step(ctx, x, y, setup.step, args.batch),
                       prepare=dist.barrier)

        arms = [arm("hand", hand), arm("overlapped", overlapped), arm("compute", alone)]
        paired = interleave(arms[0], arms[1], repeats=args.repeats, inner=args.steps)
        floor = interleave(arms[0], arms[2], repeats=max(2, args.repeats // 2),
                           inner=args.steps)
        dist.barrier()
        train_step(overlapped, x, y, setup.step, args.batch)  # for the counts below
        done = time.perf_counter()
        active = [p for p in overlapped.params if p.grad is not None]
        hand_numel = sum(p.numel() for p in active)
        result = {
            "arch": args.arch, "method": args.method, "when": args.when,
            "beta": setup.sparsifier.beta(setup.step), "global_batch": args.batch,
            "per_rank_batch": per_rank, "threads_per_rank": torch.get_num_threads(),
            "world": WORLD, "backend": dist.get_backend(), "torch": torch.__version__,
            "bucket_mb": args.bucket_mb, "buckets": len(reducer.buckets),
            "launched_in_backward": reducer.launched_in_backward,
            # rank 0's timeline of that step, seconds after arm() (just before backward)
            "launch_s": [t - reducer.armed_at for t in reducer.launch_times],
            "finish_s": reducer.finished_at - reducer.armed_at,
            "step_end_s": done - reducer.armed_at,
            "bucket_mb_each": [b.buffer.numel() * b.buffer.element_size() / 2**20
                               for b in reducer.buckets if b.buffer is not None],
            "params": len(overlapped.params), "params_with_grad": len(active),
            "hand_mb": hand_numel * 4 / 2**20,
            "overlapped_mb": reducer.communicated_bytes / 2**20,
            "hand_s": _slowest(paired.baseline),
            "overlapped_s": _slowest(paired.variant),
            "hand_vs_compute_s": _slowest(floor.baseline),
            "compute_s": _slowest(floor.variant),
            "bare_all_reduce_s": _bare_all_reduce(hand_numel, 2 * args.repeats),
        }
        if rank == 0:
            Path(out).write_text(json.dumps(result), encoding="utf-8")
    finally:
        D.shutdown(True)


def _ms(values: list[float]) -> str:
    s = spread(values)
    return f"{1e3 * s.median:8.1f} ms  (IQR {1e3 * s.q1:.1f}–{1e3 * s.q3:.1f}, n={s.n})"


def report(result: dict[str, Any]) -> str:
    hand, over = result["hand_s"], result["overlapped_s"]
    ratios = [o / h for h, o in zip(hand, over, strict=True)]
    r = spread(ratios)
    # Per-repeat differences: both arms of a repeat ran seconds apart (drift cancels).
    saved = spread([h - o for h, o in zip(hand, over, strict=True)])
    comm = spread([h - c for h, c in zip(result["hand_vs_compute_s"], result["compute_s"],
                                         strict=True)])
    lines = [
        f"{result['arch']} {result['method']} ({result['when']}, beta {result['beta']:g}), "
        f"global batch {result['global_batch']} = {WORLD} x {result['per_rank_batch']}, "
        f"{result['threads_per_rank']} thread/rank, {result['backend']}, torch "
        f"{result['torch']}",
        f"gradients: {result['params_with_grad']}/{result['params']} parameters with a "
        f"gradient; hand all-reduce {result['hand_mb']:.1f} MB/step, overlapped "
        f"{result['overlapped_mb']:.1f} MB/step in {result['buckets']} buckets (cap "
        f"{result['bucket_mb']:g} MB; {result['launched_in_backward']} launched during "
        "backward)",
        "  one overlapped step, ms after backward began: bucket launches "
        + ", ".join(f"{1e3 * t:.0f} ({mb:.1f} MB)" for t, mb in
                    zip(result["launch_s"], result["bucket_mb_each"], strict=True))
        + f"; backward returned {1e3 * result['finish_s']:.0f}; step ended "
        f"{1e3 * result['step_end_s']:.0f}",
        f"  hand        {_ms(hand)}",
        f"  overlapped  {_ms(over)}",
        f"  ratio overlapped/hand  {r.median:.3f}  (IQR {r.q1:.3f}–{r.q3:.3f})",
        f"  hand - overlapped (per repeat)  {1e3 * saved.median:.1f} ms  "
        f"(IQR {1e3 * saved.q1:.1f}–{1e3 * saved.q3:.1f})",
        f"  compute only (no collective)  {_ms(result['compute_s'])}",
        f"  hand - compute (per repeat: the hand arm's communication)  "
        f"{1e3 * comm.median:.1f} ms  (IQR {1e3 * comm.q1:.1f}–{1e3 * comm.q3:.1f})",
        f"  bare all-reduce of {result['hand_mb']:.1f} MB  {_ms(result['bare_all_reduce_s'])}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m east.bench.ddp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch", type=int, default=64, help="global batch (both ranks)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per arm per repeat")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--bucket-mb", type=float, default=DEFAULT_BUCKET_BYTES / 2**20)
    parser.add_argument("--method", choices=sorted(SPARSE), default="rigl")
    parser.add_argument("--when", choices=("quiet", "phase_out"), default="quiet",
                        help="phase_out: a step at beta = 0 (DyReLU branches unused)")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args(argv)
    if args.batch < WORLD or args.batch % WORLD:
        parser.error(f"--batch must be a positive multiple of {WORLD}")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "ddp.json")
        mp.spawn(_rank, args=(D.free_port(), args, out), nprocs=WORLD, join=True)
        result = json.loads(Path(out).read_text(encoding="utf-8"))
    print(report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
