"""``sparse_inference/<arch>``: images/s of the sparse export / images/s of the dense model.

For each method (RigL: unshared ReLU ResNet; EAST: in-stage sharing R = 2, DyReLU at beta = 0)
and each level (99.9, 99.95, 99.99 %), a model of the paper's CIFAR-10 shapes gets the
sparsifier's own initial masks — ERK at the level's exact budget, positions uniform at
random (seeded) — BatchNorm statistics and affine parameters drawn at random (so that BN
shifts carry constants through dead channels, as in a trained net), and is compiled by
``east.deploy.sparse.compile_sparse`` exactly as ``east export --format sparse`` does. The
dense arm is the torchvision ResNet holding the materialised weights (resnet20, which has
none, uses the dense east model). Both arms run on the CPU with one thread (a per-core
comparison), alternately (ABBA), at batch 1 and 64, on one random batch.

Beside each speed-up: the FLOPs ratio (dense FLOPs / the sparse model's stored FLOPs, the
spec's 2·nnz·H·W per conv), its physical limit, and how much of it was reached. The
kernels ``compile_sparse`` can use are timed against the default one on RigL at the first
level, batch 64 (``sparse_kernel/<arch>/<kernel>``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from east.bench.results import CaseResult, Target
from east.bench.timing import Arm, interleave, spread

INFERENCE_TARGET = Target(">=", 10.0)  # RigL at 99.9 %, ResNet-34 CIFAR shapes, batch 64
LEVELS = (0.999, 0.9995, 0.9999)
METHODS = ("rigl", "east")


@dataclass(frozen=True)
class InferencePlan:
    arch: str
    image_size: int
    levels: tuple[float, ...]
    batches: tuple[int, ...]
    repeats: int
    batch1_units: int  # batch-1 forward passes per timed unit

    @classmethod
    def make(cls, quick: bool) -> InferencePlan:
        if quick:
            return cls("resnet20", 16, (0.99,), (1, 8), 2, 2)
        return cls("resnet34", 32, LEVELS, (1, 64), 5, 10)


def build_masked_model(arch: str, method: str, sparsity: float, seed: int = 0) -> nn.Module:
    """A CIFAR-10 model with the method's initial masks at ``sparsity`` (exact ERK budget),
    random BN statistics, at beta = 0, in eval mode."""
    from east.bench.workload import make_cell, paper_run_length
    from east.models import model_for_cell
    from east.sparsity.methods import build_sparsifier

    cell = make_cell(arch, {"method": method, "sparsity": sparsity}, seed=seed)
    torch.manual_seed(seed)
    model = model_for_cell(cell)
    steps_per_epoch, total_steps = paper_run_length()
    sparsifier = build_sparsifier(model, cell.sparsity, steps_per_epoch=steps_per_epoch,
                                  total_steps=total_steps, seed=seed, debug=False)
    sparsifier.initialize(model)
    model.set_beta(0.0)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=generator) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=generator) - 0.5)
    return model.eval()


def _dead_text(summary: dict[str, Any]) -> str:
    """'dead channels 763 of 7,616: stem 0/64, layer1 45/448, ...' (inner activations and
    block outputs, per stage)."""
    per: dict[str, list[int]] = {}
    for node in summary["nodes"]:
        stage = node["name"].split(".")[0] if "." in node["name"] else "stem"
        dead_total = per.setdefault(stage, [0, 0])
        dead_total[0] += node["total"] - node["computed"]
        dead_total[1] += node["total"]
    parts = ", ".join(f"{stage} {d:,}/{t:,}" for stage, (d, t) in per.items())
    return f"dead channels {summary['dead']:,} of {summary['total']:,} ({parts})"


def sparse_inference_cases(plan: InferencePlan,
                           log: Callable[[str], None] = lambda _: None) -> list[CaseResult]:
    from east.deploy.measure import dense_twin, measure_speedup
    from east.deploy.sparse import compile_sparse
    from east.models.export import nonzero_counts
    from east.train.devices import torch_threads

    results: list[CaseResult] = []
    with torch_threads(1):  # measure_speedup times at one thread; build at one too
        for method in METHODS:
            for level in plan.levels:
                log(f"sparse inference: {plan.arch} {method} {level:.4%}")
                model = build_masked_model(plan.arch, method, level)
                counts = nonzero_counts(model)
                sparse = compile_sparse(model, image_size=plan.image_size, mean=(0.0,) * 3,
                                        std=(1.0,) * 3)
                dense, baseline = dense_twin(model)
                measured = measure_speedup(sparse, dense, batch_sizes=plan.batches,
                                           repeats=plan.repeats,
                                           inner={1: plan.batch1_units})
                flops = sparse.meta["flops"]
                ratio = flops["dense"] / flops["stored"] if flops["stored"] else float("inf")
                channels = sparse.channel_summary()
                for batch in plan.batches:
                    m = measured["batches"][str(batch)]
                    s = spread(m["speedup_per_repeat"])
                    targeted = (method == "rigl" and level == LEVELS[0] and batch == 64
                                and plan.arch == "resnet34")
                    share = s.median / ratio if ratio not in (0, float("inf")) else None
                    details = {
                        "arch": plan.arch, "method": method, "sparsity": level,
                        "batch_size": batch, "image_size": plan.image_size,
                        "baseline": baseline, "variant": f"sparse ({sparse.kernel})",
                        "baseline_s": m["dense_s"], "variant_s": m["sparse_s"],
                        "speedup_per_repeat": m["speedup_per_repeat"],
                        "dense_images_per_s": m["dense_images_per_s"],
                        "sparse_images_per_s": m["sparse_images_per_s"],
                        "flops_dense": flops["dense"], "flops_stored": flops["stored"],
                        "flops_ratio": ratio, "share_of_flops_ratio": share,
                        "nnz_unique": counts.unique, "nnz_materialized": counts.materialized,
                        "nnz_stored": sparse.nnz, "channels": channels, "threads": 1,
                        "chunk": sparse.chunk,
                    }
                    limit = (f"FLOPs ratio {ratio:,.0f}x (the limit); reached "
                             f"{100 * share:.2g} % of it" if share is not None
                             else "no weight is left on any input-output path (FLOPs 0)")
                    results.append(CaseResult(
                        f"sparse_inference/{plan.arch}/{method}-{100 * level:g}%/b{batch}",
                        "sparse_inference",
                        f"Sparse inference, {plan.arch} {method} {100 * level:g} %, batch "
                        f"{batch}",
                        f"images/s of the sparse export / images/s of the dense {baseline}, "
                        f"CPU, 1 thread, batch {batch}, {plan.image_size}x{plan.image_size}",
                        "x", s.median, s, INFERENCE_TARGET if targeted else None, details,
                        notes=f"{limit}; {_dead_text(channels)}; non-zeros {counts.unique:,} "
                              f"unique, {counts.materialized:,} materialised, "
                              f"{sparse.nnz:,} stored"))
                if method == "rigl" and level == plan.levels[0]:
                    results += _kernel_cases(sparse, plan, level)
                    results += _all_threads_case(sparse, dense, plan, level, baseline)
                del model, dense, sparse
    return results


def _all_threads_case(sparse: Any, dense: nn.Module, plan: InferencePlan, level: float,
                      baseline: str) -> list[CaseResult]:
    """The same speed-up with every core in use (the dense model parallelises each conv,
    the sparse one runs batch slices side by side), at the largest batch; report only."""
    from east.bench.cases import usable_cores
    from east.deploy.measure import measure_speedup

    cores = usable_cores()
    if cores < 2:
        return []
    batch = max(plan.batches)
    m = measure_speedup(sparse, dense, batch_sizes=(batch,), repeats=plan.repeats,
                        threads=cores)["batches"][str(batch)]
    s = spread(m["speedup_per_repeat"])
    return [CaseResult(
        f"sparse_inference/{plan.arch}/rigl-{100 * level:g}%/b{batch}-threads{cores}",
        "sparse_inference",
        f"Sparse inference, {plan.arch} rigl {100 * level:g} %, batch {batch}, {cores} threads",
        f"images/s of the sparse export / images/s of the dense {baseline}, CPU, {cores} "
        f"threads (all cores), batch {batch}", "x", s.median, s, None,
        {"arch": plan.arch, "method": "rigl", "sparsity": level, "batch_size": batch,
         "baseline": baseline, "variant": f"sparse ({sparse.kernel})", "threads": cores,
         "baseline_s": m["dense_s"], "variant_s": m["sparse_s"],
         "speedup_per_repeat": m["speedup_per_repeat"]})]


def _kernel_cases(sparse: Any, plan: InferencePlan, level: float) -> list[CaseResult]:
    """Each alternative kernel's time / the default kernel's, at the largest batch."""
    from east.deploy.sparse import KERNELS

    batch = max(plan.batches)
    x = torch.randn((batch, *sparse.input_shape), generator=torch.Generator().manual_seed(3))
    default = sparse.kernel
    out = []

    def runner(kernel: str) -> Callable[[], None]:
        def run() -> None:
            sparse.kernel = kernel
            sparse(x)
        return run

    try:
        for kernel in KERNELS:
            if kernel == default:
                continue
            paired = interleave(Arm(default, runner(default)), Arm(kernel, runner(kernel)),
                                repeats=plan.repeats, warmup=1)
            s = paired.ratio_spread()
            out.append(CaseResult(
                f"sparse_kernel/{plan.arch}/{kernel}", "sparse_kernel",
                f"Sparse inference kernel {kernel} vs {default}, {plan.arch} rigl "
                f"{100 * level:g} %, batch {batch}",
                f"seconds per batch with kernel {kernel} / with {default} (above 1: slower)",
                "x", s.median, s, None,
                {**paired.as_dict(), "arch": plan.arch, "batch_size": batch,
                 "baseline": default, "variant": kernel, "threads": 1}))
    finally:
        sparse.kernel = default
    return out
